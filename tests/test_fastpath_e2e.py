"""The connectorx fast path end to end through the public CLI: MySQL -> S3 -> PostgreSQL, value by value,
for a full sync and for id_only windows, and the report saying which path read the table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from src.config.models import S3Conn, SourceConn, TargetConn
from tests.conftest import mysql_exec, mysql_rows
from tests.e2e import assert_tables_equal, run_json, write_config

ORDERS = """CREATE TABLE orders (
  id BIGINT NOT NULL PRIMARY KEY, customer_id INT NOT NULL, status VARCHAR(16) NOT NULL,
  amount DECIMAL(12,2) NOT NULL, currency CHAR(3) NOT NULL, created_at DATETIME(6) NOT NULL,
  updated_at TIMESTAMP(6) NULL, note VARCHAR(200) NULL, quantity SMALLINT NOT NULL,
  weight DOUBLE NOT NULL, is_gift TINYINT(1) NOT NULL, ship_date DATE NULL, payload JSON NULL,
  raw VARBINARY(8) NULL, f FLOAT NULL) CHARACTER SET utf8mb4"""
FILL = """INSERT INTO orders SELECT seq * 3, seq % 100, ELT(1 + seq % 4, 'new', 'paid', 'shipped', 'dône'),
  (seq % 100000) / 100, 'EUR', '2024-01-01' + INTERVAL seq SECOND, '2024-06-01' + INTERVAL seq MICROSECOND,
  IF(seq % 3 = 0, NULL, CONCAT('note 😀 ', seq)), seq % 50, seq / 7, seq % 2,
  IF(seq % 5 = 0, NULL, '2024-01-01' + INTERVAL (seq % 365) DAY), IF(seq % 4 = 0, NULL, '{"k": [1, 2]}'),
  IF(seq % 6 = 0, NULL, UNHEX('00FF10')), seq / 3 FROM seq_LOW_to_HIGH"""


def fill(low: int, high: int) -> str:
    return FILL.replace("LOW", str(low)).replace("HIGH", str(high))


def config(
    tmp: Path,
    source: SourceConn,
    target: TargetConn,
    s3: S3Conn,
    tables: dict[str, dict[str, str]],
    **more: Any,
) -> Path:
    processing = {
        "range_rows": 300,
        **more,
    }  # small ranges: a 2,000-row table takes the fast path in 7 ranges
    return write_config(tmp / "config", source, target, s3, tables, processing=processing)


def test_full_sync_through_key_ranges_matches_the_source(
    tmp_path: Path,
    source_conn: SourceConn,
    pg_target: TargetConn,
    s3_conn: S3Conn,
    mysql_db: str,
    pg_schema: str,
) -> None:
    mysql_exec(mysql_db, ORDERS, fill(1, 2000), "ANALYZE TABLE orders")
    mysql_exec(
        mysql_db, "SET SESSION sql_mode = ''", "UPDATE orders SET ship_date = '0000-00-00' WHERE id = 300"
    )
    table = f"{mysql_db}.orders"
    cfg = config(tmp_path, source_conn, pg_target, s3_conn, {table: {"cdc_strategy": "full_sync"}})
    plan, proc = run_json("--config-dir", str(cfg), "sync", "-p", "p", "-t", table, "--dry-run")
    assert proc.returncode == 0, plan
    assert plan["tables"][table]["extract_path"] == "connectorx: primary-key ranges read in parallel"
    doc, proc = run_json("--config-dir", str(cfg), "sync", "-p", "p", "-t", table)
    assert proc.returncode == 0, doc
    result = doc["table_results"][table]
    assert result["rows_processed"] == 2000
    assert result["extract"]["path"] == "connectorx" and result["extract"]["ranges"] >= 6
    assert "fallbacks" not in result["extract"], result["extract"]  # the guard made it NULL, counted
    assert result["extract"]["guarded_dates"] is True  # connectorx panicked on the zero date
    assert "panicked" not in proc.stderr and "backtrace" not in proc.stderr, proc.stderr  # its report dropped
    assert result["coercions"] == {"ship_date": {"zero_date_to_null": 1}}
    mysql_exec(mysql_db, "SET SESSION sql_mode = ''", "UPDATE orders SET ship_date = NULL WHERE id = 300")
    assert (
        assert_tables_equal(
            mysql_db, "orders", pg_schema, "orders", "id", json_cols=("payload",), float32_cols=("f",)
        )
        == 2000
    )


@pytest.mark.parametrize("fast_path", [True, False])
def test_id_only_windows_through_key_ranges(
    tmp_path: Path,
    source_conn: SourceConn,
    pg_target: TargetConn,
    s3_conn: S3Conn,
    mysql_db: str,
    pg_schema: str,
    fast_path: bool,
) -> None:
    mysql_exec(mysql_db, ORDERS, fill(1, 1500), "ANALYZE TABLE orders")
    table = f"{mysql_db}.orders"
    tables = {table: {"cdc_strategy": "id_only", "cdc_id_column": "id"}}
    cfg = config(tmp_path, source_conn, pg_target, s3_conn, tables, fast_path=fast_path)
    doc, proc = run_json("--config-dir", str(cfg), "sync", "-p", "p", "-t", table)
    assert proc.returncode == 0, doc
    first = doc["table_results"][table]
    assert first["rows_processed"] == 1500 and first["watermark"]["id"] == 4500
    mysql_exec(mysql_db, fill(1501, 2600), "ANALYZE TABLE orders")
    doc, proc = run_json("--config-dir", str(cfg), "sync", "-p", "p", "-t", table)
    assert proc.returncode == 0, doc
    second = doc["table_results"][table]
    assert second["rows_processed"] == 1100 and second["window"]["start"]["id"] == 4500
    if fast_path:
        assert first["extract"]["path"] == second["extract"]["path"] == "connectorx"
        assert second["extract"]["ranges"] >= 3
    else:
        assert first["extract"] == {"path": "asyncmy", "reason": "processing.fast_path is off"}
    assert (
        assert_tables_equal(
            mysql_db, "orders", pg_schema, "orders", "id", json_cols=("payload",), float32_cols=("f",)
        )
        == 2600
    )


@pytest.mark.parametrize("strategy", ["timestamp_only", "hybrid", "hybrid on a column not the key"])
def test_timestamp_windows_through_key_ranges(
    tmp_path: Path,
    source_conn: SourceConn,
    pg_target: TargetConn,
    s3_conn: S3Conn,
    mysql_db: str,
    pg_schema: str,
    strategy: str,
) -> None:
    """A timestamp window that starts at the beginning (a first sync) or holds most of the table is read
    by key ranges, its predicate a filter beside the row filter: exactly the rows its keyset pages read
    (no NULL cursor, none past the window's end); a narrow one still reads keyset pages."""
    mysql_exec(
        mysql_db,
        ORDERS,
        fill(1, 2000),
        "ALTER TABLE orders ADD INDEX (updated_at, id)",
        "UPDATE orders SET updated_at = NULL WHERE id % 17 = 0",
        "UPDATE orders SET updated_at = UTC_TIMESTAMP(6) + INTERVAL 1 DAY WHERE id % 29 = 0",
        "SET SESSION sql_mode = ''",
        "UPDATE orders SET ship_date = '0000-00-00' WHERE id = 300",
        "ANALYZE TABLE orders",
    )
    table = f"{mysql_db}.orders"
    cursor: dict[str, str] = {"cdc_strategy": strategy.split()[0], "cdc_timestamp_column": "updated_at"}
    if strategy.startswith("hybrid"):  # (updated_at, id), or (updated_at, customer_id) repeating
        cursor["cdc_id_column"] = "id" if strategy == "hybrid" else "customer_id"
    tables = {table: {**cursor, "where": "customer_id <> 7", "lag_seconds": "0"}}
    cfg = config(tmp_path, source_conn, pg_target, s3_conn, tables)
    # what every window up to now holds: the target must equal it (the zero date arrives NULL)
    mysql_exec(
        mysql_db,
        "CREATE VIEW expected AS SELECT id, customer_id, status, amount, currency, created_at, updated_at, "
        "note, quantity, weight, is_gift, NULLIF(ship_date, '0000-00-00') AS ship_date, payload, raw, f "
        "FROM orders WHERE updated_at <= UTC_TIMESTAMP(6) AND customer_id <> 7",
    )

    def sync() -> dict[str, Any]:
        doc, proc = run_json("--config-dir", str(cfg), "sync", "-p", "p", "-t", table)
        assert proc.returncode == 0, doc
        result: dict[str, Any] = doc["table_results"][table]
        return result

    def check() -> None:
        expected = mysql_rows(mysql_db, "SELECT COUNT(*) FROM expected")[0][0]
        got = assert_tables_equal(
            mysql_db, "expected", pg_schema, "orders", "id", json_cols=("payload",), float32_cols=("f",)
        )
        assert got == expected

    plan, proc = run_json("--config-dir", str(cfg), "sync", "-p", "p", "-t", table, "--dry-run")
    assert proc.returncode == 0, plan
    assert plan["tables"][table]["extract_path"] == "connectorx: primary-key ranges read in parallel"
    first = sync()
    assert first["extract"]["path"] == "connectorx" and first["extract"]["ranges"] >= 6, first["extract"]
    assert first["extract"]["guarded_dates"] is True  # the zero date: the guard kept the window's filter
    nulls = mysql_rows(mysql_db, "SELECT COUNT(*) FROM orders WHERE updated_at IS NULL AND customer_id <> 7")
    assert first["null_cursor_rows"] == nulls[0][0] > 0
    check()

    # a narrow window (a fifth of the table): its keyset pages read it through the index on the cursor
    mysql_exec(
        mysql_db,
        "UPDATE orders SET note = 'moved', updated_at = UTC_TIMESTAMP(6) WHERE id <= 1200",
        "ANALYZE TABLE orders",
    )
    second = sync()
    if strategy == "hybrid on a column not the key":  # no index serves (updated_at, customer_id): the
        # optimizer's estimate is a scan of the whole table, which the key ranges make once
        assert second["extract"]["path"] == "connectorx", second["extract"]
    else:
        assert second["extract"]["path"] == "asyncmy" and "keyset pages" in second["extract"]["reason"]
    check()

    # most of the table changed: key ranges again, from the watermark on
    mysql_exec(
        mysql_db,
        "UPDATE orders SET note = 'wide', updated_at = UTC_TIMESTAMP(6) "
        "WHERE id % 10 <> 0 AND updated_at IS NOT NULL AND updated_at < UTC_TIMESTAMP(6)",
        "ANALYZE TABLE orders",
    )
    third = sync()
    assert third["extract"]["path"] == "connectorx", third["extract"]
    assert third["window"]["start"] == second["watermark"]
    check()


LINES = """CREATE TABLE order_lines (
  order_id INT NOT NULL, line_no LINE NOT NULL, amount DECIMAL(12,2) NOT NULL,
  updated_at DATETIME(6) NOT NULL, ship_date DATE NULL, note VARCHAR(50) NULL,
  PRIMARY KEY (order_id, line_no)) CHARACTER SET utf8mb4"""
# 600 orders of 4 lines, then one order of 900 lines: more than a worker holds (twice range_rows), read
# by ranges of line_no, or streamed by asyncmy when line_no is no integer
LINES_FILL = """INSERT INTO order_lines
  SELECT IF(seq < 2400, seq DIV 4, 100000), IF(seq < 2400, seq % 4, seq), (seq % 10000) / 100,
  '2024-01-01' + INTERVAL seq SECOND,
  IF(seq % 5 = 0, NULL, '2024-01-01' + INTERVAL (seq % 365) DAY), IF(seq % 3 = 0, NULL, CONCAT('l ', seq))
  FROM seq_0_to_3299"""


@pytest.mark.parametrize(
    ("strategy", "line"),
    [("full_sync", "SMALLINT"), ("timestamp_only", "SMALLINT"), ("full_sync", "VARCHAR(8)")],
)
def test_composite_key_through_ranges_of_its_first_column(
    tmp_path: Path,
    source_conn: SourceConn,
    pg_target: TargetConn,
    s3_conn: S3Conn,
    mysql_db: str,
    pg_schema: str,
    strategy: str,
    line: str,
) -> None:
    """A key like (order_id, line_no) is split on its first column: every row read once, value by value.
    A year-0 date makes a range hand over after some of its batches were converted: none of them was
    sent (its rest could not start inside one order). An order too big for a worker is read by ranges of
    line_no, or streamed by asyncmy when line_no is text."""
    mysql_exec(
        mysql_db,
        LINES.replace("LINE", line),
        LINES_FILL,
        "SET SESSION sql_mode = ''",
        "UPDATE order_lines SET ship_date = '0000-01-01' WHERE order_id = 40 AND line_no = 2",
        "ANALYZE TABLE order_lines",
    )
    table = f"{mysql_db}.order_lines"
    spec = {"cdc_strategy": strategy, "lag_seconds": "0"}
    if strategy != "full_sync":
        spec["cdc_timestamp_column"] = "updated_at"
    cfg = config(
        tmp_path, source_conn, pg_target, s3_conn, {table: spec}, batch_size=90
    )  # batches end inside an order
    plan, proc = run_json("--config-dir", str(cfg), "sync", "-p", "p", "-t", table, "--dry-run")
    assert proc.returncode == 0, plan
    assert plan["tables"][table]["extract_path"] == "connectorx: primary-key ranges read in parallel"
    doc, proc = run_json("--config-dir", str(cfg), "sync", "-p", "p", "-t", table)
    assert proc.returncode == 0, doc
    result = doc["table_results"][table]
    assert result["rows_processed"] == 3300
    extract = result["extract"]
    assert extract["path"] == "connectorx" and extract["ranges"] >= 6, extract
    assert "a zero or invalid date" in extract["fallbacks"], extract
    streamed = [f for f in extract["fallbacks"] if "rows share the key value (100000): streamed" in f]
    assert len(streamed) == (line != "SMALLINT"), extract
    assert result["coercions"] == {"ship_date": {"zero_date_to_null": 1}}
    mysql_exec(
        mysql_db,
        "SET SESSION sql_mode = ''",
        "UPDATE order_lines SET ship_date = NULL WHERE ship_date = '0000-01-01'",
    )
    assert (
        assert_tables_equal(mysql_db, "order_lines", pg_schema, "order_lines", ("order_id", "line_no"))
        == 3300
    )
    if strategy == "full_sync":
        return
    # most lines changed: a wide window, read by key ranges from the watermark on, merged on the whole key
    mysql_exec(
        mysql_db,
        "UPDATE order_lines SET note = 'wide', updated_at = UTC_TIMESTAMP(6) WHERE line_no % 4 <> 3",
        "ANALYZE TABLE order_lines",
    )
    doc, proc = run_json("--config-dir", str(cfg), "sync", "-p", "p", "-t", table)
    assert proc.returncode == 0, doc
    second = doc["table_results"][table]
    assert second["extract"]["path"] == "connectorx", second["extract"]
    assert (
        second["rows_processed"]
        == mysql_rows(mysql_db, "SELECT COUNT(*) FROM order_lines WHERE note = 'wide'")[0][0]
    )
    assert (
        assert_tables_equal(mysql_db, "order_lines", pg_schema, "order_lines", ("order_id", "line_no"))
        == 3300
    )


CODES = """CREATE TABLE codes (
  code VARCHAR(20) NOT NULL, n INT NOT NULL, d DATETIME(6) NULL, amount DECIMAL(30,12) NOT NULL,
  note VARCHAR(40) NULL, PRIMARY KEY (COLS)) CHARACTER SET utf8mb4 COLLATE utf8mb4_general_ci"""
# codes that sort by the collation, not by their bytes ('É' before 'z', 'B' before 'o'), a % and a quote
CODES_FILL = """INSERT INTO codes
  SELECT CONCAT(ELT(1 + seq % 5, 'a%', 'o''', 'É', 'z', 'B'), LPAD(seq DIV 2, 5, '0')),
  seq % 2, '2024-01-01' + INTERVAL seq MINUTE, seq / 7, IF(seq % 9 = 0, 'skip %', CONCAT('n ', seq))
  FROM seq_0_to_2999"""


@pytest.mark.parametrize(
    ("strategy", "key", "bad"),
    [("full_sync", "code", "0000-01-01"), ("full_sync", "code, n", "0000-00-00"),
     ("timestamp_only", "code", "0000-01-01")],
)  # fmt: skip
def test_text_key_through_keyset_pages(
    tmp_path: Path,
    source_conn: SourceConn,
    pg_target: TargetConn,
    s3_conn: S3Conn,
    mysql_db: str,
    pg_schema: str,
    strategy: str,
    key: str,
    bad: str,
) -> None:
    """A key whose first column is text is read by connectorx in keyset pages, each after the last key
    of the one before, written into its SQL as hex literals compared in the column's collation ('É'
    before 'z', a % and a quote in the keys), beside a row filter holding a %. A zero date part way
    switches the pages to the guard; a year-0 date (which connectorx reads, Python cannot hold) hands
    the rest to the canonical path after the last key sent. Every row once, value by value."""
    mysql_exec(
        mysql_db,
        CODES.replace("COLS", key),
        CODES_FILL,
        "SET SESSION sql_mode = ''",
        f"UPDATE codes SET d = '{bad}' WHERE code = 'o''00500'",  # in the 4th fifth, in key order
        "ANALYZE TABLE codes",
    )
    table = f"{mysql_db}.codes"
    spec = {"cdc_strategy": strategy, "lag_seconds": "0", "where": "note NOT LIKE '%skip%'"}
    if strategy != "full_sync":
        spec["cdc_timestamp_column"] = "d"
    cfg = config(tmp_path, source_conn, pg_target, s3_conn, {table: spec}, batch_size=100)
    plan, proc = run_json("--config-dir", str(cfg), "sync", "-p", "p", "-t", table, "--dry-run")
    assert proc.returncode == 0, plan
    assert plan["tables"][table]["extract_path"] == "connectorx: keyset pages in primary-key order"
    doc, proc = run_json("--config-dir", str(cfg), "sync", "-p", "p", "-t", table)
    assert proc.returncode == 0, doc
    result = doc["table_results"][table]
    extract = result["extract"]
    assert extract["path"] == "connectorx" and extract["pages"] >= 5, extract
    if bad == "0000-00-00":  # connectorx panicked: the pages went on through the guard
        assert extract["guarded_dates"] is True and "fallbacks" not in extract, extract
    else:
        assert extract["fallbacks"] == ["a zero or invalid date"] and "guarded_dates" not in extract, extract
    assert result["coercions"] == {"d": {"zero_date_to_null": 1}}  # a first window holds it too
    view = (
        "SELECT code, n, IF(YEAR(d) = 0, NULL, d) AS d, amount, note FROM codes WHERE note NOT LIKE '%skip%'"
    )
    mysql_exec(mysql_db, f"CREATE VIEW expected AS {view}")
    rows = mysql_rows(mysql_db, "SELECT COUNT(*) FROM expected")[0][0]
    assert result["rows_processed"] == rows > 2000
    keys = tuple(k.strip() for k in key.split(","))
    assert assert_tables_equal(mysql_db, "expected", pg_schema, "codes", keys) == rows


def test_a_zero_date_under_zero_date_fail_fails_the_table_naming_it(
    tmp_path: Path, source_conn: SourceConn, pg_target: TargetConn, s3_conn: S3Conn, mysql_db: str
) -> None:
    """The guard makes a zero date NULL; under ``zero_date: fail`` its batch goes to the canonical path,
    whose error names the column and the value, as without the fast path."""
    mysql_exec(mysql_db, ORDERS, fill(1, 2000), "ANALYZE TABLE orders")
    mysql_exec(mysql_db, "SET SESSION sql_mode = ''", "UPDATE orders SET ship_date = 0 WHERE id = 3000")
    table = f"{mysql_db}.orders"
    spec: dict[str, Any] = {"cdc_strategy": "full_sync", "type_policies": {"zero_date": "fail"}}
    cfg = config(tmp_path, source_conn, pg_target, s3_conn, {table: spec})
    doc, proc = run_json("--config-dir", str(cfg), "sync", "-p", "p", "-t", table)
    assert proc.returncode == 1, doc
    message = doc["table_results"][table]["error_message"]
    assert "column 'ship_date'" in message and "'0000-00-00'" in message and "zero_date is fail" in message
