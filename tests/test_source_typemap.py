"""The type map: information_schema rows -> logical columns (pure), and the same from a real MariaDB."""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pytest

from src.common.errors import UnsupportedTypeError
from src.common.policy import TypePolicy
from src.common.schema import Column
from src.config.models import SourceConn
from src.source.introspect import describe_table
from src.source.mysql import MySQLSource
from src.source.typemap import ColumnInfo, map_column, result_type_codes
from tests.conftest import mysql_exec


def info(data_type: str, column_type: str | None = None, **kw: Any) -> ColumnInfo:
    return ColumnInfo(
        name="c", data_type=data_type, column_type=column_type or data_type, nullable=False, **kw
    )


@pytest.mark.parametrize(
    ("data_type", "column_type", "logical"),
    [
        ("tinyint", "tinyint(4)", "int16"),
        ("tinyint", "tinyint(1)", "int16"),
        ("tinyint", "tinyint(3) unsigned", "int16"),
        ("smallint", "smallint(6)", "int16"),
        ("smallint", "smallint(5) unsigned", "int32"),
        ("mediumint", "mediumint(9)", "int32"),
        ("mediumint", "mediumint(8) unsigned", "int32"),
        ("int", "int(11)", "int32"),
        ("int", "int(10) unsigned", "int64"),
        ("bigint", "bigint(20)", "int64"),
        ("year", "year(4)", "int16"),
        ("float", "float", "float32"),
        ("double", "double", "float64"),
        ("time", "time(6)", "time"),
    ],
)
def test_simple_types(data_type: str, column_type: str, logical: str) -> None:
    col = map_column(info(data_type, column_type), table="db.t")
    assert col.logical == logical
    assert col.nullable is False
    assert col.source_type == column_type


def test_bigint_unsigned_is_decimal_20_0() -> None:
    col = map_column(info("bigint", "bigint(20) unsigned"), table="db.t")
    assert (col.logical, col.precision, col.scale) == ("decimal", 20, 0)
    assert col.arrow_type() == pa.decimal128(20, 0)


def test_decimal_keeps_precision_and_scale() -> None:
    col = map_column(info("decimal", "decimal(38,10)", numeric_precision=38, numeric_scale=10), table="db.t")
    assert col.arrow_type() == pa.decimal128(38, 10)


def test_decimal_above_38_is_refused_with_the_policy_named() -> None:
    with pytest.raises(UnsupportedTypeError) as err:
        map_column(info("decimal", "decimal(65,30)", numeric_precision=65, numeric_scale=30), table="shop.t")
    message = str(err.value)
    assert "'c'" in message and "shop.t" in message and "decimal(65,30)" in message
    assert "type_policies: {decimal_overflow: text}" in message and "exclude_columns" in message
    assert err.value.column == "c" and err.value.table == "shop.t" and not err.value.retryable


@pytest.mark.parametrize(
    ("bits", "logical", "arrow"),
    [
        (1, "bool", pa.bool_()),
        (10, "int64", pa.int64()),
        (63, "int64", pa.int64()),
        (64, "decimal", pa.decimal128(20, 0)),
    ],
)
def test_bit_widths(bits: int, logical: str, arrow: pa.DataType) -> None:
    col = map_column(info("bit", f"bit({bits})", numeric_precision=bits), table="db.t")
    assert col.logical == logical and col.arrow_type() == arrow


@pytest.mark.parametrize("data_type", ["date", "datetime", "timestamp"])
def test_date_time_columns_are_always_nullable(data_type: str) -> None:
    assert map_column(info(data_type), table="db.t").nullable is True


def test_strings_are_sized_in_utf8_bytes() -> None:
    utf8mb4 = info("varchar", "varchar(20)", char_max_length=20, char_octet_length=80, charset="utf8mb4")
    latin1 = info("varchar", "varchar(10)", char_max_length=10, char_octet_length=10, charset="latin1")
    longtext = info("longtext", char_max_length=2**32 - 1, char_octet_length=2**32 - 1, charset="utf8mb4")
    assert map_column(utf8mb4, table="db.t").byte_length == 80
    assert map_column(latin1, table="db.t").byte_length == 30  # 'é' is 1 byte in latin1, 2 in UTF-8
    assert map_column(longtext, table="db.t").byte_length is None


def test_enum_and_set_are_sized_from_their_members() -> None:
    enum = map_column(info("enum", "enum('a','bé','it''s')"), table="db.t")
    set_ = map_column(info("set", "set('x','yy','😀')"), table="db.t")
    assert (enum.logical, enum.byte_length) == ("string", 4)  # "it's"
    assert (set_.logical, set_.byte_length) == ("string", 1 + 2 + 4 + 2)  # all members and two commas


def test_json_and_mariadb_json_alias() -> None:
    assert map_column(info("json"), table="db.t").logical == "json"
    alias = info("longtext", char_octet_length=2**32 - 1, charset="utf8mb4", json_check=True)
    assert map_column(alias, table="db.t").logical == "json"
    plain = info("longtext", char_octet_length=2**32 - 1, charset="utf8mb4")
    assert map_column(plain, table="db.t").logical == "string"


