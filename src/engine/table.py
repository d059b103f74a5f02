"""One table's run: backup (introspect -> window -> extract || stage) then load the pending chain.
Returns a result; never raises a table error."""

from __future__ import annotations

import time
from collections.abc import Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any, Literal

import anyio
import anyio.abc
import pyarrow as pa

from src.common.errors import S3ShiftError, describe, first_error
from src.common.log import get_logger
from src.common.schema import TableSchema
from src.config.models import Pipeline
from src.engine.limits import Limits
from src.engine.pending import Chain, describe_stage, format_ts, parse_ts, select, stage_id, stage_window
from src.engine.streams import CheckedReceive, Completion, Tap
from src.plan.models import Watermark, Window
from src.plan.planner import Resolved, TablePlan, read_window, resolve, window
from src.report.models import TableFailure, TableResult, TableSuccess, utc_now
from src.source.extract import ExtractStats
from src.source.fastpath import MIN_ROWS as FAST_MIN_ROWS
from src.source.fastpath import FastRead
from src.source.fastpath import blocker as fast_blocker
from src.source.introspect import Catalog, SourceClock, describe_table
from src.source.mysql import MySQLSource, SourceConnection
from src.source.ranges import range_key
from src.source.text import ReadRules
from src.source.window import check_window, estimate_rows, extract_window, source_now, upper_bound
from src.stage.manifest import MANIFEST_NAME
from src.stage.models import StageResult
from src.stage.pending import (
    PipelineScan,
    clean_dead_runs,
    delete_stage,
    list_runs,
    read_stages,
)
from src.stage.s3 import S3Stage
from src.stage.writer import write_parquet
from src.warehouse.base import LoadRequest, LoadResult, StateRow, StreamedLoad, Warehouse
from src.warehouse.ddl import DistSort

log = get_logger("engine")
BATCHES_IN_FLIGHT = 2  # bound of the stream between extract and stage, in record batches
RunMode = Literal["sync", "backup_only", "load_only"]
DELETES_NOTE = "deletes at the source are not captured by watermark strategies; run full_sync to reconcile"


@dataclass(frozen=True)
class RunContext:
    execution_id: str
    pipeline: Pipeline
    limits: Limits
    source: MySQLSource | None  # None for --load-only: no MySQL reads at all
    s3: S3Stage
    warehouse: Warehouse
    mode: RunMode = "sync"
    catalog: Catalog | None = None  # the run's batched source catalog (None: one query per table)
    scan: PipelineScan | None = None  # the S3 listings made at the run's start (None: per table)
    states: Mapping[str, StateRow] | None = (
        None  # every table's state read at the run's start (None: per table)
    )
    clock: SourceClock = field(default_factory=SourceClock)  # the source's clock for stage labels


@dataclass
class _Progress:
    phase: str = "plan"
    started: float = field(default_factory=time.monotonic)
    phases: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def timed(self, name: str, since: float) -> None:
        self.phases[name] = round(self.phases.get(name, 0.0) + time.monotonic() - since, 6)


@dataclass(frozen=True)
class _Backup:
    stage: StageResult | None  # None: nothing new (empty incremental window)
    stats: ExtractStats
    window: Window
    loaded: LoadResult | None = None  # the stage was loaded while it was written (``_stage_and_load``)


async def sync_table(ctx: RunContext, plan: TablePlan) -> TableResult:
    progress = _Progress()
    try:
        async with ctx.limits.tables:
            return await _run(ctx, plan, progress)
    except Exception as exc:  # a table's failure is a result; cancellation (BaseException) passes through
        err = first_error(exc)
        log.debug("%s failed in %s", plan.table, progress.phase, exc_info=err)
        extra: dict[str, Any] = {"phase": progress.phase}
        if isinstance(err, S3ShiftError):
            extra["retryable"] = err.retryable
        return TableFailure(table=plan.table, error_message=describe(err), failed_at=utc_now(), extra=extra)


