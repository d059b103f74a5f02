"""A table whose load the warehouse would refuse (a sortkey or encode naming no column of the target, an
ENCODE its type does not take, a column name the warehouse cannot hold) fails in a normal sync as soon as
its source schema is known: phase ``plan``, not retryable, with the load's own message, before a row is
read or an S3 object written; the run's other tables load. ``--dry-run`` says the same; ``--backup-only``
still stages it (the load then fails as it always did)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from src.config.models import S3Conn, SourceConn, TargetConn
from tests.conftest import mysql_exec, pg_fetch, s3_client
from tests.e2e import CLI, as_redshift, check_contract, run_json, write_config

ROWS = 2000
BAD_SORTKEY = "sortkey column 'nope' is not a column of"
BAD_ENCODE = "v (VARCHAR(40)): AZ64"


def _tables(db: str, *names: str) -> None:
    """Tables ``(id, v VARCHAR(10), f DOUBLE)`` of ``ROWS`` rows each."""
    fill = "INSERT INTO {0} SELECT seq, CONCAT('v', seq), seq / 2 FROM seq_1_to_{1}"
    for name in names:
        mysql_exec(
            db,
            f"CREATE TABLE {name} (id INT PRIMARY KEY, v VARCHAR(10), f DOUBLE)",
            fill.format(name, ROWS),
        )


def _staged(s3: S3Conn, db: str, table: str) -> list[str]:
    """Every object under the table's prefix (``<prefix><pipeline>/<db.table>/``)."""
    prefix = f"{s3.prefix}p/{db}.{table}/"
    listing = s3_client(s3.endpoint_url or "").list_objects_v2(Bucket=s3.bucket, Prefix=prefix)
    return [o["Key"] for o in listing.get("Contents", [])]


def _exists(qualified: str) -> bool:
    return pg_fetch("SELECT to_regclass($1)", qualified)[0][0] is not None


def _sync(cfg: Path, tables: list[str], *extra: str, cli: tuple[str, ...] = CLI) -> dict[str, Any]:
    args = [a for t in tables for a in ("-t", t)]
    doc, _ = run_json("--config-dir", str(cfg), "sync", "-p", "p", *args, *extra, cli=cli)
    return doc


def _redshift_config(
    tmp_path: Path, source_conn: SourceConn, pg_target: TargetConn, s3_conn: S3Conn, s3_endpoint: str, db: str
) -> tuple[Path, tuple[str, ...]]:
    tables = {
        f"{db}.bad_sortkey": {"sortkey": ["id", "nope"]},
        f"{db}.bad_encode": {"encode": {"v": "AZ64", "id": "ZSTD"}},
        f"{db}.fits": {"sortkey": ["id"], "encode": {"v": "ZSTD"}},
    }
    target, cli = as_redshift(pg_target, s3_endpoint)
    return write_config(tmp_path / "cfg", source_conn, target, s3_conn, tables), cli


def test_redshift_design_the_load_would_refuse_fails_before_anything_is_staged(
    tmp_path: Path,
    source_conn: SourceConn,
    pg_target: TargetConn,
    s3_conn: S3Conn,
    s3_endpoint: str,
    mysql_db: str,
    pg_schema: str,
) -> None:
    """A sortkey naming no column and an ENCODE a VARCHAR does not take fail the sync in phase ``plan``,
    not retryable: nothing staged under the table's prefix, no target, no state; the table that fits
    loads. The message is the load's own: ``--backup-only`` then ``--load-only`` fails with it, phase
    ``load``."""
    _tables(mysql_db, "bad_sortkey", "bad_encode", "fits")
    cfg, cli = _redshift_config(tmp_path, source_conn, pg_target, s3_conn, s3_endpoint, mysql_db)
    tables = [f"{mysql_db}.bad_sortkey", f"{mysql_db}.bad_encode", f"{mysql_db}.fits"]
    doc = _sync(cfg, tables, cli=cli)
    check_contract(doc, tables)
    results = doc["table_results"]
    assert doc["status"] == "partial_success", results
    assert results[f"{mysql_db}.fits"]["status"] == "success", results
    assert results[f"{mysql_db}.fits"]["rows_processed"] == ROWS
    early = {}
    for name, expected in (("bad_sortkey", BAD_SORTKEY), ("bad_encode", BAD_ENCODE)):
        result = results[f"{mysql_db}.{name}"]
        assert (result["status"], result["phase"], result["retryable"]) == ("failed", "plan", False), result
        assert expected in result["error_message"], result
        assert _staged(s3_conn, mysql_db, name) == [], name  # not a file, not a manifest
        assert not _exists(f"{pg_schema}.{name}"), name
        early[name] = result["error_message"]
    assert "id (INTEGER)" not in early["bad_encode"]  # ZSTD fits an INTEGER
    assert _staged(s3_conn, mysql_db, "fits"), "the table that fits is staged"
    assert pg_fetch(f'SELECT count(*) FROM "{pg_schema}".fits')[0][0] == ROWS
    state = pg_fetch(f'SELECT DISTINCT source_table FROM "{pg_schema}".s3shift_state')
    assert [r[0] for r in state] == [f"{mysql_db}.fits"]

    # --backup-only still stages them (the backup is useful); the load then refuses them as before
    bad = tables[:2]
    backup = _sync(cfg, bad, "--backup-only", cli=cli)
    assert backup["status"] == "success", backup
    for name in early:
        assert any(k.endswith("manifest.json") for k in _staged(s3_conn, mysql_db, name)), name
    loaded = _sync(cfg, bad, "--load-only", cli=cli)
    for name, message in early.items():
        result = loaded["table_results"][f"{mysql_db}.{name}"]
        assert (result["phase"], result["retryable"]) == ("load", False), result
        assert result["error_message"].startswith(message), (result, message)
        assert not _exists(f"{pg_schema}.{name}"), name


