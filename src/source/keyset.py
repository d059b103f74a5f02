"""Keyset paging over a window (pure): the read order, the page predicates and the page query text.

A window is read in ``order``: ``(id)`` for id_only, ``(ts, id)`` for hybrid, ``(ts, key)`` for
timestamp_only with a single-column primary key. A page after position ``(p_ts, p_id)`` is

    ts >= p_ts AND (ts > p_ts OR (ts = p_ts AND id > p_id)) AND ts <= end ORDER BY ts, id LIMIT n

which MariaDB and MySQL read as one range on an index over ``(ts, id)``, or over ``(ts)`` when id is the
primary key (InnoDB appends it to every secondary index). The shorter ``ts > p_ts OR id > p_id`` is
equivalent, but lets MariaDB pick an index merge of ``(ts)`` and ``PRIMARY`` plus a filesort of the whole
remaining window on every page (measured: 3.4x slower on 500k rows, hence the longer form).

A page boundary is exact only when the order is unique: rows sharing the last position of a page would
otherwise be cut in two and the second part skipped. So an id cursor that is not the table's whole key
(a per-tenant id of a ``(tenant, id)`` key, a non-unique ``seq`` of a log) is followed by the key's other
columns, which InnoDB appends to the cursor's index anyway: ``(id, tenant)``, ``(ts, id, tenant)``. A table
without a key (or whose configured key can be NULL) has no unique order: its window is one streaming
query, never cut. A nullable key column never breaks ties: ``key > p`` is never true for a NULL.

An ENUM or SET column sorts by its members' positions (``ENUM('zeta', 'alpha')``: zeta first) but compares
with a bound value as text (``'alpha' > 'zeta'`` is false): a page boundary on one skipped or repeated
rows, so a key holding one (a ``(entity_id, kind)`` key) is read by one streaming query as well.

A position without an id (a window start that is a previous window's end) is the plain bound
``ts > p_ts``. NULL cursors never match these predicates, so NULL rows are never read.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from src.common.keyorder import after_position
from src.common.naming import quote_mysql
from src.common.schema import Column, TableSchema
from src.plan.models import Watermark, Window
from src.source.extract import select_sql
from src.source.typemap import data_type_of

_MEMBER_ORDER = frozenset({"enum", "set"})  # sort by member position, compare with bound text as text
Position = tuple[Any, ...]  # values of the order columns (the last one may be None: "after all of ts")


@dataclass(frozen=True)
class Keyset:
    """How a window is read. ``paged`` is False when the order cannot be made unique (no key, or a key
    that can be NULL): then one streaming query reads the window (no page boundary, so no tie can be
    split)."""

    strategy: str
    order: tuple[Column, ...]
    paged: bool

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.order)


def tie_column(schema: TableSchema, window: Window) -> str | None:
    """The column that breaks ties between rows sharing a timestamp (None: no paging possible)."""
    if window.strategy == "hybrid" or window.id_column:
        return window.id_column
    return schema.primary_key[0] if len(schema.primary_key) == 1 else None


def keyset_for(schema: TableSchema, window: Window) -> Keyset:
    """The read order of a watermark window (``check_window`` has validated the columns): the cursor
    columns, then the key's other columns, so that no two rows share a position (see the module
    docstring); unpaged when the key cannot make it unique."""
    if window.strategy == "id_only":
        cursor: tuple[Column, ...] = (schema.column(_need(window.id_column)),)
    else:
        tie = tie_column(schema, window)
        cursor = tuple(schema.column(name) for name in (_need(window.ts_column), tie) if name is not None)
    key = unique_key(schema)
    rest = () if key is None else tuple(c for c in key if c.name not in {o.name for o in cursor})
    unique = key is not None and not (window.strategy == "timestamp_only" and len(cursor) == 1)
    if not unique or any(member_ordered(c) for c in cursor[1:] + rest):
        plain = cursor if window.strategy != "timestamp_only" else cursor[:1]
        return Keyset(window.strategy, plain, paged=False)
    return Keyset(window.strategy, cursor + rest, paged=True)


def member_ordered(column: Column) -> bool:
    """An ENUM or SET: sorted by member position, compared with a bound value as text."""
    return data_type_of(column) in _MEMBER_ORDER


def unique_key(schema: TableSchema) -> tuple[Column, ...] | None:
    """The table's key when every row has a distinct value of it (None: no key, or a column of the
    configured key is nullable, so rows may share a NULL)."""
    key = tuple(schema.column(name) for name in schema.primary_key)
    return key if key and not any(c.nullable for c in key) else None


def _need(name: str | None) -> str:
    if name is None:
        raise ValueError("the window names no cursor column; call check_window first")
    return name


def start_position(keyset: Keyset, window: Window) -> Position | None:
    """Where the window starts (exclusive): None = from the beginning."""
    start = window.start
    if start is None:
        return None
    if keyset.strategy == "id_only":
        return None if start.id is None else (start.id,)
    if start.ts is None:
        return None
    return (start.ts, start.id) if len(keyset.order) > 1 else (start.ts,)


def end_value(keyset: Keyset, window: Window) -> Any:
    """The window's inclusive upper bound on the first order column (None: nothing to read)."""
    end: Watermark | None = window.end
    if end is None:
        return None
    return end.id if keyset.strategy == "id_only" else end.ts


