"""Stage meta, listing the complete stages of a table in order, and deleting a stage (moto server)."""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import pyarrow as pa
import pytest
from botocore.exceptions import EndpointConnectionError

from src.common.errors import StageError
from src.config.models import S3Conn
from src.stage.manifest import read_stage_result
from src.stage.models import StageResult
from src.stage.pending import (
    TableRuns,
    delete_stage,
    execution_time,
    list_runs,
    list_stages,
    read_stages,
    run_marker,
    scan_pipeline,
)
from src.stage.s3 import MIB, S3Stage
from src.stage.writer import write_parquet
from tests.test_stage_support import (
    FailTimes,
    error_response,
    get_object,
    list_keys,
    open_uploads,
    rewrite_as_v1,
    stage_batches,
)

pytestmark = pytest.mark.anyio

SCHEMA = pa.schema([pa.field("id", pa.int64(), nullable=False), pa.field("name", pa.string())])
T0 = datetime(2024, 5, 17, 12, 0, 0, tzinfo=UTC)


def run_id(at: datetime, tail: str = "0badcafe") -> str:
    return f"sync_{at:%Y%m%d_%H%M%S}_{tail}"


def batch(first: int, rows: int = 3) -> pa.RecordBatch:
    ids = list(range(first, first + rows))
    return pa.record_batch([pa.array(ids, pa.int64()), pa.array([f"n{i}" for i in ids])], schema=SCHEMA)


async def stage(
    s3: S3Stage, execution_id: str, meta: dict[str, Any] | None = None, table: str = "db.t"
) -> StageResult:
    prefix = s3.run_prefix("p", table, execution_id)
    return await stage_batches(s3, prefix, SCHEMA, [batch(1)], schema_hash="h1", meta=meta)


def test_execution_time_parses_only_execution_ids() -> None:
    assert execution_time("sync_20240517_120000_0badcafe") == T0
    for other in ("sync_20241317_120000_0badcafe", "sync_20240517_120000_0BADCAFE", "run1", "_runs", ""):
        assert execution_time(other) is None


async def test_meta_round_trips_through_the_manifest(s3_conn: S3Conn) -> None:
    meta = {
        "window": {"strategy": "hybrid", "start": None, "end": {"ts": "2024-05-17T11:55:00.123456+00:00"}},
        "schema": {
            "columns": [{"name": "id", "logical": "int64"}, {"name": "naïve 🙂", "logical": "string"}]
        },
        "extracted_at": "2024-05-17T12:00:00.000001+00:00",
        "strategy": "hybrid",
        "target_table": "orders",
        "rows_estimate": 12,
        "flags": [True, False, None, 1.5],
    }
    async with S3Stage(s3_conn) as s3:
        written = await stage(s3, run_id(T0), meta)
        assert written.meta == meta
        assert written.execution_id == run_id(T0)
        read = await read_stage_result(s3, written.manifest_url)
    assert read == written
    assert read.meta == meta
    manifest = json.loads(get_object(s3_conn, written.manifest_key))
    assert manifest["s3shift"]["meta"] == meta
    assert set(manifest) == {"entries", "meta", "s3shift"}  # UNLOAD MANIFEST VERBOSE's keys, and ours
    assert list_keys(s3_conn, written.prefix) == sorted([written.files[0].key, written.manifest_key])


async def test_meta_that_is_not_json_fails_before_any_upload(s3_conn: S3Conn) -> None:
    send, receive = anyio.create_memory_object_stream[pa.RecordBatch](1)
    async with S3Stage(s3_conn) as s3, send, receive:
        send.send_nowait(batch(1))
        with pytest.raises(StageError, match="meta is not JSON-able"):
            await write_parquet(
                s3,
                prefix="staging/p/db.t/r/",
                schema=SCHEMA,
                receive=receive,
                file_size_bytes=MIB,
                meta={"when": object()},
            )
    assert list_keys(s3_conn) == []
    assert open_uploads(s3_conn) == []


