"""S3 unreachable during a real `sync` (the CLI in its own process): a moto server of the test's own,
killed mid-run or absent from the start, and the session's moto behind a proxy the test cuts. The run
fails fast (the breaker, src/stage/breaker.py), reports every table as retryable with target and
watermark unchanged, and the rerun with S3 back is exact, with no multipart upload left open."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from src.config.models import S3Conn, SourceConn, TargetConn
from tests.conftest import ROOT, CutProxy, _free_port, mysql_exec, pg_fetch, s3_client, start_moto
from tests.e2e import CLI, assert_tables_equal, check_contract, failures, run_json, write_config
from tests.test_crash import BIG, FILL, ROWS, Setup, start_sync, wait_until
from tests.test_stage_support import list_keys, open_uploads

TABLES = 30
PROCESSING = {"max_parallel_tables": 4, "batch_size": 1000, "processes": 2}
# one table's retries once S3 is down: 1.75 s for a refused connection, then at most the 5 s wait for
# the probe; botocore's standard retries alone took 15-20 s per table (about 2 minutes for 30 tables)
BOUND = 40.0


@dataclass
class OwnS3:
    """A moto server this test kills and starts again on the same port (its data dies with it)."""

    port: int
    proc: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=10)

    def start(self, bucket: str) -> None:
        self.proc = start_moto(self.port)
        s3_client(self.url).create_bucket(Bucket=bucket)


@pytest.fixture
def own_s3(s3_conn: S3Conn) -> Iterator[tuple[OwnS3, S3Conn]]:
    port = _free_port()
    server = OwnS3(port, start_moto(port))
    try:
        s3_client(server.url).create_bucket(Bucket=s3_conn.bucket)
        yield server, replace(s3_conn, endpoint_url=server.url)
    finally:
        if server.proc.poll() is None:
            server.kill()


def make_tables(database: str, count: int, rows: int = 200) -> list[str]:
    mysql_exec(
        database,
        *(f"CREATE TABLE t{i} (id INT PRIMARY KEY, v VARCHAR(40))" for i in range(count)),
        *(f"INSERT INTO t{i} SELECT seq, CONCAT('row ', seq) FROM seq_1_to_{rows}" for i in range(count)),
    )
    return [f"{database}.t{i}" for i in range(count)]


def manifests(s3: S3Conn) -> int:
    return sum(k.endswith("/manifest.json") for k in list_keys(s3))


def contents(schema: str, tables: list[str]) -> dict[str, Any]:
    """What each target holds (None: no target table)."""
    query = "SELECT tablename FROM pg_tables WHERE schemaname = $1"
    found = {r["tablename"] for r in pg_fetch(query, schema)}
    out: dict[str, Any] = {}
    for table in tables:
        name = table.split(".", 1)[1]
        query = f'SELECT count(*) AS n, sum(length(v)) AS s FROM "{schema}"."{name}"'
        out[table] = tuple(pg_fetch(query)[0]) if name in found else None
    return out


def finish(run: subprocess.Popen[str], since: float) -> tuple[dict[str, Any], float]:
    """The run's report and how long it took from ``since`` to end."""
    out, err = run.communicate(timeout=180)
    took = time.monotonic() - since
    try:
        return json.loads(out), took
    except json.JSONDecodeError:
        raise AssertionError(f"stdout is not one JSON document: {out!r}\nstderr={err}") from None


def test_s3_killed_mid_run_fails_the_rest_fast_and_the_rerun_is_exact(
    tmp_path: Path,
    source_conn: SourceConn,
    pg_target: TargetConn,
    own_s3: tuple[OwnS3, S3Conn],
    mysql_db: str,
    pg_schema: str,
) -> None:
    server, s3 = own_s3
    tables = make_tables(mysql_db, TABLES)
    incremental = {t: {"cdc_strategy": "id_only"} for t in tables[::2]}
    cfg = write_config(tmp_path / "cfg", source_conn, pg_target, s3, incremental, processing=PROCESSING)
    args = ("--config-dir", str(cfg), "sync", "-p", "p", "-t", ",".join(tables))
    doc, proc = run_json(*args)
    assert proc.returncode == 0, failures(doc)
    mysql_exec(mysql_db, *(f"INSERT INTO t{i} SELECT seq, 'new' FROM seq_201_to_260" for i in range(TABLES)))
    before = contents(pg_schema, tables)

    run = start_sync(Setup(cfg, ",".join(tables), CLI))
    wait_until(run, lambda: manifests(s3) >= TABLES + 3, "three tables staged")
    server.kill()
    doc, took = finish(run, time.monotonic())

    check_contract(doc, tables)
    assert run.returncode == 1
    failed = failures(doc)
    assert failed, "S3 was killed after the run's last request"
    for table in failed:
        result = doc["table_results"][table]
        assert result["retryable"] is True, result
        assert f"S3 endpoint {server.url} unreachable (connection refused): " in result["error_message"]
    assert took < BOUND, f"{len(failed)} tables failed in {took:.1f} s after S3 was killed"
    after = contents(pg_schema, tables)
    assert {t: after[t] for t in failed} == {t: before[t] for t in failed}  # targets untouched

    server.start(s3.bucket)  # S3 back, empty: what the failed run staged died with it
    doc, proc = run_json(*args)
    assert proc.returncode == 0, failures(doc)
    for i in range(TABLES):  # exact: no watermark moved past rows that were not loaded
        assert assert_tables_equal(mysql_db, f"t{i}", pg_schema, f"t{i}", "id") == 260


