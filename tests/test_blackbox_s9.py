"""Black-box checks through the public CLI, session 9: Redshift physical design (the emulator drops
DISTSTYLE/DISTKEY/SORTKEY/ENCODE, so what Redshift would refuse must be refused by s3shift itself), ..."""

from __future__ import annotations

from pathlib import Path

from src.config.models import S3Conn, SourceConn, TargetConn
from tests.conftest import mysql_exec, pg_fetch
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
