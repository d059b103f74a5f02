"""One table's run: backup (introspect -> window -> extract || stage) then load the pending chain.
Returns a result; never raises a table error."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

import anyio
import anyio.abc
import pyarrow as pa

from src.common.errors import S3Error, S3ShiftError, first_error
from src.common.log import get_logger
from src.common.schema import TableSchema
from src.config.models import Pipeline
from src.engine.context import RunContext
from src.engine.pending import (
    Chain,
    describe_stage,
    for_target,
    parse_ts,
    relies_on_target,
    select,
    stage_id,
    stage_window,
    target_gone,
    unloadable,
)
from src.engine.reading import TableRead, extract_and_stage, plan_window, window_is_empty
from src.plan.models import Watermark, Window, format_ts
from src.plan.planner import Resolved, TablePlan, read_window
from src.report.aggregator import INTERRUPTED, failure
from src.report.models import TableFailure, TableResult, TableSuccess, utc_now
from src.source.extract import ExtractStats
from src.source.mysql import SourceConnection
from src.source.window import UnreadCursors, source_now, unread_cursor_rows
from src.stage.manifest import stage_result
from src.stage.models import StageResult
from src.stage.pending import (
    TableRuns,
    clean_dead_runs,
    delete_stage,
    delete_stage_later,
    list_runs,
    read_stages,
)
from src.warehouse.base import Clear, LoadRequest, LoadResult, StateRow, StreamedLoad, Warehouse
from src.warehouse.ddl import DistSort, dialect_of

log = get_logger("engine")
DELETES_NOTE = "deletes at the source are not captured by watermark strategies; run full_sync to reconcile"
UNCHAINED = frozenset({"manual", "reset", "full_sync"})  # state rows no incremental window continues


@dataclass(frozen=True)
class _Attempt:
    """A stage whose load was started: if it commits, the watermark is ``watermark``."""

    stage_id: str
    # the stage's rows: what a replace inserts (checked); a merge may insert fewer (LoadRequest.committed)
    rows: int
    watermark: Watermark | None
    last: bool  # the run loads nothing after it


@dataclass
class _Progress:
    phase: str = "plan"
    started: float = field(default_factory=time.monotonic)
    phases: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    rows_extracted: int = 0
    files_created: int = 0
    attempts: list[_Attempt] = field(default_factory=list)  # loads started, in order
    loaded: list[_Attempt] = field(default_factory=list)  # those known committed, in order
    rows_loaded: int = 0

    def timed(self, name: str, since: float) -> None:
        self.phases[name] = round(self.phases.get(name, 0.0) + time.monotonic() - since, 6)

    def committed(self, attempt: _Attempt, rows_loaded: int) -> None:
        self.loaded.append(attempt)
        self.rows_loaded += rows_loaded
        self.extra["watermark"] = attempt.watermark.to_dict() if attempt.watermark else None

    def staged(self, stage: StageResult) -> None:
        self.files_created = stage.files_created
        self.extra["manifest"] = stage.manifest_url
        self.extra["bytes_written"] = stage.bytes


@dataclass(frozen=True)
class _Backup:
    stage: StageResult | None  # None: nothing new (empty incremental window)
    stats: ExtractStats
    window: Window
    loaded: LoadResult | None = None  # the stage was loaded while it was written (``_stage_and_load``)
    unread: UnreadCursors = field(default_factory=UnreadCursors)  # rows no window reads (NULL cursors, ...)
    planned: StageResult | None = None  # no stage (nothing new): the one it would have been, with no files


Settled = Callable[[TableResult], Awaitable[None]]
SETTLE_TIMEOUT = 15.0  # seconds a cancelled table may spend learning which of its loads committed


async def sync_table(ctx: RunContext, plan: TablePlan, settled: Settled | None = None) -> TableResult:
    """The table's result. Cancelled (the run was interrupted) once a load of it was under way, it
    learns from the warehouse which loads committed and hands that result to ``settled`` (a table
    whose loads all committed succeeded), then the cancellation goes on."""
    progress = _Progress()
    try:
        async with ctx.limits.tables:
            return await _run(ctx, plan, progress)
    except Exception as exc:  # a table's failure is a result; cancellation (BaseException) passes through
        err = first_error(exc)
        log.debug("%s failed in %s", plan.table, progress.phase, exc_info=err)
        return _with_loads(progress, failure(plan.table, err, phase=failed_phase(err, progress.phase)))
    except anyio.get_cancelled_exc_class():
        if progress.attempts and settled is not None:
            with anyio.CancelScope(shield=True), anyio.move_on_after(SETTLE_TIMEOUT):
                result = await _settle(ctx, plan, progress)
                if result is not None:
                    await settled(result)
        raise


def _with_loads(progress: _Progress, result: TableFailure) -> TableFailure:
    """The failure, saying which stages this run loaded before it (each committed with its watermark)."""
    if not progress.loaded:
        return result
    ids = [a.stage_id for a in progress.loaded]
    mark = progress.loaded[-1].watermark
    extra = {**result.extra, "stages_loaded": ids, "watermark": mark.to_dict() if mark else None}
    where = f"watermark now {mark}" if mark else "a full snapshot"
    loaded = f"loaded first: {', '.join(ids)} ({where}); the stages after them stay pending"
    message = f"{result.error_message} — {loaded}"
    return replace(result, error_message=message, extra=extra)


async def _settle(ctx: RunContext, plan: TablePlan, progress: _Progress) -> TableResult | None:
    """What became of an interrupted table's loads, from the state log (each load's COMMIT, once sent, was
    seen through: ``base.transaction``): success when its last load committed, else a failure naming those
    that did; None when none did (the run reports it interrupted, target and watermark unchanged)."""
    try:
        committed = await ctx.warehouse.committed_stage_ids(ctx.pipeline.name, plan.table)
    except Exception as exc:
        log.warning("%s: interrupted during its load; could not read what committed: %s", plan.table, exc)
        return None
    known = {a.stage_id for a in progress.loaded}  # each with the rows its load inserted
    for attempt in progress.attempts:
        if attempt.stage_id in committed and attempt.stage_id not in known:  # its COMMIT's answer never came
            progress.committed(attempt, attempt.rows)
    if not progress.loaded:
        return None
    if progress.loaded[-1].last:
        log.warning("%s: the run was interrupted after the table's load committed", plan.table)
        progress.extra.setdefault("target", target_of(ctx.pipeline, plan))
        return _success(ctx, plan, progress)
    message = "run interrupted before this table finished"
    return _with_loads(progress, TableFailure(plan.table, message, utc_now(), extra=dict(INTERRUPTED)))


def failed_phase(err: BaseException, phase: str) -> str:
    """The phase a failure reports: ``s3`` when an S3 request failed (reading back stages, markers and
    listings, uploading, or the staged files a load reads), except S3 found unreachable as the table
    starts (``connect``, as at the run's start); else the phase the table was in."""
    return "s3" if isinstance(err, S3Error) and phase != "connect" else phase


async def _run(ctx: RunContext, plan: TablePlan, progress: _Progress) -> TableSuccess:
    progress.phase = "connect"
    await ctx.s3.ensure_reachable()  # S3 found unreachable: fail before reading what could not be staged
    progress.phase = "state"
    state = await table_state(ctx, plan)
    chain, runs = await pending_chain(ctx, plan, state)
    if ctx.mode == "load_only" and state is None and not chain.load:
        raise _nothing_to_load(ctx, plan)
    streamed: LoadResult | None = None
    planned: StageResult | None = None
    if ctx.mode != "load_only":
        backup = await _backup(ctx, plan, chain, progress, markers=runs.markers, state=state)
        progress.rows_extracted = backup.stats.rows
        streamed, planned = backup.loaded, backup.planned
        if backup.stage is not None:
            if plan.strategy == "full_sync":  # a fresh snapshot supersedes every pending one
                fresh = () if streamed else (backup.stage,)  # already loaded with its extraction
                chain = replace(chain, load=fresh, skipped=chain.skipped + chain.load)
            else:
                chain = replace(chain, load=(*chain.load, backup.stage))
            progress.staged(backup.stage)
        if backup.stats.coercions:
            progress.extra["coercions"] = backup.stats.coercions
        if backup.stats.path:
            progress.extra["extract"] = backup.stats.path
        if backup.unread.null:
            progress.extra["null_cursor_rows"] = backup.unread.null
        if backup.unread.zero_date:
            progress.extra["zero_date_cursor_rows"] = backup.unread.zero_date
        progress.extra["window"] = backup.window.bounds()
        if plan.strategy != "full_sync":
            progress.extra["deletes"] = DELETES_NOTE
    if chain.skipped:
        progress.extra["stages_skipped"] = [describe_stage(s) for s in chain.skipped]
    if ctx.mode != "backup_only":
        await _load_chain(ctx, plan, chain, state, progress, streamed)
        if planned is not None and state is None and not progress.loaded:
            await _create_target(ctx, plan, planned, progress)
    for stage in unloadable(chain.skipped, state, loaded=bool(progress.loaded)):
        try:  # reported once: no later run reads it again
            await delete_stage_later(ctx.s3, stage)
        except S3ShiftError as exc:  # a cleanup: the table's result stands
            log.warning("%s: could not delete the stage %s: %s", plan.table, stage.manifest_url, exc.message)
    return _success(ctx, plan, progress)


async def table_state(ctx: RunContext, plan: TablePlan) -> StateRow | None:
    """The table's latest state, located (``locate``): read with every other table's at the run's start
    (``ctx.states``), else now."""
    if ctx.states is not None:
        return ctx.states.get(plan.table)
    return await located(ctx, plan, await ctx.warehouse.read_state(ctx.pipeline.name, plan.table))


async def pending_chain(ctx: RunContext, plan: TablePlan, state: StateRow | None) -> tuple[Chain, TableRuns]:
    """The table's pending stages after ``state`` (``select``), and what the listing of its prefix showed
    (none when the run's scan, ``ctx.scan``, found no directory of it). Only runs not known committed are
    read; which are committed is asked only when a run other than the state's own is there."""
    since = (state.stage_id or None) if state else None
    runs = await list_runs(ctx.s3, ctx.pipeline.name, plan.table, since=since, scan=ctx.scan)
    unknown = [i for i in runs.ids if i != since]  # the latest state row's own stage is committed
    committed = await ctx.warehouse.committed_stage_ids(ctx.pipeline.name, plan.table) if unknown else set()
    unread = [i for i in unknown if i not in committed]
    stages = await read_stages(ctx.s3, ctx.pipeline.name, plan.table, unread)
    return select(stages, state, committed), runs


def _success(ctx: RunContext, plan: TablePlan, progress: _Progress) -> TableSuccess:
    if ctx.mode != "backup_only":
        progress.extra["rows_loaded"] = progress.rows_loaded
        progress.extra["stages_loaded"] = [a.stage_id for a in progress.loaded]
    progress.extra.update(strategy=plan.strategy, phases=progress.phases)
    return TableSuccess(
        table=plan.table,
        rows_processed=progress.rows_loaded if ctx.mode == "load_only" else progress.rows_extracted,
        files_created=progress.files_created,
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
    progress.phase = "connect"  # a connection the server refuses (or does not answer) now
    async with ctx.source.connection(plan.table) as conn:
        progress.phase = "introspect"
        schema, resolved, win = await plan_window(conn, plan, chain.position, ctx.catalog)
        stats = ExtractStats()
        meta = stage_meta(ctx, plan, schema, resolved, win, await source_now(conn, ctx.clock))
        planned = planned_stage(ctx, plan, meta)
        if window_is_empty(win):
            unread = await unread_cursors(conn, plan, schema, win)
            return _Backup(None, stats, win, unread=unread, planned=planned)
        check_early(ctx, plan, meta, state, progress)
        unread = await unread_cursors(conn, plan, schema, win)
        progress.phase = "extract"
        mark = time.monotonic()
        read = TableRead(ctx, conn, plan, schema, read_window(plan, win), stats, meta)
        loaded: LoadResult | None = None
        # the run's marker (``run.run_marker``) covers this table's uploads
        streamed = _stream_load(ctx, plan, meta, state)
        if streamed is None:
            stage = await extract_and_stage(read)
        else:
            stage, loaded = await _stage_and_load(read, streamed, progress)
        if stage.rows == 0 and plan.strategy != "full_sync":
            await delete_stage(ctx.s3, stage)  # nothing new: no COPY, state untouched
            progress.timed("extract_stage", mark)
            return _Backup(None, stats, win, unread=unread, planned=planned)
        progress.timed("extract_stage", mark)
    return _Backup(stage, stats, win, loaded, unread)


def check_early(
    ctx: RunContext, plan: TablePlan, meta: dict[str, Any], state: StateRow | None, progress: _Progress
) -> None:
    """In a normal sync, what the load of this run's stage (``meta``) would refuse (names the warehouse
    cannot hold, key columns, Redshift physical design: ``Warehouse.check_load``) fails the table now,
    phase ``plan``, before a row is read or a file staged, rather than after the whole extract. Not in
    ``--backup-only``: its stage is worth keeping, and its load fails later as it would have."""
    if ctx.mode != "sync":
        return
    phase, progress.phase = progress.phase, "plan"
    ctx.warehouse.check_load(load_request(ctx, plan, planned_stage(ctx, plan, meta), state))
    progress.phase = phase


async def unread_cursors(
    conn: SourceConnection, plan: TablePlan, schema: TableSchema, win: Window
) -> UnreadCursors:
    """The rows of the table no window reads because their cursor is NULL, or a zero date in a window after
    a watermark (each logged when there are any)."""
    found = await unread_cursor_rows(conn, plan.database, plan.source_table, schema, win, where=plan.where)
    if found.null:
        columns = ", ".join(c for c in (win.ts_column, win.id_column) if c)
        log.warning(
            "%s: %d row(s) have a NULL cursor (%s) and are never read by %s; give them a value, or sync "
            "the table with full_sync",
            plan.table,
            found.null,
            columns,
            plan.strategy,
        )
    if found.zero_date:
        log.warning(
            "%s: %d row(s) have a zero date in the cursor (%s), which only the table's first window reads: "
            "one written or updated with it since is never read by %s; give such rows a real date, or sync "
            "the table with full_sync",
            plan.table,
            found.zero_date,
            win.ts_column,
            plan.strategy,
        )
    return found


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
    return ctx.warehouse.stream_replace(load_request(ctx, plan, planned_stage(ctx, plan, meta), state))


def planned_stage(ctx: RunContext, plan: TablePlan, meta: dict[str, Any]) -> StageResult:
    """This run's stage of the table about to be written: its prefix and metadata, no files yet (its rows
    are known at the end)."""
    prefix = ctx.s3.run_prefix(ctx.pipeline.name, plan.table, ctx.execution_id)
    return stage_result(ctx.s3, prefix, (), None, meta)


async def _stage_and_load(
    read: TableRead, streamed: AbstractAsyncContextManager[StreamedLoad], progress: _Progress
) -> tuple[StageResult, LoadResult]:
    """Extract and stage as ``extract_and_stage``, while the warehouse loads the same batches in an open
    transaction (the target locked and emptied before the first row is read); it commits only after the
    manifest is written, with the state row. A failed load does not stop the stage: it is kept pending
    (a later run's fresh snapshot supersedes it), and the load's error is the table's."""
    progress.phase = "load"  # opening it locks the target: a lock or privilege it lacks fails the load
    async with streamed as load:
        progress.phase = "extract"
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
            stage = await extract_and_stage(read, tap=send)
        progress.phase = "load"
        if failed:
            raise failed[0]
        progress.staged(stage)
        progress.attempts.append(_Attempt(read.ctx.execution_id, stage.rows, None, last=True))
        return stage, await load.finish(stage)


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
) -> None:
    """Load each pending stage in order, each in its own transaction with its state row (``streamed``:
    this run's snapshot, already loaded while it was staged); ``progress`` says what committed."""
    progress.phase = "load"
    mark = time.monotonic()
    changes: list[str] = []
    if streamed is not None:
        progress.committed(progress.attempts[-1], streamed.rows_loaded)
        changes.extend(streamed.schema_changes)
        progress.extra["target"] = streamed.target
        progress.extra["load"] = {"path": "while_staging"}
    todo = [s for s in chain.load if s.rows or stage_window(s).strategy == "full_sync"]
    for i, stage in enumerate(todo):
        req = load_request(ctx, plan, stage, state)
        attempt = _Attempt(stage_id(stage), stage.rows, req.state.watermark, last=i == len(todo) - 1)
        progress.attempts.append(attempt)
        try:  # committed: noted as the COMMIT goes through, even when an interruption then loses the result
            result = await ctx.warehouse.load(replace(req, committed=partial(progress.committed, attempt)))
        except S3ShiftError as exc:
            if exc.retryable or stage_id(stage) == ctx.execution_id:
                raise
            raise exc.amended(_read_again(ctx, plan, stage)) from exc
        changes.extend(result.schema_changes)
        state = req.state
        progress.extra["target"] = result.target
    if changes:
        progress.extra["schema_changes"] = changes
    progress.timed("load", mark)


async def _create_target(ctx: RunContext, plan: TablePlan, planned: StageResult, progress: _Progress) -> None:
    """A table's first window found nothing to load still leaves its target, empty with the planned
    columns, as a full_sync of an empty table does (jobs query it after the run). No state row: the next
    run reads the table from its start again."""
    progress.phase = "load"
    req = load_request(ctx, plan, planned, None)
    if await ctx.warehouse.create_target(req):
        log.info("%s: no rows yet; created its target %s, empty", plan.table, req.state.target)
    progress.extra["target"] = req.state.target


def _read_again(ctx: RunContext, plan: TablePlan, stage: StageResult) -> str:
    """How to stop loading a window an earlier run staged, which every run would otherwise try again
    first: move the watermark to where the window starts (``watermark set`` makes it stale)."""
    start = stage_window(stage).start
    command = f"s3shift watermark {{}} -p {ctx.pipeline.name} -t {plan.table}"
    if start is None:
        command = command.format("reset")
    else:
        command = command.format("set")
        command += f" --timestamp {start.ts.isoformat()}" if start.ts is not None else ""
        command += f" --id {start.id}" if start.id is not None else ""
    return (
        f"this window was staged by the earlier run {stage_id(stage)}; to read it again from the source "
        f"as it is now instead, run: {command}"
    )


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
        target=target_of(ctx.pipeline, plan),
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
        clear=Clear(win.start) if meta["mode"] == "append" and not full and unchained(state) else None,
        needs_target=not full and relies_on_target(state),
    )


