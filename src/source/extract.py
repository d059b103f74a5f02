"""Stream a table out of MySQL as Arrow record batches with exactly the planned schema.

Rows come through an unbuffered server-side cursor in chunks of ``batch_size``; each chunk is converted
column by column with explicit Arrow types in a worker thread, then sent on a bounded stream.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any

import anyio
import anyio.abc
import pyarrow as pa

from src.common.errors import SourceError
from src.common.naming import quote_mysql
from src.common.schema import Column, TableSchema
from src.source.mysql import RowStream, SourceConnection, driver_error_code
from src.source.typemap import data_type_of, result_type_codes

ZERO_DATE = "zero_date_to_null"
_DURATION_US = pa.duration("us")
_UINT64 = pa.uint64()
_UNKNOWN_COLUMN = 1054


@dataclass
class ExtractStats:
    rows: int = 0
    batches: int = 0
    coercions: dict[str, dict[str, int]] = field(default_factory=dict)  # {column: {kind: count}}

    def count(self, column: str, kind: str, n: int) -> None:
        if n:
            kinds = self.coercions.setdefault(column, {})
            kinds[kind] = kinds.get(kind, 0) + n


def select_sql(database: str, table: str, schema: TableSchema, where: str | None = None) -> str:
    """SELECT with an explicit, quoted column list (never ``*``)."""
    columns = ", ".join(quote_mysql(c.name) for c in schema.columns)
    sql = f"SELECT {columns} FROM {quote_mysql(database)}.{quote_mysql(table)}"
    return f"{sql} WHERE {where}" if where else sql


async def extract_table(
    conn: SourceConnection,
    database: str,
    table: str,
    schema: TableSchema,
    send: anyio.abc.ObjectSendStream[pa.RecordBatch],
    *,
    batch_size: int,
    stats: ExtractStats,
    where: str | None = None,
    args: Sequence[object] = (),
    cpu_limiter: anyio.CapacityLimiter | None = None,
) -> None:
    """Send the table's rows (filtered by ``where``, whose ``%s`` placeholders take ``args``) as record
    batches of at most ``batch_size`` rows, then close ``send``. An empty result sends no batch.

    ``send`` is closed on failure too: a consumer must treat the data as complete only when this
    coroutine returned normally.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    ref = f"{database}.{table}"
    async with send:
        with drift_errors(ref):
            async with conn.stream(select_sql(database, table, schema, where), args) as rows:
                check_description(rows, schema, ref)
                await _pump(rows, schema, ref, send, batch_size, stats, cpu_limiter)


@contextlib.contextmanager
def drift_errors(ref: str) -> Iterator[None]:
    """Name the table in source errors; an unknown column (the table changed since it was planned)
    becomes a retryable error that says so."""
    try:
        yield
    except SourceError as exc:
        exc.table = exc.table or ref
        if exc.__cause__ is None or driver_error_code(exc.__cause__) != _UNKNOWN_COLUMN:
            raise
        raise SourceError(
            f"table {ref} changed since it was planned: {exc.message} — retry to re-plan",
            table=ref,
            retryable=True,
        ) from exc


async def _pump(
    rows: RowStream,
    schema: TableSchema,
    ref: str,
    send: anyio.abc.ObjectSendStream[pa.RecordBatch],
    batch_size: int,
    stats: ExtractStats,
    cpu_limiter: anyio.CapacityLimiter | None,
) -> None:
    while not rows.done:
        chunk = await rows.fetchmany(batch_size)
        if not chunk:
            return
        await send_rows(chunk, schema, ref, send, stats, cpu_limiter)


async def send_rows(
    chunk: Sequence[tuple[Any, ...]],
    schema: TableSchema,
    ref: str,
    send: anyio.abc.ObjectSendStream[pa.RecordBatch],
    stats: ExtractStats,
    cpu_limiter: anyio.CapacityLimiter | None,
) -> None:
    """Convert row tuples to one record batch in a worker thread, count coercions and rows, send it."""
    batch, coerced = await anyio.to_thread.run_sync(rows_to_batch, chunk, schema, ref, limiter=cpu_limiter)
    for column, n in coerced.items():
        stats.count(column, ZERO_DATE, n)
    stats.rows += batch.num_rows
    stats.batches += 1
    await send.send(batch)


