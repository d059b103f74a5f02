"""A full_sync into PostgreSQL loads the target while it is staged (``processing.stream_load``): one
transaction, opened (target locked, guarded, emptied) before the first row is read and committed with the
state row only after the manifest. Through the real CLI: the data and state equal the staged path's; a
lock on the target delays the read, never stalls it; a load that fails mid-COPY leaves the target and
state as they were and the stage pending (``--load-only`` then loads it); a SIGKILL mid-stream rolls
back; an empty table empties the target."""

from __future__ import annotations

import dataclasses
import json
import signal
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import pytest

from src.config.models import S3Conn, SourceConn, TargetConn
from tests.conftest import PG_DATABASE, PG_HOST, PG_PORT, PG_USER, mysql_exec, pg_fetch, s3_client
from tests.e2e import CLI, assert_tables_equal, run_json, write_config
from tests.test_crash import BIG, FILL, ROWS, kill_when, start_sync, wait_until
from tests.test_crash import Setup as CrashSetup


def configure(
    tmp_path: Path,
    source_conn: SourceConn,
    pg_target: TargetConn,
    s3_conn: S3Conn,
    mysql_db: str,
    **processing: Any,
) -> Path:
    tables = {f"{mysql_db}.big": {"cdc_strategy": "full_sync", "file_size_mb": 8}}
    processing = {"max_parallel_tables": 2, "batch_size": 5000, **processing}
    return write_config(tmp_path / "cfg", source_conn, pg_target, s3_conn, tables, processing=processing)


@pytest.fixture
def cfg(
    tmp_path: Path, source_conn: SourceConn, pg_target: TargetConn, s3_conn: S3Conn, mysql_db: str
) -> Path:
    mysql_exec(mysql_db, BIG, FILL.format(1, ROWS))
    return configure(tmp_path, source_conn, pg_target, s3_conn, mysql_db)


def sync(cfg: Path, table: str, *extra: str) -> dict[str, Any]:
    doc, proc = run_json("--config-dir", str(cfg), "sync", "-p", "p", "-t", table, *extra)
    assert proc.returncode in (0, 1), proc.stderr
    return dict(doc["table_results"][table])


def state(schema: str, table: str) -> list[tuple[str, int]]:
    rows = pg_fetch(
        f'SELECT stage_id, row_count FROM "{schema}".s3shift_state WHERE source_table = $1 ORDER BY seq',
        table,
    )
    return [(r["stage_id"], r["row_count"]) for r in rows]


def keys(s3: S3Conn) -> list[str]:
    return [
        o["Key"]
        for o in s3_client(s3.endpoint_url or "").list_objects_v2(Bucket=s3.bucket).get("Contents", [])
    ]