def _nothing_to_load(ctx: RunContext, plan: TablePlan) -> S3ShiftError:
    """--load-only of a table with no pending stage and no state: a typo, or a table never staged. It
    would report a success that loaded nothing (load-only opens no MySQL connection to tell which)."""
    return S3ShiftError(
        f"nothing to load for {plan.table}: no staged run is pending and pipeline {ctx.pipeline.name} never "
        f"loaded it into {target_of(ctx.pipeline, plan)} — check the table name, or stage it first with sync "
        "--backup-only",
        table=plan.table,
        retryable=False,
    )


async def located(ctx: RunContext, plan: TablePlan, state: StateRow | None) -> StateRow | None:
    """``state`` as the position of the table's load into its target now (``locate``)."""
    states = {plan.table: state} if state is not None else {}
    return (await locate(ctx.warehouse, ctx.pipeline, [plan], states)).get(plan.table)


async def located_states(
    warehouse: Warehouse, pipeline: Pipeline, plans: Sequence[TablePlan]
) -> dict[str, StateRow]:
    """Every table's latest state, located (``locate``): what a run reads of the warehouse at its start,
    one query for the states and at most one listing of the target schema whatever the number of tables."""
    return await locate(
        warehouse, pipeline, plans, await warehouse.read_states(pipeline.name, [p.table for p in plans])
    )


