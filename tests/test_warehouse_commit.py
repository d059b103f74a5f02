"""A COMMIT whose answer never arrives, and a warehouse that stops answering, through a proxy in front of
the real PostgreSQL (and the Redshift loader through the emulator, over the same proxy)."""

from __future__ import annotations

import dataclasses
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from src.common.errors import WarehouseError
from src.common.schema import TableSchema
from src.config.models import S3Conn, SourceConn, TargetConn
from tests.conftest import PG_HOST, PG_PORT, CutProxy, mysql_exec, pg_fetch
from tests.e2e import as_redshift, run_json, write_config
from tests.test_warehouse_load import (
    KINDS,
    arrow_table,
    col,
    load,
    stage,
    target_conn,
    target_rows,
    warehouse,
)

pytestmark = pytest.mark.anyio
SCHEMA = TableSchema((col("id", "int64"),))


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def pg_proxy() -> Iterator[CutProxy]:
    """A ``CutProxy`` in front of the test PostgreSQL."""
    proxy = CutProxy(f"tcp://{PG_HOST}:{PG_PORT}")
    try:
        yield proxy
    finally:
        proxy.release()
        proxy.cut()


def through(cfg: TargetConn, proxy: CutProxy, **kw: object) -> TargetConn:
    return dataclasses.replace(cfg, host="127.0.0.1", port=proxy.port, **kw)  # type: ignore[arg-type]


async def ids(pg_schema: str) -> list[int]:
    return [r["id"] for r in await target_rows(pg_schema, "t", SCHEMA)]


def rows(*values: int) -> list[dict[str, int]]:
    return [{"id": v} for v in values]


@pytest.mark.parametrize("kind", KINDS)
async def test_a_commit_whose_answer_is_lost_is_reported_as_committed(
    kind: str, pg_schema: str, s3_conn: S3Conn, pg_proxy: CutProxy
) -> None:
    """The connection dropped after COMMIT reached the server: the load committed, but it was reported
    failed (a retry would then fail the guard, and the table looked unsynced)."""
    cfg = through(target_conn(kind, pg_schema), pg_proxy)
    async with warehouse(cfg, s3_conn) as wh:
        await load(wh, SCHEMA, stage(s3_conn, [arrow_table(SCHEMA, rows(1))]))
        pg_proxy.lose_answer_to(b"COMMIT\x00")
        with anyio.fail_after(60):
            result = await load(wh, SCHEMA, stage(s3_conn, [arrow_table(SCHEMA, rows(2, 3))]))
        assert pg_proxy.triggered.is_set()
        assert result.rows_loaded == 2
        state = await wh.read_state("test", "db.t")
        assert state is not None and state.rows == 2
    assert await ids(pg_schema) == [2, 3]


@pytest.mark.parametrize("kind", KINDS)
async def test_a_commit_that_never_reached_the_server_fails_saying_so(
    kind: str, pg_schema: str, s3_conn: S3Conn, pg_proxy: CutProxy
) -> None:
    cfg = through(target_conn(kind, pg_schema), pg_proxy)
    async with warehouse(cfg, s3_conn) as wh:
        await load(wh, SCHEMA, stage(s3_conn, [arrow_table(SCHEMA, rows(1))]))
        before = await wh.read_state("test", "db.t")
        pg_proxy.drop_before(b"COMMIT\x00")
        with anyio.fail_after(60), pytest.raises(WarehouseError) as err:
            await load(wh, SCHEMA, stage(s3_conn, [arrow_table(SCHEMA, rows(2, 3))]))
        assert pg_proxy.triggered.is_set()
        assert err.value.retryable, err.value
        message = str(err.value)
        assert "did not commit" in message and "\n" not in message, message
        assert await wh.read_state("test", "db.t") == before
    assert await ids(pg_schema) == [1]


