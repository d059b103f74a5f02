"""The type conformance matrix end to end, on both targets: every MySQL type with its edge values goes
through the real CLI (MySQL -> Parquet on S3 -> PostgreSQL, and -> the Redshift emulation harness) and
each target value is compared with the value it must be. Also schema evolution between two runs and a
1,000-column table."""

from __future__ import annotations

import json
import struct
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from src.config.models import S3Conn, SourceConn, TargetConn
from tests.conftest import mysql_exec, pg_fetch
from tests.e2e import CLI, as_redshift, run_json, write_config

DDL = """CREATE TABLE alltypes (
  id INT PRIMARY KEY,
  ti TINYINT, t1 TINYINT(1), si_u SMALLINT UNSIGNED, mi MEDIUMINT, i_u INT UNSIGNED, bi BIGINT,
  bi_u BIGINT UNSIGNED, d38 DECIMAL(38,10), d65 DECIMAL(65,30), f FLOAT, dbl DOUBLE,
  c3 CHAR(3), vc VARCHAR(20), tx TEXT, en ENUM('a','b'), st SET('a','b','c'), js JSON,
  bl BLOB, bn BINARY(4), vb VARBINARY(8),
  dt DATE, dz DATE, dtm DATETIME(6), ts TIMESTAMP(6) NULL, tm TIME(6), yr YEAR, b1 BIT(1), b10 BIT(10),
  g POINT
) CHARACTER SET utf8mb4"""

INSERTS = [
    "SET SESSION sql_mode = ''",
    "SET SESSION time_zone = '+05:00'",
    "INSERT INTO alltypes VALUES (1, -128, 2, 65535, -8388608, 4294967295, -9223372036854775808,"
    " 18446744073709551615, 1234567890123456789012345678.0123456789,"
    " 12345678901234567890123456789012345.123456789012345678901234567890, 3.25, 1.5e300,"
    " 'abc', 'héllo 😀', 'ünïcode ✓', '', 'a,c', '{\"k\": [1, 2, {\"z\": null}]}',"
    " X'00FF00', 'ab', X'DEADBEEF', '1000-01-01', '0000-00-00', '1000-01-01 00:00:00.000000',"
    " '2024-03-10 07:30:00.123456', '-838:59:59.000000', 2024, b'1', b'1010101010',"
    " ST_GeomFromText('POINT(1 2)', 4326))",
    "INSERT INTO alltypes VALUES (2, 127, -1, 0, 8388607, 0, 9223372036854775807, 0,"
    " -0.0000000001, -0.000000000000000000000000000001, -1.5, -0.0,"
    " '   ', '', '', 'b', '', '[\"a\\\\u0000\"]', X'', X'00', X'', '9999-12-31', '2024-02-30',"
    " '9999-12-31 23:59:59.999999', '2038-01-19 08:14:07.999999', '838:59:59.999999', 0, b'0', b'0',"
    " ST_GeomFromText('POINT(-1.5 0)', 0))",
    "INSERT INTO alltypes (id) VALUES (3)",
]

COLUMNS = [
    "id",
    "ti",
    "t1",
    "si_u",
    "mi",
    "i_u",
    "bi",
    "bi_u",
    "d38",
    "d65",
    "f",
    "dbl",
    "c3",
    "vc",
    "tx",
    "en",
    "st",
    "js",
    "bl",
    "bn",
    "vb",
    "dt",
    "dz",
    "dtm",
    "ts",
    "tm",
    "yr",
    "b1",
    "b10",
    "g",
]


def ewkb_point(x: float, y: float, srid: int) -> bytes:
    if srid:
        return bytes.fromhex("0101000020") + struct.pack("<Idd", srid, x, y)
    return bytes.fromhex("0101000000") + struct.pack("<dd", x, y)


EXPECTED: dict[int, tuple[Any, ...]] = {
    1: (
        1,
        -128,
        2,
        65535,
        -8388608,
        4294967295,
        -9223372036854775808,
        Decimal("18446744073709551615"),
        Decimal("1234567890123456789012345678.0123456789"),
        "12345678901234567890123456789012345.123456789012345678901234567890",
        3.25,
        1.5e300,
        "abc",
        "héllo 😀",
        "ünïcode ✓",
        "",
        "a,c",
        {"k": [1, 2, {"z": None}]},
        b"\x00\xff\x00",
        b"ab\x00\x00",
        b"\xde\xad\xbe\xef",
        date(1000, 1, 1),
        None,
        datetime(1000, 1, 1),
        datetime(2024, 3, 10, 2, 30, 0, 123456, tzinfo=UTC),
        -3020399000000,
        2024,
        True,
        682,
        ewkb_point(1, 2, 4326),
    ),
    2: (
        2,
        127,
        -1,
        0,
        8388607,
        0,
        9223372036854775807,
        Decimal(0),
        Decimal("-0.0000000001"),
        "-0.000000000000000000000000000001",
        -1.5,
        -0.0,
        "",
        "",
        "",
        "b",
        "",
        ["a"],  # the escape \u0000 (jsonb refuses it) stripped by nul_bytes
        b"",
        b"\x00\x00\x00\x00",
        b"",
        date(9999, 12, 31),
        None,
        datetime(9999, 12, 31, 23, 59, 59, 999999),
        datetime(2038, 1, 19, 3, 14, 7, 999999, tzinfo=UTC),
        3020399999999,
        0,
        False,
        0,
        ewkb_point(-1.5, 0, 0),
    ),
    3: (3, *([None] * (len(COLUMNS) - 1))),
}


