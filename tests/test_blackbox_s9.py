"""Black-box checks through the public CLI, session 9: Redshift physical design (the emulator drops
DISTSTYLE/DISTKEY/SORTKEY/ENCODE, so what Redshift would refuse must be refused by s3shift itself), ..."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from src.config.models import S3Conn, SourceConn, TargetConn
from tests.conftest import mysql_exec, pg_fetch, pg_tables_locked
from tests.e2e import as_redshift, check_contract, run_json, write_config


def test_redshift_physical_design_that_redshift_refuses_fails_the_table_naming_the_fix(
    tmp_path: Path,
    source_conn: SourceConn,
    pg_target: TargetConn,
    s3_conn: S3Conn,
    s3_endpoint: str,
    mysql_db: str,
    pg_schema: str,
) -> None:
    """Redshift refuses CREATE TABLE with DISTSTYLE KEY but no DISTKEY, an ENCODE its type does not take
    (AZ64 on a VARCHAR, DELTA on a DOUBLE PRECISION) and a SUPER sort or distribution key. Each such table
    fails alone, not retryable, naming the column and the fix, and no target is created; a table whose
    design fits loads."""
    create = "CREATE TABLE {} (id INT PRIMARY KEY, v VARCHAR(10), j JSON, f DOUBLE, ts DATETIME(6))"
    fill = "INSERT INTO {} VALUES (1, 'a', '{{}}', 1.5, '2026-01-01')"
    names = ["no_distkey", "az64_text", "super_sortkey", "super_distkey", "fits"]
    mysql_exec(mysql_db, *[create.format(n) for n in names], *[fill.format(n) for n in names])
    tables = {
        f"{mysql_db}.no_distkey": {"diststyle": "KEY"},
        f"{mysql_db}.az64_text": {"encode": {"v": "AZ64", "f": "delta", "id": "ZSTD"}},
        f"{mysql_db}.super_sortkey": {"sortkey": ["ts", "j"]},
        f"{mysql_db}.super_distkey": {"distkey": "j"},
        f"{mysql_db}.fits": {
            "diststyle": "KEY",
            "distkey": "id",
            "sortkey": ["ts", "id"],
            "encode": {"id": "MOSTLY16", "v": "TEXT255", "f": "BYTEDICT", "ts": "AZ64", "j": "ZSTD"},
        },
    }
    target, cli = as_redshift(pg_target, s3_endpoint)
    cfg = write_config(tmp_path / "cfg", source_conn, target, s3_conn, tables)
    requested = list(tables)
    args = [a for t in requested for a in ("-t", t)]
    doc, proc = run_json("--config-dir", str(cfg), "sync", "-p", "p", *args, cli=cli)
    check_contract(doc, requested)
    assert proc.returncode == 1 and doc["status"] == "partial_success", doc
    results = doc["table_results"]
    assert results[f"{mysql_db}.fits"]["status"] == "success", results
    errors = {t.split(".")[1]: r for t, r in results.items() if r["status"] == "failed"}
    assert sorted(errors) == sorted(names[:4]), results
    assert all(r["retryable"] is False for r in errors.values()), errors
    assert "diststyle KEY without a distkey" in errors["no_distkey"]["error_message"]
    message = errors["az64_text"]["error_message"]
    assert "v (VARCHAR(40)): AZ64" in message and "f (DOUBLE PRECISION): DELTA" in message, message
    assert "id (INTEGER)" not in message, message  # ZSTD fits an INTEGER
    for name, key in (("super_sortkey", "sortkey"), ("super_distkey", "distkey")):
        assert f"{key} column 'j'" in errors[name]["error_message"], errors[name]
        assert "SUPER" in errors[name]["error_message"], errors[name]
    for name in names[:4]:
        assert pg_fetch("SELECT to_regclass($1)", f"{pg_schema}.{name}")[0][0] is None, name
    assert pg_fetch(f'SELECT count(*) FROM "{pg_schema}".fits')[0][0] == 1


def test_incremental_table_whose_target_was_dropped_is_read_again_from_the_beginning(
    tmp_path: Path,
    source_conn: SourceConn,
    pg_target: TargetConn,
    s3_conn: S3Conn,
    mysql_db: str,
    pg_schema: str,
) -> None:
    """A target dropped to rebuild it (its state row stays): the watermark stood for rows that went with
    it, so the next run reads the whole table into the new target (it loaded only the rows after the
    watermark, status success, exit 0: the target silently lacked every older row). --dry-run says so."""
    mysql_exec(
        mysql_db,
        "CREATE TABLE ev (id INT PRIMARY KEY, v VARCHAR(10))",
        "INSERT INTO ev VALUES (1, 'a'), (2, 'b'), (3, 'c')",
    )
    table = f"{mysql_db}.ev"
    cfg = write_config(
        tmp_path / "cfg", source_conn, pg_target, s3_conn, {table: {"cdc_strategy": "id_only"}}
    )
    sync = ("--config-dir", str(cfg), "sync", "-p", "p", "-t", table)
    assert run_json(*sync)[0]["table_results"][table]["rows_processed"] == 3
    pg_fetch(f'DROP TABLE "{pg_schema}".ev')
    mysql_exec(mysql_db, "INSERT INTO ev VALUES (4, 'd')")
    plan, _ = run_json(*sync, "--dry-run")
    assert plan["tables"][table]["window"]["start"] is None, plan
    doc, proc = run_json(*sync)
    check_contract(doc, [table])
    assert proc.returncode == 0 and doc["table_results"][table]["rows_processed"] == 4, doc
    assert doc["table_results"][table]["watermark"] == {"ts": None, "id": 4}
    assert [tuple(r) for r in pg_fetch(f'SELECT id, v FROM "{pg_schema}".ev ORDER BY id')] == [
        (1, "a"),
        (2, "b"),
        (3, "c"),
        (4, "d"),
    ]
    # with the target in place, the next run reads after the watermark again
    mysql_exec(mysql_db, "INSERT INTO ev VALUES (5, 'e')")
    assert run_json(*sync)[0]["table_results"][table]["rows_processed"] == 1


def test_many_tables_in_worker_processes_with_failures_of_every_kind(
    tmp_path: Path,
    source_conn: SourceConn,
    pg_target: TargetConn,
    s3_conn: S3Conn,
    mysql_db: str,
    pg_schema: str,
) -> None:
    """40 small tables in two processes; five fail, each in its own way: missing at the source, a
    DECIMAL(65,30) (policy), a target locked by another session, a target name taken by a view, a target
    with a NOT NULL column the source lacks. The others load; partial_success, exit 1; each failure says
    what, where and what to do (the warehouse's own errors too: a view's name and a NOT NULL column gave
    only the server's words); the failed targets keep what they held."""
    good = [f"t{i:02}" for i in range(35)]
    mysql_exec(
        mysql_db,
        *[f"CREATE TABLE {t} (id INT PRIMARY KEY, v VARCHAR(8))" for t in [*good, "locked", "viewed", "nn"]],
        *[f"INSERT INTO {t} VALUES (1, '{t}'), (2, 'x')" for t in [*good, "locked", "viewed", "nn"]],
        "CREATE TABLE wide (id INT PRIMARY KEY, d DECIMAL(65,30))",
        "INSERT INTO wide VALUES (1, 1.5)",
    )
    target = replace(pg_target, lock_timeout=1)
    cfg = write_config(
        tmp_path / "cfg", source_conn, target, s3_conn, processing={"processes": 2, "max_parallel_tables": 4}
    )
    sync = ("--config-dir", str(cfg), "sync", "-p", "p")
    first, _ = run_json(*sync, "-t", f"{mysql_db}.locked")
    assert first["status"] == "success", first
    mysql_exec(mysql_db, "UPDATE locked SET v = 'new'")
    pg_fetch(f'CREATE VIEW "{pg_schema}".viewed AS SELECT 1 AS id')
    pg_fetch(f'CREATE TABLE "{pg_schema}".nn (id INT PRIMARY KEY, v TEXT, must INT NOT NULL)')
    order = [*good[:20], "missing", "locked", "wide", "viewed", "nn", *good[20:]]
    tables = [f"{mysql_db}.{t}" for t in order]
    with pg_tables_locked(f'"{pg_schema}".locked'):
        doc, proc = run_json(*sync, "-t", ",".join(tables))
    check_contract(doc, tables)
    assert proc.returncode == 1 and doc["status"] == "partial_success", doc
    assert "worker process 1 ran" in proc.stderr, proc.stderr
    results = {t.split(".", 1)[1]: r for t, r in doc["table_results"].items()}
    assert all(results[t]["status"] == "success" and results[t]["rows_processed"] == 2 for t in good), results
    assert doc["summary"] == {
        "success_count": 35,
        "failure_count": 5,
        "total_rows_processed": 70,
        "total_files_created": 35,
    }
    expected = {  # table: (phase, retryable, what, what to do)
        "missing": ("introspect", False, f"{mysql_db}.missing not found", "check the database and table"),
        "wide": ("introspect", False, "decimal(65,30)", "decimal_overflow: text"),
        "locked": ("load", True, "lock timeout", "rerun when it is released"),
        "viewed": ("load", False, "is not a table", "set target_name"),
        "nn": ("load", False, '"must"', "make it nullable or give it a DEFAULT"),
    }
    for name, (phase, retryable, what, todo) in expected.items():
        result = results[name]
        assert (result["phase"], result["retryable"]) == (phase, retryable), (name, result)
        assert what in result["error_message"] and todo in result["error_message"], (name, result)
    assert [tuple(r) for r in pg_fetch(f'SELECT id, v FROM "{pg_schema}".locked ORDER BY id')] == [
        (1, "locked"),
        (2, "x"),
    ]
    assert pg_fetch(f'SELECT count(*) FROM "{pg_schema}".nn')[0][0] == 0
    state = pg_fetch(f'SELECT source_table FROM "{pg_schema}".s3shift_state WHERE row_count > 0')
    loaded = {r[0].split(".", 1)[1] for r in state}
    assert loaded == {*good, "locked"}, loaded  # locked: its first load only


def test_same_table_name_in_two_databases_blames_no_case_folding(
    tmp_path: Path,
    source_conn: SourceConn,
    pg_target: TargetConn,
    s3_conn: S3Conn,
    s3_endpoint: str,
    mysql_db: str,
) -> None:
    """Two databases' `orders` would load one Redshift table: the message asks for a target_name, and says
    nothing of folding to lowercase (the names are equal; it said "redshift folds names to lowercase")."""
    other = f"{mysql_db}_b"
    mysql_exec(mysql_db, "CREATE TABLE orders (id INT PRIMARY KEY)", f"CREATE DATABASE `{other}`")
    try:
        mysql_exec(other, "CREATE TABLE orders (id INT PRIMARY KEY)")
        target, cli = as_redshift(pg_target, s3_endpoint)
        cfg = write_config(tmp_path / "cfg", source_conn, target, s3_conn)
        pair = [f"{mysql_db}.orders", f"{other}.orders"]
        doc, _ = run_json("--config-dir", str(cfg), "sync", "-p", "p", "-t", ",".join(pair), cli=cli)
    finally:
        mysql_exec(None, f"DROP DATABASE IF EXISTS `{other}`")
    for table, other_table in (pair, pair[::-1]):
        message = doc["table_results"][table]["error_message"]
        assert f"as {other_table} would too: set tables.{table}.target_name" in message, message
        assert "lowercase" not in message, message


def test_redshift_backups_across_a_schema_change_then_load_only_equal_the_source(
    tmp_path: Path,
    source_conn: SourceConn,
    pg_target: TargetConn,
    s3_conn: S3Conn,
    s3_endpoint: str,
    mysql_db: str,
) -> None:
    """Two --backup-only runs around a column added and a VARCHAR widened (with an update, a delete and
    an insert), then --load-only into Redshift: both windows load in order, each in its own transaction;
    the target equals the source but for the deleted row (not captured); the watermark is the second
    window's end; a run after that finds nothing (nothing doubled)."""
    pg_schema = pg_target.schema
    mysql_exec(
        mysql_db,
        "CREATE TABLE ev (id BIGINT UNSIGNED PRIMARY KEY, v VARCHAR(4), j JSON,"
        " updated_at DATETIME(6) NOT NULL DEFAULT NOW(6) ON UPDATE NOW(6), KEY (updated_at, id))",
        "INSERT INTO ev (id, v, j) VALUES (1, 'ü', '[1]'), (2, 'b', NULL),"
        " (18446744073709551615, '😀', '{}')",
    )
    table = f"{mysql_db}.ev"
    target, cli = as_redshift(pg_target, s3_endpoint)
    tables = {table: {"cdc_strategy": "hybrid", "lag_seconds": 0, "sortkey": ["updated_at"]}}
    cfg = write_config(tmp_path / "cfg", source_conn, target, s3_conn, tables)
    sync = ("--config-dir", str(cfg), "sync", "-p", "p", "-t", table)
    first, _ = run_json(*sync, "--backup-only", cli=cli)
    mysql_exec(
        mysql_db,
        "ALTER TABLE ev ADD COLUMN extra INT, MODIFY v VARCHAR(40)",
        "UPDATE ev SET v = 'a longer value €', extra = 7 WHERE id = 1",
        "DELETE FROM ev WHERE id = 2",
        "INSERT INTO ev (id, v, j, extra) VALUES (3, 'c', '\"s\"', 8)",
    )
    second, _ = run_json(*sync, "--backup-only", cli=cli)
    ends = [doc["table_results"][table]["window"]["end"] for doc in (first, second)]
    assert second["table_results"][table]["window"]["start"] == ends[0], second
    assert pg_fetch("SELECT to_regclass($1)", f"{pg_schema}.ev")[0][0] is None  # nothing loaded yet
    doc, proc = run_json(*sync, "--load-only", cli=cli)
    check_contract(doc, [table])
    result = doc["table_results"][table]
    assert proc.returncode == 0, doc
    stages = [d["execution_id"] for d in (first, second)]
    assert result["stages_loaded"] == stages and result["rows_loaded"] == 5, result
    assert result["watermark"] == ends[1], result
    changes = result["schema_changes"]
    assert any("extra" in c for c in changes) and any("widened v" in c for c in changes), changes
    rows = pg_fetch(f'SELECT id, v, j::text, extra FROM "{pg_schema}".ev ORDER BY id')
    assert [tuple(r) for r in rows] == [
        (1, "a longer value €", "[1]", 7),
        (2, "b", None, None),  # deleted at the source: not captured by hybrid
        (3, "c", '"s"', 8),
        (18446744073709551615, "😀", "{}", None),
    ]
    again, _ = run_json(*sync, cli=cli)
    assert again["table_results"][table]["rows_processed"] == 0, again
    assert again["table_results"][table]["rows_loaded"] == 0, again
