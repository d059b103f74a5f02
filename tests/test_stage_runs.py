"""Run markers and cleanup after killed runs, with real child processes on the moto server."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import pyarrow as pa
import pytest
from anyio.streams.buffered import BufferedByteReceiveStream

from src.common.errors import StageError
from src.config.models import S3Conn
from src.stage.pending import list_stages, scan_pipeline
from src.stage.runs import (
    RunMarker,
    _proc_stat,
    bury_dead_runs,
    clean_dead_runs,
    marker_key,
    read_run_markers,
    run_marker,
    run_marker_key,
)
from src.stage.s3 import S3Stage
from tests.conftest import ROOT, CutProxy, s3_client
from tests.test_stage_support import FailTimes, get_object, list_keys, open_uploads, stage_batches

pytestmark = pytest.mark.anyio

TABLE = "db.t"
OTHER = "db.u"  # the child's second table: it dies before writing anything there
OWN = "sync_20240517_120000_0000aaaa"
CHILD = r"""
import sys, anyio
from src.common.secret import Secret
from src.config.models import S3Conn
from src.stage.runs import run_marker
from src.stage.s3 import S3Stage

async def main(endpoint: str, bucket: str, execution_id: str) -> None:
    cfg = S3Conn(name="child", bucket=bucket, prefix="staging/", endpoint_url=endpoint,
                 access_key_id=Secret("testing"), secret_access_key=Secret("testing"), part_size_mb=5)
    async with S3Stage(cfg) as s3, run_marker(s3, "p", execution_id, ["db.t", "db.u"]):
        prefix = s3.run_prefix("p", "db.t", execution_id)
        await s3.put_bytes(prefix + "part-00000.parquet", b"a file completed before the kill")
        async with s3.multipart(prefix + "part-00001.parquet") as upload:
            await upload.write(b"x" * (5 * 1024 * 1024 + 1))  # one part goes up, the upload stays open
            print("READY", flush=True)
            await anyio.sleep(3600)

anyio.run(main, *sys.argv[1:])
"""


@dataclasses.dataclass
class Child:
    process: anyio.abc.Process
    execution_id: str
    prefix: str


@contextlib.asynccontextmanager
async def child_run(s3_conn: S3Conn, execution_id: str) -> AsyncIterator[Child]:
    """A real sync-like process: marker written, one file complete, a multipart upload open."""
    cmd = [sys.executable, "-c", CHILD, str(s3_conn.endpoint_url), s3_conn.bucket, execution_id]
    async with await anyio.open_process(cmd, cwd=ROOT, stderr=subprocess.DEVNULL) as process:
        try:
            assert process.stdout is not None
            with anyio.fail_after(60):
                assert await BufferedByteReceiveStream(process.stdout).receive_until(b"\n", 100) == b"READY"
            yield Child(process, execution_id, f"staging/p/{TABLE}/{execution_id}/")
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()


async def kill(child: Child) -> None:
    child.process.send_signal(signal.SIGKILL)
    assert await child.process.wait() == -signal.SIGKILL


def marker_keys(s3_conn: S3Conn) -> list[str]:
    """One table's markers (as earlier versions wrote them)."""
    return list_keys(s3_conn, f"staging/p/{TABLE}/_runs/")


def run_marker_names(s3_conn: S3Conn) -> list[str]:
    return [k.rsplit("/", 1)[1] for k in list_keys(s3_conn, "staging/p/_runs/")]


INITIATED: dict[str, datetime] = {}  # upload id -> when this test process started it


def start_upload(s3_conn: S3Conn, key: str) -> None:
    resp = s3_client(str(s3_conn.endpoint_url)).create_multipart_upload(Bucket=s3_conn.bucket, Key=key)
    INITIATED[resp["UploadId"]] = datetime.now(UTC)


def honest_initiated(s3: S3Stage) -> None:
    """moto lists every upload as initiated on 2010-11-10: put back the times the test recorded."""

    def fix(parsed: dict[str, Any], **kwargs: Any) -> None:
        for upload in parsed.get("Uploads", []):
            upload["Initiated"] = INITIATED.get(upload["UploadId"], upload["Initiated"])

    s3.client.meta.events.register("after-call.s3.ListMultipartUploads", fix)