@pytest.mark.parametrize("fast_path", [True, False])
def test_full_sync_loads_while_staging_and_equals_the_staged_path(
    tmp_path: Path,
    source_conn: SourceConn,
    pg_target: TargetConn,
    s3_conn: S3Conn,
    mysql_db: str,
    pg_schema: str,
    fast_path: bool,
) -> None:
    mysql_exec(mysql_db, BIG, FILL.format(1, ROWS))
    table = f"{mysql_db}.big"
    streamed = configure(tmp_path / "a", source_conn, pg_target, s3_conn, mysql_db, fast_path=fast_path)
    staged = configure(tmp_path / "b", source_conn, pg_target, s3_conn, mysql_db, stream_load=False)

    plans = [(streamed, "while staging: "), (staged, "after staging: processing.stream_load is off")]
    for config, path in plans if fast_path else plans[:1]:  # the staged config is the same in both
        plan, proc = run_json("--config-dir", str(config), "sync", "-p", "p", "-t", table, "--dry-run")
        assert proc.returncode == 0, plan
        assert plan["tables"][table]["load_path"].startswith(path)
    first = sync(streamed, table)
    assert first["status"] == "success", first
    assert first["load"] == {"path": "while_staging"}
    assert first["extract"]["path"] == ("connectorx" if fast_path else "asyncmy")
    assert first["rows_processed"] == first["rows_loaded"] == ROWS
    assert first["files_created"] > 1, first  # the load streams across files
    assert assert_tables_equal(mysql_db, "big", pg_schema, "big", "id") == ROWS
    run_id = first["stages_loaded"][0]
    assert state(pg_schema, table) == [(run_id, ROWS)]
    assert any(k.endswith(f"/{run_id}/manifest.json") for k in keys(s3_conn))  # staged too, complete

    mysql_exec(mysql_db, "DELETE FROM big WHERE id % 3 = 0", "UPDATE big SET payload = 'x' WHERE id % 5 = 0")
    counts = [ROWS]
    if fast_path:  # the staged config is the same in both variants: its run once is enough
        second = sync(staged, table)
        assert second["status"] == "success", second
        assert "load" not in second
        assert assert_tables_equal(mysql_db, "big", pg_schema, "big", "id") == ROWS - ROWS // 3
        counts.append(ROWS - ROWS // 3)

    mysql_exec(mysql_db, FILL.format(ROWS + 1, ROWS + 7))
    third = sync(streamed, table)  # into a target that exists (replaced within the transaction)
    assert third["load"] == {"path": "while_staging"}
    expect = ROWS - ROWS // 3 + 7
    assert third["rows_loaded"] == expect
    assert assert_tables_equal(mysql_db, "big", pg_schema, "big", "id") == expect
    assert [n for _, n in state(pg_schema, table)] == [*counts, expect]


def test_empty_table_empties_the_target(cfg: Path, mysql_db: str, pg_schema: str) -> None:
    table = f"{mysql_db}.big"
    assert sync(cfg, table)["status"] == "success"
    mysql_exec(mysql_db, "DELETE FROM big")
    result = sync(cfg, table)
    assert result["status"] == "success", result
    assert result["load"] == {"path": "while_staging"} and result["rows_loaded"] == 0
    assert pg_fetch(f'SELECT count(*) AS n FROM "{pg_schema}".big')[0]["n"] == 0
    assert state(pg_schema, table)[-1] == (result["stages_loaded"][0], 0)


def test_a_lock_on_the_target_delays_the_read_never_stalls_it(
    cfg: Path, mysql_db: str, pg_schema: str, s3_conn: S3Conn
) -> None:
    """The target is locked before the first row is read: while another session holds it, the run has
    read nothing (no Parquet, no upload), so no MySQL result set waits on the warehouse."""
    table = f"{mysql_db}.big"
    assert sync(cfg, table)["status"] == "success"
    mysql_exec(mysql_db, "UPDATE big SET payload = 'after the lock' WHERE id % 11 = 0")
    staged_before = set(keys(s3_conn))
    proc = start_sync(CrashSetup(cfg, table, CLI))

    async def hold() -> None:
        conn = await asyncpg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, database=PG_DATABASE)
        try:
            async with conn.transaction():
                await conn.execute(f'LOCK TABLE "{pg_schema}".big IN ACCESS SHARE MODE')

                def waits() -> bool:
                    query = "SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query ILIKE $1"
                    return bool(pg_fetch(query, f"%{pg_schema}%"))

                await anyio.to_thread.run_sync(wait_until, proc, waits, "the load to wait on the lock")
                await anyio.sleep(0.5)
                assert not [k for k in set(keys(s3_conn)) - staged_before if k.endswith(".parquet")]
                uploads = s3_client(s3_conn.endpoint_url or "").list_multipart_uploads(Bucket=s3_conn.bucket)
                assert not uploads.get("Uploads")
        finally:
            await conn.close()

    anyio.run(hold)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert assert_tables_equal(mysql_db, "big", pg_schema, "big", "id") == ROWS


def test_a_target_locked_elsewhere_fails_the_table_in_its_load_phase(
    tmp_path: Path,
    source_conn: SourceConn,
    pg_target: TargetConn,
    s3_conn: S3Conn,
    mysql_db: str,
    pg_schema: str,
) -> None:
    """The streamed load locks the target before the first row is read; a lock another session keeps past
    the target's ``lock_timeout`` fails the table retryable, target and state as they were, and the report
    says the load failed (it said ``extract``: an orchestrator branching on the phase looked at MySQL)."""
    mysql_exec(mysql_db, BIG, FILL.format(1, 100))
    target = dataclasses.replace(pg_target, lock_timeout=1)
    cfg = configure(tmp_path, source_conn, target, s3_conn, mysql_db)
    table = f"{mysql_db}.big"
    assert sync(cfg, table)["status"] == "success"
    before = state(pg_schema, table)
    mysql_exec(mysql_db, "DELETE FROM big WHERE id > 50")

    async def locked() -> dict[str, Any]:
        conn = await asyncpg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, database=PG_DATABASE)
        try:
            async with conn.transaction():
                await conn.execute(f'LOCK TABLE "{pg_schema}".big IN ACCESS EXCLUSIVE MODE')
                return await anyio.to_thread.run_sync(sync, cfg, table)
        finally:
            await conn.close()

    failed = anyio.run(locked)
    assert failed["status"] == "failed", failed
    assert (failed["phase"], failed["retryable"]) == ("load", True), failed
    assert "lock" in failed["error_message"] and "lock_timeout" in failed["error_message"]
    assert state(pg_schema, table) == before
    assert pg_fetch(f'SELECT count(*) AS n FROM "{pg_schema}".big')[0]["n"] == 100


