"""SIGKILL a real `sync` process at each point of the commit protocol, then rerun: the target must equal
the source with no duplicate key, and no multipart upload may be left open. Also two runs at once and
SIGTERM. Every test runs on both targets: PostgreSQL, and Redshift through the emulation harness (the
real CLI in its own process, tests/redshift_cli.py)."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from src.config.models import S3Conn, SourceConn, TargetConn
from tests.conftest import PG_HOST, PG_PORT, ROOT, CutProxy, mysql_exec, pg_fetch, s3_client
from tests.e2e import CLI, as_redshift, assert_tables_equal, run_json, write_config

ROWS = 150_000
BIG = """CREATE TABLE big (id BIGINT NOT NULL PRIMARY KEY, payload VARCHAR(200) NOT NULL,
  updated_at DATETIME(6) NOT NULL, KEY ix (updated_at, id))"""
FILL = (
    "INSERT INTO big SELECT seq, CONCAT(SHA2(seq, 512), SHA2(seq + 1, 256)), "
    "'2024-01-01' + INTERVAL seq SECOND FROM seq_{}_to_{}"
)


@dataclass(frozen=True)
class Setup:
    cfg: Path
    table: str
    cli: tuple[
        str, ...
    ]  # the real CLI; for Redshift, tests/redshift_cli.py (the emulator) in its own process


@pytest.fixture(params=["postgres", "redshift"])
def setup(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    source_conn: SourceConn,
    pg_target: TargetConn,
    s3_conn: S3Conn,
    s3_endpoint: str,
    mysql_db: str,
) -> Setup:
    mysql_exec(mysql_db, BIG, FILL.format(1, ROWS))
    target, cli = pg_target, CLI
    if request.param == "redshift":
        target, cli = as_redshift(pg_target, s3_endpoint)
    tables = {
        f"{mysql_db}.big": {
            "cdc_strategy": "hybrid",
            "cdc_timestamp_column": "updated_at",
            "cdc_id_column": "id",
            "lag_seconds": 0,
            "file_size_mb": 8,
        }
    }
    processing = {"max_parallel_tables": 2, "batch_size": 5000}
    cfg = write_config(tmp_path / "cfg", source_conn, target, s3_conn, tables, processing=processing)
    return Setup(cfg, f"{mysql_db}.big", cli)


def start_sync(setup: Setup) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*setup.cli, "--config-dir", str(setup.cfg), "sync", "-p", "p", "-t", setup.table, "--json-output"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_until(
    proc: subprocess.Popen[str], condition: Callable[[], bool], what: str, timeout: float = 60
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"sync finished before {what}: {proc.stdout.read() if proc.stdout else ''}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def kill_when(proc: subprocess.Popen[str], condition: Callable[[], bool], what: str) -> None:
    wait_until(proc, condition, what)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL


def s3_keys(s3: S3Conn) -> list[str]:
    client = s3_client(s3.endpoint_url or "")
    return [o["Key"] for o in client.list_objects_v2(Bucket=s3.bucket).get("Contents", [])]


def open_uploads(s3: S3Conn) -> list[Any]:
    return list(s3_client(s3.endpoint_url or "").list_multipart_uploads(Bucket=s3.bucket).get("Uploads", []))


def rerun_and_check(setup: Setup, db: str, schema: str, s3: S3Conn) -> dict[str, Any]:
    mysql_exec(
        db,
        "UPDATE big SET payload = 'changed', updated_at = NOW(6) WHERE id % 1000 = 0",
        FILL.format(ROWS + 1, ROWS + 10).replace("'2024-01-01' + INTERVAL seq SECOND", "NOW(6)"),
    )
    doc, proc = run_json("--config-dir", str(setup.cfg), "sync", "-p", "p", "-t", setup.table, cli=setup.cli)
    assert proc.returncode == 0, doc
    assert assert_tables_equal(db, "big", schema, "big", "id") == ROWS + 10
    assert pg_fetch(f'SELECT id FROM "{schema}".big GROUP BY id HAVING count(*) > 1') == []
    assert open_uploads(s3) == []
    return doc


def test_kill_during_read(setup: Setup, mysql_db: str, pg_schema: str, s3_conn: S3Conn) -> None:
    proc = start_sync(setup)
    kill_when(proc, lambda: any("/_runs/" in k for k in s3_keys(s3_conn)), "the extraction to start")
    rerun_and_check(setup, mysql_db, pg_schema, s3_conn)


def test_kill_during_multipart_upload(setup: Setup, mysql_db: str, pg_schema: str, s3_conn: S3Conn) -> None:
    proc = start_sync(setup)
    kill_when(proc, lambda: bool(open_uploads(s3_conn)), "a multipart upload")
    assert open_uploads(s3_conn)  # the killed run left one open
    rerun_and_check(setup, mysql_db, pg_schema, s3_conn)


def test_kill_after_upload(setup: Setup, mysql_db: str, pg_schema: str, s3_conn: S3Conn) -> None:
    proc = start_sync(setup)
    kill_when(proc, lambda: any(k.endswith("/manifest.json") for k in s3_keys(s3_conn)), "the manifest")
    doc = rerun_and_check(setup, mysql_db, pg_schema, s3_conn)
    # the killed run's stage was either committed before the kill or loaded by the rerun: never lost
    assert doc["table_results"][setup.table]["stages_loaded"]


def _lock_target_until(schema: str, proc: subprocess.Popen[str], condition: Callable[[], bool]) -> None:
    """Hold an exclusive lock on the target so the loader blocks inside its transaction, then kill it."""
    import anyio
    import asyncpg

    from tests.conftest import PG_DATABASE, PG_HOST, PG_PORT, PG_USER

    async def go() -> None:
        conn = await asyncpg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, database=PG_DATABASE)
        try:
            async with conn.transaction():
                await conn.execute(f'LOCK TABLE "{schema}".big IN ACCESS EXCLUSIVE MODE')
                await anyio.to_thread.run_sync(kill_when, proc, condition, "the load to block")
        finally:
            await conn.close()

    anyio.run(go)


def test_kill_after_upload_and_during_merge(
    setup: Setup, mysql_db: str, pg_schema: str, s3_conn: S3Conn
) -> None:
    first = run_json("--config-dir", str(setup.cfg), "sync", "-p", "p", "-t", setup.table, cli=setup.cli)
    assert first[1].returncode == 0, first[0]
    mysql_exec(mysql_db, "UPDATE big SET payload = 'second', updated_at = NOW(6) WHERE id % 7 = 0")
    before = pg_fetch(f'SELECT count(*), max(updated_at) FROM "{pg_schema}".big')
    proc = start_sync(setup)

    def load_waits() -> bool:  # the loader's session waits on our lock of its target (inside its transaction)
        query = "SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query ILIKE $1"
        return bool(pg_fetch(query, f"%LOCK%{pg_schema}%"))

    _lock_target_until(pg_schema, proc, load_waits)
    assert pg_fetch(f'SELECT count(*), max(updated_at) FROM "{pg_schema}".big') == before  # rolled back
    assert any(k.endswith("manifest.json") for k in s3_keys(s3_conn))  # staged, not loaded: pending
    doc = rerun_and_check(setup, mysql_db, pg_schema, s3_conn)
    assert (
        len(doc["table_results"][setup.table]["stages_loaded"]) == 2
    )  # the killed run's stage, then its own


def test_two_concurrent_runs(setup: Setup, mysql_db: str, pg_schema: str, s3_conn: S3Conn) -> None:
    procs = [start_sync(setup) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    import json

    docs = [json.loads(out) for out, _ in outs]
    statuses = [d["table_results"][setup.table]["status"] for d in docs]
    assert "success" in statuses, docs
    for d in docs:
        r = d["table_results"][setup.table]
        if r["status"] == "failed":
            assert r["retryable"] is True and "meanwhile" in r["error_message"], r
    assert pg_fetch(f'SELECT id FROM "{pg_schema}".big GROUP BY id HAVING count(*) > 1') == []
    rerun_and_check(setup, mysql_db, pg_schema, s3_conn)


def test_sigterm_reports_every_table(setup: Setup, mysql_db: str, pg_schema: str, s3_conn: S3Conn) -> None:
    proc = start_sync(setup)
    wait_until(proc, lambda: any("/_runs/" in k for k in s3_keys(s3_conn)), "the extraction to start")
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    doc = json.loads(out)
    assert proc.returncode == 1 and doc["status"] == "failed"
    result = doc["table_results"][setup.table]
    assert "SIGTERM" in result["error_message"]
    assert (result["phase"], result["retryable"]) == ("interrupted", True)
    assert open_uploads(s3_conn) == []  # aborted on the way out
    rerun_and_check(setup, mysql_db, pg_schema, s3_conn)


@pytest.mark.parametrize(
    ("kind", "strategy"),
    [("postgres", "hybrid"), ("postgres", "full_sync"), ("redshift", "hybrid")],  # full_sync: streamed load
)
def test_sigterm_during_commit_reports_what_committed(
    kind: str,
    strategy: str,
    tmp_path: Path,
    source_conn: SourceConn,
    pg_target: TargetConn,
    s3_conn: S3Conn,
    s3_endpoint: str,
    mysql_db: str,
    pg_schema: str,
) -> None:
    """SIGTERM while the load's COMMIT was on its way: the commit went through, the report said
    'interrupted, target and watermark unchanged'. Now the COMMIT is seen through and the table is
    reported as it is: loaded."""
    mysql_exec(
        mysql_db,
        "CREATE TABLE ev (id BIGINT PRIMARY KEY, v VARCHAR(10), updated_at DATETIME(6) NOT NULL)",
        "INSERT INTO ev VALUES (1, 'a', '2024-01-01'), (2, 'b', '2024-01-02')",
    )
    proxy = CutProxy(f"tcp://{PG_HOST}:{PG_PORT}")
    target, cli = dataclasses.replace(pg_target, host="127.0.0.1", port=proxy.port), CLI
    if kind == "redshift":
        target, cli = as_redshift(target, s3_endpoint)
    table = f"{mysql_db}.ev"
    conf = {"cdc_strategy": strategy, "cdc_timestamp_column": "updated_at", "cdc_id_column": "id"}
    cfg = write_config(tmp_path / "cfg", source_conn, target, s3_conn, {table: {**conf, "lag_seconds": 0}})
    proxy.hold_answer_to(b"COMMIT\x00")
    try:
        proc = start_sync(Setup(cfg, table, cli))
        wait_until(proc, proxy.triggered.is_set, "the COMMIT")
        proc.send_signal(signal.SIGTERM)
        time.sleep(1)  # the signal arrives while the COMMIT's answer is held
        proxy.release()
        out, err = proc.communicate(timeout=60)
    finally:
        proxy.cut()
    doc = json.loads(out)
    result = doc["table_results"][table]
    assert result["status"] == "success" and proc.returncode == 0, (result, err[-2000:])
    assert result["rows_loaded"] == 2 and result["stages_loaded"] == [doc["execution_id"]], result
    assert [r["id"] for r in pg_fetch(f'SELECT id FROM "{pg_schema}".ev ORDER BY id')] == [1, 2]
    states = pg_fetch(f'SELECT loaded_by FROM "{pg_schema}".s3shift_state')
    assert [r["loaded_by"] for r in states] == [doc["execution_id"]]


def test_sigterm_between_two_pending_loads_names_the_one_that_committed(
    tmp_path: Path,
    source_conn: SourceConn,
    pg_target: TargetConn,
    s3_conn: S3Conn,
    mysql_db: str,
    pg_schema: str,
) -> None:
    """Two pending stages load in order; SIGTERM while the second one's transaction waits: the first
    stays committed, so the table fails 'interrupted' naming it and the watermark it left (it said
    'target and watermark unchanged')."""
    mysql_exec(
        mysql_db,
        "CREATE TABLE ev (id BIGINT PRIMARY KEY, v VARCHAR(10), updated_at DATETIME(6) NOT NULL)",
        "INSERT INTO ev VALUES (1, 'a', NOW(6))",
    )
    proxy = CutProxy(f"tcp://{PG_HOST}:{PG_PORT}")
    target = dataclasses.replace(pg_target, host="127.0.0.1", port=proxy.port)
    table = f"{mysql_db}.ev"
    conf = {"cdc_strategy": "hybrid", "cdc_timestamp_column": "updated_at", "cdc_id_column": "id"}
    cfg = write_config(tmp_path / "cfg", source_conn, target, s3_conn, {table: {**conf, "lag_seconds": 0}})
    setup = Setup(cfg, table, CLI)
    args = ("--config-dir", str(cfg), "sync", "-p", "p", "-t", table)
    first = run_json(*args, "--backup-only")[0]["table_results"][table]
    mysql_exec(mysql_db, "INSERT INTO ev VALUES (2, 'b', NOW(6))")
    assert run_json(*args, "--backup-only")[0]["status"] == "success"
    proxy.hold_answer_to(b"LOCK TABLE", skip=1)  # the second load's locks
    try:
        proc = subprocess.Popen(
            [*setup.cli, *args, "--load-only", "--json-output"], cwd=ROOT, stdout=subprocess.PIPE, text=True
        )
        wait_until(proc, proxy.triggered.is_set, "the second load")
        proc.send_signal(signal.SIGTERM)
        time.sleep(1)
        proxy.release()
        out, _ = proc.communicate(timeout=60)
    finally:
        proxy.cut()
    result = json.loads(out)["table_results"][table]
    stage_a = first["manifest"].rsplit("/", 2)[1]
    assert (result["status"], result["phase"], result["retryable"]) == ("failed", "interrupted", True), result
    assert result["stages_loaded"] == [stage_a] and result["watermark"] == first["window"]["end"], result
    assert f"loaded first: {stage_a}" in result["error_message"], result
    assert [r["id"] for r in pg_fetch(f'SELECT id FROM "{pg_schema}".ev ORDER BY id')] == [1]


def test_sigterm_during_the_second_pending_commit_counts_the_rows_inserted(
    tmp_path: Path,
    source_conn: SourceConn,
    pg_target: TargetConn,
    s3_conn: S3Conn,
    mysql_db: str,
    pg_schema: str,
) -> None:
    """Two pending stages load in order; SIGTERM while the second one's COMMIT answer is on its way: the
    table succeeded, and ``rows_loaded`` (``rows_processed`` with --load-only) is what its loads inserted,
    not the rows its stages hold (a configured key the source does not enforce: two rows of one key, one
    kept by the merge)."""
    mysql_exec(
        mysql_db,
        "CREATE TABLE ev (k BIGINT NOT NULL, v VARCHAR(10), updated_at DATETIME(6) NOT NULL)",
        "INSERT INTO ev VALUES (1, 'a', NOW(6))",
    )
    proxy = CutProxy(f"tcp://{PG_HOST}:{PG_PORT}")
    target = dataclasses.replace(pg_target, host="127.0.0.1", port=proxy.port)
    table = f"{mysql_db}.ev"
    conf = {"cdc_strategy": "hybrid", "cdc_timestamp_column": "updated_at", "cdc_id_column": "k"}
    conf |= {"primary_key": ["k"], "lag_seconds": 0}
    cfg = write_config(tmp_path / "cfg", source_conn, target, s3_conn, {table: conf})
    args = ("--config-dir", str(cfg), "sync", "-p", "p", "-t", table)
    first = run_json(*args, "--backup-only")[0]["table_results"][table]
    mysql_exec(mysql_db, "INSERT INTO ev VALUES (2, 'b', NOW(6)), (2, 'c', NOW(6))")
    second = run_json(*args, "--backup-only")[0]["table_results"][table]
    assert (first["rows_processed"], second["rows_processed"]) == (1, 2), second
    proxy.hold_answer_to(b"COMMIT\x00", skip=1)  # the second load's COMMIT
    try:
        proc = subprocess.Popen(
            [*CLI, *args, "--load-only", "--json-output"], cwd=ROOT, stdout=subprocess.PIPE, text=True
        )
        wait_until(proc, proxy.triggered.is_set, "the second COMMIT")
        proc.send_signal(signal.SIGTERM)
        time.sleep(1)  # the signal arrives while the COMMIT's answer is held
        proxy.release()
        out, _ = proc.communicate(timeout=60)
    finally:
        proxy.cut()
    doc = json.loads(out)
    result = doc["table_results"][table]
    stages = [r["manifest"].rsplit("/", 2)[1] for r in (first, second)]
    assert (result["status"], result["stages_loaded"]) == ("success", stages), result
    inserted = pg_fetch(f'SELECT count(*) FROM "{pg_schema}".ev')[0][0]
    assert inserted == 2
    assert (result["rows_loaded"], result["rows_processed"]) == (inserted, inserted), result
    assert result["watermark"] == second["window"]["end"], result
