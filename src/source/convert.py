"""Row tuples from the driver -> one Arrow record batch of exactly the planned schema, column by column with
explicit types, applying the table's type policies and counting every coercion.

What the drivers hand over, and what each column becomes:
- DATE / DATETIME / TIMESTAMP: ``datetime``/``date``; zero or invalid dates arrive as ``str``:
  ``zero_date: null`` (default) makes them NULL (kind ``zero_date_to_null``), ``fail`` names the column
  and the first bad value. TIMESTAMP values are UTC (every session pins ``time_zone='+00:00'``).
- TIME: ``timedelta`` -> signed microseconds (never wrapped at 24 h).
- BIT: big-endian bytes -> bool (BIT(1)), int64, or decimal(20,0) (BIT(64)).
- TINYINT(1) under ``tinyint1: boolean``: every batch is checked to hold only 0, 1 and NULL.
- DECIMAL(p>38) under ``decimal_overflow: text``: ``Decimal`` -> its exact fixed-point text (never float).
- text: see ``src.source.text`` (invalid UTF-8, NUL, long values).
- GEOMETRY: MySQL's internal value (4-byte little-endian SRID, then WKB) -> EWKB, the PostGIS extended
  WKB: the SRID flag 0x20000000 is set in the outer geometry type and the SRID follows it; SRID 0 gives
  plain WKB (as PostGIS ``ST_AsEWKB`` writes it). Nested geometries are left as they are.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from operator import itemgetter
from typing import Any, Literal

import pyarrow as pa
import pyarrow.compute as pc

from src.common.errors import SourceError
from src.common.schema import Column, TableSchema
from src.source.text import Counts, ReadRules, text_array
from src.source.typemap import data_type_of, is_geometry

ZERO_DATE = "zero_date_to_null"
Coercions = dict[str, Counts]  # {column: {kind: count}}
_DURATION_US = pa.duration("us")
_UINT64 = pa.uint64()
_INT16 = pa.int16()
_EWKB_SRID_FLAG = 0x20000000
_WKB_HEADER = 5  # byte order (1) + geometry type (4)


def rows_to_batch(
    rows: Sequence[tuple[Any, ...]], schema: TableSchema, rules: ReadRules | str
) -> tuple[pa.RecordBatch, Coercions]:
    """Row tuples -> one record batch of ``schema.arrow_schema()``, plus the coercions per column and kind.
    ``rules`` may be just the table's 'db.table' (default policies). CPU work: call it in a worker thread."""
    rules = ReadRules(rules) if isinstance(rules, str) else rules
    arrays: list[pa.Array] = []
    coerced: Coercions = {}
    for index, column in enumerate(schema.columns):
        array, counts = convert(column, list(map(itemgetter(index), rows)), rules)
        arrays.append(array)
        if counts:
            coerced[column.name] = counts
    return pa.RecordBatch.from_arrays(arrays, schema=schema.arrow_schema()), coerced


def convert(column: Column, values: Sequence[Any], rules: ReadRules) -> tuple[pa.Array, Counts]:
    """One column's values -> its Arrow array; a value that does not convert is a ``SourceError``."""
    try:
        return _converter(column)(column, values, rules)
    except (pa.ArrowException, OverflowError, TypeError, ValueError) as exc:
        raise SourceError(
            f"cannot convert column {column.name!r} of {rules.ref} ({column.source_type}) to "
            f"{column.arrow_type()}: {' '.join(str(exc).split())}",
            table=rules.ref,
            column=column.name,
            retryable=False,
        ) from exc


def mysql_geometry_to_ewkb(value: bytes) -> bytes:
    """MySQL's internal geometry value (SRID as 4 little-endian bytes, then WKB) -> EWKB."""
    if len(value) < 4 + _WKB_HEADER or value[4] not in (0, 1):
        raise ValueError(f"not a MySQL geometry value: {value[:16].hex()}")
    srid = int.from_bytes(value[:4], "little")
    wkb = value[4:]
    if srid == 0:
        return bytes(wkb)
    order: Literal["little", "big"] = "little" if wkb[0] == 1 else "big"
    kind = int.from_bytes(wkb[1:_WKB_HEADER], order) | _EWKB_SRID_FLAG
    return wkb[:1] + kind.to_bytes(4, order) + srid.to_bytes(4, order) + wkb[_WKB_HEADER:]


Converter = Callable[[Column, Sequence[Any], ReadRules], tuple[pa.Array, Counts]]


def _converter(column: Column) -> Converter:
    data_type = data_type_of(column)
    if column.logical in ("string", "json"):
        return _decimal_text if data_type == "decimal" else text_array
    if column.logical == "binary" and is_geometry(column):
        return _geometry
    if column.logical == "bool":
        return _tinyint_bool if data_type == "tinyint" else _bool
    return _CONVERTERS.get(column.logical, _plain)


