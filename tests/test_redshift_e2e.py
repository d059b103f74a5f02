"""The Redshift path end to end: the real engine and Redshift loader, MySQL -> S3 (moto) -> the Redshift
emulation harness (PostgreSQL underneath, Redshift's COPY-Parquet rules enforced)."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import anyio

from src.config.models import S3Conn, SourceConn, TargetConn
from src.engine.run import SyncRequest, run_sync
from src.report.render import render_json
from tests.conftest import PG_DATABASE, PG_HOST, PG_PORT, PG_USER, mysql_exec, pg_fetch
from tests.e2e import REDSHIFT_ROLE, as_redshift, assert_tables_equal, check_contract, write_config
from tests.redshift_emulator import RedshiftEmulator, emulator_connect
from tests.test_cli_sync import make_orders


def redshift_target(schema: str) -> TargetConn:
    pg = TargetConn(
        name="pg",
        type="postgres",
        host=PG_HOST,
        port=PG_PORT,
        username=PG_USER,
        database=PG_DATABASE,
        schema=schema,
    )
    return as_redshift(pg, "")[0]  # in-process runs pass the emulator themselves


def sync(
    cfg: Path, tables: list[str], s3_endpoint: str, sessions: list[RedshiftEmulator]
) -> dict[str, object]:
    from src.common.jsonio import loads

    request = SyncRequest(pipeline="p", tables=tuple(tables), config_dir=cfg)
    report = anyio.run(partial(run_sync, request, redshift_connect=emulator_connect(s3_endpoint, sessions)))
    doc: dict[str, object] = loads(render_json(report))
    return doc


def test_redshift_full_sync_through_emulator(
    tmp_path: Path, source_conn: SourceConn, pg_schema: str, s3_conn: S3Conn, s3_endpoint: str, mysql_db: str
) -> None:
    make_orders(mysql_db, extra_rows=3000)
    mysql_exec(mysql_db, "CREATE TABLE empty_t (id INT PRIMARY KEY, v VARCHAR(5))")
    cfg = write_config(tmp_path / "cfg", source_conn, redshift_target(pg_schema), s3_conn)
    tables = [f"{mysql_db}.orders", f"{mysql_db}.empty_t"]
    sessions: list[RedshiftEmulator] = []
    doc = sync(cfg, tables, s3_endpoint, sessions)
    check_contract(doc, tables)
    assert doc["status"] == "success", doc
    assert (
        assert_tables_equal(
            mysql_db, "orders", pg_schema, "orders", "id", json_cols=("payload",), float32_cols=("f",)
        )
        == 3003
    )
    assert pg_fetch(f'SELECT count(*) FROM "{pg_schema}".empty_t')[0][0] == 0
    sql = [s for e in sessions for s in e.statements]
    copies = [s for s in sql if s.lstrip().upper().startswith("COPY")]
    assert len(copies) == 1, "one COPY per non-empty table, none for the empty one"
    assert "FORMAT AS PARQUET" in copies[0] and "MANIFEST" in copies[0] and REDSHIFT_ROLE in copies[0]
    assert not any("TRUNCATE" in s.upper() for s in sql)


def test_latin1_column_is_sized_for_its_utf8_bytes(
    tmp_path: Path, source_conn: SourceConn, pg_schema: str, s3_conn: S3Conn, s3_endpoint: str, mysql_db: str
) -> None:
    # latin1 'éé' is 2 bytes in MySQL but 4 in UTF-8: Redshift's VARCHAR(n) counts UTF-8 bytes.
    mysql_exec(
        mysql_db,
        "CREATE TABLE t (id INT PRIMARY KEY, v VARCHAR(2) CHARACTER SET latin1)",
        "INSERT INTO t VALUES (1, 'éé')",
    )
    cfg = write_config(tmp_path / "cfg", source_conn, redshift_target(pg_schema), s3_conn)
    doc = sync(cfg, [f"{mysql_db}.t"], s3_endpoint, [])
    assert doc["status"] == "success", doc
    assert [tuple(r) for r in pg_fetch(f'SELECT id, v FROM "{pg_schema}".t')] == [(1, "éé")]


def test_text_over_redshift_limit_fails_table_and_keeps_target(
    tmp_path: Path, source_conn: SourceConn, pg_schema: str, s3_conn: S3Conn, s3_endpoint: str, mysql_db: str
) -> None:
    """A MEDIUMTEXT value over Redshift's 65,535-byte VARCHAR limit: under the default long_text policy the
    table fails at extraction, before anything is staged, naming the column and the policy; the target
    keeps its rows. (The emulator also rejects such a value at COPY, as Redshift does: see
    test_warehouse_emulator.) With long_text: truncate the value is cut at a character boundary, counted."""
    mysql_exec(
        mysql_db, "CREATE TABLE t (id INT PRIMARY KEY, v MEDIUMTEXT)", "INSERT INTO t VALUES (1, 'ok')"
    )
    cfg = write_config(tmp_path / "cfg", source_conn, redshift_target(pg_schema), s3_conn)
    table = f"{mysql_db}.t"
    assert sync(cfg, [table], s3_endpoint, [])["status"] == "success"
    mysql_exec(mysql_db, "INSERT INTO t VALUES (2, REPEAT('x', 70000))")
    doc = sync(cfg, [table], s3_endpoint, [])
    check_contract(doc, [table])
    assert doc["status"] == "failed"
    result = doc["table_results"][table]
    assert isinstance(result, dict) and result["phase"] == "extract", result
    assert "70000 bytes" in result["error_message"] and "long_text" in result["error_message"], result
    assert [tuple(r) for r in pg_fetch(f'SELECT id, v FROM "{pg_schema}".t')] == [(1, "ok")]
    tables = {table: {"type_policies": {"long_text": "truncate"}}}
    cfg = write_config(tmp_path / "cfg2", source_conn, redshift_target(pg_schema), s3_conn, tables)
    doc = sync(cfg, [table], s3_endpoint, [])
    result = doc["table_results"][table]
    assert doc["status"] == "success" and isinstance(result, dict), doc
    assert result["coercions"] == {"v": {"truncated_to_65535_bytes": 1}}
    assert pg_fetch(f'SELECT octet_length(v) FROM "{pg_schema}".t WHERE id = 2')[0][0] == 65535


def test_redshift_incremental_merge_and_state(
    tmp_path: Path, source_conn: SourceConn, pg_schema: str, s3_conn: S3Conn, s3_endpoint: str, mysql_db: str
) -> None:
    mysql_exec(
        mysql_db,
        "CREATE TABLE ev (id BIGINT UNSIGNED PRIMARY KEY, v VARCHAR(10), updated_at DATETIME(6) NOT NULL,"
        " KEY (updated_at, id))",
        "INSERT INTO ev VALUES (1, 'a', NOW(6) - INTERVAL 1 HOUR),"
        " (18446744073709551615, 'max', NOW(6) - INTERVAL 1 HOUR)",
    )
    table = f"{mysql_db}.ev"
    tables = {table: {"cdc_strategy": "hybrid", "cdc_timestamp_column": "updated_at", "lag_seconds": 0}}
    cfg = write_config(tmp_path / "cfg", source_conn, redshift_target(pg_schema), s3_conn, tables)
    sessions: list[RedshiftEmulator] = []
    first = sync(cfg, [table], s3_endpoint, sessions)
    assert first["status"] == "success", first
    mysql_exec(
        mysql_db,
        "UPDATE ev SET v = 'b', updated_at = NOW(6) WHERE id = 1",
        "INSERT INTO ev VALUES (2, 'new', NOW(6))",
    )
    second = sync(cfg, [table], s3_endpoint, sessions)
    result = second["table_results"][table]
    assert second["status"] == "success" and isinstance(result, dict) and result["rows_processed"] == 2, (
        second
    )
    assert assert_tables_equal(mysql_db, "ev", pg_schema, "ev", "id") == 3
    states = pg_fetch(
        f'SELECT stage_id FROM "{pg_schema}".s3shift_state WHERE source_table = $1 ORDER BY seq', table
    )
    assert [s[0] for s in states] == [first["execution_id"], second["execution_id"]]
    sql = " ".join(s for e in sessions for s in e.statements).upper()
    assert "ROW_NUMBER()" in sql and "DELETE FROM" in sql and "USING" in sql


def test_redshift_names_selection_filter_and_physical_design(
    tmp_path: Path, source_conn: SourceConn, pg_schema: str, s3_conn: S3Conn, s3_endpoint: str, mysql_db: str
) -> None:
    # MySQL column names are case-insensitive, so only Redshift's system names (or a rename) can collide
    mysql_exec(
        mysql_db,
        "CREATE TABLE t (id INT PRIMARY KEY, `xmin` INT, `Mixed` INT, `select` VARCHAR(5), secret VARCHAR(5),"
        " region CHAR(2))",
        "INSERT INTO t VALUES (1, 10, 20, 'a', 'x', 'eu'), (2, 11, 21, 'b', 'y', 'us'),"
        " (3, 12, 22, 'c', 'z', 'eu')",
    )
    table = f"{mysql_db}.t"
    cfg = write_config(tmp_path / "bad", source_conn, redshift_target(pg_schema), s3_conn)
    doc = sync(cfg, [table], s3_endpoint, [])
    msg = doc["table_results"][table]
    assert doc["status"] == "failed" and isinstance(msg, dict), doc
    assert "xmin" in msg["error_message"] and "rename_columns" in msg["error_message"], msg
    tables = {
        table: {
            "rename_columns": {"xmin": "x_min"},
            "exclude_columns": ["secret"],
            "where": "region = 'eu'",
            "diststyle": "key",
            "distkey": "id",
            "sortkey": ["id"],
            "encode": {"select": "zstd"},
            "target_name": "renamed",
        }
    }
    cfg = write_config(tmp_path / "good", source_conn, redshift_target(pg_schema), s3_conn, tables)
    sessions: list[RedshiftEmulator] = []
    doc = sync(cfg, [table], s3_endpoint, sessions)
    assert doc["status"] == "success", doc["table_results"]
    query = f'SELECT id, x_min, mixed, "select" FROM "{pg_schema}".renamed ORDER BY id'
    assert [tuple(r) for r in pg_fetch(query)] == [(1, 10, 20, "a"), (3, 12, 22, "c")]
    sql = "SELECT column_name FROM information_schema.columns WHERE table_schema = $1 AND table_name = $2"
    assert "secret" not in [r[0] for r in pg_fetch(sql, pg_schema, "renamed")]
    ddl = " ".join(s for e in sessions for s in e.statements if "CREATE TABLE" in s.upper()).upper()
    assert "DISTSTYLE KEY" in ddl and "DISTKEY" in ddl and "SORTKEY" in ddl and "ENCODE ZSTD" in ddl, ddl