async def put_marker(s3: S3Stage, marker: RunMarker, partial: bool = True) -> str:
    """One table's marker as an earlier version's run would leave it, with an open upload and (if
    partial) a file of its own."""
    prefix = s3.run_prefix("p", TABLE, marker.execution_id)
    await s3.put_bytes(marker_key(s3, "p", TABLE, marker.execution_id), marker.to_bytes())
    if partial:
        await s3.put_bytes(f"{prefix}part-00000.parquet", b"partial")
    start_upload(s3.cfg, f"{prefix}part-00001.parquet")
    return prefix


def exited_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


async def bury(s3: S3Stage, own: str = OWN) -> int:
    """What a run does at its start: read the other runs' markers, clean up after the dead ones."""
    markers = await read_run_markers(s3, "p", own_execution_id=own)
    return await bury_dead_runs(s3, "p", markers, own_execution_id=own)


async def test_sigkilled_run_is_cleaned_and_a_live_one_left_alone(s3_conn: S3Conn) -> None:
    own_prefix = f"staging/p/{TABLE}/{OWN}/"
    async with S3Stage(s3_conn) as s3, child_run(s3_conn, "sync_20240517_110000_0000dead") as dead:
        assert open_uploads(s3_conn, dead.prefix) == [f"{dead.prefix}part-00001.parquet"]
        await kill(dead)
        async with child_run(s3_conn, "sync_20240517_110500_00000a11") as live:
            async with run_marker(s3, "p", OWN, [TABLE]):
                start_upload(s3_conn, f"{own_prefix}part-00000.parquet")
                assert await bury(s3) == 1
                assert open_uploads(s3_conn, dead.prefix) == []
                assert list_keys(s3_conn, dead.prefix) == []
                assert list_keys(s3_conn, live.prefix) == [f"{live.prefix}part-00000.parquet"]
                assert open_uploads(s3_conn, live.prefix) == [f"{live.prefix}part-00001.parquet"]
                assert open_uploads(s3_conn, own_prefix) == [f"{own_prefix}part-00000.parquet"]
                assert run_marker_names(s3_conn) == [f"{live.execution_id}.json", f"{OWN}.json"]
                assert await bury(s3) == 0
                # the table's own cleanup knows the live run by its run marker: its upload stays
                scan = await scan_pipeline(s3, "p", own_execution_id=OWN)
                assert scan.run_ids == {live.execution_id} and scan.tables == {TABLE}
                runs = scan.run_ids
                assert await clean_dead_runs(s3, "p", TABLE, own_execution_id=OWN, runs=runs) == 0
                assert open_uploads(s3_conn, live.prefix) == [f"{live.prefix}part-00001.parquet"]
            await kill(live)
            assert await bury(s3) == 1
    assert open_uploads(s3_conn) == [f"{own_prefix}part-00000.parquet"]
    assert list_keys(s3_conn, f"staging/p/{TABLE}/") == []
    assert list_keys(s3_conn, "staging/p/") == []  # both markers gone; ours when the client closed


async def test_a_dead_runs_staged_table_stays_its_partial_one_goes(
    s3_conn: S3Conn, stage_log: pytest.LogCaptureFixture
) -> None:
    schema = pa.schema([pa.field("id", pa.int64())])
    execution_id = "sync_20240517_100000_00000001"
    tables = [TABLE, OTHER, "db.never"]
    async with S3Stage(s3_conn) as s3:
        staged = await stage_batches(
            s3,
            s3.run_prefix("p", TABLE, execution_id),
            schema,
            [pa.record_batch([pa.array([1])], schema=schema)],
        )
        partial = s3.run_prefix("p", OTHER, execution_id)
        await s3.put_bytes(f"{partial}part-00000.parquet", b"partial")
        start_upload(s3_conn, f"{partial}part-00001.parquet")
        start_upload(s3_conn, f"staging/p/{OTHER}/{OWN}/part-00000.parquet")  # ours: never touched
        marker = dataclasses.replace(
            RunMarker.current(execution_id, tables), pid=exited_pid(), pid_start=None
        )
        await s3.put_bytes(run_marker_key(s3, "p", execution_id), marker.to_bytes())
        assert await bury(s3) == 1
        assert await list_stages(s3, "p", TABLE) == [staged]
        assert list_keys(s3_conn, partial) == []
    assert open_uploads(s3_conn) == [f"staging/p/{OTHER}/{OWN}/part-00000.parquet"]
    assert run_marker_names(s3_conn) == []
    # each table's line names the table and where: one line per table, never the same line repeated
    lines = {r.getMessage() for r in stage_log.records if f"run {execution_id} died" in r.getMessage()}
    assert len(lines) == 2, lines
    kept = f"s3://{s3_conn.bucket}/staging/p/{TABLE}/{execution_id}/"
    assert any(f"after staging {TABLE}: its stage {kept} stays" in line for line in lines), lines
    assert any(f"1 partial file(s) of {OTHER} from s3://" in line for line in lines), lines


