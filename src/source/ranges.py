"""Primary-key ranges of a table, for reading it in parallel (pure planning plus two cheap queries).

A table qualifies when its primary key's first column is an integer (``split_key``): the key itself, or
the first of a composite key such as ``(order_id, line_no)``, whose ranges tile the table as well, since
every row has one value of it. The first plan splits ``[MIN, MAX]`` of that column into equal spans, as
many as the table's estimated rows call for (``range_rows`` each, at least one per worker when the table
is big enough to share). Keys are rarely uniform, so a reader checks each span before reading it: when
the optimizer's estimate of the span's rows (EXPLAIN, answered by index dives on the key) is over twice
``range_rows``, the span is halved and both halves go back to the queue. A dense cluster of keys is thus
split until its pieces are small, and a sparse key space never yields more spans than the row estimate
asked for.

The first span is open below and the last open above, so a row inserted outside ``[MIN, MAX]`` while the
table is read is not lost to the plan (it is read when its span is). Every bound is an ``int``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from src.common.naming import qualify_mysql, quote_mysql
from src.common.schema import Column, TableSchema
from src.source.mysql import SourceConnection
from src.source.typemap import data_type_of

KEY_LOGICAL = frozenset({"int16", "int32", "int64"})
MAX_RANGES = 4096


@dataclass(frozen=True)
class KeyRange:
    """``low <= key < high``; None is unbounded on that side."""

    low: int | None
    high: int | None

    def condition(self, key: str) -> str:
        """SQL text of the range (the bounds are ints we computed, formatted as integer literals)."""
        column = quote_mysql(key)
        parts = []
        if self.low is not None:
            parts.append(f"{column} >= {int(self.low)}")
        if self.high is not None:
            parts.append(f"{column} < {int(self.high)}")
        return " AND ".join(parts) or f"{column} IS NOT NULL"

    def after(self, key_value: int) -> KeyRange:
        """The rest of this range after ``key_value`` (the last key read)."""
        return KeyRange(int(key_value) + 1, self.high)

    def span(self, lowest: int, highest: int) -> int:
        """How many keys this range can hold (``lowest``/``highest`` stand in for an open side)."""
        low = lowest if self.low is None else self.low
        high = highest + 1 if self.high is None else self.high
        return max(0, high - low)

    def halves(self, lowest: int, highest: int) -> tuple[KeyRange, KeyRange] | None:
        """Split at the middle of the keys this range can hold (``lowest``/``highest`` stand in for an
        open side); None when it holds a single key."""
        if self.span(lowest, highest) < 2:
            return None
        low = lowest if self.low is None else self.low
        high = highest + 1 if self.high is None else self.high
        middle = low + (high - low) // 2
        return KeyRange(self.low, middle), KeyRange(middle, self.high)


def range_key(schema: TableSchema) -> Column | None:
    """The single integer primary-key column (BIGINT UNSIGNED, planned as decimal(20,0), included:
    Laravel's and many ORMs' default key), or None: an id_only window's keys, one row per value."""
    return split_key(schema) if len(schema.primary_key) == 1 else None


def split_key(schema: TableSchema) -> Column | None:
    """The integer primary-key column ranges split on: the key's only or first column, or None. A
    composite key's first column may repeat (``FastRead`` estimates its ranges before reading them)."""
    if not schema.primary_key:
        return None
    column = schema.column(schema.primary_key[0])
    return column if integer_key(column) else None


def integer_key(column: Column) -> bool:
    """A key column whose values are Python ints (BIGINT UNSIGNED is planned as decimal(20,0))."""
    return column.logical in KEY_LOGICAL or (column.logical == "decimal" and data_type_of(column) == "bigint")


def split(lowest: int, highest: int, estimated_rows: int, range_rows: int, workers: int) -> list[KeyRange]:
    """Equal key spans over ``[lowest, highest]``: ``ceil(estimated_rows / range_rows)`` of them, at least
    ``workers`` when there are rows for two ranges, never more than the keys or ``MAX_RANGES``."""
    count = math.ceil(max(estimated_rows, 1) / range_rows)
    if estimated_rows >= 2 * range_rows:
        count = max(count, workers)
    count = max(1, min(count, MAX_RANGES, highest - lowest + 1))
    step = math.ceil((highest - lowest + 1) / count)
    bounds = [lowest + i * step for i in range(1, count) if lowest + i * step <= highest]
    edges: list[int | None] = [None, *bounds, None]
    return [KeyRange(edges[i], edges[i + 1]) for i in range(len(edges) - 1)]


async def key_bounds(conn: SourceConnection, database: str, table: str, key: str) -> tuple[int, int] | None:
    """``MIN`` and ``MAX`` of the key (read from the ends of the primary key), None for an empty table."""
    column = quote_mysql(key)
    rows = await conn.fetchall(f"SELECT MIN({column}), MAX({column}) FROM {qualify_mysql(database, table)}")
    if not rows or rows[0][0] is None:
        return None
    return int(rows[0][0]), int(rows[0][1])


async def row_bytes(conn: SourceConnection, database: str, table: str) -> int:
    """MySQL's average row length of the table (its statistics; 1 when it has none)."""
    rows = await conn.fetchall(
        "SELECT AVG_ROW_LENGTH FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s",
        (database, table),
    )
    return max(1, int(rows[0][0] or 1)) if rows else 1
