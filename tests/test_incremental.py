"""Incremental sync through the public CLI: strategies, the state table, reruns, backup/load split,
dry-run and watermark commands (MySQL -> S3 moto -> PostgreSQL)."""

from __future__ import annotations

import json
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from src.config.models import S3Conn, SourceConn, TargetConn
from tests.conftest import _free_port, mysql_connect, mysql_exec, mysql_rows, pg_fetch, s3_client
from tests.e2e import assert_tables_equal, failures, run_cli, run_json, write_config

EVENTS = """CREATE TABLE events (
  id BIGINT UNSIGNED NOT NULL PRIMARY KEY, kind VARCHAR(20) NOT NULL, amount DECIMAL(10,2),
  updated_at DATETIME(6) NOT NULL, KEY ix_upd (updated_at, id))"""
LOG = "CREATE TABLE log (seq INT NOT NULL, msg VARCHAR(50), KEY (seq))"


def tables_cfg(db: str, **extra: Any) -> dict[str, dict[str, Any]]:
    return {
        f"{db}.events": {
            "cdc_strategy": "hybrid",
            "cdc_timestamp_column": "updated_at",
            "cdc_id_column": "id",
            "lag_seconds": 0,
            **extra,
        },
        f"{db}.log": {"cdc_strategy": "id_only", "cdc_id_column": "seq", "lag_seconds": 0},
        f"{db}.snap": {"cdc_strategy": "full_sync"},
    }


@pytest.fixture
def cfg(
    tmp_path: Path, source_conn: SourceConn, pg_target: TargetConn, s3_conn: S3Conn, mysql_db: str
) -> Path:
    mysql_exec(mysql_db, EVENTS, LOG)
    return write_config(
        tmp_path / "cfg",
        source_conn,
        pg_target,
        s3_conn,
        tables_cfg(mysql_db),
        processing={"max_parallel_tables": 4, "batch_size": 3},
    )


def sync(cfg: Path, *tables: str, extra: tuple[str, ...] = ()) -> dict[str, Any]:
    doc, proc = run_json(
        "--config-dir", str(cfg), "sync", "-p", "p", *[a for t in tables for a in ("-t", t)], *extra
    )
    assert proc.returncode in (0, 1), proc.stderr
    return doc


def insert_events(db: str, rows: list[tuple[int, str, str]]) -> None:
    """``ts`` is a literal timestamp, or an SQL expression when it starts with NOW (the source clock)."""
    values = ", ".join(
        f"({i}, '{k}', {i % 1000}.5, {ts if ts.startswith('NOW') else repr(ts)})" for i, k, ts in rows
    )
    mysql_exec(db, f"INSERT INTO events VALUES {values}")


def state_rows(schema: str, table: str) -> list[Any]:
    return pg_fetch(f'SELECT * FROM "{schema}".s3shift_state WHERE source_table = $1 ORDER BY seq', table)


def no_duplicates(schema: str, table: str, key: str) -> None:
    dupes = pg_fetch(f'SELECT "{key}", count(*) FROM "{schema}"."{table}" GROUP BY 1 HAVING count(*) > 1')
    assert dupes == [], dupes


def test_hybrid_ties_at_page_boundary_then_updates_merge(cfg: Path, mysql_db: str, pg_schema: str) -> None:
    same = "2024-01-01 00:00:00.000001"
    insert_events(mysql_db, [(i, "a", same) for i in range(1, 11)] + [(11, "b", "2024-01-02 00:00:00")])
    t = f"{mysql_db}.events"
    doc = sync(cfg, t)
    assert doc["status"] == "success", doc
    r = doc["table_results"][t]
    assert r["rows_processed"] == 11 and r["rows_loaded"] == 11
    assert assert_tables_equal(mysql_db, "events", pg_schema, "events", "id") == 11
    # updates move rows forward in cursor order; new rows arrive; everything merges on the key
    mysql_exec(mysql_db, "UPDATE events SET kind = 'upd', updated_at = NOW(6) WHERE id IN (2, 7)")
    insert_events(mysql_db, [(12, "c", "NOW(6)"), (18446744073709551615, "max", "NOW(6)")])
    doc = sync(cfg, t)
    r = doc["table_results"][t]
    assert doc["status"] == "success" and r["rows_processed"] == 4, r
    assert assert_tables_equal(mysql_db, "events", pg_schema, "events", "id") == 13
    no_duplicates(pg_schema, "events", "id")
    assert "deletes" in r and r["watermark"]["ts"].startswith("20")