def test_dry_run_reports_the_same_error(
    tmp_path: Path,
    source_conn: SourceConn,
    pg_target: TargetConn,
    s3_conn: S3Conn,
    s3_endpoint: str,
    mysql_db: str,
) -> None:
    """``--dry-run`` reports each such table as an error with the message the sync fails it with."""
    _tables(mysql_db, "bad_sortkey", "bad_encode", "fits")
    cfg, cli = _redshift_config(tmp_path, source_conn, pg_target, s3_conn, s3_endpoint, mysql_db)
    tables = [f"{mysql_db}.bad_sortkey", f"{mysql_db}.bad_encode", f"{mysql_db}.fits"]
    plan = _sync(cfg, tables, "--dry-run", cli=cli)
    doc = _sync(cfg, tables, cli=cli)
    for name in ("bad_sortkey", "bad_encode"):
        planned, ran = plan["tables"][f"{mysql_db}.{name}"], doc["table_results"][f"{mysql_db}.{name}"]
        assert planned["status"] == "error", planned
        assert ran["phase"] == "plan", ran
        assert planned["error_message"] == ran["error_message"], (planned, ran)
    assert plan["tables"][f"{mysql_db}.fits"]["status"] == "planned"


def test_postgres_column_name_it_cannot_hold_fails_an_incremental_sync_before_staging(
    tmp_path: Path,
    source_conn: SourceConn,
    pg_target: TargetConn,
    s3_conn: S3Conn,
    mysql_db: str,
    pg_schema: str,
) -> None:
    """On PostgreSQL (63-byte names) a column renamed to 70 characters fails an incremental sync, which
    loads from the complete stage, in phase ``plan``: nothing staged, no target; another table loads."""
    _tables(mysql_db, "long_name", "ok")
    long = "c" * 70
    strategy = {"cdc_strategy": "id_only", "cdc_id_column": "id"}
    tables = {
        f"{mysql_db}.long_name": {**strategy, "rename_columns": {"v": long}},
        f"{mysql_db}.ok": strategy,
    }
    cfg = write_config(tmp_path / "cfg", source_conn, pg_target, s3_conn, tables)
    doc = _sync(cfg, list(tables))
    check_contract(doc, list(tables))
    result = doc["table_results"][f"{mysql_db}.long_name"]
    assert (result["status"], result["phase"], result["retryable"]) == ("failed", "plan", False), result
    assert f"{long!r} is longer than 63 bytes" in result["error_message"], result
    assert "rename_columns" in result["error_message"], result
    assert _staged(s3_conn, mysql_db, "long_name") == []
    assert not _exists(f"{pg_schema}.long_name")
    assert doc["table_results"][f"{mysql_db}.ok"]["status"] == "success", doc
    assert pg_fetch(f'SELECT count(*) FROM "{pg_schema}".ok')[0][0] == ROWS


def test_two_columns_renamed_to_one_name_fail_before_staging(
    tmp_path: Path,
    source_conn: SourceConn,
    pg_target: TargetConn,
    s3_conn: S3Conn,
    mysql_db: str,
    pg_schema: str,
) -> None:
    """``rename_columns`` giving one target name to two columns (two renames, or a rename onto a column the
    table has) failed only in the load, phase ``load``, with PostgreSQL's raw "column specified more than
    once", after the whole table was read and staged. It is the early check's: phase ``plan``, naming the
    column and rename_columns; nothing staged, no target; another table loads."""
    _tables(mysql_db, "two", "onto", "ok")
    tables = {
        f"{mysql_db}.two": {"rename_columns": {"v": "x", "f": "x"}},
        f"{mysql_db}.onto": {"rename_columns": {"v": "id"}},
        f"{mysql_db}.ok": {},
    }
    cfg = write_config(tmp_path / "cfg", source_conn, pg_target, s3_conn, tables)
    doc = _sync(cfg, list(tables))
    check_contract(doc, list(tables))
    for name, column in (("two", "'x'"), ("onto", "'id'")):
        result = doc["table_results"][f"{mysql_db}.{name}"]
        assert (result["status"], result["phase"], result["retryable"]) == ("failed", "plan", False), result
        message = result["error_message"]
        assert f"{column} would name more than one column" in message and "rename_columns" in message, result
        assert _staged(s3_conn, mysql_db, name) == []
        assert not _exists(f"{pg_schema}.{name}")
    assert doc["table_results"][f"{mysql_db}.ok"]["status"] == "success", doc