async def test_v1_sidecar_without_meta_reads_as_empty_and_a_bad_meta_is_refused(s3_conn: S3Conn) -> None:
    async with S3Stage(s3_conn) as s3:
        written = await stage(s3, run_id(T0), {"a": 1})
        rewrite_as_v1(s3_conn, written.manifest_key)
        key = f"{written.prefix}_s3shift.json"
        doc = json.loads(get_object(s3_conn, key))
        del doc["meta"]  # a sidecar written before meta existed
        await s3.put_bytes(key, json.dumps(doc).encode())
        assert (await read_stage_result(s3, written.manifest_url)).meta == {}
        await s3.put_bytes(key, json.dumps({**doc, "meta": [1, 2]}).encode())
        with pytest.raises(StageError, match="meta is a list"):
            await read_stage_result(s3, written.manifest_url)


async def test_list_stages_orders_by_extraction_then_id(s3_conn: S3Conn) -> None:
    later_id, early_id = run_id(T0, "00000001"), run_id(T0 + timedelta(hours=1), "00000002")
    tie_a, tie_b = run_id(T0 + timedelta(hours=2), "0000000a"), run_id(T0 + timedelta(hours=2), "0000000b")
    async with S3Stage(s3_conn) as s3:
        # the id says later_id started first, but it extracted later (its meta says so): meta wins
        await stage(s3, later_id, {"extracted_at": (T0 + timedelta(hours=3)).isoformat()})
        await stage(s3, early_id, {"extracted_at": (T0 + timedelta(hours=1)).isoformat()})
        await stage(s3, tie_b, {"extracted_at": (T0 + timedelta(hours=2)).isoformat()})
        await stage(s3, tie_a, {"extracted_at": (T0 + timedelta(hours=2)).isoformat()})
        no_meta = run_id(T0 + timedelta(minutes=150), "0000000c")  # falls back to the id's time
        await stage(s3, no_meta)
        found = await list_stages(s3, "p", "db.t")
    assert [s.execution_id for s in found] == [early_id, tie_a, tie_b, no_meta, later_id]
    assert all(s.rows == 3 and s.schema_hash == "h1" for s in found)


async def test_list_stages_skips_what_is_not_a_complete_stage(
    s3_conn: S3Conn, stage_log: pytest.LogCaptureFixture
) -> None:
    good, partial, broken, orphan = (run_id(T0, f"0000000{i}") for i in range(4))
    async with S3Stage(s3_conn) as s3:
        await stage(s3, good, {"extracted_at": T0.isoformat()})
        await stage(s3, run_id(T0, "0000000e"), table="db.t10")  # a prefix trap: db.t10 is not db.t
        await stage(s3, run_id(T0, "0000000f"), table="db.other")
        table = s3.table_prefix("p", "db.t")
        await s3.put_bytes(f"{table}_runs/{good}.json", b"{}")
        await s3.put_bytes(f"{table}{partial}/part-00000.parquet", b"parquet but no manifest")
        for run in (broken, orphan):
            await stage(s3, run)
        manifest = json.loads(get_object(s3_conn, f"{table}{broken}/manifest.json"))
        manifest["s3shift"]["format"] = "s3shift.stage.v9"
        await s3.put_bytes(f"{table}{broken}/manifest.json", json.dumps(manifest).encode())
        rewrite_as_v1(s3_conn, f"{table}{orphan}/manifest.json", sidecar=False)  # a v1 stage lost its sidecar
        reads: list[str] = []
        s3.client.meta.events.register(
            "provide-client-params.s3.GetObject", lambda params, **kw: reads.append(params["Key"])
        )
        found = await list_stages(s3, "p", "db.t")
    assert [s.execution_id for s in found] == [good]
    assert reads and not [k for k in reads if "/_runs/" in k]  # never read as if it were a run
    warnings = {r.getMessage() for r in stage_log.records if r.levelno == logging.WARNING}
    assert len(warnings) == 2
    assert any(broken in w and "bad s3shift manifest" in w for w in warnings)
    assert any(orphan in w and "NoSuchKey" in w for w in warnings)


async def test_list_stages_pages_through_many_runs(s3_conn: S3Conn) -> None:
    ids = [run_id(T0 + timedelta(minutes=i), f"{i:08x}") for i in range(5)]
    pages = 0

    def small_pages(params: dict[str, Any], **kwargs: Any) -> None:
        nonlocal pages
        if params.get("Delimiter") == "/":
            params["MaxKeys"] = 2
            pages += 1

    async with S3Stage(s3_conn) as s3:
        for execution_id in reversed(ids):
            await stage(s3, execution_id)
        s3.client.meta.events.register("provide-client-params.s3.ListObjectsV2", small_pages)
        found = await list_stages(s3, "p", "db.t")
    assert [s.execution_id for s in found] == ids
    assert pages == 3