def test_no_change_rerun_touches_nothing(cfg: Path, mysql_db: str, pg_schema: str, s3_conn: S3Conn) -> None:
    insert_events(mysql_db, [(1, "a", "2024-01-01 00:00:00")])
    t = f"{mysql_db}.events"
    assert sync(cfg, t)["status"] == "success"
    before_state = state_rows(pg_schema, t)
    s3 = s3_client(s3_conn.endpoint_url or "")

    def data_keys() -> list[str]:  # everything but the per-run reports (every run writes its report)
        keys = (o["Key"] for o in s3.list_objects_v2(Bucket=s3_conn.bucket).get("Contents", []))
        return sorted(k for k in keys if "/_reports/" not in k)

    before_keys = data_keys()
    doc = sync(cfg, t)
    r = doc["table_results"][t]
    assert doc["status"] == "success" and r["rows_processed"] == 0 and r["files_created"] == 0
    assert r["rows_loaded"] == 0 and r["stages_loaded"] == []
    assert state_rows(pg_schema, t) == before_state
    assert data_keys() == before_keys


def test_id_only_append_without_key_exactly_once(cfg: Path, mysql_db: str, pg_schema: str) -> None:
    mysql_exec(mysql_db, "INSERT INTO log VALUES (1, 'a'), (2, 'b'), (2, 'b-dup'), (5, 'e')")
    t = f"{mysql_db}.log"
    doc = sync(cfg, t)
    assert doc["status"] == "success", failures(doc)
    assert doc["table_results"][t]["rows_processed"] == 4
    mysql_exec(mysql_db, "INSERT INTO log VALUES (6, 'f'), (7, 'g')")
    assert sync(cfg, t)["table_results"][t]["rows_processed"] == 2
    assert sync(cfg, t)["table_results"][t]["rows_processed"] == 0
    rows = sorted(tuple(r) for r in pg_fetch(f'SELECT seq, msg FROM "{pg_schema}".log'))
    assert rows == sorted(tuple(r) for r in mysql_rows(mysql_db, "SELECT seq, msg FROM log"))


def test_a_table_without_a_key_read_again_is_never_appended_twice(
    cfg: Path, mysql_db: str, pg_schema: str
) -> None:
    """A table without a key appends each window. A window read again (the watermark set back, or reset;
    the first window after a full snapshot) was appended beside the rows already loaded: every rerun
    doubled them. Such a window now first deletes the target rows after its start."""
    mysql_exec(mysql_db, "INSERT INTO log VALUES (1, 'a'), (2, 'b'), (2, 'b-dup'), (3, 'c'), (5, 'e')")
    t = f"{mysql_db}.log"
    base = ("--config-dir", str(cfg), "watermark")

    def same() -> None:
        rows = sorted(tuple(r) for r in pg_fetch(f'SELECT seq, msg FROM "{pg_schema}".log'))
        assert rows == sorted(mysql_rows(mysql_db, "SELECT seq, msg FROM log"))

    assert sync(cfg, t)["table_results"][t]["rows_processed"] == 5
    assert run_cli(*base, "set", "-p", "p", "-t", t, "--id", "1").returncode == 0
    mysql_exec(mysql_db, "INSERT INTO log VALUES (6, 'f')")
    assert sync(cfg, t)["table_results"][t]["rows_processed"] == 5  # 2, 2, 3, 5 again, and 6
    same()
    pipeline = json.loads((cfg / "pipelines" / "p.yml").read_text())
    pipeline["tables"][t]["cdc_strategy"] = "full_sync"
    (cfg / "pipelines" / "p.yml").write_text(json.dumps(pipeline))
    assert sync(cfg, t)["status"] == "success"
    pipeline["tables"][t]["cdc_strategy"] = "id_only"
    (cfg / "pipelines" / "p.yml").write_text(json.dumps(pipeline))
    mysql_exec(mysql_db, "INSERT INTO log VALUES (7, 'g')")
    assert sync(cfg, t)["table_results"][t]["rows_processed"] == 7  # from the start, after the snapshot
    same()


def test_a_new_target_name_is_loaded_from_the_beginning(cfg: Path, mysql_db: str, pg_schema: str) -> None:
    """The watermark belongs to the target it was committed with: after target_name changed, the next run
    went on from the old target's watermark, so the new target got only the rows written since."""
    t = f"{mysql_db}.events"
    insert_events(mysql_db, [(1, "a", "2024-01-01"), (2, "b", "2024-01-02")])
    assert sync(cfg, t)["table_results"][t]["rows_processed"] == 2
    pipeline = json.loads((cfg / "pipelines" / "p.yml").read_text())
    pipeline["tables"][t]["target_name"] = "events_v2"
    (cfg / "pipelines" / "p.yml").write_text(json.dumps(pipeline))
    insert_events(mysql_db, [(3, "c", "NOW(6)")])
    doc, proc = run_json("--config-dir", str(cfg), "sync", "-p", "p", "-t", t)
    r = doc["table_results"][t]
    assert (
        r["rows_processed"] == 3 and r["window"]["start"] is None and r["target"] == f"{pg_schema}.events_v2"
    )
    assert f"its watermark was committed for {pg_schema}.events, not {pg_schema}.events_v2" in proc.stderr
    assert assert_tables_equal(mysql_db, "events", pg_schema, "events_v2", "id") == 3
    assert sync(cfg, t)["table_results"][t]["rows_processed"] == 0  # the new target's own position now
    # a watermark set names the target the table's loads use (target_of), as a sync's state rows do
    doc, _ = run_json(
        "--config-dir",
        str(cfg),
        "watermark",
        "set",
        "-p",
        "p",
        "-t",
        t,
        "--timestamp",
        "2024-01-01",
        "--id",
        "1",
    )
    assert doc["state"]["target"] == f"{pg_schema}.events_v2", doc