def test_s3_unreachable_at_the_start_fails_every_table_in_seconds(
    tmp_path: Path, source_conn: SourceConn, pg_target: TargetConn, s3_conn: S3Conn
) -> None:
    endpoint = f"http://127.0.0.1:{_free_port()}"
    s3 = replace(s3_conn, endpoint_url=endpoint)
    cfg = write_config(tmp_path / "cfg", source_conn, pg_target, s3, processing=PROCESSING)
    tables = [f"db.t{i}" for i in range(8)]
    secret = "S3down+Secret/Key+0123456789"
    args = ("--config-dir", str(cfg), "sync", "-p", "p", "-t", ",".join(tables))
    doc, proc = run_json(*args, env={"AWS_SECRET_ACCESS_KEY": secret})
    assert proc.returncode == 1
    check_contract(doc, tables)
    for result in doc["table_results"].values():
        assert result["phase"] == "connect" and result["retryable"] is True, result
        cause = f"S3 endpoint {endpoint} unreachable (connection refused): "
        assert result["error_message"].startswith(cause), result
    assert doc["duration_seconds"] < 6  # 1.75 s of retries (botocore's: 7.5 s on average, up to 15)
    assert secret not in proc.stdout + proc.stderr


def test_sigterm_with_s3_down_ends_the_run_promptly(
    tmp_path: Path,
    source_conn: SourceConn,
    pg_target: TargetConn,
    own_s3: tuple[OwnS3, S3Conn],
    mysql_db: str,
    pg_schema: str,
) -> None:
    server, s3 = own_s3
    tables = make_tables(mysql_db, 12, rows=2000)
    cfg = write_config(tmp_path / "cfg", source_conn, pg_target, s3, processing=PROCESSING)
    run = start_sync(Setup(cfg, ",".join(tables), CLI))
    wait_until(run, lambda: manifests(s3) >= 2, "two tables staged")
    server.kill()
    time.sleep(0.5)  # the tables in flight are retrying
    run.send_signal(signal.SIGTERM)
    doc, took = finish(run, time.monotonic())

    check_contract(doc, tables)
    assert run.returncode == 1
    assert took < 10, f"the run took {took:.1f} s to end after SIGTERM"  # Kubernetes grants 30 s
    failed = failures(doc)
    assert failed
    for table, message in failed.items():
        assert doc["table_results"][table]["retryable"] is True
        assert "SIGTERM" in message or "unreachable" in message, message
    after = contents(pg_schema, list(failed))
    assert all(found in (None, (0, None)) for found in after.values()), after


def test_an_upload_left_open_while_s3_was_unreachable_is_aborted_by_the_next_run(
    tmp_path: Path,
    source_conn: SourceConn,
    pg_target: TargetConn,
    s3_conn: S3Conn,
    s3_proxy: CutProxy,
    mysql_db: str,
    pg_schema: str,
) -> None:
    mysql_exec(mysql_db, BIG, FILL.format(1, ROWS))
    table = f"{mysql_db}.big"
    # 2 tries: a refused connection retried once (0.25 s), not 3 times (1.75 s); the default is timed above
    through = replace(s3_conn, endpoint_url=s3_proxy.url, max_attempts=2)
    processing = {"max_parallel_tables": 1, "batch_size": 5000}
    tables = {table: {"file_size_mb": 64}}  # one file: its upload stays open until the table is read
    cfg = write_config(tmp_path / "cfg", source_conn, pg_target, through, tables, processing=processing)
    run = start_sync(Setup(cfg, table, CLI))
    wait_until(run, lambda: bool(open_uploads(s3_conn)), "a multipart upload")
    s3_proxy.cut()
    doc, _ = finish(run, time.monotonic())

    assert run.returncode == 1
    result = doc["table_results"][table]
    assert result["retryable"] is True and "unreachable" in result["error_message"], result
    assert open_uploads(s3_conn)  # it could not be aborted
    marker = f"staging/p/_runs/{doc['execution_id']}.json"
    assert marker in list_keys(s3_conn)  # kept: the next run cleans up after this one

    s3_proxy.restore()
    doc, proc = run_json("--config-dir", str(cfg), "sync", "-p", "p", "-t", table)
    assert proc.returncode == 0, failures(doc)
    assert open_uploads(s3_conn) == [] and marker not in list_keys(s3_conn)
    assert assert_tables_equal(mysql_db, "big", pg_schema, "big", "id") == ROWS