def _plain(column: Column, values: Sequence[Any], rules: ReadRules) -> tuple[pa.Array, Counts]:
    return pa.array(values, type=column.arrow_type()), {}


def _dates(column: Column, values: Sequence[Any], rules: ReadRules) -> tuple[pa.Array, Counts]:
    """Zero or invalid dates reach us as ``str`` ('0000-00-00', '2024-00-15 10:00:00')."""
    if str not in set(map(type, values)):
        return pa.array(values, type=column.arrow_type()), {}
    bad = [v for v in values if isinstance(v, str)]
    if rules.policy.zero_date == "fail":
        raise SourceError(
            f"column {column.name!r} of {rules.ref} holds the invalid date {bad[0]!r} and "
            "type_policies.zero_date is fail — fix the data, or set type_policies: {zero_date: null} to load "
            "such dates as NULL",
            table=rules.ref,
            column=column.name,
            retryable=False,
        )
    values = [None if isinstance(v, str) else v for v in values]
    return pa.array(values, type=column.arrow_type()), {ZERO_DATE: len(bad)}


def _time(column: Column, values: Sequence[Any], rules: ReadRules) -> tuple[pa.Array, Counts]:
    """TIME arrives as ``timedelta`` (negative or beyond 24 h): signed microseconds, never wrapped."""
    return pa.array(values, type=_DURATION_US).cast(column.arrow_type()), {}


def _bits(values: Sequence[Any]) -> list[int | None]:
    return [None if v is None else int.from_bytes(v, "big") for v in values]


def _bool(column: Column, values: Sequence[Any], rules: ReadRules) -> tuple[pa.Array, Counts]:
    return pa.array([None if v is None else bool(v) for v in _bits(values)], type=column.arrow_type()), {}


def _tinyint_bool(column: Column, values: Sequence[Any], rules: ReadRules) -> tuple[pa.Array, Counts]:
    """TINYINT(1) as BOOLEAN: checked when planned, and again here (a 2 written since then fails)."""
    return numbers_to_bool(column, pa.array(values, type=_INT16), rules), {}


def numbers_to_bool(column: Column, numbers: pa.Array, rules: ReadRules) -> pa.Array:
    """An integer array of a TINYINT(1) read as BOOLEAN -> bool, refusing any value but 0, 1 and NULL."""
    low, high = pc.min_max(numbers).values()
    if low.as_py() is not None and (low.as_py() < 0 or high.as_py() > 1):
        bad = low.as_py() if low.as_py() < 0 else high.as_py()
        raise SourceError(
            f"column {column.name!r} of {rules.ref} is read as BOOLEAN (type_policies.tinyint1 is boolean) "
            f"but now holds {bad} — set type_policies: {{tinyint1: smallint}} to keep every value",
            table=rules.ref,
            column=column.name,
            retryable=False,
        )
    return numbers.cast(pa.bool_())


def _integer(column: Column, values: Sequence[Any], rules: ReadRules) -> tuple[pa.Array, Counts]:
    if data_type_of(column) == "bit":
        return pa.array(_bits(values), type=column.arrow_type()), {}
    return _plain(column, values, rules)


def _decimal(column: Column, values: Sequence[Any], rules: ReadRules) -> tuple[pa.Array, Counts]:
    """DECIMAL arrives as ``Decimal`` (exact); BIGINT UNSIGNED and BIT(64) as int up to 2**64-1."""
    data_type = data_type_of(column)
    if data_type == "bit":
        values = _bits(values)
    if data_type in ("bit", "bigint"):
        return pa.array(values, type=_UINT64).cast(column.arrow_type()), {}
    return _plain(column, values, rules)


def _decimal_text(column: Column, values: Sequence[Any], rules: ReadRules) -> tuple[pa.Array, Counts]:
    """DECIMAL(p>38) as text: the exact fixed-point digits the server sent, every scale digit kept."""
    return pa.array([None if v is None else format(v, "f") for v in values], type=pa.string()), {}


def _geometry(column: Column, values: Sequence[Any], rules: ReadRules) -> tuple[pa.Array, Counts]:
    ewkb = [None if v is None else mysql_geometry_to_ewkb(bytes(v)) for v in values]
    return pa.array(ewkb, type=column.arrow_type()), {}


_CONVERTERS: dict[str, Converter] = {
    "date": _dates,
    "timestamp": _dates,
    "timestamptz": _dates,
    "time": _time,
    "int64": _integer,
    "decimal": _decimal,
}
