"""Table and column names users have that the code did not expect.

A ``%`` in a table or column name. A query with bound values (every incremental page, the window's
estimate) is formatted by the driver with them, so such a name failed the table as an internal error
("unsupported format character", "not enough arguments for format string"); a full_sync, which binds
nothing, read it. Now every strategy reads it, a row filter with ``%`` in a string and in a quoted name
included."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from pathlib import Path

import anyio
import pyarrow as pa
import pytest

from src.common.naming import escape_percent
from src.config.models import S3Conn, SourceConn, TargetConn
from src.plan.models import Watermark, Window
from src.source.extract import ExtractStats
from src.source.introspect import describe_table
from src.source.mysql import MySQLSource
from src.source.window import extract_window
from tests.conftest import mysql_connect, mysql_exec, pg_fetch
from tests.e2e import check_contract, run_json, write_config

TABLE = "pct%20q?"
COLUMN = "percent%s"


@pytest.mark.parametrize("strategy", ["timestamp_only", "id_only", "hybrid"])
def test_percent_in_names_syncs_incrementally(
    tmp_path: Path,
    source_conn: SourceConn,
    pg_target: TargetConn,
    s3_conn: S3Conn,
    mysql_db: str,
    pg_schema: str,
    strategy: str,
) -> None:
    mysql_exec(  # no arguments: the text is sent as written
        mysql_db,
        f"CREATE TABLE `{TABLE}` (id INT PRIMARY KEY, `{COLUMN}` "
        "VARCHAR(10), `u%d` DATETIME(6) NOT NULL, KEY (`u%d`, id))",
        f"INSERT INTO `{TABLE}` SELECT seq, IF(seq % 2, 'a%', 'b'), "
        "'2024-01-01' + INTERVAL seq SECOND FROM seq_1_to_30",
    )
    ref = f"{mysql_db}.{TABLE}"
    conf = {"cdc_strategy": strategy, "cdc_timestamp_column": "u%d", "cdc_id_column": "id", "lag_seconds": 0}
    conf["where"] = f"`{COLUMN}` LIKE 'a%' OR id % 5 = 0"
    # ranges of 8 rows: the first window (the whole table) is read by connectorx's key ranges, whose
    # SQL takes the window's bounds as text; the next, narrow one by keyset pages (bound arguments)
    processing = {"batch_size": 4, "range_rows": 8}
    cfg = write_config(tmp_path / "cfg", source_conn, pg_target, s3_conn, {ref: conf}, processing=processing)
    for last, path in ((30, "connectorx"), (34, "asyncmy")):
        doc, _ = run_json("--config-dir", str(cfg), "sync", "-p", "p", "-t", ref)
        check_contract(doc, [ref])
        result = doc["table_results"][ref]
        assert result["status"] == "success", result
        assert result["extract"]["path"] == path, result  # the README's ``extract`` on every success
        expected = [i for i in range(1, last + 1) if i % 2 or i % 5 == 0]
        rows = pg_fetch(f'SELECT id, "{COLUMN}" FROM "{pg_schema}"."{TABLE}" ORDER BY id')
        assert [tuple(r) for r in rows] == [(i, "a%" if i % 2 else "b") for i in expected]
        if last == 30:
            mysql_exec(
                mysql_db,
                f"INSERT INTO `{TABLE}` SELECT seq, IF(seq % 2, 'a%', 'b'), "
                "UTC_TIMESTAMP(6) FROM seq_31_to_34",  # after the watermark (no lag_seconds)
                f"ANALYZE TABLE `{TABLE}`",
            )


def test_escape_percent_tells_names_from_strings_and_comments() -> None:
    sql = (
        "SELECT `a%s`, `x``%` FROM `t%` WHERE `id` > %s AND (\nv LIKE 'it''s %' -- 5% don't\n) ORDER BY `p%`"
    )
    assert escape_percent(sql, names=True, rest=False) == sql.replace("`a%s`", "`a%%s`").replace(
        "`x``%`", "`x``%%`"
    ).replace("`t%`", "`t%%`").replace("`p%`", "`p%%`")
    text = "v LIKE 'a\\'%' OR `c%` = 1 OR id % 2 = 0 /* 5% */ # x%"
    assert escape_percent(text, names=False, rest=True) == (
        "v LIKE 'a\\'%%' OR `c%` = 1 OR id %% 2 = 0 /* 5%% */ # x%%"
    )


def test_slash_in_a_table_name_fails_alone_saying_how_to_sync_it(
    tmp_path: Path, source_conn: SourceConn, pg_target: TargetConn, s3_conn: S3Conn, mysql_db: str
) -> None:
    """A '/' (a legal MySQL table name) cannot be the one S3 folder of the table's stages: it failed in
    phase ``state`` with "invalid table ... for an S3 run prefix", saying neither why nor what to do. Like
    a dot, it now fails at planning with the view that reaches the table; the run's other table loads."""
    mysql_exec(mysql_db, "CREATE TABLE `a/b` (id INT PRIMARY KEY)", "CREATE TABLE ok (id INT PRIMARY KEY)")
    tables = [f"{mysql_db}.a/b", f"{mysql_db}.ok"]
    cfg = write_config(tmp_path / "cfg", source_conn, pg_target, s3_conn)
    doc, _ = run_json("--config-dir", str(cfg), "sync", "-p", "p", "-t", tables[0], "-t", tables[1])
    check_contract(doc, tables)
    result = doc["table_results"][tables[0]]
    assert (result["phase"], result["retryable"]) == ("plan", False), result
    view = f"CREATE VIEW `{mysql_db}`.`a_b` AS SELECT * FROM `{mysql_db}`.`a/b`, then -t {mysql_db}.a_b"
    assert "holds a '/'" in result["error_message"] and view in result["error_message"], result
    assert doc["table_results"][tables[1]]["status"] == "success", doc