async def test_an_unreadable_run_marker_is_judged_by_age_and_cleaned_under_every_table(
    s3_conn: S3Conn, stage_log: pytest.LogCaptureFixture
) -> None:
    execution_id = "sync_20240517_000000_00000002"
    async with S3Stage(s3_conn) as s3:
        await s3.put_bytes(run_marker_key(s3, "p", execution_id), b"not a marker")
        prefixes = [s3.run_prefix("p", t, execution_id) for t in (TABLE, OTHER)]
        for prefix in prefixes:
            await s3.put_bytes(f"{prefix}part-00000.parquet", b"partial")
        await s3.put_bytes(f"{s3.run_prefix('p', TABLE, OWN)}part-00000.parquet", b"ours")
        assert await bury(s3) == 0  # young: it may be a live run on another host
        assert all(list_keys(s3_conn, p) for p in prefixes)
        markers = await read_run_markers(s3, "p", own_execution_id=OWN)
        await anyio.sleep(1.1)
        assert await bury_dead_runs(s3, "p", markers, own_execution_id=OWN, foreign_after_seconds=1) == 0
    assert list_keys(s3_conn, "staging/p/") == [f"staging/p/{TABLE}/{OWN}/part-00000.parquet"]
    assert any("unreadable run marker" in r.getMessage() for r in stage_log.records)


async def test_a_dead_run_with_a_manifest_keeps_its_stage(s3_conn: S3Conn) -> None:
    schema = pa.schema([pa.field("id", pa.int64())])
    execution_id = "sync_20240517_100000_00000001"
    async with S3Stage(s3_conn) as s3:
        prefix = s3.run_prefix("p", TABLE, execution_id)
        staged = await stage_batches(s3, prefix, schema, [pa.record_batch([pa.array([1, 2])], schema=schema)])
        marker = dataclasses.replace(RunMarker.current(execution_id), pid=exited_pid(), pid_start=None)
        await put_marker(s3, marker, partial=False)  # e.g. killed while writing its run report
        assert await clean_dead_runs(s3, "p", TABLE, own_execution_id=OWN) == 1
        assert await list_stages(s3, "p", TABLE) == [staged]
    assert open_uploads(s3_conn) == []
    assert marker_keys(s3_conn) == []


async def test_a_reused_pid_or_a_zombie_is_dead_a_matching_start_is_alive(s3_conn: S3Conn) -> None:
    me = RunMarker.current("sync_20240517_100000_00000001")
    assert me.pid == os.getpid() and me.pid_start is not None
    reused = dataclasses.replace(me, execution_id="sync_20240517_100000_00000002", pid_start=me.pid_start - 1)
    with zombie() as zombie_pid:
        start = _proc_stat(zombie_pid)[1]  # type: ignore[index]
        zombied = dataclasses.replace(
            me, execution_id="sync_20240517_100000_00000003", pid=zombie_pid, pid_start=start
        )
        async with S3Stage(s3_conn) as s3:
            alive = await put_marker(s3, me)
            dead = [await put_marker(s3, m) for m in (reused, zombied)]
            assert await clean_dead_runs(s3, "p", TABLE, own_execution_id=OWN, foreign_after_seconds=0) == 2
    assert sorted(open_uploads(s3_conn)) == [f"{alive}part-00001.parquet"]
    assert list_keys(s3_conn, f"staging/p/{TABLE}/sync") == [f"{alive}part-00000.parquet"]
    assert [k.rsplit("/", 1)[1] for k in marker_keys(s3_conn)] == [f"{me.execution_id}.json"]
    assert all(list_keys(s3_conn, p) == [] for p in dead)