@pytest.fixture(params=["postgres", "redshift"])
def target(
    request: pytest.FixtureRequest, pg_target: TargetConn, s3_endpoint: str
) -> tuple[TargetConn, tuple[str, ...]]:
    if request.param == "postgres":
        return pg_target, CLI
    return as_redshift(pg_target, s3_endpoint)


def normalise(column: str, value: Any) -> Any:
    if column == "js" and isinstance(value, str):
        return json.loads(value)
    if isinstance(value, memoryview):
        return bytes(value)
    return value


def test_conformance_matrix(
    tmp_path: Path,
    source_conn: SourceConn,
    s3_conn: S3Conn,
    mysql_db: str,
    pg_schema: str,
    target: tuple[TargetConn, tuple[str, ...]],
) -> None:
    mysql_exec(mysql_db, DDL, *INSERTS)
    conn, cli = target
    table = f"{mysql_db}.alltypes"
    cfg = write_config(
        tmp_path / "cfg", source_conn, conn, s3_conn, {table: {"type_policies": {"decimal_overflow": "text"}}}
    )
    doc, _proc = run_json("--config-dir", str(cfg), "sync", "-p", "p", "-t", table, cli=cli)
    assert doc["status"] == "success", doc
    result = doc["table_results"][table]
    assert result["coercions"] == {"js": {"nul_stripped": 1}, "dz": {"zero_date_to_null": 2}}, result
    cols = ", ".join(f'"{c}"' for c in COLUMNS)
    rows = {r[0]: tuple(r) for r in pg_fetch(f'SELECT {cols} FROM "{pg_schema}".alltypes')}
    assert sorted(rows) == [1, 2, 3]
    for key, expected in EXPECTED.items():
        for column, want, got in zip(COLUMNS, expected, rows[key], strict=True):
            assert normalise(column, got) == want, (key, column, got, want)


def test_decimal_overflow_fails_by_default_naming_the_column(
    tmp_path: Path,
    source_conn: SourceConn,
    s3_conn: S3Conn,
    mysql_db: str,
    pg_schema: str,
    target: tuple[TargetConn, tuple[str, ...]],
) -> None:
    mysql_exec(
        mysql_db,
        "CREATE TABLE wide_dec (id INT PRIMARY KEY, amount DECIMAL(50,2))",
        "INSERT INTO wide_dec VALUES (1, 1.5)",
    )
    conn, cli = target
    cfg = write_config(tmp_path / "cfg", source_conn, conn, s3_conn)
    doc, _ = run_json("--config-dir", str(cfg), "sync", "-p", "p", "-t", f"{mysql_db}.wide_dec", cli=cli)
    msg = doc["table_results"][f"{mysql_db}.wide_dec"]["error_message"]
    assert doc["status"] == "failed" and "amount" in msg and "decimal_overflow" in msg, msg


def test_schema_evolution_between_runs(
    tmp_path: Path,
    source_conn: SourceConn,
    s3_conn: S3Conn,
    mysql_db: str,
    pg_schema: str,
    target: tuple[TargetConn, tuple[str, ...]],
) -> None:
    mysql_exec(
        mysql_db,
        "CREATE TABLE evo (id INT PRIMARY KEY, name VARCHAR(5), amount DECIMAL(6,2), legacy INT)",
        "INSERT INTO evo VALUES (1, 'ab', 1.25, 7)",
    )
    conn, cli = target
    table = f"{mysql_db}.evo"
    cfg = write_config(tmp_path / "cfg", source_conn, conn, s3_conn)
    assert (
        run_json("--config-dir", str(cfg), "sync", "-p", "p", "-t", table, cli=cli)[0]["status"] == "success"
    )
    mysql_exec(
        mysql_db,
        "ALTER TABLE evo ADD COLUMN note TEXT, MODIFY name VARCHAR(50), DROP COLUMN legacy",
        "INSERT INTO evo VALUES (2, 'a much longer name', 2.5, 'new')",
    )
    doc, _ = run_json("--config-dir", str(cfg), "sync", "-p", "p", "-t", table, cli=cli)
    result = doc["table_results"][table]
    assert doc["status"] == "success", doc
    changes = " | ".join(result["schema_changes"])
    assert "note" in changes and "legacy" in changes, changes
    rows = [
        tuple(r)
        for r in pg_fetch(f'SELECT id, name, amount, note, legacy FROM "{pg_schema}".evo ORDER BY id')
    ]
    assert rows == [
        (1, "ab", Decimal("1.25"), None, None),
        (2, "a much longer name", Decimal("2.50"), "new", None),
    ]