@pytest.mark.anyio
async def test_binary_key_pages_on_a_server_without_backslash_escapes(
    source_conn: SourceConn, mysql_db: str
) -> None:
    """A server whose sql_mode has NO_BACKSLASH_ESCAPES: asyncmy still escapes a bytes argument with
    backslashes, so a keyset page after a BINARY key holding 0x27 (') failed with a syntax error, and one
    holding 0x5c (\\) compared with another value (rows skipped or read twice). Such keys are bound as hex."""
    keys = [bytes([i, 0x27, 0x5C, 0]) + bytes(12) for i in range(40)] + [b"\\" * 16, b"'" * 16]
    mysql_exec(mysql_db, "CREATE TABLE bk (id BINARY(16) PRIMARY KEY, ts DATETIME NOT NULL, KEY (ts, id))")
    conn = mysql_connect(mysql_db)
    with conn.cursor() as cur:
        cur.executemany("INSERT INTO bk VALUES (%s, '2024-01-01')", [(k,) for k in keys])
    conn.close()
    window = Window("timestamp_only", ts_column="ts", end=Watermark(ts=datetime(2025, 1, 1)))
    got: list[bytes] = []
    send, receive = anyio.create_memory_object_stream[pa.RecordBatch](1)
    async with MySQLSource(source_conn) as src, src.connection() as conn:
        await conn.execute("SET SESSION sql_mode = CONCAT(@@sql_mode, ',NO_BACKSLASH_ESCAPES')")
        schema = await describe_table(conn, mysql_db, "bk")
        async with anyio.create_task_group() as tg:
            read = extract_window(
                conn, mysql_db, "bk", schema, send, window=window, batch_size=3, stats=ExtractStats()
            )
            tg.start_soon(lambda: read)
            async with receive:
                async for batch in receive:
                    got += batch.column("id").to_pylist()
    assert sorted(got) == sorted(keys)


def test_json_column_holding_text_that_is_not_json_names_the_column_and_the_fix(
    tmp_path: Path, source_conn: SourceConn, pg_target: TargetConn, s3_conn: S3Conn, mysql_db: str
) -> None:
    """MariaDB's JSON is LONGTEXT with a JSON_VALID check that ``check_constraint_checks=0`` (or a restored
    dump) bypasses. Such a value failed the load with PostgreSQL's bare "invalid input syntax for type
    json", naming neither the column nor what to do; it still fails (no value is guessed), saying both."""
    mysql_exec(
        mysql_db,
        "CREATE TABLE bj (id INT PRIMARY KEY, j JSON)",
        "SET check_constraint_checks = 0",
        "INSERT INTO bj VALUES (1, '{\"a\": 1}'), (2, 'not json')",
    )
    ref = f"{mysql_db}.bj"
    cfg = write_config(tmp_path / "cfg", source_conn, pg_target, s3_conn)
    doc, _ = run_json("--config-dir", str(cfg), "sync", "-p", "p", "-t", ref)
    check_contract(doc, [ref])
    result = doc["table_results"][ref]
    assert (result["phase"], result["retryable"]) == ("load", False), result
    assert "(column 'j')" in result["error_message"], result
    assert "WHERE NOT JSON_VALID(column)" in result["error_message"], result