async def test_a_commit_answer_held_by_the_network_is_found_committed(
    pg_schema: str, s3_conn: S3Conn, pg_proxy: CutProxy
) -> None:
    """PostgreSQL answered the COMMIT but the answer is stuck on the way (a half-dead connection): the
    load waited forever. Now the wait is checked after read_timeout on a new connection, which sees the
    session idle, and the commit is confirmed there."""
    cfg = through(target_conn("postgres", pg_schema), pg_proxy, read_timeout=1.0, connect_timeout=3.0)
    async with warehouse(cfg, s3_conn) as wh:
        await load(wh, SCHEMA, stage(s3_conn, [arrow_table(SCHEMA, rows(1))]))
        pg_proxy.hold_answer_to(b"COMMIT\x00")
        with anyio.fail_after(30):
            result = await load(wh, SCHEMA, stage(s3_conn, [arrow_table(SCHEMA, rows(4))]))
        assert pg_proxy.triggered.is_set() and result.rows_loaded == 1
    assert await ids(pg_schema) == [4]


async def stall_when_held(proxy: CutProxy) -> None:
    await anyio.to_thread.run_sync(proxy.triggered.wait, abandon_on_cancel=True)
    proxy.stall()


@pytest.mark.parametrize("kind", KINDS)
async def test_a_stalled_warehouse_fails_the_load_within_the_read_timeout(
    kind: str, pg_schema: str, s3_conn: S3Conn, pg_proxy: CutProxy
) -> None:
    """A server that accepts but never answers hung the load (and the run) for ever."""
    cfg = through(target_conn(kind, pg_schema), pg_proxy, read_timeout=1.0, connect_timeout=1.0)
    async with warehouse(cfg, s3_conn) as wh:
        await load(wh, SCHEMA, stage(s3_conn, [arrow_table(SCHEMA, rows(1))]))
        before = await wh.read_state("test", "db.t")
        pg_proxy.hold_answer_to(b"LOCK")  # the load's transaction: then nothing answers any more
        started = time.monotonic()
        failed: list[WarehouseError] = []
        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                tg.start_soon(stall_when_held, pg_proxy)
                try:
                    await load(wh, SCHEMA, stage(s3_conn, [arrow_table(SCHEMA, rows(2, 3))]))
                except WarehouseError as exc:
                    failed.append(exc)
                tg.cancel_scope.cancel()
        took = time.monotonic() - started
        assert failed, "the load did not fail"
        message = str(failed[0])
        assert failed[0].retryable and "\n" not in message, message
        assert f"target '{cfg.name}'" in message and "read_timeout" in message, message
        assert took < 20, took
        pg_proxy.release()
        assert await wh.read_state("test", "db.t") == before
    assert await ids(pg_schema) == [1]


def test_a_stalled_warehouse_ends_the_run_with_the_table_failed(
    tmp_path: Path,
    source_conn: SourceConn,
    pg_target: TargetConn,
    s3_conn: S3Conn,
    mysql_db: str,
    pg_schema: str,
    pg_proxy: CutProxy,
) -> None:
    """The real CLI against a PostgreSQL that stops answering in the middle of the load: the run hung
    for ever. Now the table fails, retryable, with one line naming the target and the setting, and the
    run ends; target and watermark as they were."""
    mysql_exec(mysql_db, "CREATE TABLE t (id BIGINT PRIMARY KEY)", "INSERT INTO t VALUES (1), (2)")
    target = through(pg_target, pg_proxy, read_timeout=1.0, connect_timeout=1.0)
    table = f"{mysql_db}.t"
    cfg = write_config(tmp_path / "cfg", source_conn, target, s3_conn, {table: {"cdc_strategy": "full_sync"}})
    assert run_json("--config-dir", str(cfg), "sync", "-p", "p", "-t", table)[0]["status"] == "success"
    mysql_exec(mysql_db, "INSERT INTO t VALUES (3)")
    pg_proxy.hold_answer_to(b"LOCK")
    threading.Thread(target=lambda: (pg_proxy.triggered.wait(60), pg_proxy.stall()), daemon=True).start()
    started = time.monotonic()
    doc, proc = run_json("--config-dir", str(cfg), "sync", "-p", "p", "-t", table)
    took = time.monotonic() - started
    result = doc["table_results"][table]
    assert proc.returncode == 1 and result["status"] == "failed", result
    assert (result["phase"], result["retryable"]) == ("load", True), result
    message = result["error_message"]
    assert "did not answer a statement for 1 s" in message, message
    assert "connections.targets.tgt.read_timeout" in message, message
    assert took < 40, took
    pg_proxy.release()
    assert [r["id"] for r in pg_fetch(f'SELECT id FROM "{pg_schema}".t ORDER BY id')] == [1, 2]
    assert len(pg_fetch(f'SELECT * FROM "{pg_schema}".s3shift_state')) == 1


