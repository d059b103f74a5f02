"""Incremental windows on the source: validate the cursor, fix the upper bound, read the window in pages.

A window is ``(start, end]`` in the cursor order (see ``src.plan.models.Window``). Its end is fixed from
the source's own clock (timestamp strategies) or ``MAX(id)`` (id_only) before anything is read; every
page is a short keyset query, so no cursor stays open while the consumer is slow, ties at a page boundary
are neither lost nor read twice, and a row moved by an update mid-read never makes the reader loop.

What a window guarantees (the tests prove each point):
- every row whose cursor lies in ``(start, end]`` for the whole read is read exactly once, in order;
- rows whose cursor is NULL are never read by a watermark strategy (only full_sync carries them); a run
  counts them (``null_cursor_rows``); a zero-date cursor is read by the first window only (as NULL), and
  a window after a watermark counts those (``zero_date_cursor_rows``);
- a row updated mid-read to a cursor after ``end`` (``updated_at = NOW()``) belongs to the next window; a
  row moved to a position the read already passed is read by neither (a backdated cursor, like a delete,
  needs a full_sync to reconcile); a row moved forward inside the window is read at both positions and
  the load's dedup by primary key keeps the later one;
- a wide window (``src.engine.reading.too_few_rows``) is read by key ranges instead, its predicate
  (``window_filter``) a filter of each: the same rows, each read once, in key order;
- with ``lag_seconds`` L, every row whose transaction commits within L seconds of the cursor value it
  wrote is read: rows with ``ts <= now - L`` are committed before the first page runs. id_only has no
  lag: AUTO_INCREMENT ids that commit out of order can be skipped (use hybrid when that can happen).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from typing import Any

import anyio
import anyio.abc
import pyarrow as pa

from src.common.errors import ConfigError, SourceError
from src.common.log import get_logger
from src.common.naming import qualify_mysql, quote_mysql
from src.common.policy import TypePolicy
from src.common.schema import Column, TableSchema
from src.plan.models import Watermark, Window
from src.source.extract import ExtractStats, drift_errors, extract_table, select_sql, with_filter
from src.source.introspect import Catalog, SourceClock, describe_table, server_now
from src.source.keyset import Keyset, end_value, keyset_for, predicate, start_position, steady_position
from src.source.mysql import SourceConnection, inline_args
from src.source.pages import PageQuery, PageReader
from src.source.text import ReadRules
from src.source.typemap import DEFAULT_POLICY, data_type_of

log = get_logger("source.window")
TS_LOGICAL = frozenset({"date", "timestamp", "timestamptz"})
ID_LOGICAL = frozenset({"int16", "int32", "int64"})
_FSP = re.compile(r"\((\d)\)")
_PROBE_LIMIT = 1
_CLOCKS = "SELECT UTC_TIMESTAMP(6), CONVERT_TZ(UTC_TIMESTAMP(6), '+00:00', @@global.time_zone)"


# ---- validation -------------------------------------------------------------------------------------


def check_window(table: str, schema: TableSchema, window: Window) -> None:
    """Raise ``ConfigError`` unless the window's cursor columns exist and have cursor types, and its
    stored start/end carry the values the strategy needs. ``table`` is 'db.table'."""
    if window.strategy == "full_sync":
        return
    if window.strategy in ("timestamp_only", "hybrid"):
        _check_column(table, schema, window, "cdc_timestamp_column", window.ts_column)
    if window.strategy in ("id_only", "hybrid") or window.id_column:
        _check_column(table, schema, window, "cdc_id_column", window.id_column)
    for name, mark in (("start", window.start), ("end", window.end)):
        _check_mark(table, window, name, mark)


def _check_column(table: str, schema: TableSchema, window: Window, key: str, name: str | None) -> None:
    config_key = f"tables.{table}.{key}"
    kind = "timestamp" if key == "cdc_timestamp_column" else "id"
    if name is None:
        example = "updated_at" if kind == "timestamp" else "id"
        raise ConfigError(
            f"{config_key} is required for cdc_strategy {window.strategy} — name the {kind} column "
            f"to read {table} by (e.g. {example})",
            table=table,
            key=config_key,
        )
    if name not in schema.names:
        raise ConfigError(
            f"{config_key} names column {name!r}, which {table} does not have (columns: "
            f"{', '.join(schema.names[:12])}{', …' if len(schema.names) > 12 else ''}) — fix {config_key}",
            table=table,
            column=name,
            key=config_key,
        )
    column = schema.column(name)
    if not (_is_ts(column) if kind == "timestamp" else _is_id(column)):
        wanted = (
            "DATE, DATETIME or TIMESTAMP" if kind == "timestamp" else "an integer (TINYINT … BIGINT UNSIGNED)"
        )
        article = "a" if kind == "timestamp" else "an"
        default = "'updated_at'" if kind == "timestamp" else "the primary key's column, or 'id'"
        raise ConfigError(
            f"{config_key}: the {kind} cursor is column {name!r} of {table}, which is {column.source_type}; "
            f"{article} {kind} cursor must be {wanted} — set {config_key} to such a column (unset, it is "
            f"{default}) or pick another cdc_strategy",
            table=table,
            column=name,
            key=config_key,
        )


def _is_ts(column: Column) -> bool:
    return column.logical in TS_LOGICAL


def _is_id(column: Column) -> bool:
    """Integers, BIGINT UNSIGNED (decimal(20,0)) and other DECIMAL(p,0); never BIT."""
    if data_type_of(column) == "bit":
        return False
    return column.logical in ID_LOGICAL or (column.logical == "decimal" and column.scale == 0)


def _check_mark(table: str, window: Window, name: str, mark: Watermark | None) -> None:
    needs = "id" if window.strategy == "id_only" else "ts"
    if mark is None or getattr(mark, needs) is not None:
        return
    raise ConfigError(
        f"the {name} of the window of {table} ({mark}) has no {needs}, which cdc_strategy "
        f"{window.strategy} reads by — set it with 's3shift watermark set' or clear it with "
        "'s3shift watermark reset'",
        table=table,
        key="watermark",
    )


# ---- the source's clock ---------------------------------------------------------------------------------


async def source_now(conn: SourceConnection, clock: SourceClock | None = None) -> datetime:
    """The source's clock: naive UTC with microseconds (from ``clock`` when given: labels only)."""
    return (await (clock.now(conn) if clock else server_now(conn))).replace(tzinfo=None)