async def test_since_skips_old_runs_without_reading_them(s3_conn: S3Conn) -> None:
    at = {h: run_id(T0 + timedelta(minutes=h), f"{h + 500:08x}") for h in (-180, -61, -59, 0, 60)}
    reads: list[str] = []

    def count_reads(params: dict[str, Any], **kwargs: Any) -> None:
        reads.append(params["Key"])

    async with S3Stage(s3_conn) as s3:
        for execution_id in at.values():
            await stage(s3, execution_id)
        await stage(s3, "manual_reload")  # not an execution id: never filtered out by time
        s3.client.meta.events.register("provide-client-params.s3.GetObject", count_reads)
        found = await list_stages(s3, "p", "db.t", since=at[0])
        assert {s.execution_id for s in found} == {at[-59], at[0], at[60], "manual_reload"}
        assert not [k for k in reads if at[-180] in k or at[-61] in k]
        assert len(await list_stages(s3, "p", "db.t")) == 6
        with pytest.raises(StageError, match="not an execution id"):
            await list_stages(s3, "p", "db.t", since="yesterday")


@pytest.mark.parametrize("failure", ["SlowDown", "connection"])
@pytest.mark.parametrize("cut_read", ["manifest.json", "_s3shift.json"])
async def test_a_transient_failure_is_raised_not_skipped(
    s3_conn: S3Conn, failure: str, cut_read: str
) -> None:
    async def cut(request: Any, **kwargs: Any) -> Any:
        if cut_read in request.url:  # the manifest, or a v1 stage's sidecar after its manifest read fine
            if failure == "connection":
                raise EndpointConnectionError(endpoint_url=request.url)
            return error_response(request.url, 503, "SlowDown")
        return None

    async with S3Stage(s3_conn, max_attempts=1) as s3:
        written = await stage(s3, run_id(T0))
        if cut_read == "_s3shift.json":
            rewrite_as_v1(s3_conn, written.manifest_key)
        s3.client.meta.events.register("before-send.s3.GetObject", cut)
        with pytest.raises(StageError, match="SlowDown" if failure == "SlowDown" else "network") as caught:
            await list_stages(s3, "p", "db.t")
    assert caught.value.retryable


async def test_delete_stage_removes_the_manifest_first(s3_conn: S3Conn) -> None:
    deletes: list[list[str]] = []

    def record(params: dict[str, Any], **kwargs: Any) -> None:
        deletes.append([o["Key"] for o in params["Delete"]["Objects"]])

    async with S3Stage(s3_conn, max_attempts=1) as s3:
        keep = await stage(s3, run_id(T0, "00000001"))
        doomed = await stage(s3, run_id(T0, "00000002"))
        s3.client.meta.events.register("provide-client-params.s3.DeleteObjects", record)
        failing = FailTimes(500, "InternalError", times=None)

        async def fail_after_first(request: Any, **kwargs: Any) -> Any:
            return None if len(deletes) < 2 else await failing(request)  # the manifest goes, then fail

        s3.client.meta.events.register("before-send.s3.DeleteObjects", fail_after_first)
        with pytest.raises(StageError, match="InternalError"):
            await delete_stage(s3, doomed)
        assert deletes[0] == [doomed.manifest_key]
        assert [s.execution_id for s in await list_stages(s3, "p", "db.t")] == [keep.execution_id]
        s3.client.meta.events.unregister("before-send.s3.DeleteObjects", fail_after_first)
        await delete_stage(s3, doomed)  # a retry finishes the job
    assert list_keys(s3_conn, doomed.prefix) == []
    assert set(deletes[-1]) == {f.key for f in doomed.files} | {f"{doomed.prefix}_s3shift.json"}
    assert f"{keep.prefix}manifest.json" in list_keys(s3_conn, keep.prefix)


