"""MySQL column types -> the logical vocabulary of ``src.common.schema``, from information_schema only.

Types are never guessed from values. Every mapping is exact or follows a documented ``TypePolicy``; a type
we cannot carry exactly is an ``UnsupportedTypeError`` that names the table, column and type.

Mappings a policy or a choice of ours decides:
- DECIMAL(p>38): ``decimal_overflow: fail`` (default) refuses the table; ``text`` plans a ``string`` of
  at most p+2 bytes holding the exact decimal text (sign, digits, point; every scale digit kept).
- TINYINT(1): ``int16`` (2 and -1 survive); ``tinyint1: boolean`` plans ``bool``, which the introspection
  accepts only after a query finds no value other than 0, 1 and NULL (and extraction re-checks each batch).
- GEOMETRY, POINT, LINESTRING, POLYGON, MULTI*, GEOMETRYCOLLECTION: ``binary`` holding EWKB (see
  ``src.source.convert.mysql_geometry_to_ewkb``), so PostgreSQL stores exact bytes (bytea) and Redshift
  can rebuild the value with ``ST_GeomFromEWKB`` from VARBYTE.
- ENUM / SET with ``CHARACTER SET binary``: the driver hands over bytes that may not be UTF-8; they are
  decoded by the ``invalid_utf8`` policy, so the planned size allows 3 bytes (U+FFFD) per source byte.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from src.common.errors import UnsupportedTypeError
from src.common.policy import TypePolicy
from src.common.schema import MAX_DECIMAL128_PRECISION, Column, Logical

DEFAULT_POLICY = TypePolicy()
UNBOUNDED_BYTES = 2**32 - 1  # LONGTEXT / LONGBLOB / JSON: reported as None (unbounded)

# MySQL result-set field type codes (the second item of a cursor description entry).
_TINY, _SHORT, _LONG, _FLOAT, _DOUBLE, _TIMESTAMP, _LONGLONG, _INT24 = 1, 2, 3, 4, 5, 7, 8, 9
_DATE, _TIME, _DATETIME, _YEAR, _NEWDATE, _VARCHAR, _BIT = 10, 11, 12, 13, 14, 15, 16
_JSON, _NEWDECIMAL, _ENUM, _SET, _BLOBS, _VAR_STRING, _STRING = 245, 246, 247, 248, 252, 253, 254
_GEOMETRY_CODE = 255
_TEXTUAL = frozenset({_VARCHAR, _JSON, _ENUM, _SET, 249, 250, 251, _BLOBS, _VAR_STRING, _STRING})


@dataclass(frozen=True)
class ColumnInfo:
    """The information_schema.COLUMNS fields the type map reads (plus MariaDB's JSON check)."""

    name: str
    data_type: str  # DATA_TYPE, e.g. "int"
    column_type: str  # COLUMN_TYPE, e.g. "int(10) unsigned"
    nullable: bool  # IS_NULLABLE = 'YES'
    char_max_length: int | None = None  # CHARACTER_MAXIMUM_LENGTH
    char_octet_length: int | None = None  # CHARACTER_OCTET_LENGTH
    numeric_precision: int | None = None  # NUMERIC_PRECISION (bits for BIT)
    numeric_scale: int | None = None  # NUMERIC_SCALE
    datetime_precision: int | None = None  # DATETIME_PRECISION
    charset: str | None = None  # CHARACTER_SET_NAME
    json_check: bool = False  # MariaDB: a column CHECK (json_valid(col)), i.e. the JSON alias


_INTEGERS: dict[tuple[str, bool], Logical] = {
    ("tinyint", False): "int16",
    ("tinyint", True): "int16",
    ("smallint", False): "int16",
    ("smallint", True): "int32",
    ("mediumint", False): "int32",
    ("mediumint", True): "int32",
    ("int", False): "int32",
    ("int", True): "int64",
    ("bigint", False): "int64",
    ("year", False): "int16",
    ("year", True): "int16",
}
_STRINGS = frozenset({"char", "varchar", "tinytext", "text", "mediumtext", "longtext"})
_BINARIES = frozenset({"binary", "varbinary", "tinyblob", "blob", "mediumblob", "longblob"})
_FIXED_STRINGS = {"uuid": 36, "inet4": 15, "inet6": 39}  # MariaDB 10.5+/10.7+ types, returned as text
_SIMPLE: dict[str, Logical] = {
    "float": "float32",
    "double": "float64",
    "date": "date",
    "datetime": "timestamp",
    "timestamp": "timestamptz",
    "time": "time",
}
GEOMETRIES = frozenset(
    {"geometry", "point", "linestring", "polygon", "multipoint", "multilinestring", "multipolygon"}
    | {"geometrycollection", "geomcollection"}
)
_ALWAYS_NULLABLE = frozenset({"date", "datetime", "timestamp"})  # zero dates become NULL
_UTF8_BYTES_PER_CHAR = {"ascii": 1, "utf8mb4": 4, "utf16": 4, "utf16le": 4, "utf32": 4, "gb18030": 4}
_MEMBER = re.compile(r"'((?:[^']|'')*)'")


def map_column(info: ColumnInfo, *, table: str, policy: TypePolicy = DEFAULT_POLICY) -> Column:
    """One information_schema column -> a planned ``Column``. ``table`` is 'db.table' for messages."""
    data_type = info.data_type.lower()
    unsigned = "unsigned" in info.column_type.lower()
    nullable = info.nullable or data_type in _ALWAYS_NULLABLE

    def col(logical: Logical, **kw: int | None) -> Column:
        return Column(info.name, logical, nullable, info.column_type, **kw)

    if data_type == "tinyint" and is_tinyint1(info.column_type) and policy.tinyint1 == "boolean":
        return col("bool")
    if (data_type, unsigned) in _INTEGERS:
        return col(_INTEGERS[data_type, unsigned])
    if data_type == "bigint":
        return col("decimal", precision=20, scale=0)
    if data_type == "decimal":
        return _decimal(info, table, col, policy)
    if data_type == "bit":
        return _bit(info, col)
    if data_type in _SIMPLE:
        return col(_SIMPLE[data_type])
    if data_type == "json" or (data_type == "longtext" and info.json_check):
        return col("json", byte_length=_bounded(info.char_octet_length))
    if data_type in _STRINGS:
        return col("string", byte_length=_bounded(_string_bytes(info)))
    if data_type in ("enum", "set"):
        return col("string", byte_length=_member_bytes(info, data_type == "set"))
    if data_type in _FIXED_STRINGS:
        return col("string", byte_length=_FIXED_STRINGS[data_type])
    if data_type in _BINARIES:
        return col("binary", byte_length=_bounded(info.char_octet_length))
    if data_type in GEOMETRIES:
        return col("binary")
    raise UnsupportedTypeError(
        f"column {info.name!r} of {table} has type {info.column_type}, which s3shift cannot carry exactly "
        "yet — leave the column out (exclude_columns), or sync a view that converts it",
        table=table,
        column=info.name,
    )


def is_tinyint1(column_type: str) -> bool:
    return column_type.lower().replace(" ", "").startswith("tinyint(1)")


def _decimal(info: ColumnInfo, table: str, col: Callable[..., Column], policy: TypePolicy) -> Column:
    precision, scale = info.numeric_precision or 10, info.numeric_scale or 0
    if precision <= MAX_DECIMAL128_PRECISION:
        return col("decimal", precision=precision, scale=scale)
    if policy.decimal_overflow == "text":
        return col("string", byte_length=precision + 2)  # '-', the digits and the point
    raise UnsupportedTypeError(
        f"column {info.name!r} of {table} is {info.column_type}: precision above {MAX_DECIMAL128_PRECISION} "
        "does not fit a warehouse NUMERIC — set type_policies: {decimal_overflow: text} on the table to "
        "load the exact decimal text, or leave the column out (exclude_columns)",
        table=table,
        column=info.name,
    )


def _bit(info: ColumnInfo, col: Callable[..., Column]) -> Column:
    bits = info.numeric_precision or 1
    if bits == 1:
        return col("bool")
    if bits < 64:
        return col("int64")
    return col("decimal", precision=20, scale=0)


def _string_bytes(info: ColumnInfo) -> int | None:
    """Max UTF-8 bytes a value can take on a utf8mb4 connection (the server converts other charsets)."""
    charset = (info.charset or "").lower()
    if charset in ("utf8mb4", "utf8mb3", "utf8"):
        return info.char_octet_length
    if info.char_max_length is None:
        return None
    return info.char_max_length * _UTF8_BYTES_PER_CHAR.get(charset, 3)


def _member_bytes(info: ColumnInfo, is_set: bool) -> int:
    """ENUM: the longest member; SET: every member joined by commas. In UTF-8 bytes. A binary ENUM/SET may
    hold bytes that are not UTF-8: each may become U+FFFD (3 bytes) under ``invalid_utf8: replace``.
    MariaDB's catalog is utf8mb3: it shows a member's 4-byte characters (emoji) as '?', so every '?' is
    counted as 4 bytes (a real '?' only widens the column)."""
    if (info.charset or "").lower() == "binary" and info.char_octet_length is not None:
        return info.char_octet_length * 3
    column_type = info.column_type
    inner = column_type[column_type.index("(") + 1 : column_type.rindex(")")]
    sizes: list[int] = [len(m.replace("''", "'").encode()) + 3 * m.count("?") for m in _MEMBER.findall(inner)]
    if not sizes:
        return 0
    return sum(sizes) + len(sizes) - 1 if is_set else max(sizes)


def _bounded(length: int | None) -> int | None:
    return None if length is None or length >= UNBOUNDED_BYTES else length


def data_type_of(column: Column) -> str:
    """The DATA_TYPE a planned column came from, recovered from its COLUMN_TYPE."""
    return column.source_type.lower().split("(")[0].split()[0]


def is_geometry(column: Column) -> bool:
    return data_type_of(column) in GEOMETRIES


def result_type_codes(column: Column) -> frozenset[int]:
    """The result-set field types a SELECT of this column may report; anything else is schema drift."""
    data_type = data_type_of(column)
    if data_type in GEOMETRIES:
        return frozenset({_GEOMETRY_CODE})
    if data_type in _RESULT_CODES:  # also DECIMAL read as text, TINYINT(1) read as BOOLEAN
        return _RESULT_CODES[data_type]
    if column.logical in ("string", "json", "binary"):
        return _TEXTUAL
    return frozenset()


_RESULT_CODES: dict[str, frozenset[int]] = {
    "tinyint": frozenset({_TINY}),
    "smallint": frozenset({_SHORT}),
    "mediumint": frozenset({_INT24}),
    "int": frozenset({_LONG}),
    "bigint": frozenset({_LONGLONG}),
    "year": frozenset({_YEAR}),
    "decimal": frozenset({0, _NEWDECIMAL}),
    "float": frozenset({_FLOAT, _DOUBLE}),  # selected as a DOUBLE, see extract.select_item
    "double": frozenset({_DOUBLE}),
    "bit": frozenset({_BIT}),
    "date": frozenset({_DATE, _NEWDATE}),
    "datetime": frozenset({_DATETIME}),
    "timestamp": frozenset({_TIMESTAMP}),
    "time": frozenset({_TIME}),
}
