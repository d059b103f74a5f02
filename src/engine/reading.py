"""A table's read: its window fixed from the source, the extract path chosen (connectorx key ranges or
asyncmy), and extract and stage run together through a bounded stream."""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import anyio
import anyio.abc
import pyarrow as pa

from src.common.schema import TableSchema
from src.engine.context import RunContext
from src.engine.streams import CheckedReceive, Completion, RowBytesLimit, Tap
from src.plan.models import Watermark, Window
from src.plan.planner import Resolved, TablePlan, resolve, window
from src.source.extract import ExtractStats, with_filter
from src.source.fastpath import MIN_ROWS as FAST_MIN_ROWS
from src.source.fastpath import FastRead
from src.source.fastpath import blocker as fast_blocker
from src.source.introspect import Catalog, describe_table
from src.source.mysql import SourceConnection
from src.source.ranges import KeyRange, range_key
from src.source.text import ReadRules
from src.source.window import (
    check_window,
    estimate_rows,
    extract_window,
    table_rows,
    upper_bound,
    window_filter,
)
from src.stage.models import StageResult
from src.stage.writer import write_parquet

BATCHES_IN_FLIGHT = 2  # bound of the stream between extract and stage, in record batches
# A timestamp window holding at least this part of its table is read by key ranges over the whole table:
# on W1's 2M rows, keyset pages through an index on the cursor took 3.8x a full read's time (measured)
WIDE_WINDOW = 0.25


async def plan_window(
    conn: SourceConnection, plan: TablePlan, position: Watermark | None, catalog: Catalog | None = None
) -> tuple[TableSchema, Resolved, Window]:
    """Describe the table (from the run's ``catalog`` when given), choose how it is read and loaded, and
    fix the window's end from the source."""
    schema, resolved = await describe_and_resolve(conn, plan, catalog)
    win = window(plan, resolved, position)
    check_window(plan.table, schema, win)
    end = await upper_bound(conn, plan.database, plan.source_table, schema, win, lag_seconds=plan.lag_seconds)
    return schema, resolved, replace(win, end=end)


async def describe_and_resolve(
    conn: SourceConnection, plan: TablePlan, catalog: Catalog | None = None
) -> tuple[TableSchema, Resolved]:
    """The table's planned columns (from the run's ``catalog`` when given), and how it is read and loaded."""
    schema = await describe_table(
        conn,
        plan.database,
        plan.source_table,
        primary_key=plan.primary_key,
        policy=plan.policy,
        selection=plan.columns,
        catalog=catalog,
    )
    return schema, resolve(plan, schema)


def window_is_empty(win: Window) -> bool:
    """A window that cannot hold a row (no rows yet, or the upper bound is not past the watermark)."""
    if win.strategy == "full_sync":
        return False
    if win.end is None:
        return True
    if win.start is None:
        return False
    if win.strategy == "id_only":
        return win.start.id is not None and win.end.id is not None and win.start.id >= win.end.id
    return win.start.ts is not None and win.end.ts is not None and win.start.ts >= win.end.ts


@dataclass(frozen=True)
class TableRead:
    """One table's read of one window: from which connection, with which schema, counted where, and
    labelled with which stage metadata."""

    ctx: RunContext
    conn: SourceConnection
    plan: TablePlan
    schema: TableSchema
    window: Window
    stats: ExtractStats
    meta: dict[str, Any]
    prefix: str | None = None  # where the stage goes (None: the run's prefix of the table)
    ranges: tuple[KeyRange, ...] = ()  # the key ranges to read, planned before (a unit); (): the window


async def extract_and_stage(
    read: TableRead, tap: anyio.abc.ObjectSendStream[pa.RecordBatch] | None = None
) -> StageResult:
    """Extract and stage run concurrently through a bounded stream; the manifest is written only when
    extraction finished cleanly. ``tap`` also gets every batch staged, and its end only on a clean one."""
    ctx, plan, schema = read.ctx, read.plan, read.schema
    send, receive = anyio.create_memory_object_stream[pa.RecordBatch](max_buffer_size=BATCHES_IN_FLIGHT)
    completion = Completion()
    extract = partial(
        extract_window,
        read.conn,
        plan.database,
        plan.source_table,
        schema,
        send,
        window=read.window,
        batch_size=plan.batch_size,
        stats=read.stats,
        cpu_limiter=ctx.limits.cpu,
        policy=plan.policy,
        where=plan.where,
        max_text_bytes=ctx.warehouse.max_varchar_bytes,
    )

    async def produce() -> None:
        try:
            fast = await _fast_read(read, send)
            if fast is None:
                await extract()
            else:
                async with send:
                    await fast[0].run(fast[1])
        except BaseException:
            completion.fail()
            raise
        completion.succeed()

    prefix = read.prefix or ctx.s3.run_prefix(ctx.pipeline.name, plan.table, ctx.execution_id)
    async with anyio.create_task_group() as tg:
        tg.start_soon(produce)
        async with CheckedReceive(receive, completion, f"extract of {plan.table}") as checked:
            limit = ctx.warehouse.max_row_bytes
            rows = checked if limit is None else RowBytesLimit(checked, limit, plan.table)
            result = await write_parquet(
                ctx.s3,
                prefix=prefix,
                schema=schema.arrow_schema(),
                receive=rows if tap is None else Tap(rows, tap),
                file_size_bytes=plan.file_size_bytes,
                cpu_limiter=ctx.limits.cpu,
                schema_hash=schema.schema_hash(),
                meta=read.meta,
            )
    return result