async def upper_bound(
    conn: SourceConnection,
    database: str,
    table: str,
    schema: TableSchema,
    window: Window,
    *,
    lag_seconds: float,
) -> Watermark | None:
    """The inclusive end of a window, from the source itself, fixed before reading.

    - full_sync: None. id_only: ``MAX(id)`` (None when the table is empty).
    - TIMESTAMP cursor: ``UTC_TIMESTAMP(6) - lag`` (sessions read TIMESTAMPs in +00:00).
    - DATETIME cursor (no zone: the stored wall time): the earlier of the UTC clock and the clock of the
      server's default zone, minus lag, so values written in either zone are safe; for DATETIMEs written
      in a zone behind both, raise lag by the difference.
    - The end of the last complete unit of the column (``ts_bound``): a value the column can hold, so no
      comparison rounds it, and one that no later write can take: a row stamped ``NOW()`` into a
      DATETIME (whole seconds) in the second the bound was read holds that second, which must therefore
      stay in the next window. A DATE cursor ends at the last complete day (yesterday).
    """
    if lag_seconds < 0:
        raise ValueError("lag_seconds must not be negative")
    check_window(f"{database}.{table}", schema, window)
    if window.strategy == "full_sync":
        return None
    if window.strategy == "id_only":
        return await _max_id(conn, database, table, _name(window.id_column))
    column = schema.column(_name(window.ts_column))
    utc, wall = await _clocks(conn)
    now = utc if column.logical == "timestamptz" or wall is None else min(utc, wall)
    return Watermark(ts=ts_bound(column, now - timedelta(seconds=lag_seconds)))