async def _run(ctx: RunContext, plan: TablePlan, progress: _Progress) -> TableSuccess:
    progress.phase = "state"
    if ctx.states is not None:  # read with every other table's at the run's start
        state = ctx.states.get(plan.table)
    else:
        state = await ctx.warehouse.read_state(ctx.pipeline.name, plan.table)
    since = (state.stage_id or None) if state else None
    runs = await list_runs(ctx.s3, ctx.pipeline.name, plan.table, since=since, scan=ctx.scan)
    unknown = [i for i in runs.ids if i != since]  # the latest state row's own stage is committed
    committed = await ctx.warehouse.committed_stage_ids(ctx.pipeline.name, plan.table) if unknown else set()
    unread = [i for i in unknown if i not in committed]
    stages = await read_stages(ctx.s3, ctx.pipeline.name, plan.table, unread)
    chain = select(stages, state, committed)
    rows_extracted, files_created = 0, 0
    streamed: LoadResult | None = None
    if ctx.mode != "load_only":
        backup = await _backup(ctx, plan, chain, progress, markers=runs.markers, state=state)
        rows_extracted = backup.stats.rows
        streamed = backup.loaded
        if backup.stage is not None:
            files_created = backup.stage.files_created
            if plan.strategy == "full_sync":  # a fresh snapshot supersedes every pending one
                fresh = () if streamed else (backup.stage,)  # already loaded with its extraction
                chain = replace(chain, load=fresh, skipped=chain.skipped + chain.load)
            else:
                chain = replace(chain, load=(*chain.load, backup.stage))
            progress.extra["manifest"] = backup.stage.manifest_url
            progress.extra["bytes_written"] = backup.stage.bytes
        if backup.stats.coercions:
            progress.extra["coercions"] = backup.stats.coercions
        if backup.stats.path:
            progress.extra["extract"] = backup.stats.path
        progress.extra["window"] = _window_dict(backup.window)
        if plan.strategy != "full_sync":
            progress.extra["deletes"] = DELETES_NOTE
    if chain.skipped:
        progress.extra["stages_skipped"] = [describe_stage(s) for s in chain.skipped]
    rows_loaded = 0
    if ctx.mode != "backup_only":
        rows_loaded = await _load_chain(ctx, plan, chain, state, progress, streamed)
    progress.extra.update(strategy=plan.strategy, phases=progress.phases)
    return TableSuccess(
        table=plan.table,
        rows_processed=rows_loaded if ctx.mode == "load_only" else rows_extracted,
        files_created=files_created,
        duration_seconds=time.monotonic() - progress.started,
        completed_at=utc_now(),
        extra=progress.extra,
    )


async def _backup(
    ctx: RunContext,
    plan: TablePlan,
    chain: Chain,
    progress: _Progress,
    *,
    markers: bool,
    state: StateRow | None,
) -> _Backup:
    assert ctx.source is not None
    progress.phase = "cleanup"
    aborted = await clean_dead_runs(
        ctx.s3,
        ctx.pipeline.name,
        plan.table,
        own_execution_id=ctx.execution_id,
        uploads=ctx.scan.uploads if ctx.scan else None,
        markers=markers,
        runs=ctx.scan.run_ids if ctx.scan else (),
    )
    if aborted:
        log.warning("%s: aborted %d multipart upload(s) left by killed runs", plan.table, aborted)
    async with ctx.source.connection() as conn:
        progress.phase = "introspect"
        schema, resolved, win = await plan_window(conn, plan, chain.position, ctx.catalog)
        stats = ExtractStats()
        if window_is_empty(win):
            return _Backup(None, stats, win)
        extracted_at = await source_now(conn, ctx.clock)
        progress.phase = "extract"
        mark = time.monotonic()
        meta = stage_meta(ctx, plan, schema, resolved, win, extracted_at)
        rwin = read_window(plan, win)
        loaded: LoadResult | None = None
        # the run's marker (``run.run_marker``) covers this table's uploads
        streamed = _stream_load(ctx, plan, meta, state)
        if streamed is None:
            stage = await _extract_and_stage(ctx, conn, plan, schema, rwin, stats, meta)
        else:
            stage, loaded = await _stage_and_load(
                ctx, conn, plan, schema, rwin, stats, meta, streamed, progress
            )
        if stage.rows == 0 and plan.strategy != "full_sync":
            await delete_stage(ctx.s3, stage)  # nothing new: no COPY, state untouched
            progress.timed("extract_stage", mark)
            return _Backup(None, stats, win)
        progress.timed("extract_stage", mark)
    return _Backup(stage, stats, win, loaded)