def predicate(keyset: Keyset, after: Position | None, end: Any) -> tuple[str, list[object]]:
    """``WHERE`` text (``%s`` placeholders) and its arguments for rows after ``after`` up to ``end``."""
    first = quote_mysql(keyset.order[0].name)
    parts: list[str] = []
    args: list[object] = []
    if after is not None:
        text, values = _after(keyset, after)
        parts.append(text)
        args += values
    if end is not None:
        parts.append(f"{first} <= %s")
        args.append(end)
    else:
        parts.append(f"{first} IS NOT NULL")
    parts += [f"{quote_mysql(c.name)} IS NOT NULL" for c in keyset.order[1:] if c.nullable]
    return " AND ".join(parts), args


def _after(keyset: Keyset, after: Position) -> tuple[str, list[object]]:
    """Rows after ``after`` in the keyset order; a position's trailing Nones stand for "after every value
    of those columns" (``(ts, None)``: after all of ts). For ``(a, b, c)``:
    ``a >= %s AND (a > %s OR (a = %s AND (b > %s OR (b = %s AND c > %s))))``, each value bound at each use.
    A BINARY/VARBINARY key's bytes go as hex text, ``UNHEX(%s)``: asyncmy escapes bytes with backslashes
    even where the server's sql_mode has NO_BACKSLASH_ESCAPES (0x27 then broke the query, 0x5c bound
    another value). A BIT key's bytes (as the driver reads them) go as their big-endian integer: MariaDB
    compares a BIT column with a byte string as a number parsed from text (``b > x'0025'`` matched 0x25
    itself), so the read never got past such a page."""
    names = [quote_mysql(c.name) for c in keyset.order]
    hexed = [c.logical == "binary" for c in keyset.order]
    text, order = after_position(names, after, lambda i: "UNHEX(%s)" if hexed[i] else "%s", range_first=True)
    return text, [_bound(keyset.order[i], after[i]) for i in order]


def _bound(column: Column, value: object) -> object:
    """A position's value as the page query binds it (see ``_after``)."""
    if not isinstance(value, bytes):
        return value
    if data_type_of(column) == "bit":
        return int.from_bytes(value, "big")
    return value.hex() if column.logical == "binary" else value


def page_query(
    database: str, table: str, schema: TableSchema, keyset: Keyset, where: str, batch_size: int
) -> str:
    """One page: the window predicate, the keyset order and a LIMIT (or the single streaming query)."""
    sql = select_sql(database, table, schema, where)
    if not keyset.paged:
        return sql
    order = ", ".join(quote_mysql(name) for name in keyset.names)
    return f"{sql} ORDER BY {order} LIMIT {int(batch_size)}"


def steady_position(keyset: Keyset) -> Position:
    """A stand-in position of a page after the first (for query text: only its shape matters)."""
    return tuple(
        datetime.min if c.logical in ("date", "timestamp", "timestamptz") else 0 for c in keyset.order
    )


def position_of(row: tuple[Any, ...], keyset: Keyset, schema: TableSchema) -> Position:
    """The position of a row as the driver returned it: bound back exactly as read (naive datetimes in
    the session's +00:00 for TIMESTAMP, the stored wall time for DATETIME, ints for BIGINT UNSIGNED)."""
    return tuple(row[schema.names.index(name)] for name in keyset.names)