def test_thousand_column_table(
    tmp_path: Path,
    source_conn: SourceConn,
    s3_conn: S3Conn,
    mysql_db: str,
    pg_schema: str,
    target: tuple[TargetConn, tuple[str, ...]],
) -> None:
    kinds = ["INT", "VARCHAR(2)", "SMALLINT", "DATE", "FLOAT"]  # InnoDB's row size allows ~8 KB inline
    cols = [f"c{i} {kinds[i % len(kinds)]}" for i in range(999)]
    values = ["1", "'x'", "-3", "'2024-01-01'", "2.5"]
    mysql_exec(
        mysql_db,
        f"CREATE TABLE wide (id INT PRIMARY KEY, {', '.join(cols)}) ROW_FORMAT=DYNAMIC",
        *[
            f"INSERT INTO wide VALUES ({r}, {', '.join(values[i % 5] for i in range(999))})"
            for r in range(1, 21)
        ],
    )
    conn, cli = target
    table = f"{mysql_db}.wide"
    cfg = write_config(tmp_path / "cfg", source_conn, conn, s3_conn)
    doc, _ = run_json("--config-dir", str(cfg), "sync", "-p", "p", "-t", table, cli=cli)
    assert doc["status"] == "success" and doc["table_results"][table]["rows_processed"] == 20, doc
    row = pg_fetch(f'SELECT c0, c1, c2, c3, c4, c998 FROM "{pg_schema}".wide WHERE id = 7')[0]
    assert tuple(row) == (1, "x", -3, date(2024, 1, 1), 2.5, date(2024, 1, 1))


@pytest.mark.parametrize("fast_path", [False, True], ids=["asyncmy", "connectorx"])
def test_a_row_over_redshifts_4_mb_limit_names_its_columns(
    tmp_path: Path,
    source_conn: SourceConn,
    pg_target: TargetConn,
    s3_conn: S3Conn,
    s3_endpoint: str,
    mysql_db: str,
    pg_schema: str,
    fast_path: bool,
) -> None:
    """Redshift's COPY refuses an input row over 4 MB and names neither row nor column: the run fails such
    a table as it reads it, naming the columns that hold the row's bytes, before anything is staged.
    Here no value is over 4 MB alone: two columns of 2.5 MB make the row."""
    mysql_exec(
        mysql_db,
        "CREATE TABLE docs (id INT PRIMARY KEY, note VARCHAR(20), body LONGBLOB, scan LONGBLOB)",
        f"INSERT INTO docs SELECT seq, 'small', 'b', NULL FROM seq_1_to_{120_000 if fast_path else 3000}",
        "UPDATE docs SET body = REPEAT('x', 2500000), scan = REPEAT('y', 2500000) WHERE id = 2000",
        "ANALYZE TABLE docs",
    )
    conn, cli = as_redshift(pg_target, s3_endpoint)
    table = f"{mysql_db}.docs"
    processing = {"fast_path": fast_path, "batch_size": 500, "range_rows": 1000}
    cfg = write_config(tmp_path / "cfg", source_conn, conn, s3_conn, processing=processing)
    plan, _ = run_json("--config-dir", str(cfg), "sync", "-p", "p", "-t", table, "--dry-run", cli=cli)
    assert plan["tables"][table]["extract_path"].startswith("connectorx" if fast_path else "asyncmy"), plan
    doc, proc = run_json("--config-dir", str(cfg), "sync", "-p", "p", "-t", table, cli=cli)
    assert proc.returncode == 1, proc.stderr
    result = doc["table_results"][table]
    assert (result["phase"], result["retryable"]) == ("extract", False), result
    message = result["error_message"]
    assert "'body' 2,500,000 bytes, 'scan' 2,500,000 bytes" in message and "exclude_columns" in message, (
        message
    )
    assert "'note' 5 bytes" in message and "holds 5,000,005 bytes" in message, message
    assert not pg_fetch("SELECT 1 FROM pg_tables WHERE schemaname = $1 AND tablename = 'docs'", pg_schema)

    cfg = write_config(
        tmp_path / "cfg2",
        source_conn,
        conn,
        s3_conn,
        {table: {"exclude_columns": ["scan"]}},
        processing=processing,
    )
    doc, proc = run_json("--config-dir", str(cfg), "sync", "-p", "p", "-t", table, cli=cli)
    assert proc.returncode == 0, doc
    assert (
        pg_fetch(f'SELECT octet_length(body) AS n FROM "{pg_schema}".docs WHERE id = 2000')[0]["n"] == 2500000
    )