def stream_blocker(ctx: RunContext, plan: TablePlan) -> str | None:
    """Why this table's stage is loaded once complete rather than while it is written (None: it is
    loaded while written, if the warehouse has a load slot free when the read starts)."""
    if ctx.mode != "sync":
        return "the run does not load" if ctx.mode == "backup_only" else "the run only loads"
    if plan.strategy != "full_sync":
        return "incremental windows are merged from the complete stage"
    if not ctx.pipeline.processing.stream_load:
        return "processing.stream_load is off"
    if not ctx.warehouse.loads_while_staging:
        return "the warehouse loads from the staged files (COPY FROM the manifest)"
    return None


def _stream_load(
    ctx: RunContext, plan: TablePlan, meta: dict[str, Any], state: StateRow | None
) -> AbstractAsyncContextManager[StreamedLoad] | None:
    """The warehouse's load of this run's full snapshot while it is staged, when the run loads, the
    config allows it and the warehouse can take it now (None: the stage is loaded once complete)."""
    if stream_blocker(ctx, plan) is not None:
        return None
    prefix = ctx.s3.run_prefix(ctx.pipeline.name, plan.table, ctx.execution_id)
    manifest_key = f"{prefix}{MANIFEST_NAME}"
    planned = StageResult(  # the stage this run is about to write: its rows are known at the end
        prefix=prefix,
        files=(),
        manifest_key=manifest_key,
        manifest_url=ctx.s3.url(manifest_key),
        rows=0,
        bytes=0,
        meta=meta,
    )
    return ctx.warehouse.stream_replace(load_request(ctx, plan, planned, state))


async def _stage_and_load(
    ctx: RunContext,
    conn: SourceConnection,
    plan: TablePlan,
    schema: TableSchema,
    win: Window,
    stats: ExtractStats,
    meta: dict[str, Any],
    streamed: AbstractAsyncContextManager[StreamedLoad],
    progress: _Progress,
) -> tuple[StageResult, LoadResult]:
    """Extract and stage as ``_extract_and_stage``, while the warehouse loads the same batches in an open
    transaction (the target locked and emptied before the first row is read); it commits only after the
    manifest is written, with the state row. A failed load does not stop the stage: it is kept pending
    (a later run's fresh snapshot supersedes it), and the load's error is the table's."""
    async with streamed as load:
        send, receive = anyio.create_memory_object_stream[pa.RecordBatch](max_buffer_size=1)
        failed: list[Exception] = []

        async def copy() -> None:
            try:
                async with receive:
                    await load.copy(receive)
            except Exception as exc:
                failed.append(exc)

        async with anyio.create_task_group() as tg:
            tg.start_soon(copy)
            stage = await _extract_and_stage(ctx, conn, plan, schema, win, stats, meta, tap=send)
        progress.phase = "load"
        if failed:
            raise failed[0]
        return stage, await load.finish(stage)


async def plan_window(
    conn: SourceConnection, plan: TablePlan, position: Watermark | None, catalog: Catalog | None = None
) -> tuple[TableSchema, Resolved, Window]:
    """Describe the table (from the run's ``catalog`` when given), choose how it is read and loaded, and
    fix the window's end from the source."""
    schema = await describe_table(
        conn,
        plan.database,
        plan.source_table,
        primary_key=plan.primary_key,
        policy=plan.policy,
        selection=plan.columns,
        catalog=catalog,
    )
    resolved = resolve(plan, schema)
    win = window(plan, resolved, position)
    check_window(plan.table, schema, win)
    end = await upper_bound(conn, plan.database, plan.source_table, schema, win, lag_seconds=plan.lag_seconds)
    return schema, resolved, replace(win, end=end)


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