@pytest.mark.parametrize("data_type", ["binary", "varbinary", "tinyblob", "blob", "mediumblob", "longblob"])
def test_binaries(data_type: str) -> None:
    assert map_column(info(data_type, char_octet_length=10), table="db.t").logical == "binary"


@pytest.mark.parametrize("data_type", ["vector", "whatever"])
def test_unknown_types_fail_naming_table_column_and_type(data_type: str) -> None:
    with pytest.raises(UnsupportedTypeError, match=rf"'c' of shop\.t has type {data_type}\b"):
        map_column(info(data_type), table="shop.t")


def test_decimal_above_38_as_exact_text_by_policy() -> None:
    text = TypePolicy(decimal_overflow="text")
    col = map_column(
        info("decimal", "decimal(65,30)", numeric_precision=65, numeric_scale=30), table="t", policy=text
    )
    assert (col.logical, col.byte_length, col.arrow_type()) == ("string", 67, pa.string())
    assert result_type_codes(col) == frozenset({0, 246})  # still read as DECIMAL: a type change is drift
    small = map_column(
        info("decimal", "decimal(38,2)", numeric_precision=38, numeric_scale=2), table="t", policy=text
    )
    assert small.logical == "decimal"  # the policy only governs p > 38


@pytest.mark.parametrize(
    ("column_type", "policy", "logical"),
    [
        ("tinyint(1)", "smallint", "int16"),
        ("tinyint(1)", "boolean", "bool"),
        ("tinyint(1) unsigned", "boolean", "bool"),
        ("tinyint(4)", "boolean", "int16"),
        ("tinyint(10)", "boolean", "int16"),
    ],
)
def test_tinyint1_as_boolean_only_by_policy(column_type: str, policy: str, logical: str) -> None:
    chosen = TypePolicy(tinyint1=policy)  # type: ignore[arg-type]
    col = map_column(info("tinyint", column_type), table="t", policy=chosen)
    assert col.logical == logical and result_type_codes(col) == frozenset({1})


@pytest.mark.parametrize(
    "data_type",
    ["geometry", "point", "linestring", "polygon", "multipoint", "multilinestring", "multipolygon",
     "geometrycollection"],
)  # fmt: skip
def test_geometry_family_is_binary_ewkb(data_type: str) -> None:
    col = map_column(info(data_type), table="t")
    assert (col.logical, col.byte_length) == ("binary", None) and result_type_codes(col) == frozenset({255})


def test_binary_enum_and_set_leave_room_for_replacement_characters() -> None:
    enum = info("enum", "enum('?','é','a')", charset="binary", char_octet_length=2)
    set_ = info("set", "set('?','z')", charset="binary", char_octet_length=3)
    assert map_column(enum, table="t").byte_length == 6 and map_column(set_, table="t").byte_length == 9


WIDE_DDL = """CREATE TABLE wide (
  b BIGINT UNSIGNED NOT NULL, a INT NOT NULL, flag TINYINT(1) NOT NULL,
  price DECIMAL(12,3) UNSIGNED, name VARCHAR(30) NOT NULL, l1 CHAR(4) CHARACTER SET latin1,
  doc JSON, body MEDIUMTEXT, kind ENUM('small','größer 😀') NOT NULL, tags SET('a','😀'),
  raw VARBINARY(16), born DATE NOT NULL, seen DATETIME(6) NOT NULL, at TIMESTAMP(3) NULL,
  dur TIME, yr YEAR, on_ BIT(1), mask BIT(12), u UUID,
  PRIMARY KEY (a, b))"""


@pytest.mark.anyio
async def test_describe_table_from_the_real_catalog(source_conn: SourceConn, mysql_db: str) -> None:
    mysql_exec(mysql_db, WIDE_DDL)
    async with MySQLSource(source_conn) as src, src.connection() as conn:
        schema = await describe_table(conn, mysql_db, "wide")
    got = {c.name: c for c in schema.columns}
    assert schema.names == tuple(
        [
            "b",
            "a",
            "flag",
            "price",
            "name",
            "l1",
            "doc",
            "body",
            "kind",
            "tags",
            "raw",
            "born",
            "seen",
            "at",
            "dur",
            "yr",
            "on_",
            "mask",
            "u",
        ]
    )
    assert schema.primary_key == ("a", "b")  # key order, not column order
    assert got["b"] == Column("b", "decimal", False, "bigint(20) unsigned", precision=20, scale=0)
    assert got["flag"].logical == "int16"
    assert (got["price"].precision, got["price"].scale) == (12, 3)
    assert got["name"].byte_length == 120 and got["l1"].byte_length == 12
    assert got["doc"].logical == "json" and got["body"].byte_length == 16777215
    assert got["kind"].byte_length == len("größer 😀".encode()) and got["tags"].byte_length == 6  # emoji: 4
    assert got["raw"] == Column("raw", "binary", True, "varbinary(16)", byte_length=16)
    assert got["born"].nullable and got["seen"].nullable  # NOT NULL in MySQL, but zero dates become NULL
    assert (got["seen"].logical, got["at"].logical, got["dur"].logical) == (
        "timestamp",
        "timestamptz",
        "time",
    )
    assert (got["on_"].logical, got["mask"].logical, got["u"].logical) == ("bool", "int64", "string")
    assert schema.arrow_schema().field("at").type == pa.timestamp("us", tz="UTC")