def test_a_failed_load_keeps_target_state_and_a_pending_stage(
    cfg: Path, mysql_db: str, pg_schema: str, s3_conn: S3Conn
) -> None:
    """The COPY fails deep into the table (a CHECK the late rows break): the table fails, target and state
    are as the previous run left them, and the stage is complete in S3, so ``--load-only`` loads it once
    the target accepts it."""
    table = f"{mysql_db}.big"
    first = sync(cfg, table)
    before = pg_fetch(f'SELECT count(*) AS n, max(payload) AS p FROM "{pg_schema}".big')
    pg_fetch(f'ALTER TABLE "{pg_schema}".big ADD CONSTRAINT early CHECK (id < {ROWS - 1000}) NOT VALID')
    mysql_exec(mysql_db, "UPDATE big SET payload = 'new' WHERE id % 2 = 0")

    failed = sync(cfg, table)
    assert failed["status"] == "failed", failed
    assert failed["phase"] == "load"
    assert "early" in failed["error_message"]
    assert pg_fetch(f'SELECT count(*) AS n, max(payload) AS p FROM "{pg_schema}".big') == before
    assert state(pg_schema, table) == [(first["stages_loaded"][0], ROWS)]
    first_id = first["stages_loaded"][0]
    manifests = [k for k in keys(s3_conn) if k.endswith("/manifest.json") and first_id not in k]
    assert len(manifests) == 1  # the failed load's stage is complete

    pg_fetch(f'ALTER TABLE "{pg_schema}".big DROP CONSTRAINT early')
    loaded = sync(cfg, table, "--load-only")
    assert loaded["status"] == "success", loaded
    assert loaded["rows_loaded"] == ROWS
    assert assert_tables_equal(mysql_db, "big", pg_schema, "big", "id") == ROWS


def emptied(schema: str) -> bool:
    """A run holds the target's exclusive lock (TRUNCATE's): it is inside its streamed load."""
    query = (
        "SELECT 1 FROM pg_locks l JOIN pg_class c ON c.oid = l.relation JOIN pg_namespace n "
        "ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relname = 'big' "
        "AND l.mode = 'AccessExclusiveLock' AND l.granted"
    )
    return bool(pg_fetch(query, schema))


def test_sigterm_mid_stream_rolls_back_and_reports(
    cfg: Path, mysql_db: str, pg_schema: str, s3_conn: S3Conn
) -> None:
    table = f"{mysql_db}.big"
    assert sync(cfg, table)["status"] == "success"
    before = pg_fetch(f'SELECT count(*) AS n, max(payload) AS p FROM "{pg_schema}".big')
    mysql_exec(mysql_db, "UPDATE big SET payload = 'terminated' WHERE id % 2 = 0")
    proc = start_sync(CrashSetup(cfg, table, CLI))
    wait_until(proc, lambda: emptied(pg_schema), "the streamed load")
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    doc = json.loads(out)
    assert proc.returncode == 1 and doc["status"] == "failed"
    assert "SIGTERM" in doc["table_results"][table]["error_message"]
    assert pg_fetch(f'SELECT count(*) AS n, max(payload) AS p FROM "{pg_schema}".big') == before
    assert not emptied(pg_schema)  # the transaction is gone, not left open
    uploads = s3_client(s3_conn.endpoint_url or "").list_multipart_uploads(Bucket=s3_conn.bucket)
    assert not uploads.get("Uploads")  # aborted on the way out
    assert sync(cfg, table)["status"] == "success"
    assert assert_tables_equal(mysql_db, "big", pg_schema, "big", "id") == ROWS


def test_sigkill_mid_stream_rolls_back(cfg: Path, mysql_db: str, pg_schema: str) -> None:
    table = f"{mysql_db}.big"
    assert sync(cfg, table)["status"] == "success"
    before = pg_fetch(f'SELECT count(*) AS n, max(payload) AS p FROM "{pg_schema}".big')
    mysql_exec(
        mysql_db, "UPDATE big SET payload = 'killed' WHERE id % 2 = 0", FILL.format(ROWS + 1, ROWS + 5)
    )
    proc = start_sync(CrashSetup(cfg, table, CLI))

    kill_when(proc, lambda: emptied(pg_schema), "the streamed load")
    assert pg_fetch(f'SELECT count(*) AS n, max(payload) AS p FROM "{pg_schema}".big') == before
    result = sync(cfg, table)
    assert result["status"] == "success", result
    assert assert_tables_equal(mysql_db, "big", pg_schema, "big", "id") == ROWS + 5
