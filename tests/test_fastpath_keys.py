"""Key shapes on the connectorx fast path's keyset pages, end to end through the public CLI: MySQL -> S3 ->
PostgreSQL, value by value."""

from __future__ import annotations

from pathlib import Path

from src.config.models import S3Conn, SourceConn, TargetConn
from tests.conftest import mysql_exec, mysql_rows
from tests.e2e import assert_tables_equal, run_json, write_config

# a DECIMAL wider than connectorx's own (28 digits) is selected as its text under the column's name: the
# pages must still be ordered by the key, not by that text ('-0.5' < '-1' < '10' < '9' as text)
WIDE = """CREATE TABLE amounts (k DECIMAL(30,8) NOT NULL PRIMARY KEY, n INT NOT NULL, note VARCHAR(20) NULL)
  CHARACTER SET utf8mb4"""
WIDE_FILL = """INSERT INTO amounts
  SELECT (CAST(seq AS SIGNED) - 1500) * 1234567.12345678 + seq / 100000000, seq,
  IF(seq % 3 = 0, NULL, CONCAT('n ', seq)) FROM seq_0_to_2999"""
EDGES = """INSERT INTO amounts VALUES (-9999999999999999999999.99999999, 1, 'min'),
  (9999999999999999999999.99999999, 2, 'max'), (0.00000001, 3, 'eps'), (-0.00000001, 4, '-eps'),
  (0, 5, '0')"""


def test_wide_decimal_key_pages_follow_the_key_order(
    tmp_path: Path,
    source_conn: SourceConn,
    pg_target: TargetConn,
    s3_conn: S3Conn,
    mysql_db: str,
    pg_schema: str,
) -> None:
    mysql_exec(mysql_db, WIDE, WIDE_FILL, EDGES, "ANALYZE TABLE amounts")
    table = f"{mysql_db}.amounts"
    processing = {"range_rows": 300, "batch_size": 100}  # 3,005 rows: 11 pages
    cfg = write_config(
        tmp_path / "config", source_conn, pg_target, s3_conn, {table: {"cdc_strategy": "full_sync"}},
        processing=processing,
    )  # fmt: skip
    doc, proc = run_json("--config-dir", str(cfg), "sync", "-p", "p", "-t", table)
    assert proc.returncode == 0, doc
    result = doc["table_results"][table]
    assert result["extract"] == {"path": "connectorx", "workers": 1, "pages": 11}, result["extract"]
    rows = mysql_rows(mysql_db, "SELECT COUNT(*) FROM amounts")[0][0]
    assert result["rows_processed"] == rows == 3005
    assert assert_tables_equal(mysql_db, "amounts", pg_schema, "amounts", "k") == rows