def test_rows_stamped_in_the_second_a_run_reads_its_clock_are_read_by_the_next_run(
    tmp_path: Path,
    source_conn: SourceConn,
    pg_target: TargetConn,
    s3_conn: S3Conn,
    mysql_db: str,
    pg_schema: str,
) -> None:
    """A DATETIME holds whole seconds: a row stamped NOW() after a run read the source's clock, in that same
    second, holds the second the run's window would end at if it ended there. A writer running beside the
    runs (lag_seconds 0) loses nothing: windows end at the last complete second."""
    mysql_exec(mysql_db, "CREATE TABLE ticks (id INT PRIMARY KEY, at DATETIME NOT NULL, KEY (at))")
    t = f"{mysql_db}.ticks"
    strategy = {"cdc_strategy": "timestamp_only", "cdc_timestamp_column": "at", "lag_seconds": 0}
    cfg = write_config(tmp_path / "c", source_conn, pg_target, s3_conn, {t: strategy})
    stop = threading.Event()

    def writer() -> None:
        conn = mysql_connect(mysql_db)
        try:
            with conn.cursor() as cur:
                n = 0
                while not stop.is_set():
                    n += 1
                    cur.execute("INSERT INTO ticks VALUES (%s, NOW())", (n,))
                    time.sleep(0.005)
        finally:
            conn.close()

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        for _ in range(2):  # each run reads the clock inside a second the writer goes on stamping
            assert sync(cfg, t)["status"] == "success"
    finally:
        stop.set()
        thread.join()
    time.sleep(1.1)  # the writer's last second is complete
    assert sync(cfg, t)["status"] == "success"
    assert assert_tables_equal(mysql_db, "ticks", pg_schema, "ticks", "id") > 50


def test_a_unique_key_of_not_null_columns_is_the_key_without_a_primary_key(
    tmp_path: Path,
    source_conn: SourceConn,
    pg_target: TargetConn,
    s3_conn: S3Conn,
    mysql_db: str,
    pg_schema: str,
) -> None:
    """No PRIMARY KEY, but a UNIQUE index of NOT NULL columns (MySQL reports it as the key, InnoDB
    clusters on it): an updated row is merged, not appended a second time."""
    mysql_exec(
        mysql_db,
        "CREATE TABLE accounts (email VARCHAR(50) NOT NULL, v INT, updated_at DATETIME(6) NOT NULL,"
        " UNIQUE KEY (email), KEY (updated_at))",
        "INSERT INTO accounts VALUES ('x@a', 1, '2024-01-01'), ('y@a', 2, '2024-01-01')",
    )
    t = f"{mysql_db}.accounts"
    cfg = write_config(
        tmp_path / "c",
        source_conn,
        pg_target,
        s3_conn,
        {t: {"cdc_strategy": "timestamp_only", "lag_seconds": 0}},
    )
    assert sync(cfg, t)["status"] == "success"
    mysql_exec(mysql_db, "UPDATE accounts SET v = 10, updated_at = NOW(6) WHERE email = 'x@a'")
    assert sync(cfg, t)["table_results"][t]["rows_processed"] == 1
    assert assert_tables_equal(mysql_db, "accounts", pg_schema, "accounts", "email") == 2


def test_rows_with_a_null_cursor_are_counted_in_the_result(
    tmp_path: Path,
    source_conn: SourceConn,
    pg_target: TargetConn,
    s3_conn: S3Conn,
    mysql_db: str,
) -> None:
    """No window ever reads a row whose cursor is NULL; the run said nothing of them, so rows a nullable
    updated_at left NULL were missing from the target without a word. The result counts them (within the
    table's row filter) and stderr says what to do; a NOT NULL cursor costs no query and adds no key."""
    mysql_exec(
        mysql_db,
        "CREATE TABLE maybe (id INT PRIMARY KEY, v INT, updated_at DATETIME(6) NULL, KEY (updated_at))",
        "INSERT INTO maybe VALUES (1, 1, '2024-01-01'), (2, 2, NULL), (3, 3, NULL), (4, 99, NULL)",
    )
    mysql_exec(mysql_db, EVENTS, "INSERT INTO events VALUES (1, 'a', 1, '2024-01-01')")
    t, full = f"{mysql_db}.maybe", f"{mysql_db}.events"
    tables = {
        t: {"cdc_strategy": "timestamp_only", "lag_seconds": 0, "where": "v < 99"},
        full: {"cdc_strategy": "hybrid", "lag_seconds": 0},
    }
    cfg = write_config(tmp_path / "c", source_conn, pg_target, s3_conn, tables)
    doc, proc = run_json("--config-dir", str(cfg), "sync", "-p", "p", "-t", t, "-t", full)
    assert doc["table_results"][t]["rows_processed"] == 1 and doc["table_results"][t]["null_cursor_rows"] == 2
    assert "null_cursor_rows" not in doc["table_results"][full]
    assert (
        f"{t}: 2 row(s) have a NULL cursor (updated_at) and are never read by timestamp_only" in proc.stderr
    )


