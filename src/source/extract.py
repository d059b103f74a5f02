"""Stream a table out of MySQL as Arrow record batches with exactly the planned schema.

Rows come through an unbuffered server-side cursor in chunks of at most ``batch_size`` rows and about
``BATCH_BYTES`` of Arrow data (``BatchRows``: wide rows and big values are held a few at a time); each
chunk is converted column by column with explicit Arrow types in a worker thread (``src.source.convert``,
applying the table's ``TypePolicy`` and counting coercions), then sent on a bounded stream.

A table's row filter (config ``where:``) is the user's SQL: it is ANDed into every query in parentheses on
lines of its own (so a trailing ``-- comment`` cannot swallow the rest of the query).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import anyio
import anyio.abc
import pyarrow as pa

from src.common.errors import SourceError
from src.common.naming import escape_percent, qualify_mysql, quote_mysql
from src.common.policy import TypePolicy
from src.common.schema import Column, TableSchema
from src.source.convert import ZERO_DATE, Coercions, rows_to_batch
from src.source.mysql import RowStream, SourceConnection, driver_error_code
from src.source.text import ReadRules
from src.source.typemap import DEFAULT_POLICY, data_type_of, result_type_codes

__all__ = [
    "BATCH_BYTES",
    "ZERO_DATE",
    "BatchRows",
    "ExtractStats",
    "ReadRules",
    "extract_table",
    "pump_rows",
    "rows_to_batch",
    "select_sql",
]
_UNKNOWN_COLUMN = 1054
BATCH_BYTES: Final = 16 * 1024 * 1024  # Arrow data per fetched chunk (the writer's row group size)
_GUESS_BYTES: Final = 4 * 1024 * 1024  # a value of an unbounded (TEXT, BLOB, JSON) column, until measured
_FIXED_BYTES: Final = 16  # a value of any other column
_VARIABLE: Final = frozenset({"string", "json", "binary"})
BATCH_VALUES: Final = 1_000_000  # values per chunk: as Python objects a value takes 5-15x its Arrow bytes


@dataclass
class ExtractStats:
    rows: int = 0
    batches: int = 0
    coercions: dict[str, dict[str, int]] = field(default_factory=dict)  # {column: {kind: count}}
    path: dict[str, Any] = field(default_factory=dict)  # how the rows were read (reported when set)

    def count(self, column: str, kind: str, n: int) -> None:
        if n:
            kinds = self.coercions.setdefault(column, {})
            kinds[kind] = kinds.get(kind, 0) + n

    def add(self, coerced: Coercions) -> None:
        for column, kinds in coerced.items():
            for kind, n in kinds.items():
                self.count(column, kind, n)


class BatchRows:
    """Rows to fetch next: at most ``limit`` (the configured ``batch_size``), ``BATCH_VALUES`` values and
    about ``BATCH_BYTES`` of Arrow data, so memory stays bounded whatever the width of a row (a thousand
    columns, 10 MB values).
    The first chunk is sized from the schema's widest possible row (an unbounded column counted as
    ``_GUESS_BYTES``), every later one from the average row width of the batch before it."""

    def __init__(self, schema: TableSchema, limit: int) -> None:
        self.limit = min(limit, max(1, BATCH_VALUES // max(1, len(schema.columns))))
        self.rows = self._fit(sum(_widest(c) for c in schema.columns))

    def observe(self, batch: pa.RecordBatch) -> None:
        if batch.num_rows:
            self.rows = self._fit(batch.nbytes // batch.num_rows)

    def _fit(self, row_bytes: int) -> int:
        return max(1, min(self.limit, BATCH_BYTES // max(1, row_bytes)))


def _widest(column: Column) -> int:
    if column.logical not in _VARIABLE:
        return _FIXED_BYTES
    return min(column.byte_length or _GUESS_BYTES, _GUESS_BYTES)


def select_sql(database: str, table: str, schema: TableSchema, where: str | None = None) -> str:
    """SELECT with an explicit, quoted column list (never ``*``)."""
    columns = ", ".join(select_item(c) for c in schema.columns)
    sql = f"SELECT {columns} FROM {qualify_mysql(database, table)}"
    return f"{sql} WHERE {where}" if where else sql


def select_item(column: Column) -> str:
    """How a column is selected. FLOAT goes through ``* 1e0``, a DOUBLE: the text protocol prints a FLOAT
    with 6 significant digits (0.45125502 arrives as 0.451255), a DOUBLE with every digit it needs, and
    every FLOAT value is exactly a DOUBLE (times one: exact, sign of zero kept), so the planned float32
    gets the stored value back. (``CAST(... AS DOUBLE)`` would do the same from MySQL 8.0.17 only.) So
    does a DOUBLE(M,D): the text protocol prints it with D decimals (1.8900000000000001 arrives as 1.89,
    another double; connectorx's binary protocol reads the stored one)."""
    name = quote_mysql(column.name)
    if column.logical == "float32" and data_type_of(column) == "float":
        return f"{name} * 1e0 AS {name}"
    if column.logical == "float64" and "(" in column.source_type:
        return f"{name} * 1e0 AS {name}"
    return name


def with_filter(condition: str | None, row_filter: str | None, *, bound: bool) -> str | None:
    """``condition`` AND the user's ``row_filter``, in parentheses on lines of its own. ``bound``: the
    query takes ``%s`` arguments, so a literal ``%`` of the filter is doubled (in backtick-quoted names
    by the connection, as in every name of such a query)."""
    if not row_filter or not row_filter.strip():
        return condition
    wrapped = "(\n" + (escape_percent(row_filter, names=False, rest=True) if bound else row_filter) + "\n)"
    return f"{condition} AND {wrapped}" if condition else wrapped


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
    policy: TypePolicy = DEFAULT_POLICY,
    max_text_bytes: int | None = None,
) -> None:
    """Send the table's rows (filtered by the SQL ``where``, whose ``%s`` placeholders take ``args``: with
    ``args``, write ``%%`` for a literal ``%``) as record batches of at most ``batch_size`` rows, then close
    ``send``. An empty result sends no batch. Values are converted by ``policy``; ``max_text_bytes`` is the
    target's VARCHAR byte limit (65535 for Redshift, None for PostgreSQL).

    ``send`` is closed on failure too: a consumer must treat the data as complete only when this
    coroutine returned normally.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    rules = ReadRules(f"{database}.{table}", policy, max_text_bytes)
    async with send:
        await stream_query(
            conn, database, table, schema, send, rules, where, args, batch_size, stats, cpu_limiter
        )


async def stream_query(
    conn: SourceConnection,
    database: str,
    table: str,
    schema: TableSchema,
    send: anyio.abc.ObjectSendStream[pa.RecordBatch],
    rules: ReadRules,
    where: str | None,
    args: Sequence[object],
    batch_size: int,
    stats: ExtractStats,
    cpu_limiter: anyio.CapacityLimiter | None,
) -> None:
    """The body of ``extract_table``: one streaming SELECT into ``send``, which it leaves open."""
    sql = select_sql(database, table, schema, with_filter(None, where, bound=False))
    with drift_errors(rules.ref):
        async with conn.stream(sql, args) as rows:
            check_description(rows, schema, rules.ref)
            await pump_rows(rows, schema, rules, send, batch_size, stats, cpu_limiter)


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


async def pump_rows(
    rows: RowStream,
    schema: TableSchema,
    rules: ReadRules,
    send: anyio.abc.ObjectSendStream[pa.RecordBatch],
    batch_size: int,
    stats: ExtractStats,
    cpu_limiter: anyio.CapacityLimiter | None,
) -> None:
    """Every row of an open result, converted and sent in chunks sized by ``BatchRows``."""
    size = BatchRows(schema, batch_size)
    while not rows.done:
        chunk = await rows.fetchmany(size.rows)
        if not chunk:
            return
        size.observe(await send_rows(chunk, schema, rules, send, stats, cpu_limiter))


async def send_rows(
    chunk: Sequence[tuple[Any, ...]],
    schema: TableSchema,
    rules: ReadRules | str,
    send: anyio.abc.ObjectSendStream[pa.RecordBatch],
    stats: ExtractStats,
    cpu_limiter: anyio.CapacityLimiter | None,
) -> pa.RecordBatch:
    """Convert row tuples to one record batch in a worker thread, count coercions and rows, send it (and
    return it)."""
    batch, coerced = await anyio.to_thread.run_sync(rows_to_batch, chunk, schema, rules, limiter=cpu_limiter)
    stats.add(coerced)
    stats.rows += batch.num_rows
    stats.batches += 1
    await send.send(batch)
    return batch


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
