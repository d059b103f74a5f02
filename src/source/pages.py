"""Read one incremental window: keyset pages (one short query each) or, without a tie-breaking key, one
streaming query. See ``src.source.window`` for what a window guarantees and ``src.source.keyset`` for the
page predicates."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import anyio
import anyio.abc
import pyarrow as pa

from src.common.errors import SourceError
from src.common.schema import TableSchema
from src.source.extract import BatchRows, ExtractStats, check_description, pump_rows, send_rows, with_filter
from src.source.keyset import Keyset, Position, page_query, position_of, predicate
from src.source.mysql import SourceConnection
from src.source.text import ReadRules


@dataclass(frozen=True)
class PageQuery:
    """The text of a window's queries: the keyset predicate AND the table's row filter."""

    database: str
    table: str
    schema: TableSchema
    keyset: Keyset
    batch_size: int
    row_filter: str | None = None

    def sql(self, after: Position | None, end: Any, *, limit: int | None = None) -> tuple[str, list[object]]:
        where, args = predicate(self.keyset, after, end)
        where = with_filter(where, self.row_filter, bound=bool(args)) or where
        size = self.batch_size if limit is None else limit
        return page_query(self.database, self.table, self.schema, self.keyset, where, size), args


class PageReader:
    """Reads a window into ``send`` as record batches, converting values by ``rules``."""

    def __init__(
        self,
        conn: SourceConnection,
        query: PageQuery,
        rules: ReadRules,
        send: anyio.abc.ObjectSendStream[pa.RecordBatch],
        stats: ExtractStats,
        cpu_limiter: anyio.CapacityLimiter | None,
    ) -> None:
        self.conn, self.query, self.rules = conn, query, rules
        self.send, self.stats, self.cpu_limiter = send, stats, cpu_limiter
        self.schema, self.keyset, self.batch_size = query.schema, query.keyset, query.batch_size

    async def pages(self, after: Position | None, end: Any) -> None:
        """Keyset pages until one comes back short. The page's cursor is closed before its batch is sent,
        so a slow consumer never holds a query open on the server. A page holds at most ``batch_size`` rows
        and about ``BATCH_BYTES`` of data (``BatchRows``)."""
        size = BatchRows(self.schema, self.batch_size)
        while True:
            limit = size.rows
            rows = await self._page(after, end, limit)
            if rows:
                size.observe(await self._send(rows))
            if len(rows) < limit:
                return
            following = position_of(rows[-1], self.keyset, self.schema)
            if following == after:
                raise SourceError(
                    f"reading {self.rules.ref} by {', '.join(self.keyset.names)} did not advance past "
                    f"{after!r} — the cursor values do not compare as the server orders them "
                    "(invalid dates?)",
                    table=self.rules.ref,
                )
            after = following

    async def _page(self, after: Position | None, end: Any, limit: int) -> list[tuple[Any, ...]]:
        sql, args = self.query.sql(after, end, limit=limit)
        async with self.conn.stream(sql, args) as rows:
            check_description(rows, self.schema, self.rules.ref)
            return await rows.fetchmany(limit + 1)  # a page holds at most limit rows: done

    async def stream(self, after: Position | None, end: Any) -> None:
        sql, args = self.query.sql(after, end)
        async with self.conn.stream(sql, args) as rows:
            check_description(rows, self.schema, self.rules.ref)
            await pump_rows(
                rows, self.schema, self.rules, self.send, self.batch_size, self.stats, self.cpu_limiter
            )

    async def _send(self, rows: list[tuple[Any, ...]]) -> pa.RecordBatch:
        return await send_rows(rows, self.schema, self.rules, self.send, self.stats, self.cpu_limiter)