async def test_delete_stage_removes_a_v1_stage_with_its_sidecar(s3_conn: S3Conn) -> None:
    async with S3Stage(s3_conn) as s3:
        written = await stage(s3, run_id(T0))
        rewrite_as_v1(s3_conn, written.manifest_key)
        assert len(list_keys(s3_conn, written.prefix)) == 3  # the part, the sidecar and the manifest
        (found,) = await list_stages(s3, "p", "db.t")
        await delete_stage(s3, found)
    assert list_keys(s3_conn, written.prefix) == []


async def test_delete_stage_refuses_keys_outside_its_prefix(s3_conn: S3Conn) -> None:
    async with S3Stage(s3_conn) as s3:
        good = await stage(s3, run_id(T0))
        bad = StageResult(
            prefix=good.prefix,
            files=(*good.files, type(good.files[0])("staging/elsewhere.parquet", "s3://b/x", 1, 1)),
            manifest_key=good.manifest_key,
            manifest_url=good.manifest_url,
            rows=1,
            bytes=1,
        )
        with pytest.raises(StageError, match="outside"):
            await delete_stage(s3, bad)
    assert len(list_keys(s3_conn, good.prefix)) == 2  # the part and the manifest


async def test_list_runs_says_whether_markers_exist_and_a_scan_spares_absent_tables(s3_conn: S3Conn) -> None:
    ran = run_id(T0, "00000001")
    listings: list[str] = []

    def record(params: dict[str, Any], **kwargs: Any) -> None:
        listings.append(params["Prefix"])

    async with S3Stage(s3_conn) as s3:
        await stage(s3, ran)
        await stage(s3, run_id(T0, "00000002"), table="db.t10")  # a prefix trap: db.t10 is not db.t
        assert await list_runs(s3, "p", "db.t") == TableRuns((ran,), markers=False)
        await s3.put_bytes(f"{s3.table_prefix('p', 'db.t')}_runs/{ran}.json", b"{}")
        assert await list_runs(s3, "p", "db.t") == TableRuns((ran,), markers=True)
        scan = await scan_pipeline(s3, "p")
        assert scan.tables == {"db.t", "db.t10"} and scan.uploads == ()
        s3.client.meta.events.register("provide-client-params.s3.ListObjectsV2", record)
        assert await list_runs(s3, "p", "db.t", scan=scan) == TableRuns((ran,), markers=True)
        assert await list_runs(s3, "p", "db.new", scan=scan) == TableRuns((), markers=False)
        assert listings == [s3.table_prefix("p", "db.t")]  # the absent table cost no request
        assert [s.execution_id for s in await read_stages(s3, "p", "db.t", [ran, "missing"])] == [ran]


async def test_scan_lists_uploads_before_markers_before_tables(s3_conn: S3Conn) -> None:
    calls: list[str] = []
    own, other = run_id(T0, "0000000a"), run_id(T0, "0000000b")
    async with (
        S3Stage(s3_conn) as s3,
        run_marker(s3, "p", own, ["db.t"]),
        run_marker(s3, "p", other, ["db.t"]),
    ):

        def record(model: Any, params: dict[str, Any], **kwargs: Any) -> None:
            if model.name.startswith(("List", "Get")):
                calls.append(f"{model.name} {params.get('Prefix', '')}".strip())

        s3.client.meta.events.register("provide-client-params.s3", record)
        async with s3.multipart(f"{s3.run_prefix('p', 'db.t', own)}part-00000.parquet") as upload:
            await upload.write(b"x" * (5 * MIB + 1))  # a part goes up: the upload is open
            scan = await scan_pipeline(s3, "p", own_execution_id=own)
            assert await scan_pipeline(s3, "p") == replace(scan, runs=())  # markers read only when asked
    assert calls[:4] == [
        "ListMultipartUploads staging/p/",
        "ListObjectsV2 staging/p/_runs/",
        "GetObject",  # the other run's marker; ours is not read
        "ListObjectsV2 staging/p/",
    ]
    assert [u.key for u in scan.uploads] == [f"staging/p/db.t/{own}/part-00000.parquet"]
    assert scan.tables == frozenset()  # an open upload is no object; "_runs" is no table
    assert scan.run_ids == {other} and scan.runs[0][1].tables == ("db.t",)
    assert open_uploads(s3_conn) == []