def test_lookback_without_key_is_refused(
    tmp_path: Path, source_conn: SourceConn, pg_target: TargetConn, s3_conn: S3Conn, mysql_db: str
) -> None:
    mysql_exec(mysql_db, "CREATE TABLE nokey (v INT, updated_at DATETIME(6))")
    tables = {f"{mysql_db}.nokey": {"cdc_strategy": "timestamp_only", "lookback_seconds": 60}}
    cfg = write_config(tmp_path / "c", source_conn, pg_target, s3_conn, tables)
    doc = sync(cfg, f"{mysql_db}.nokey")
    msg = doc["table_results"][f"{mysql_db}.nokey"]["error_message"]
    assert doc["status"] == "failed" and "primary key" in msg and "lookback_seconds" in msg


def test_backup_only_then_load_only_equals_one_run(cfg: Path, mysql_db: str, pg_schema: str) -> None:
    t = f"{mysql_db}.events"
    insert_events(mysql_db, [(1, "a", "2024-01-01"), (2, "b", "2024-01-02")])
    doc = sync(cfg, t, extra=("--backup-only",))
    r = doc["table_results"][t]
    assert doc["status"] == "success" and r["rows_processed"] == 2 and r["files_created"] == 1, doc
    assert pg_fetch(f"SELECT to_regclass('\"{pg_schema}\".events')")[0][0] is None  # nothing loaded
    insert_events(mysql_db, [(3, "c", "NOW(6)")])
    r2 = sync(cfg, t, extra=("--backup-only",))["table_results"][t]
    assert r2["rows_processed"] == 1, r2  # continues after the pending stage, no overlap
    doc = sync(cfg, t, extra=("--load-only",))
    r3 = doc["table_results"][t]
    assert doc["status"] == "success" and r3["rows_processed"] == 3 and r3["files_created"] == 0, doc
    assert len(r3["stages_loaded"]) == 2
    assert assert_tables_equal(mysql_db, "events", pg_schema, "events", "id") == 3
    assert sync(cfg, t, extra=("--load-only",))["table_results"][t]["rows_processed"] == 0


def test_load_only_reads_no_mysql(cfg: Path, mysql_db: str, pg_schema: str, tmp_path: Path) -> None:
    t = f"{mysql_db}.events"
    insert_events(mysql_db, [(1, "a", "2024-01-01")])
    assert sync(cfg, t, extra=("--backup-only",))["status"] == "success"
    conns = json.loads((cfg / "connections.yml").read_text())
    conns["connections"]["sources"]["src"]["port"] = 1  # MySQL unreachable now
    (cfg / "connections.yml").write_text(json.dumps(conns))
    doc = sync(cfg, t, extra=("--load-only",))
    assert doc["status"] == "success" and doc["table_results"][t]["rows_processed"] == 1, doc
    assert [r[0] for r in pg_fetch(f'SELECT id FROM "{pg_schema}".events')] == [1]


def test_full_sync_writes_state_and_replaces(cfg: Path, mysql_db: str, pg_schema: str) -> None:
    mysql_exec(
        mysql_db, "CREATE TABLE snap (id INT PRIMARY KEY, v TEXT)", "INSERT INTO snap VALUES (1,'a'),(2,'b')"
    )
    t = f"{mysql_db}.snap"
    assert sync(cfg, t)["status"] == "success"
    mysql_exec(mysql_db, "DELETE FROM snap WHERE id = 1")
    assert sync(cfg, t)["table_results"][t]["rows_processed"] == 1
    assert assert_tables_equal(mysql_db, "snap", pg_schema, "snap", "id") == 1
    assert len(state_rows(pg_schema, t)) == 2