def ts_bound(column: Column, value: datetime) -> datetime:
    """The last value of ``column``'s precision whose unit is complete at ``value``: ``value`` truncated to
    the column's unit (a day for DATE, a second for DATETIME, a microsecond for DATETIME(6)), minus one
    unit. Values in the unit ``value`` is in can still be written (``NOW()`` truncates or rounds to it)."""
    if column.logical == "date":
        return datetime.combine(value.date() - timedelta(days=1), time())
    match = _FSP.search(column.source_type)
    unit = 10 ** (6 - (int(match[1]) if match else 0))
    start = value.replace(microsecond=value.microsecond - value.microsecond % unit)
    return start - timedelta(microseconds=unit)


async def _clocks(conn: SourceConnection) -> tuple[datetime, datetime | None]:
    rows = await conn.fetchall(_CLOCKS)
    utc, wall = rows[0]
    if not isinstance(utc, datetime):
        raise SourceError(f"MySQL source {conn.cfg.name!r} returned {utc!r} for UTC_TIMESTAMP(6)")
    return utc, wall if isinstance(wall, datetime) else None


async def _max_id(conn: SourceConnection, database: str, table: str, column: str) -> Watermark | None:
    sql = f"SELECT MAX({quote_mysql(column)}) FROM {qualify_mysql(database, table)}"
    with drift_errors(f"{database}.{table}"):
        value = (await conn.fetchall(sql))[0][0]
    return None if value is None else Watermark(id=int(value))


def _name(column: str | None) -> str:
    if column is None:
        raise ValueError("check_window lets no window without its cursor column through")
    return column


# ---- reading -------------------------------------------------------------------------------------------