@contextlib.contextmanager
def zombie() -> Iterator[int]:
    """The pid of a child that has exited but is not reaped yet."""
    proc = subprocess.Popen(["true"])
    try:
        deadline = time.monotonic() + 10
        while (stat := _proc_stat(proc.pid)) is None or stat[0] != "Z":
            assert time.monotonic() < deadline, "the child did not exit"
            time.sleep(0.01)
        yield proc.pid
    finally:
        proc.wait()


async def test_foreign_hosts_and_other_boots_are_judged_by_age(s3_conn: S3Conn) -> None:
    now = datetime.now(UTC)
    base = RunMarker("x", "build-agent-7", 4242, 1, "boot-a", now - timedelta(hours=7))
    old = dataclasses.replace(base, execution_id="sync_20240517_010000_00000001")
    young = dataclasses.replace(
        base, execution_id="sync_20240517_020000_00000002", started_at=now - timedelta(hours=1)
    )
    # this host's name but another boot id (a reboot, or a namesake machine): never judged by its pid
    rebooted = dataclasses.replace(
        RunMarker.current("sync_20240517_030000_00000003"), boot_id="another-boot", pid=exited_pid()
    )
    mine = dataclasses.replace(old, execution_id=OWN)  # our own id is never judged, however old
    async with S3Stage(s3_conn) as s3:
        old_prefix = await put_marker(s3, old)
        kept = [await put_marker(s3, m) for m in (young, rebooted, mine)]
        assert await clean_dead_runs(s3, "p", TABLE, own_execution_id=OWN) == 1
        assert list_keys(s3_conn, old_prefix) == []
        assert all(len(list_keys(s3_conn, p)) == 1 and open_uploads(s3_conn, p) for p in kept)
        assert len(marker_keys(s3_conn)) == 3
        assert await clean_dead_runs(s3, "p", TABLE, own_execution_id=OWN, foreign_after_seconds=1800) == 1
        assert [p for p in kept if list_keys(s3_conn, p)] == kept[1:]  # the rebooted one is young


async def test_uploads_without_a_marker_go_once_old(
    s3_conn: S3Conn, stage_log: pytest.LogCaptureFixture
) -> None:
    table = f"staging/p/{TABLE}/"
    start_upload(s3_conn, f"{table}sync_20240517_000000_00000001/part-00000.parquet")  # killed early
    start_upload(s3_conn, f"{table}{OWN}/part-00000.parquet")  # our own, not yet marked
    start_upload(s3_conn, f"{table}sync_20240517_000000_00000003/part-00000.parquet")  # has a run marker
    start_upload(s3_conn, f"staging/p/{TABLE}0/sync_20240517_000000_00000001/part-00000.parquet")
    async with S3Stage(s3_conn) as s3:
        honest_initiated(s3)
        garbled = marker_key(s3, "p", TABLE, "sync_20240517_000000_00000002")
        await s3.put_bytes(garbled, b"not a marker")
        start_upload(s3_conn, f"{table}sync_20240517_000000_00000002/part-00000.parquet")
        assert await clean_dead_runs(s3, "p", TABLE, own_execution_id=OWN) == 0
        assert len(open_uploads(s3_conn)) == 5
        await anyio.sleep(1.1)
        runs = {"sync_20240517_000000_00000003"}
        aborted = await clean_dead_runs(
            s3, "p", TABLE, own_execution_id=OWN, foreign_after_seconds=1, runs=runs
        )
        assert aborted == 2
    assert sorted(open_uploads(s3_conn)) == sorted(
        [
            f"staging/p/{TABLE}0/sync_20240517_000000_00000001/part-00000.parquet",
            f"{table}{OWN}/part-00000.parquet",
            f"{table}sync_20240517_000000_00000003/part-00000.parquet",
        ]
    )
    assert marker_keys(s3_conn) == []
    assert any("unreadable run marker" in r.getMessage() for r in stage_log.records)