@pytest.mark.parametrize("kind", KINDS)
def test_a_watermark_command_whose_commit_answer_is_lost_checks_it(
    kind: str,
    tmp_path: Path,
    source_conn: SourceConn,
    pg_target: TargetConn,
    s3_conn: S3Conn,
    s3_endpoint: str,
    mysql_db: str,
    pg_schema: str,
    pg_proxy: CutProxy,
) -> None:
    """``watermark set``/``reset`` through the real CLI, the answer to its COMMIT lost: the command failed
    ("lost the connection ... rerun") though the state row had committed. Now it checks on a new
    connection, as a load does: committed is a success; not committed is a one-line failure saying so,
    the state as it was; a check that cannot be made is a failure that says so (never a success)."""
    mysql_exec(mysql_db, "CREATE TABLE t (id BIGINT PRIMARY KEY)")
    target, cli = (pg_target, (sys.executable, "-m", "src.cli.main"))
    if kind == "redshift":
        target, cli = as_redshift(pg_target, s3_endpoint)
    cfg = write_config(tmp_path / "cfg", source_conn, through(target, pg_proxy), s3_conn)
    table = f"{mysql_db}.t"

    def command(*args: str) -> tuple[dict[str, Any], str]:
        doc, proc = run_json("--config-dir", str(cfg), "watermark", *args, "-p", "p", "-t", table, cli=cli)
        assert proc.returncode == (0 if doc.get("status") == "success" else 1), proc.stderr
        return doc, proc.stderr

    def states() -> list[tuple[str, str | None]]:
        sql = f'SELECT strategy, watermark_id FROM "{pg_schema}".s3shift_state ORDER BY seq'
        return [(r["strategy"], r["watermark_id"] and str(r["watermark_id"])) for r in pg_fetch(sql)]

    assert command("set", "--id", "1")[0]["status"] == "success"  # the state table exists from here
    for args, strategy in ((("set", "--id", "5"), "manual"), (("reset",), "reset")):
        pg_proxy.triggered.clear()
        pg_proxy.lose_answer_to(b"COMMIT\x00")
        doc, stderr = command(*args)
        assert pg_proxy.triggered.is_set()
        assert doc["status"] == "success", doc
        assert doc["state"]["strategy"] == strategy, doc
        assert doc["watermark"] == ({"ts": None, "id": 5} if strategy == "manual" else None), doc
        lost = f"the answer to the COMMIT of watermark {args[0]} of {table} was lost"
        assert f"{lost} (" in stderr and "checked on a new connection: it committed" in stderr, stderr
    assert states() == [("manual", "1"), ("manual", "5"), ("reset", None)]
    pg_proxy.triggered.clear()
    pg_proxy.drop_before(b"COMMIT\x00")
    doc, stderr = command("set", "--id", "9")
    assert pg_proxy.triggered.is_set()
    assert doc["status"] == "failed", doc
    message = doc["error_message"]
    assert message.startswith(f"the answer to the COMMIT of watermark set of {table} was lost ("), message
    assert "did not commit" in message and "\n" not in message, message
    assert states() == [("manual", "1"), ("manual", "5"), ("reset", None)]
    assert command("get")[0]["watermark"] is None
    pg_proxy.triggered.clear()
    pg_proxy.lose_answer_to(b"COMMIT\x00")
    pg_proxy.drop_before(b'"loaded_by" = $4')  # the check's query: its connection drops too
    doc, stderr = command("set", "--id", "7")
    assert doc["status"] == "failed", doc
    message = doc["error_message"]
    assert message.startswith(f"the answer to the COMMIT of watermark set of {table} was lost ("), message
    assert "and whether it committed could not be checked on target 'tgt'" in message, message
    assert f"`s3shift watermark get -p p -t {table}` shows the current watermark" in message, message
    assert states()[-1] == ("manual", "7")  # it had committed: the failure said "unknown", not "not done"