def test_watermark_get_set_reset(cfg: Path, mysql_db: str, pg_schema: str) -> None:
    t = f"{mysql_db}.events"
    insert_events(mysql_db, [(1, "a", "2024-01-01"), (2, "b", "2024-06-01")])
    assert sync(cfg, t)["status"] == "success"
    base = ("--config-dir", str(cfg), "watermark")
    got = json.loads(run_cli(*base, "get", "-p", "p", "-t", t, "--json-output").stdout)
    assert got["status"] == "success" and got["watermark"]["ts"] is not None
    proc = run_cli(
        *base, "set", "-p", "p", "-t", t, "--timestamp", "2024-03-01T00:00:00", "--id", "0", "--json-output"
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["watermark"] == {"ts": "2024-03-01 00:00:00.000000", "id": 0}
    r = sync(cfg, t)["table_results"][t]
    assert r["rows_processed"] == 1  # only the row after the watermark that was set
    assert run_cli(*base, "reset", "-p", "p", "-t", t).returncode == 0
    got = json.loads(run_cli(*base, "get", "-p", "p", "-t", t, "--json-output").stdout)
    assert got["watermark"] is None
    assert sync(cfg, t)["table_results"][t]["rows_processed"] == 2  # from the beginning; merged
    assert assert_tables_equal(mysql_db, "events", pg_schema, "events", "id") == 2
    no_duplicates(pg_schema, "events", "id")


def test_watermark_set_refuses_a_position_the_strategy_cannot_start_at(
    cfg: Path, mysql_db: str, pg_schema: str
) -> None:
    """``set --id`` on a hybrid table (or ``--timestamp`` on an id_only one) used to be written, and every
    later sync of the table then failed on it."""
    insert_events(mysql_db, [(1, "a", "2024-01-01"), (2, "b", "2024-06-01")])
    mysql_exec(mysql_db, "INSERT INTO log VALUES (1, 'a'), (2, 'b')")
    events, log = f"{mysql_db}.events", f"{mysql_db}.log"
    assert sync(cfg, events, log)["status"] == "success"
    base = ("--config-dir", str(cfg), "watermark")
    for table, args, words in (
        (
            events,
            ("--id", "1"),
            f"tables.{events}.cdc_strategy is hybrid, whose windows start at a timestamp",
        ),
        (log, ("--timestamp", "2024-01-01T00:00:00"), f"tables.{log}.cdc_strategy is id_only, whose windows"),
    ):
        before = json.loads(run_cli(*base, "get", "-p", "p", "-t", table, "--json-output").stdout)
        proc = run_cli(*base, "set", "-p", "p", "-t", table, *args, "--json-output")
        assert proc.returncode == 1 and words in proc.stdout and "nothing was written" in proc.stdout, proc
        assert json.loads(run_cli(*base, "get", "-p", "p", "-t", table, "--json-output").stdout) == before
        assert sync(cfg, table)["status"] == "success"
    proc = run_cli(
        *base, "set", "-p", "p", "-t", events, "--timestamp", "2024-03-01T00:00:00", "--json-output"
    )
    assert proc.returncode == 0, proc.stdout  # a timestamp alone is a hybrid window's start
    assert sync(cfg, events)["table_results"][events]["rows_processed"] == 1


def test_watermark_commands_report_an_unreachable_warehouse(
    tmp_path: Path, source_conn: SourceConn, pg_target: TargetConn, s3_conn: S3Conn
) -> None:
    port = _free_port()
    cfg = write_config(tmp_path / "c", source_conn, replace(pg_target, port=port), s3_conn)
    for action in (("get",), ("set", "--id", "5"), ("reset",)):
        proc = run_cli(
            "--config-dir", str(cfg), "watermark", *action, "-p", "p", "-t", "a.b", "--json-output"
        )
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
        doc = json.loads(proc.stdout)
        assert doc["status"] == "failed" and doc["table"] == "a.b"
        assert f"connecting to target 'tgt' (127.0.0.1:{port}/" in doc["error_message"]
        # stderr says it too, in one line (a CI log shows stderr; stdout may go to a parser)
        errors = [line for line in proc.stderr.splitlines() if " ERROR " in line]
        assert len(errors) == 1 and doc["error_message"] in errors[0], proc.stderr


def test_watermark_commands_take_one_table(cfg: Path, mysql_db: str) -> None:
    t1, t2 = f"{mysql_db}.events", f"{mysql_db}.log"
    proc = run_cli(
        "--config-dir", str(cfg), "watermark", "get", "-p", "p", "-t", t1, "-t", t2, "--json-output"
    )
    assert proc.returncode == 1, proc.stderr  # not the last one silently; JSON all the same (--json-output)
    doc = json.loads(proc.stdout)
    assert doc["status"] == "failed" and doc["table"] is None, doc
    assert f"watermark get takes one table; got 2: {t1}, {t2}" in doc["error_message"]
    assert f"watermark get takes one table; got 2: {t1}, {t2}" in proc.stderr
    # a comma-separated list, as sync takes it: the same usage error, not a table name with two dots
    proc = run_cli(
        "--config-dir",
        str(cfg),
        "watermark",
        "set",
        "-p",
        "p",
        "-t",
        f"{t1},{t2}",
        "--id",
        "1",
        "--json-output",
    )
    assert proc.returncode == 1 and json.loads(proc.stdout)["status"] == "failed", proc.stdout
    assert f"watermark set takes one table; got 2: {t1}, {t2}" in proc.stderr


def test_dry_run_changes_nothing(cfg: Path, mysql_db: str, pg_schema: str, s3_conn: S3Conn) -> None:
    t = f"{mysql_db}.events"
    insert_events(mysql_db, [(1, "a", "2024-01-01")])
    s3 = s3_client(s3_conn.endpoint_url or "")
    proc = run_cli("--config-dir", str(cfg), "sync", "-p", "p", "-t", t, "--dry-run", "--json-output")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    plan = json.loads(proc.stdout)["tables"][t]
    assert plan["strategy"] == "hybrid" and plan["mode"] == "merge" and plan["key"] == ["id"]
    assert plan["window"]["start"] is None and plan["window"]["end"]["ts"]
    assert plan["index"] == "ix_upd" and plan["estimated_rows"] >= 1
    assert "ORDER BY" in plan["sql"]["extract"] and any("INSERT" in s for s in plan["sql"]["load"])
    assert s3.list_objects_v2(Bucket=s3_conn.bucket).get("KeyCount", 0) == 0
    assert pg_fetch("SELECT count(*) FROM pg_namespace WHERE nspname = $1", pg_schema)[0][0] == 0


def test_dry_run_errors_are_said_on_stderr(cfg: Path, mysql_db: str, tmp_path: Path) -> None:
    """A plan that cannot be made says why on stderr too, in one line, not only inside the JSON."""
    t = f"{mysql_db}.nope"
    proc = run_cli("--config-dir", str(cfg), "sync", "-p", "p", "-t", t, "--dry-run", "--json-output")
    assert proc.returncode == 1
    message = json.loads(proc.stdout)["tables"][t]["error_message"]
    assert "not found" in message
    assert [line for line in proc.stderr.splitlines() if " ERROR " in line and message in line], proc.stderr
    missing = tmp_path / "no-such-dir"
    proc = run_cli("--config-dir", str(missing), "sync", "-p", "p", "-t", t, "--dry-run", "--json-output")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert f"config directory {missing} not found" in json.loads(proc.stdout)["tables"][t]["error_message"]
    assert f"ERROR s3shift.dryrun: config directory {missing} not found" in proc.stderr, proc.stderr


def test_a_dry_run_that_fails_exits_1(cfg: Path, mysql_db: str) -> None:
    """A bug in the planner still prints one JSON document, and exits 1: it exited 0 (no table in the
    document had failed, for there was none), so a CI job took the failed plan for a good one."""
    broken = (
        "import src.cli.main as m\n"
        "async def plan_sync(request, **_):\n"
        "    raise RuntimeError('planted bug')\n"
        "m.plan_sync = plan_sync\n"
        "m.main()\n"
    )
    t = f"{mysql_db}.events"
    proc = run_cli(
        "--config-dir",
        str(cfg),
        "sync",
        "-p",
        "p",
        "-t",
        t,
        "--dry-run",
        "--json-output",
        cli=(sys.executable, "-c", broken),
    )
    assert proc.returncode == 1, proc.stdout
    doc = json.loads(proc.stdout)
    assert doc["status"] == "failed" and "internal error: RuntimeError: planted bug" in doc["error_message"]


def test_dry_run_warns_only_when_no_index_could_serve_the_window(
    tmp_path: Path, source_conn: SourceConn, pg_target: TargetConn, s3_conn: S3Conn, mysql_db: str
) -> None:
    """A timestamp_only window of a table with a composite key is one unpaged query: on a small table
    the optimizer scans even with an index on the cursor, which is no reason to ask for one."""
    mysql_exec(
        mysql_db,
        "CREATE TABLE pairs (a INT NOT NULL, b INT NOT NULL, ts DATETIME(6) NOT NULL,"
        " other DATETIME NOT NULL, PRIMARY KEY (a, b), KEY ix_ts (ts))",
        "INSERT INTO pairs SELECT seq, seq, '2024-01-01' + INTERVAL seq MINUTE, '2024-01-01'"
        " FROM seq_1_to_50",
    )
    tables = {
        f"{mysql_db}.pairs": {"cdc_strategy": "timestamp_only", "cdc_timestamp_column": "ts"},
        f"{mysql_db}.unindexed": {"cdc_strategy": "timestamp_only", "cdc_timestamp_column": "other"},
    }
    mysql_exec(mysql_db, "CREATE TABLE unindexed LIKE pairs", "INSERT INTO unindexed SELECT * FROM pairs")
    cfg = write_config(tmp_path / "cfg", source_conn, pg_target, s3_conn, tables)
    proc = run_cli(
        "--config-dir", str(cfg), "sync", "-p", "p", "-t", ",".join(tables), "--dry-run", "--json-output"
    )
    plans = json.loads(proc.stdout)["tables"]
    assert "warning" not in plans[f"{mysql_db}.pairs"], plans[f"{mysql_db}.pairs"]
    assert plans[f"{mysql_db}.unindexed"]["warning"] == (
        "no index serves the window query: the window query is a full scan; add an index on the cursor"
    )


def test_a_cursor_column_left_out_of_the_read_says_so(
    tmp_path: Path, source_conn: SourceConn, pg_target: TargetConn, s3_conn: S3Conn, mysql_db: str
) -> None:
    """A cursor column left out by exclude_columns (or not listed in include_columns) failed as "'ts' is not
    a column of the source table (columns: id, v); set cdc_timestamp_column", though the table has it: the
    fix is the column selection. A cursor the source lacks keeps its message."""
    mysql_exec(mysql_db, "CREATE TABLE ev (id INT PRIMARY KEY, v INT, ts DATETIME(6), KEY (ts))")
    hybrid = {"cdc_strategy": "hybrid", "cdc_timestamp_column": "ts", "cdc_id_column": "id"}
    tables = {
        f"{mysql_db}.ev": {**hybrid, "exclude_columns": ["ts"], "target_name": "a"},
        f"{mysql_db}.ev2": {**hybrid, "include_columns": ["id", "v"], "target_name": "b"},
        f"{mysql_db}.ev3": {**hybrid, "cdc_timestamp_column": "nope", "target_name": "c"},
    }
    mysql_exec(mysql_db, "CREATE TABLE ev2 LIKE ev", "CREATE TABLE ev3 LIKE ev")
    cfg = write_config(tmp_path / "cfg", source_conn, pg_target, s3_conn, tables)
    doc, _ = run_json("--config-dir", str(cfg), "sync", "-p", "p", "-t", ",".join(tables))
    errors = failures(doc)
    assert errors[f"{mysql_db}.ev"] == (
        f"pipeline table {mysql_db}.ev: cdc_timestamp_column 'ts' is left out by exclude_columns, but the "
        f"window is read by it — keep it in the columns read (fix tables.{mysql_db}.ev.exclude_columns), or "
        f"set tables.{mysql_db}.ev.cdc_timestamp_column"
    )
    assert "'ts' is left out by include_columns" in errors[f"{mysql_db}.ev2"]
    assert "'nope' is not a column of the source table (columns: id, v, ts)" in errors[f"{mysql_db}.ev3"]


def test_a_primary_key_changed_at_the_source_rekeys_the_target(
    tmp_path: Path,
    source_conn: SourceConn,
    pg_target: TargetConn,
    s3_conn: S3Conn,
    mysql_db: str,
    pg_schema: str,
) -> None:
    """The target kept the primary key it was created with: a source key widened to (id, x) made every
    run fail with a unique violation, full_sync's too. A merge now re-keys the target when its rows fit the
    new key; when they do not (a key column added since: NULL in older rows) the load fails saying so,
    nothing changed, and one full_sync re-keys the emptied target."""
    mysql_exec(
        mysql_db,
        "CREATE TABLE pkc (id INT NOT NULL, x INT NOT NULL, ts DATETIME(6) NOT NULL, PRIMARY KEY (id),"
        " KEY (ts))",
        "INSERT INTO pkc VALUES (1, 1, NOW(6)), (2, 1, NOW(6))",
    )
    table = f"{mysql_db}.pkc"
    strategy = {"cdc_strategy": "timestamp_only", "cdc_timestamp_column": "ts", "lag_seconds": 0}
    cfg = write_config(tmp_path / "cfg", source_conn, pg_target, s3_conn, {table: strategy})

    def sync_pkc(config: Path) -> tuple[dict[str, Any], int]:
        doc, proc = run_json("--config-dir", str(config), "sync", "-p", "p", "-t", table)
        return doc, proc.returncode

    def target_key() -> list[str]:
        rows = pg_fetch(
            "SELECT a.attname FROM pg_constraint k JOIN pg_attribute a ON a.attrelid = k.conrelid"
            " AND a.attnum = ANY(k.conkey) WHERE k.conrelid = $1::regclass AND k.contype = 'p'"
            " ORDER BY array_position(k.conkey, a.attnum)",
            f'"{pg_schema}".pkc',
        )
        return [str(r[0]) for r in rows]

    doc, code = sync_pkc(cfg)
    assert code == 0 and target_key() == ["id"], failures(doc)
    mysql_exec(
        mysql_db,
        "ALTER TABLE pkc DROP PRIMARY KEY, ADD PRIMARY KEY (id, x)",
        "INSERT INTO pkc VALUES (1, 2, NOW(6) + INTERVAL 1 SECOND)",
    )
    time.sleep(1.2)
    doc, code = sync_pkc(cfg)
    assert code == 0, failures(doc)
    changes = doc["table_results"][table]["schema_changes"]
    assert "primary key (id) -> (id, x): the source's key changed" in changes, changes
    assert target_key() == ["id", "x"]
    loaded = pg_fetch(f'SELECT id, x FROM "{pg_schema}".pkc ORDER BY id, x')
    assert [tuple(r) for r in loaded] == [(1, 1), (1, 2), (2, 1)]

    # a key column added since: the target's older rows hold NULL in it, so a merge cannot re-key
    mysql_exec(
        mysql_db,
        "ALTER TABLE pkc ADD COLUMN tenant INT NOT NULL DEFAULT 7",
        "ALTER TABLE pkc DROP PRIMARY KEY, ADD PRIMARY KEY (id, x, tenant)",
        "INSERT INTO pkc VALUES (1, 2, NOW(6) + INTERVAL 1 SECOND, 8)",
    )
    time.sleep(1.2)
    doc, code = sync_pkc(cfg)
    message = failures(doc)[table]
    assert code == 1 and "from (id, x) to (id, x, tenant), but the target's rows are not unique" in message
    assert message.endswith("sync the table once with cdc_strategy full_sync, or drop the target and rerun")
    assert target_key() == ["id", "x"] and len(pg_fetch(f'SELECT 1 FROM "{pg_schema}".pkc')) == 3
    tables = {table: {"cdc_strategy": "full_sync"}}
    doc, code = sync_pkc(write_config(tmp_path / "full", source_conn, pg_target, s3_conn, tables))
    assert code == 0, failures(doc)
    assert target_key() == ["id", "x", "tenant"]
    source = mysql_rows(mysql_db, "SELECT id, x, tenant FROM pkc ORDER BY id, x, tenant")
    target = pg_fetch(f'SELECT id, x, tenant FROM "{pg_schema}".pkc ORDER BY id, x, tenant')
    assert [tuple(r) for r in target] == [tuple(r) for r in source] and len(source) == 4


@pytest.mark.parametrize("table", ["events_ts", "events", "log"])
def test_a_first_incremental_run_over_an_empty_table_creates_the_empty_target(
    tmp_path: Path,
    source_conn: SourceConn,
    pg_target: TargetConn,
    s3_conn: S3Conn,
    mysql_db: str,
    pg_schema: str,
    table: str,
) -> None:
    """CI jobs query the target after a run: a first timestamp_only / hybrid / id_only run over an empty
    table creates it, empty, with the planned columns, as full_sync does; it sets no watermark, so the
    rows written afterwards are all read by the next run."""
    mysql_exec(mysql_db, EVENTS, LOG, EVENTS.replace("events", "events_ts"))
    tables = tables_cfg(mysql_db)
    tables[f"{mysql_db}.events_ts"] = {
        "cdc_strategy": "timestamp_only",
        "cdc_timestamp_column": "updated_at",
        "lag_seconds": 0,
    }
    cfg = write_config(tmp_path / "cfg", source_conn, pg_target, s3_conn, tables)
    name = f"{mysql_db}.{table}"

    doc = sync(cfg, name)
    assert doc["status"] == "success", failures(doc)
    result = doc["table_results"][name]
    assert (result["rows_processed"], result["files_created"], result["rows_loaded"]) == (0, 0, 0), result
    assert result["stages_loaded"] == [] and result["target"] == f"{pg_schema}.{table}", result
    columns = pg_fetch(
        "SELECT column_name FROM information_schema.columns WHERE table_schema = $1 AND table_name = $2 "
        "ORDER BY ordinal_position",
        pg_schema,
        table,
    )
    expected = ["seq", "msg"] if table == "log" else ["id", "kind", "amount", "updated_at"]
    assert [c["column_name"] for c in columns][: len(expected)] == expected
    assert pg_fetch(f'SELECT count(*) AS n FROM "{pg_schema}"."{table}"')[0]["n"] == 0
    state_table = "SELECT 1 FROM pg_tables WHERE schemaname = $1 AND tablename = 's3shift_state'"
    assert not pg_fetch(state_table, pg_schema) or state_rows(pg_schema, name) == []  # no watermark set

    if table == "log":
        mysql_exec(mysql_db, "INSERT INTO log VALUES (1, 'a'), (2, 'b')")
    else:
        mysql_exec(mysql_db, f"INSERT INTO {table} VALUES (1, 'a', 1.5, '2001-01-01'), (2, 'b', 2, NOW(6))")
    doc = sync(cfg, name)
    assert doc["status"] == "success", failures(doc)
    assert doc["table_results"][name]["rows_processed"] == 2
    assert pg_fetch(f'SELECT count(*) AS n FROM "{pg_schema}"."{table}"')[0]["n"] == 2