async def locate(
    warehouse: Warehouse, pipeline: Pipeline, plans: Sequence[TablePlan], states: Mapping[str, StateRow]
) -> dict[str, StateRow]:
    """Each table's latest state (``states``) as the position of its load into its target now
    (``for_target``); a position whose target was dropped since holds nothing (``target_gone``). Which
    targets exist is one listing of the target schema, made only when a position relies on its target.
    A run locates its tables with their states, at its start: no other table of the run loads a table's
    target (``run.plan_tables``); a target dropped after that is found missing by the load, which then
    refuses rather than create it afresh (``LoadRequest.needs_target``)."""
    fold = dialect_of(pipeline.target.type).fold
    placed = {p.table: for_target(states.get(p.table), target_of(pipeline, p), fold) for p in plans}
    relying = {p.table: (p, state) for p in plans if relies_on_target(state := placed[p.table]) and state}
    if relying:
        wanted = [p.target_table for p, _ in relying.values()]
        existing = await warehouse.existing_tables(pipeline.target.schema, wanted)
        for table, (plan, state) in relying.items():
            if plan.target_table not in existing:
                placed[table] = target_gone(state, target_of(pipeline, plan))
    return {table: state for table, state in placed.items() if state is not None}


def target_of(pipeline: Pipeline, plan: TablePlan) -> str:
    """The "schema.table" a table's state rows name as its target."""
    return f"{pipeline.target.schema}.{plan.target_table}"


def unchained(state: StateRow | None) -> bool:
    """Whether the target may hold rows after the position the next window starts at: no append of the
    window before it left the position there (no state yet, so a target loaded some other way; a
    ``watermark set``/``reset``, which may move it back over loaded rows; a full snapshot)."""
    return state is None or state.strategy in UNCHAINED


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