def test_a_short_s3_outage_mid_upload_costs_a_wait_not_the_table(
    tmp_path: Path,
    source_conn: SourceConn,
    pg_target: TargetConn,
    s3_conn: S3Conn,
    s3_proxy: CutProxy,
    mysql_db: str,
    pg_schema: str,
) -> None:
    """A blip while parts are going up: the requests it cut wait for the breaker's probe and go again,
    so the table is loaded, exactly, instead of failing (it failed after 1.75 s of retries)."""
    mysql_exec(mysql_db, BIG, FILL.format(1, ROWS))
    table = f"{mysql_db}.big"
    through = replace(s3_conn, endpoint_url=s3_proxy.url, part_size_mb=5)
    processing = {"max_parallel_tables": 1, "batch_size": 5000}
    tables = {table: {"file_size_mb": 64}}  # one file: parts go up while the table is read
    cfg = write_config(tmp_path / "cfg", source_conn, pg_target, through, tables, processing=processing)
    run = start_sync(Setup(cfg, table, CLI))
    wait_until(run, lambda: bool(open_uploads(s3_conn)), "a multipart upload")
    s3_proxy.cut()
    time.sleep(2)
    s3_proxy.restore()
    out, err = run.communicate(timeout=180)
    doc = json.loads(out)

    check_contract(doc, [table])
    assert run.returncode == 0, failures(doc)
    assert "was cut: it goes again once a probe is answered" in err
    assert open_uploads(s3_conn) == []
    assert assert_tables_equal(mysql_db, "big", pg_schema, "big", "id") == ROWS


def test_a_short_s3_outage_during_the_runs_listing_costs_a_wait_not_the_run(
    tmp_path: Path,
    source_conn: SourceConn,
    pg_target: TargetConn,
    s3_conn: S3Conn,
    s3_proxy: CutProxy,
    mysql_db: str,
    pg_schema: str,
) -> None:
    """The run's scan of the pipeline lists S3 after its marker went up: a 2 s blip there waits for the
    breaker's probe like any request, instead of failing every table of the run (it did: listings did
    not ride out outages)."""
    tables = make_tables(mysql_db, 2)
    through = replace(s3_conn, endpoint_url=s3_proxy.url)
    cfg = write_config(tmp_path / "cfg", source_conn, pg_target, through, {}, processing={"processes": 1})
    s3_proxy.hold_answer_to(b"?uploads&prefix=")  # the scan's listing of unfinished uploads
    run = subprocess.Popen(
        [*CLI, "--config-dir", str(cfg), "sync", "-p", "p", *(f"-t{t}" for t in tables), "--json-output"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert s3_proxy.triggered.wait(60), "the run never listed its unfinished uploads"
    s3_proxy.cut()
    time.sleep(2)
    s3_proxy.restore()
    out, err = run.communicate(timeout=180)
    doc = json.loads(out)

    check_contract(doc, tables)
    assert run.returncode == 0, failures(doc)
    assert "list_multipart_uploads of s3://" in err and "was cut: it goes again" in err
    loaded = (200, sum(len(f"row {i}") for i in range(1, 201)))
    assert contents(pg_schema, tables) == dict.fromkeys(tables, loaded)


def test_sigterm_while_the_runs_listing_waits_out_an_outage_reports_the_interruption(
    tmp_path: Path,
    source_conn: SourceConn,
    pg_target: TargetConn,
    s3_conn: S3Conn,
    s3_proxy: CutProxy,
    mysql_db: str,
) -> None:
    """SIGTERM while the scan's listing waits for the breaker's probe: the waiting request fails at once
    (the run hurries), and that echo of the signal was every table's failure: `phase: s3`, "not sent, a
    probe failed too", though no probe had gone out. The tables are interrupted by the signal."""
    tables = make_tables(mysql_db, 2)
    through = replace(s3_conn, endpoint_url=s3_proxy.url)
    cfg = write_config(tmp_path / "cfg", source_conn, pg_target, through, {}, processing={"processes": 1})
    s3_proxy.hold_answer_to(b"?uploads&prefix=")
    run = start_sync(Setup(cfg, ",".join(tables), CLI))
    assert s3_proxy.triggered.wait(60), "the run never listed its unfinished uploads"
    s3_proxy.cut()
    time.sleep(2.5)  # the listing's retries are spent: it waits for the probe
    run.send_signal(signal.SIGTERM)
    doc, took = finish(run, time.monotonic())

    check_contract(doc, tables)
    assert run.returncode == 1 and took < 5, took
    for table in tables:
        result = doc["table_results"][table]
        assert (result["phase"], result["retryable"]) == ("interrupted", True), result
        assert result["error_message"].startswith("run interrupted (SIGTERM) before this table finished")