async def test_run_marker_content_and_removal_on_exception_and_cancellation(s3_conn: S3Conn) -> None:
    async with S3Stage(s3_conn) as s3:
        key = run_marker_key(s3, "p", OWN)
        assert key == f"staging/p/_runs/{OWN}.json"
        before = datetime.now(UTC)
        with pytest.raises(RuntimeError, match="boom"):
            async with run_marker(s3, "p", OWN, [TABLE, OTHER]):
                marker = RunMarker.from_bytes(get_object(s3_conn, key))
                raise RuntimeError("boom")
        assert run_marker_names(s3_conn) == [f"{OWN}.json"]  # queued: it goes with other deletes
        await s3.flush_deletes()
        assert run_marker_names(s3_conn) == []
        assert (marker.host, marker.pid, marker.execution_id) == (socket.gethostname(), os.getpid(), OWN)
        assert marker.tables == (TABLE, OTHER)
        assert marker.pid_start == _proc_stat(os.getpid())[1]  # type: ignore[index]
        assert before <= marker.started_at <= datetime.now(UTC)
        assert not marker.is_dead(datetime.now(UTC), 0)

        entered = anyio.Event()

        async def hold() -> None:
            async with run_marker(s3, "p", OWN, [TABLE]):
                entered.set()
                await anyio.sleep_forever()

        async with anyio.create_task_group() as tg:
            tg.start_soon(hold)
            await entered.wait()
            assert run_marker_names(s3_conn) == [f"{OWN}.json"]
            tg.cancel_scope.cancel()
    assert run_marker_names(s3_conn) == []  # deleted when the client closed