def fast_window(ctx: RunContext, schema: TableSchema, win: Window) -> tuple[int | None, int | None] | str:
    """The keys the fast path would read — ``(after, upto]``, (None, None) for the whole table — or why
    the table is read by asyncmy. Whether it is big enough, and a timestamp window wide enough, is decided
    from its row estimate (``too_few_rows``)."""
    if not ctx.pipeline.processing.fast_path:
        return "processing.fast_path is off"
    if win.strategy == "id_only":  # a window of the primary key is a key range too
        key = range_key(schema)
        if key is None or win.id_column != key.name:
            return "the id_only cursor is not the single-column integer primary key"
        if win.end is None or win.end.id is None:
            return "the window is empty"
        return fast_blocker(schema) or ((win.start.id if win.start else None), win.end.id)
    if win.strategy != "full_sync":
        try:  # its predicate goes into connectorx's SQL, which binds nothing: integers and dates only
            window_filter("", "", schema, win)
        except TypeError:
            return f"the bounds of this {win.strategy} window cannot be written into connectorx's SQL"
    return fast_blocker(schema) or (None, None)


async def too_few_rows(
    ctx: RunContext,
    conn: SourceConnection,
    plan: TablePlan,
    schema: TableSchema,
    win: Window,
    estimated_rows: int,
) -> str | None:
    """Why a table of this many (estimated) rows is not worth the fast path's connections (None: it is).
    A timestamp window (timestamp_only, hybrid) is read by key ranges over the whole table, its predicate
    a filter (``window_filter``): worth it when it starts at the beginning (a first sync) or holds a good
    part of the table (``WIDE_WINDOW``; without an index on the cursor every keyset page would scan the
    table), else its keyset pages read just its rows through the cursor's index."""
    if estimated_rows < min(FAST_MIN_ROWS, ctx.pipeline.processing.range_rows):
        return f"about {estimated_rows} rows, too few for key ranges"
    if win.strategy in ("timestamp_only", "hybrid") and win.start is not None:
        db, name = plan.database, plan.source_table
        total = await table_rows(conn, db, name, ctx.catalog)
        if plan.where:  # the window alone, on the cursor's index: a row filter's columns can make the
            # optimizer plan a scan and estimate the whole table (the pages still read that index)
            estimated_rows = await estimate_rows(conn, db, name, schema, win, catalog=ctx.catalog)
        if estimated_rows < total * WIDE_WINDOW:
            return f"about {estimated_rows} of the table's {total} rows: keyset pages on the cursor's index"
    return None


def range_workers(configured: int, connections: int, tables_at_once: int) -> int:
    """connectorx connections per table: as configured, or (0) 3 when every table read at once can have
    them beside its own pooled connection within this process's share of the source's connections (a
    run of one or two big tables, on the default ``max_connections`` of 8), else 2. A third keeps the
    server busy between ranges: W1's one big table about 5% faster; taken greedily by many tables, it
    would leave a later one none (then read by asyncmy, far slower)."""
    if configured:
        return configured
    return 3 if tables_at_once * (1 + 3) <= connections else 2


async def _fast_read(
    read: TableRead, send: anyio.abc.ObjectSendStream[pa.RecordBatch]
) -> tuple[FastRead, int] | None:
    """The connectorx key-range reader and the table's row estimate, for a table it can carry exactly and
    that is big enough (else None, with the reason in ``stats.path``)."""
    ctx, conn, plan, schema, win, stats = read.ctx, read.conn, read.plan, read.schema, read.window, read.stats
    keys = fast_window(ctx, schema, win)
    if read.ranges and ctx.source is not None:  # planned: exactly these keys, whatever the path
        return _reader(read, send, (None, None), read.ranges, keys if isinstance(keys, str) else ""), 0
    if ctx.source is None or isinstance(keys, str):
        if isinstance(keys, str):
            stats.path = {"path": "asyncmy", "reason": keys}
        return None
    estimated = await estimate_rows(
        conn, plan.database, plan.source_table, schema, win, where=plan.where, catalog=ctx.catalog
    )
    if reason := await too_few_rows(ctx, conn, plan, schema, win, estimated):
        stats.path = {"path": "asyncmy", "reason": reason}
        return None
    return _reader(read, send, keys), estimated


def _reader(
    read: TableRead,
    send: anyio.abc.ObjectSendStream[pa.RecordBatch],
    keys: tuple[int | None, int | None],
    ranges: tuple[KeyRange, ...] = (),
    blocked: str = "",
) -> FastRead:
    """The table's key-range reader of ``keys`` (``fast_window``), or of the planned ``ranges``."""
    ctx, conn, plan, schema, stats = read.ctx, read.conn, read.plan, read.schema, read.stats
    assert ctx.source is not None
    processing = ctx.pipeline.processing
    within = window_filter(plan.database, plan.source_table, schema, read.window)
    return FastRead(
        source=ctx.source,
        conn=conn,
        database=plan.database,
        table=plan.source_table,
        schema=schema,
        rules=ReadRules(plan.table, plan.policy, ctx.warehouse.max_varchar_bytes),
        send=send,
        stats=stats,
        batch_size=plan.batch_size,
        range_rows=processing.range_rows,
        workers=range_workers(
            processing.range_workers, int(ctx.limits.mysql.total_tokens), ctx.tables_at_once
        ),
        where=with_filter(within, plan.where, bound=False),
        cpu_limiter=ctx.limits.cpu,
        after=keys[0],
        upto=keys[1],
        ranges=ranges,
        blocked=blocked,
    )