async def extract_window(
    conn: SourceConnection,
    database: str,
    table: str,
    schema: TableSchema,
    send: anyio.abc.ObjectSendStream[pa.RecordBatch],
    *,
    window: Window,
    batch_size: int,
    stats: ExtractStats,
    cpu_limiter: anyio.CapacityLimiter | None = None,
    policy: TypePolicy = DEFAULT_POLICY,
    where: str | None = None,
    max_text_bytes: int | None = None,
) -> None:
    """Send the window's rows as record batches of ``schema.arrow_schema()``, then close ``send`` (on
    failure too: the data is complete only when this returns normally). ``where`` (the table's row filter,
    SQL) is ANDed into every query; values are converted by ``policy`` and ``max_text_bytes`` (see
    ``extract_table``).

    full_sync streams one SELECT. Watermark strategies read ``(window.start, window.end]`` in keyset pages
    of ``batch_size`` rows (one short query each; see the module docstring for the guarantees); a window
    whose end is None (an empty table at bound time) reads nothing. Rows whose cursor is NULL are never
    read. timestamp_only without a single-column primary key reads the window with one streaming query.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    if window.strategy == "full_sync":
        await extract_table(
            conn,
            database,
            table,
            schema,
            send,
            batch_size=batch_size,
            stats=stats,
            cpu_limiter=cpu_limiter,
            where=where,
            policy=policy,
            max_text_bytes=max_text_bytes,
        )
        return
    rules = ReadRules(f"{database}.{table}", policy, max_text_bytes)
    async with send:
        check_window(rules.ref, schema, window)
        keyset = keyset_for(schema, window)
        end = end_value(keyset, window)
        if end is None:
            return
        query = PageQuery(database, table, schema, keyset, batch_size, where)
        reader = PageReader(conn, query, rules, send, stats, cpu_limiter)
        with drift_errors(rules.ref):
            if keyset.paged:
                await reader.pages(start_position(keyset, window), end)
            else:
                await reader.stream(start_position(keyset, window), end)


@dataclass(frozen=True)
class UnreadCursors:
    """Rows of a table windows leave out: ``null``, a cursor column of theirs is NULL (no window reads
    them); ``zero_date``, their timestamp cursor is a zero date such as WordPress's ``0000-00-00 00:00:00``
    default (the first window reads them, as NULL; a window after a watermark never does, so rows written
    with that date since are missed: counted only for such a window)."""

    null: int = 0
    zero_date: int = 0


async def unread_cursor_rows(
    conn: SourceConnection,
    database: str,
    table: str,
    schema: TableSchema,
    window: Window,
    *,
    where: str | None = None,
) -> UnreadCursors:
    """The rows no window of ``window``'s strategy reads (``UnreadCursors``; ``where``: the table's row
    filter). No query when no cursor column is nullable (or for full_sync). With the cursor's index this
    is an index range, not a scan."""
    names = {
        "id_only": (window.id_column,),
        "timestamp_only": (window.ts_column,),
        "hybrid": (window.ts_column, window.id_column),
    }.get(window.strategy, ())
    nullable = [n for n in names if n is not None and n in schema.names and schema.column(n).nullable]
    if not nullable:
        return UnreadCursors()
    nulls = "(" + " OR ".join(_is_null(schema.column(n)) for n in nullable) + ")"
    zeros = _zero_date(schema, window)
    either = f"({nulls} OR {zeros})" if zeros else nulls
    condition = with_filter(either, where, bound=False) or either
    counts = f"SUM({nulls}), " + (f"SUM({zeros})" if zeros else "0")
    with drift_errors(f"{database}.{table}"):
        rows = await conn.fetchall(f"SELECT {counts} FROM {qualify_mysql(database, table)} WHERE {condition}")
    return UnreadCursors(null=int(rows[0][0] or 0), zero_date=int(rows[0][1] or 0))


def _is_null(column: Column) -> str:
    """``col IS NULL``; for a date, not its zero date, which MySQL's IS NULL also matches when the column is
    NOT NULL at its base (a view's column over one): such rows are read by the first window (NULL in the
    target, counted as ``zero_date_to_null``), not left out. A zero date plus 0 is 0, NULL plus 0 NULL."""
    name = quote_mysql(column.name)
    if column.logical in TS_LOGICAL:
        return f"({name} IS NULL AND {name} + 0 IS NULL)"
    return f"{name} IS NULL"


def _zero_date(schema: TableSchema, window: Window) -> str | None:
    """The condition of a zero-date timestamp cursor (``0000-00-00``, with or without a time; a zero day or
    month of year 0 too: all sort before ``0000-01-01``, an index range), when ``window`` starts after a
    watermark and so reads none of them; else None."""
    column = window.ts_column
    if window.start is None or window.start.ts is None or column is None or column not in schema.names:
        return None
    if schema.column(column).logical not in TS_LOGICAL:
        return None
    return f"{quote_mysql(column)} < '0000-01-01'"


# ---- plans: query text, estimates, index ----------------------------------------------------------------


def window_sql(
    database: str,
    table: str,
    schema: TableSchema,
    window: Window,
    *,
    batch_size: int,
    where: str | None = None,
) -> str:
    """The query text (``%s`` placeholders) of a page after the first (the first page of a window that
    starts at the beginning has no lower bound); full_sync: the one SELECT. ``where``: the row filter."""
    if window.strategy == "full_sync":
        return select_sql(database, table, schema, with_filter(None, where, bound=False))
    check_window(f"{database}.{table}", schema, window)
    keyset = keyset_for(schema, window)
    after = steady_position(keyset)
    return PageQuery(database, table, schema, keyset, batch_size, where).sql(after, datetime.min)[0]


async def estimate_rows(
    conn: SourceConnection,
    database: str,
    table: str,
    schema: TableSchema,
    window: Window,
    *,
    where: str | None = None,
    catalog: Catalog | None = None,
) -> int:
    """The optimizer's estimate of the window's rows (EXPLAIN, never a COUNT); full_sync: TABLE_ROWS
    (from the run's ``catalog`` when it has the table; EXPLAIN with a row filter ``where``). Without an
    index on the cursor the estimate is the whole table's."""
    source = qualify_mysql(database, table)
    if window.strategy == "full_sync" and where:
        return _estimate(
            await _explain(conn, f"SELECT 1 FROM {source} WHERE {with_filter(None, where, bound=False)}", [])
        )
    if window.strategy == "full_sync":
        return await table_rows(conn, database, table, catalog)
    rows = _window_rows(database, table, schema, window)
    if rows is None:
        return 0
    keyset, condition, args = rows
    condition = with_filter(condition, where, bound=bool(args)) or condition
    cursor = ", ".join(quote_mysql(name) for name in keyset.names)  # covered by the cursor's index
    return _estimate(await _explain(conn, f"SELECT {cursor} FROM {source} WHERE {condition}", args))


def _window_rows(
    database: str, table: str, schema: TableSchema, window: Window
) -> tuple[Keyset, str, list[object]] | None:
    """A watermark window's keyset and its predicate (``%s`` placeholders, and their arguments): the rows
    ``(start, end]``, no NULL cursor. None: a window that holds nothing."""
    check_window(f"{database}.{table}", schema, window)
    keyset = keyset_for(schema, window)
    end = end_value(keyset, window)
    if end is None:
        return None
    return keyset, *predicate(keyset, start_position(keyset, window), end)


async def table_rows(
    conn: SourceConnection, database: str, table: str, catalog: Catalog | None = None
) -> int:
    """The table's estimated rows: ``TABLE_ROWS``, from the run's ``catalog`` when it has the table."""
    if catalog and (known := catalog.table_rows(database, table)) is not None:
        return known
    rows = await conn.fetchall(
        "SELECT TABLE_ROWS FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s",
        (database, table),
    )
    return int(rows[0][0] or 0) if rows else 0


def window_filter(database: str, table: str, schema: TableSchema, window: Window) -> str | None:
    """A timestamp window's predicate (``_window_rows``) with its values inlined as the driver sends them
    (``inline_args``), for connectorx's key ranges: the same rows as its keyset pages, read in key order
    instead of the cursor's. None: full_sync and id_only (the key ranges are the window), or a window that
    holds nothing."""
    if window.strategy in ("full_sync", "id_only"):
        return None
    rows = _window_rows(database, table, schema, window)
    return None if rows is None else inline_args(rows[1], rows[2])


async def explain_rows(conn: SourceConnection, sql: str, args: list[object]) -> int:
    """The optimizer's estimate of the rows ``sql`` reads (EXPLAIN; index dives for a key range)."""
    return _estimate(await _explain(conn, sql, args))


def _estimate(plan: dict[str, Any]) -> int:
    return round(float(plan.get("rows") or 0) * float(plan.get("filtered") or 100) / 100)


@dataclass(frozen=True)
class IndexUse:
    """What EXPLAIN says of a window's query: the index it uses (None: a table scan), the indexes it
    could use (none: each read is a full scan whatever the table's size), and whether it reads pages."""

    used: str | None
    possible: tuple[str, ...]
    paged: bool


async def index_for(
    conn: SourceConnection,
    database: str,
    table: str,
    window: Window,
    *,
    schema: TableSchema | None = None,
    where: str | None = None,
) -> IndexUse:
    """What EXPLAIN says of the window's first page (of its one query, for a timestamp_only window
    without a single-column key). The probe page is tiny, so ``used`` is the index pages use on a table
    much larger than a page (on a small table the optimizer may rightly prefer a scan, and an unpaged
    query does so on any table where the window is wide). ``schema`` (with any configured primary key)
    defaults to the catalog's. Logs a warning when the pages would also sort."""
    if window.strategy == "full_sync":
        return IndexUse(None, (), paged=False)
    schema = schema or await describe_table(conn, database, table)
    check_window(f"{database}.{table}", schema, window)
    keyset = keyset_for(schema, window)
    query = PageQuery(database, table, schema, keyset, _PROBE_LIMIT, where)
    plan = await _explain(conn, *query.sql(start_position(keyset, window), end_value(keyset, window)))
    key = plan.get("key")
    possible = tuple(k for k in str(plan.get("possible_keys") or "").split(",") if k)
    if key and keyset.paged and "filesort" in str(plan.get("Extra") or ""):
        log.warning(
            "%s.%s: pages use index %s but still sort; an index on (%s) reads each page directly",
            database,
            table,
            key,
            ", ".join(keyset.names),
        )
    return IndexUse(str(key) if key else None, possible, keyset.paged)


async def _explain(conn: SourceConnection, sql: str, args: list[object]) -> dict[str, Any]:
    """The first row of EXPLAIN, by column name (MariaDB and MySQL differ in columns)."""
    async with conn.stream(f"EXPLAIN {sql}", args) as rows:
        names = rows.names
        found = await rows.fetchmany(100)
    return {name: _text(value) for name, value in zip(names, found[0], strict=True)} if found else {}


def _text(value: object) -> object:
    return value.decode() if isinstance(value, bytes | bytearray) else value