@pytest.mark.parametrize("driver", ["asyncmy", "aiomysql"])
def test_view_mysql_cannot_resolve_is_not_reported_as_missing(
    tmp_path: Path,
    source_conn: SourceConn,
    pg_target: TargetConn,
    s3_conn: S3Conn,
    mysql_db: str,
    driver: str,
) -> None:
    """A view whose table was dropped has no columns in the catalog: it failed as "table ... not found —
    check the database and table names", though the name is right. It says the view cannot be read, why,
    and what to do; a name that does not exist keeps its message."""
    mysql_exec(
        mysql_db,
        "CREATE TABLE base (id INT PRIMARY KEY)",
        "CREATE VIEW v AS SELECT * FROM base",
        "DROP TABLE base",
    )
    tables = [f"{mysql_db}.v", f"{mysql_db}.nope"]
    cfg = write_config(tmp_path / "cfg", replace(source_conn, driver=driver), pg_target, s3_conn)
    doc, proc = run_json("--config-dir", str(cfg), "sync", "-p", "p", "-t", tables[0], "-t", tables[1])
    check_contract(doc, tables)
    view, nope = (doc["table_results"][t] for t in tables)
    assert (view["phase"], view["retryable"]) == ("introspect", False), view
    assert view["error_message"].startswith(f"view {mysql_db}.v of MySQL source"), view
    assert f"SHOW CREATE VIEW `{mysql_db}`.`v`" in view["error_message"], view
    assert "not found" in nope["error_message"], nope
    # stderr holds s3shift's lines only: the driver logged MySQL's warning 1356 raw there, twice
    raw = "references invalid table(s) or column(s) or function(s)"
    assert raw not in proc.stderr, proc.stderr
    doc, proc = run_json("--config-dir", str(cfg), "sync", "-p", "p", "-t", tables[0], "--verbose")
    assert raw in proc.stderr and f"DEBUG {driver}: View " in proc.stderr, proc.stderr  # --verbose shows it


def test_zero_dates_of_a_view_are_not_counted_as_null_cursors(
    tmp_path: Path, source_conn: SourceConn, pg_target: TargetConn, s3_conn: S3Conn, mysql_db: str
) -> None:
    """A view (as the README suggests for a dotted name) over a legacy table whose NOT NULL cursor holds
    zero dates: MySQL's ``IS NULL`` matches those, so the result said ``null_cursor_rows: 2`` and stderr
    that 2 rows are never read, though the first window read and loaded them (NULL, counted as
    ``zero_date_to_null``). The real NULLs of a nullable cursor are still counted."""
    mysql_exec(
        mysql_db,
        "SET sql_mode = ''",
        "CREATE TABLE legacy (id INT PRIMARY KEY, ts DATETIME NOT NULL DEFAULT '0000-00-00', KEY (ts, id))",
        "INSERT INTO legacy (id) VALUES (1), (2)",
        "INSERT INTO legacy VALUES (3, '2024-01-01')",
        "CREATE VIEW lv AS SELECT * FROM legacy",
        "CREATE TABLE nullable (id INT PRIMARY KEY, ts DATETIME NULL, KEY (ts, id))",
        "INSERT INTO nullable VALUES (1, '0000-00-00'), (2, NULL), (3, '2024-01-01')",
    )
    strategy = {"cdc_strategy": "hybrid", "cdc_timestamp_column": "ts", "cdc_id_column": "id"}
    tables = {f"{mysql_db}.lv": strategy, f"{mysql_db}.nullable": strategy}
    cfg = write_config(tmp_path / "cfg", source_conn, pg_target, s3_conn, tables)
    doc, proc = run_json("--config-dir", str(cfg), "sync", "-p", "p", *[a for t in tables for a in ("-t", t)])
    check_contract(doc, list(tables))
    view, table = (doc["table_results"][t] for t in tables)
    assert view["rows_processed"] == 3 and "null_cursor_rows" not in view, view
    assert view["coercions"] == {"ts": {"zero_date_to_null": 2}}, view
    assert table["rows_processed"] == 2 and table["null_cursor_rows"] == 1, table
    assert f"{mysql_db}.lv: " not in proc.stderr, proc.stderr