async def test_markers_are_deleted_in_batches(s3_conn: S3Conn, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("src.stage.s3.DELETE_BATCH", 3)
    deletes: list[int] = []
    runs = [f"sync_20240517_12000{i}_0000aaaa" for i in range(7)]
    async with S3Stage(s3_conn) as s3:
        s3.client.meta.events.register(
            "provide-client-params.s3.DeleteObjects",
            lambda params, **kw: deletes.append(len(params["Delete"]["Objects"])),
        )
        for run in runs:
            async with run_marker(s3, "p", run, [TABLE]):
                pass
        assert deletes == [3, 3]
        assert list_keys(s3_conn, "staging/p/") == [run_marker_key(s3, "p", runs[-1])]
    assert deletes == [3, 3, 1] and list_keys(s3_conn, "staging/p/") == []


async def test_a_failed_marker_delete_is_only_logged(
    s3_conn: S3Conn, stage_log: pytest.LogCaptureFixture
) -> None:
    async with S3Stage(s3_conn, max_attempts=1) as s3:
        s3.client.meta.events.register("before-send.s3.DeleteObjects", FailTimes(500, "InternalError", None))
        with pytest.raises(RuntimeError, match="the real failure"):
            async with run_marker(s3, "p", OWN, [TABLE]):
                raise RuntimeError("the real failure")
    assert run_marker_names(s3_conn) == [f"{OWN}.json"]
    assert any("could not delete objects queued" in r.getMessage() for r in stage_log.records)


async def test_a_run_whose_abort_failed_keeps_its_marker_for_the_next_run(
    s3_conn: S3Conn, s3_proxy: CutProxy, stage_log: pytest.LogCaptureFixture
) -> None:
    """S3 unreachable: the upload cannot be aborted. S3 is back when the run ends, yet the marker stays,
    so the next run takes the run for a killed one and aborts the upload (CLI: tests/test_s3_down.py)."""
    cfg = dataclasses.replace(s3_conn, endpoint_url=s3_proxy.url)
    async with S3Stage(cfg, cool_down=0.5) as s3, run_marker(s3, "p", OWN, [TABLE]):
        with pytest.raises(StageError, match="unreachable"):
            async with s3.multipart("staging/p/db.t/big") as upload:
                await upload.write(b"x" * (5 * 1024 * 1024 + 1))  # the upload is open
                await anyio.sleep(0.2)
                s3_proxy.cut()
                await upload.write(b"x" * (5 * 1024 * 1024))
        assert s3.unclean == 1
        s3_proxy.restore()
        await anyio.sleep(0.5)
        await s3.check()  # the probe: reachable again before the run ends
    assert run_marker_names(s3_conn) == [f"{OWN}.json"]
    assert open_uploads(s3_conn) == ["staging/p/db.t/big"]
    assert any("kept the run marker" in r.getMessage() for r in stage_log.records)


def test_marker_round_trip_and_bad_markers() -> None:
    marker = RunMarker.current(OWN)
    assert RunMarker.from_bytes(marker.to_bytes()) == marker
    assert b"tables" not in marker.to_bytes()  # one table's marker, as earlier versions read it
    run = RunMarker.current(OWN, [TABLE, OTHER])
    assert RunMarker.from_bytes(run.to_bytes()) == run and run.tables == (TABLE, OTHER)
    for bad in (
        b"[]",
        b"{}",
        b'{"format": "s3shift.run.v1"}',
        marker.to_bytes().replace(b'"pid":', b'"pid_":'),
        run.to_bytes().replace(b'"db.u"', b'"../x"'),
        run.to_bytes().replace(b'"db.u"', b"7"),
    ):
        with pytest.raises(ValueError, match="not a run marker"):
            RunMarker.from_bytes(bad)
    with pytest.raises(StageError):
        marker_key(S3Stage(S3Conn(name="x", bucket="b")), "p", TABLE, "a/b")
    with pytest.raises(StageError):
        run_marker_key(S3Stage(S3Conn(name="x", bucket="b")), "p", "..")


def test_proc_stat_survives_odd_command_names(tmp_path: Path) -> None:
    odd = tmp_path / "x) 1 2 3 4"
    odd.symlink_to("/bin/sleep")
    proc = subprocess.Popen([str(odd), "30"])
    try:
        stat = _proc_stat(proc.pid)
        mine = _proc_stat(os.getpid())
        assert stat is not None and mine is not None
        assert stat[0] in "RSD" and stat[1] >= mine[1]
    finally:
        proc.kill()
        proc.wait()
    assert _proc_stat(exited_pid()) is None


async def test_a_scan_made_earlier_replaces_the_table_listings(s3_conn: S3Conn) -> None:
    """``uploads`` listed at the run's start: only those under the table count, later ones wait for the next
    run; ``markers=False`` (the table's listing showed no ``_runs/``): no marker is looked for."""
    table = f"staging/p/{TABLE}/"
    requests: list[str] = []
    async with S3Stage(s3_conn) as s3:
        dead = dataclasses.replace(RunMarker.current("sync_20240517_100000_00000001"), pid=exited_pid())
        dead_prefix = await put_marker(s3, dead)
        start_upload(s3_conn, f"{table}sync_20240517_000000_00000009/part-00000.parquet")  # unmarked
        start_upload(s3_conn, f"staging/p/{TABLE}0/sync_20240517_000000_00000009/part-00000.parquet")
        snapshot = await s3.list_uploads("staging/p/")
        start_upload(s3_conn, f"{table}sync_20240517_000000_00000008/part-00000.parquet")  # after it
        s3.client.meta.events.register("before-call.s3", lambda model, **kw: requests.append(model.name))
        assert await clean_dead_runs(s3, "p", TABLE, own_execution_id=OWN, uploads=(), markers=False) == 0
        assert requests == []
        aborted = await clean_dead_runs(s3, "p", TABLE, own_execution_id=OWN, uploads=snapshot, markers=False)
        assert aborted == 2  # the dead run's upload and the unmarked one (moto dates every upload 2010)
        assert "ListMultipartUploads" not in requests and "ListObjectsV2" not in requests
        assert list_keys(s3_conn, dead_prefix) == [f"{dead_prefix}part-00000.parquet"]  # not buried yet
        assert len(marker_keys(s3_conn)) == 1
        assert await clean_dead_runs(s3, "p", TABLE, own_execution_id=OWN) == 1  # the later upload
    assert list_keys(s3_conn, dead_prefix) == [] and marker_keys(s3_conn) == []
    assert open_uploads(s3_conn) == [f"staging/p/{TABLE}0/sync_20240517_000000_00000009/part-00000.parquet"]