def check_description(rows: RowStream, schema: TableSchema, ref: str) -> None:
    """The result's columns must be the planned ones, in order, with compatible types; else the table
    changed between planning and reading (retry re-plans)."""
    if rows.names != schema.names:
        raise SourceError(
            f"table {ref} changed since it was planned: the query returned columns "
            f"{list(rows.names)} instead of {list(schema.names)} — retry to re-plan",
            table=ref,
            retryable=True,
        )
    for column, code in zip(schema.columns, rows.type_codes, strict=True):
        if code not in result_type_codes(column):
            raise SourceError(
                f"table {ref} changed since it was planned: column {column.name!r} was {column.source_type} "
                f"but the query returned field type {code} — retry to re-plan",
                table=ref,
                column=column.name,
                retryable=True,
            )


def rows_to_batch(
    rows: Sequence[tuple[Any, ...]], schema: TableSchema, ref: str
) -> tuple[pa.RecordBatch, dict[str, int]]:
    """Row tuples -> one record batch of ``schema.arrow_schema()``, plus zero dates nulled per column.
    CPU work: call it in a worker thread."""
    arrays: list[pa.Array] = []
    coerced: dict[str, int] = {}
    for index, column in enumerate(schema.columns):
        array, nulled = _convert(column, list(map(itemgetter(index), rows)), ref)
        arrays.append(array)
        if nulled:
            coerced[column.name] = nulled
    return pa.RecordBatch.from_arrays(arrays, schema=schema.arrow_schema()), coerced


def _convert(column: Column, values: Sequence[Any], ref: str) -> tuple[pa.Array, int]:
    try:
        return _CONVERTERS.get(column.logical, _plain)(column, values)
    except (pa.ArrowException, OverflowError, TypeError, ValueError) as exc:
        raise SourceError(
            f"cannot convert column {column.name!r} of {ref} ({column.source_type}) to "
            f"{column.arrow_type()}: {' '.join(str(exc).split())}",
            table=ref,
            column=column.name,
            retryable=False,
        ) from exc


def _plain(column: Column, values: Sequence[Any]) -> tuple[pa.Array, int]:
    return pa.array(values, type=column.arrow_type()), 0


def _dates(column: Column, values: Sequence[Any]) -> tuple[pa.Array, int]:
    """Zero or invalid dates reach us as ``str`` ('0000-00-00', '2024-00-15 10:00:00'): NULL, counted."""
    nulled = 0
    if str in set(map(type, values)):
        nulled = sum(1 for v in values if isinstance(v, str))
        values = [None if isinstance(v, str) else v for v in values]
    return pa.array(values, type=column.arrow_type()), nulled


def _time(column: Column, values: Sequence[Any]) -> tuple[pa.Array, int]:
    """TIME arrives as ``timedelta`` (negative or beyond 24 h): signed microseconds, never wrapped."""
    return pa.array(values, type=_DURATION_US).cast(column.arrow_type()), 0


def _bits(values: Sequence[Any]) -> list[int | None]:
    return [None if v is None else int.from_bytes(v, "big") for v in values]


def _bool(column: Column, values: Sequence[Any]) -> tuple[pa.Array, int]:
    return pa.array([None if v is None else bool(v) for v in _bits(values)], type=column.arrow_type()), 0


def _integer(column: Column, values: Sequence[Any]) -> tuple[pa.Array, int]:
    if data_type_of(column) == "bit":
        return pa.array(_bits(values), type=column.arrow_type()), 0
    return _plain(column, values)


def _decimal(column: Column, values: Sequence[Any]) -> tuple[pa.Array, int]:
    """DECIMAL arrives as ``Decimal`` (exact); BIGINT UNSIGNED and BIT(64) as int up to 2**64-1."""
    data_type = data_type_of(column)
    if data_type == "bit":
        values = _bits(values)
    if data_type in ("bit", "bigint"):
        return pa.array(values, type=_UINT64).cast(column.arrow_type()), 0
    return _plain(column, values)


_CONVERTERS: dict[str, Callable[[Column, Sequence[Any]], tuple[pa.Array, int]]] = {
    "date": _dates,
    "timestamp": _dates,
    "timestamptz": _dates,
    "time": _time,
    "bool": _bool,
    "int64": _integer,
    "decimal": _decimal,
}