def stage_meta(
    ctx: RunContext, plan: TablePlan, schema: TableSchema, resolved: Resolved, win: Window, extracted_at: Any
) -> dict[str, Any]:
    return {
        "version": 1,
        "pipeline": ctx.pipeline.name,
        "table": plan.table,
        "execution_id": ctx.execution_id,
        "extracted_at": format_ts(extracted_at),
        "window": win.to_dict(),
        "read_window": read_window(plan, win).to_dict(),
        "schema": schema.to_dict(),
        "target_table": plan.target_table,
        "mode": resolved.mode,
        "key": list(resolved.key),
        "order_by": list(resolved.order_by),
        "rename": [list(pair) for pair in plan.columns.rename],
        "schema_change": plan.policy.schema_change,
        "distsort": {
            "diststyle": plan.diststyle,
            "distkey": plan.distkey,
            "sortkey": list(plan.sortkey),
            "encode": [list(pair) for pair in plan.encode],
        },
    }


async def _load_chain(
    ctx: RunContext,
    plan: TablePlan,
    chain: Chain,
    state: StateRow | None,
    progress: _Progress,
    streamed: LoadResult | None = None,
) -> int:
    """Load each pending stage in order, each in its own transaction with its state row (``streamed``:
    this run's snapshot, already loaded while it was staged)."""
    progress.phase = "load"
    mark = time.monotonic()
    rows = 0
    loaded: list[str] = []
    changes: list[str] = []
    if streamed is not None:
        rows += streamed.rows_loaded
        changes.extend(streamed.schema_changes)
        loaded.append(ctx.execution_id)
        progress.extra["target"] = streamed.target
        progress.extra["watermark"] = None  # a full snapshot
        progress.extra["load"] = {"path": "while_staging"}
    for stage in chain.load:
        if stage.rows == 0 and stage_window(stage).strategy != "full_sync":
            continue
        req = load_request(ctx, plan, stage, state)
        result = await ctx.warehouse.load(req)
        rows += result.rows_loaded
        changes.extend(result.schema_changes)
        state = req.state
        loaded.append(stage_id(stage))
        progress.extra["target"] = result.target
        progress.extra["watermark"] = state.watermark.to_dict() if state.watermark else None
    progress.extra["rows_loaded"] = rows
    progress.extra["stages_loaded"] = loaded
    if changes:
        progress.extra["schema_changes"] = changes
    progress.timed("load", mark)
    return rows


def load_request(ctx: RunContext, plan: TablePlan, stage: StageResult, state: StateRow | None) -> LoadRequest:
    """What the stage holds (schema, window, key) comes from its manifest; how it is loaded (target name,
    renames, schema-change policy, physical design) from the current config, so fixing the config
    unblocks a stage staged under the old one."""
    meta = stage.meta
    schema = TableSchema.from_dict(meta["schema"])
    win = stage_window(stage)
    full = win.strategy == "full_sync"
    row = StateRow(
        pipeline=ctx.pipeline.name,
        table=plan.table,
        target=f"{ctx.pipeline.target.schema}.{plan.target_table}",
        strategy=win.strategy,
        stage_id=stage_id(stage),
        loaded_by=ctx.execution_id,
        watermark=None if full else win.end,
        window_start=None if full else win.start,
        rows=stage.rows,
        schema_hash=schema.schema_hash(),
        extracted_at=parse_ts(meta["extracted_at"]),
    )
    return LoadRequest(
        table=plan.table,
        schema=schema,
        target_table=plan.target_table,
        stage=stage,
        execution_id=ctx.execution_id,
        mode=meta["mode"],
        key=tuple(meta["key"]),
        order_by=tuple(meta["order_by"]),
        state=row,
        expect_stage=state.stage_id if state else None,
        rename=plan.columns.rename,
        schema_change=plan.policy.schema_change,
        distsort=_distsort(plan),
    )


def _distsort(plan: TablePlan) -> DistSort | None:
    if not (plan.diststyle or plan.distkey or plan.sortkey or plan.encode):
        return None
    style = plan.diststyle
    return DistSort(
        diststyle=style if style in ("AUTO", "EVEN", "ALL", "KEY") else None,  # type: ignore[arg-type]
        distkey=plan.distkey,
        sortkey=plan.sortkey,
        encode=plan.encode,
    )


def _window_dict(win: Window) -> dict[str, Any]:
    return {
        "start": win.start.to_dict() if win.start else None,
        "end": win.end.to_dict() if win.end else None,
    }


async def _extract_and_stage(
    ctx: RunContext,
    conn: SourceConnection,
    plan: TablePlan,
    schema: TableSchema,
    win: Window,
    stats: ExtractStats,
    meta: dict[str, Any],
    tap: anyio.abc.ObjectSendStream[pa.RecordBatch] | None = None,
) -> StageResult:
    """Extract and stage run concurrently through a bounded stream; the manifest is written only when
    extraction finished cleanly. ``tap`` also gets every batch staged, and its end only on a clean one."""
    send, receive = anyio.create_memory_object_stream[pa.RecordBatch](max_buffer_size=BATCHES_IN_FLIGHT)
    completion = Completion()
    extract = partial(
        extract_window,
        conn,
        plan.database,
        plan.source_table,
        schema,
        send,
        window=win,
        batch_size=plan.batch_size,
        stats=stats,
        cpu_limiter=ctx.limits.cpu,
        policy=plan.policy,
        where=plan.where,
        max_text_bytes=ctx.warehouse.max_varchar_bytes,
    )

    async def produce() -> None:
        try:
            fast = await _fast_read(ctx, conn, plan, schema, win, send, stats)
            if fast is None:
                await extract()
            else:
                async with send:
                    await fast[0].run(fast[1])
        except BaseException:
            completion.fail()
            raise
        completion.succeed()

    prefix = ctx.s3.run_prefix(ctx.pipeline.name, plan.table, ctx.execution_id)
    async with anyio.create_task_group() as tg:
        tg.start_soon(produce)
        async with CheckedReceive(receive, completion, f"extract of {plan.table}") as checked:
            result = await write_parquet(
                ctx.s3,
                prefix=prefix,
                schema=schema.arrow_schema(),
                receive=checked if tap is None else Tap(checked, tap),
                file_size_bytes=plan.file_size_bytes,
                cpu_limiter=ctx.limits.cpu,
                schema_hash=schema.schema_hash(),
                meta=meta,
            )
    return result


def fast_window(ctx: RunContext, schema: TableSchema, win: Window) -> tuple[int | None, int | None] | str:
    """The keys the fast path would read — ``(after, upto]``, (None, None) for the whole table — or why
    the table is read by asyncmy. Whether it is big enough is decided from its row estimate."""
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
        return f"{win.strategy} windows are read in keyset pages"
    return fast_blocker(schema) or (None, None)


def too_few_rows(ctx: RunContext, estimated_rows: int) -> str | None:
    """Why a table of this many (estimated) rows is not worth the fast path's connections (None: it is)."""
    if estimated_rows >= min(FAST_MIN_ROWS, ctx.pipeline.processing.range_rows):
        return None
    return f"about {estimated_rows} rows, too few for key ranges"


async def _fast_read(
    ctx: RunContext,
    conn: SourceConnection,
    plan: TablePlan,
    schema: TableSchema,
    win: Window,
    send: anyio.abc.ObjectSendStream[pa.RecordBatch],
    stats: ExtractStats,
) -> tuple[FastRead, int] | None:
    """The connectorx key-range reader and the table's row estimate, for a table it can carry exactly and
    that is big enough (else None, with the reason in ``stats.path``)."""
    keys = fast_window(ctx, schema, win)
    if ctx.source is None or isinstance(keys, str):
        if isinstance(keys, str) and win.strategy in ("full_sync", "id_only"):
            stats.path = {"path": "asyncmy", "reason": keys}
        return None
    estimated = await estimate_rows(
        conn, plan.database, plan.source_table, schema, win, where=plan.where, catalog=ctx.catalog
    )
    if reason := too_few_rows(ctx, estimated):
        stats.path = {"path": "asyncmy", "reason": reason}
        return None
    processing = ctx.pipeline.processing
    reader = FastRead(
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
        workers=processing.range_workers,
        where=plan.where,
        cpu_limiter=ctx.limits.cpu,
        after=keys[0],
        upto=keys[1],
    )
    return reader, estimated
