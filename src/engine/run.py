"""The run: load config, plan every table, open shared resources once, sync tables concurrently in one
task group, aggregate results into the report. Never raises for a table or config problem: every
requested table ends up in the report, failed with a message naming the cause when it could not run."""

from __future__ import annotations

import functools
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager, nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TypeVar

import anyio
import anyio.abc
import pyarrow as pa

from src.common.errors import ConfigError, S3ShiftError, StageError, describe, first_error
from src.common.jsonio import dumps_bytes
from src.common.log import get_logger
from src.common.signals import STOP_SIGNALS
from src.config.loader import config_dir, load_pipeline
from src.config.models import Pipeline
from src.engine.context import RunContext, RunMode
from src.engine.limits import Limits, share
from src.engine.table import failed_phase, located_states, sync_table
from src.engine.unitrun import unit_result
from src.engine.units import Unit
from src.engine.workers import (
    Asker,
    Channel,
    Dispenser,
    Job,
    Workers,
    drain,
    fork_workers,
    process_count,
    serve_worker,
)
from src.plan.planner import TablePlan, plan_table
from src.report.aggregator import Aggregator, failure
from src.report.models import RunReport, TableResult, new_execution_id, utc_now
from src.source.introspect import Catalog
from src.source.mysql import MySQLSource
from src.stage.models import StageResult
from src.stage.pending import PipelineScan, bury_dead_runs, run_marker, scan_pipeline
from src.stage.reader import iter_staged_batches
from src.stage.s3 import S3Stage
from src.warehouse.base import Warehouse
from src.warehouse.ddl import dialect_of
from src.warehouse.factory import open_warehouse
from src.warehouse.redshift import RedshiftConnect
from src.warehouse.state import STATE_TABLE, StateRow, state_schema

T = TypeVar("T")
log = get_logger("engine")
REPORT_TIMEOUT = 30.0


@dataclass(frozen=True)
class SyncRequest:
    pipeline: str
    tables: tuple[str, ...]
    config_dir: str | Path | None = None
    mode: RunMode = "sync"
    config: Pipeline | S3ShiftError | None = None  # the config as loaded (``configured``); None: not yet
    unit: Unit | None = None  # run this unit of a plan (``tables``: its table), not the tables' syncs


def configured(request: SyncRequest) -> SyncRequest:
    """The request with its config loaded: the CLI loads it once, and ``start_workers`` and ``run_sync``
    take it from there (``run_config``)."""
    return replace(request, config=run_config(request))


def run_config(request: SyncRequest) -> Pipeline | S3ShiftError:
    """The request's config, loaded unless it was (``configured``), or why it does not load (the run
    reports that for every table, phase ``config``)."""
    if request.config is not None:
        return request.config
    try:
        return load_config(request.pipeline, request.config_dir)
    except S3ShiftError as exc:
        return exc


def unique(tables: Sequence[str]) -> tuple[str, ...]:
    """Request order kept; a table named twice is synced once."""
    return tuple(dict.fromkeys(t.strip() for t in tables))


def load_config(request_pipeline: str, directory: str | Path | None) -> Pipeline:
    return load_pipeline(config_dir(str(directory) if directory else None), request_pipeline)


def start_workers(request: SyncRequest) -> Workers | None:
    """Fork the worker processes that will share this run's tables (``src.engine.workers``), when its
    pipeline's ``processing.processes`` and its table count call for more than one process. Call before
    the event loop starts; a config that does not load forks nothing (the run reports it)."""
    pipeline = run_config(request)
    if isinstance(pipeline, S3ShiftError):
        return None
    return fork_workers(process_count(pipeline, len(unique(request.tables))) - 1, _worker_run)


async def run_sync(
    request: SyncRequest,
    *,
    redshift_connect: RedshiftConnect | None = None,
    workers: Workers | None = None,
    interrupted: list[str] | None = None,
) -> RunReport:
    """The run; ``workers`` (``start_workers``) run its tables beside this process. ``interrupted``: the
    signals received before the run watches them (the CLI holds them from its start, ``src.cli``): one
    there when it starts watching ends the run then."""
    try:
        return await _run_sync(request, redshift_connect, workers, [] if interrupted is None else interrupted)
    finally:
        if workers is not None:
            workers.dismiss()
            await workers.reap()


async def _run_sync(
    request: SyncRequest,
    redshift_connect: RedshiftConnect | None,
    workers: Workers | None,
    interrupted: list[str],
) -> RunReport:
    start = utc_now()
    tables = unique(request.tables)
    agg = Aggregator(new_execution_id(start), start, request.pipeline, tables)
    log.info(
        "run %s: pipeline %s, %d table(s), %s", agg.execution_id, request.pipeline, len(tables), request.mode
    )
    pipeline = run_config(request)
    if isinstance(pipeline, S3ShiftError):
        return _fail_all(agg, tables, pipeline, phase="config")
    plans: list[TablePlan] = []
    for table, plan in plan_tables(pipeline, tables).items():
        if isinstance(plan, S3ShiftError):
            agg.record(failure(table, plan, phase="plan"))
        else:
            plans.append(plan)
    if not plans:
        return agg.report()
    if request.unit is not None:
        return await _run_unit(agg, pipeline, plans[0], request.unit, redshift_connect, interrupted)
    return await _run_plans(agg, pipeline, plans, request.mode, redshift_connect, workers, interrupted)


def plan_tables(pipeline: Pipeline, tables: Sequence[str]) -> dict[str, TablePlan | S3ShiftError]:
    """Every table's plan, or why it cannot run: its own config, or a target it cannot have. Tables that
    would load one target table (as the warehouse spells names: Redshift folds them to lowercase) would
    replace or merge into each other's rows, so none of them runs; nor does a table whose target is the
    state table. The pipeline's other configured tables count too: run one at a time (a job per table),
    two tables of one target took turns replacing its rows, each run reporting success."""
    planned: dict[str, TablePlan | S3ShiftError] = {}
    for table in tables:
        try:
            planned[table] = plan_table(pipeline, table)
        except S3ShiftError as exc:
            planned[table] = exc
    dialect = dialect_of(pipeline.target.type)
    state = (dialect.fold(state_schema(pipeline.target)), dialect.fold(STATE_TABLE))
    loading: dict[tuple[str, str], list[TablePlan]] = {}
    for plan in planned.values():
        if isinstance(plan, TablePlan):
            target = (dialect.fold(plan.target_schema), dialect.fold(plan.target_table))
            loading.setdefault(target, []).append(plan)
    configured = _configured_targets(pipeline, set(planned))
    for target, same in loading.items():
        idle = configured.get(target, [])
        for plan in same:
            where = f"{plan.target_schema}.{plan.target_table}"
            others = [p.table for p in same if p is not plan]
            others += [f"{name} (configured in pipeline '{pipeline.name}')" for name, _ in idle]
            if target == state:
                why = f"{plan.table} would load {where}, the state table of s3shift"
            elif others:
                why = f"{plan.table} would load {where}, as {' and '.join(others)} would too"
                spelt = [f"{p.target_schema}.{p.target_table}" for p in same] + [w for _, w in idle]
                if any(w != where for w in spelt):
                    why += f" ({dialect.name} folds names to lowercase)"
            else:
                continue
            planned[plan.table] = ConfigError(
                f"{why}: set {plan.key_path('target_name')} to a table name of its own; not synced",
                table=plan.table,
                key=plan.key_path("target_name"),
            )
    return planned


_Targets = dict[tuple[str, str], list[tuple[str, str]]]  # folded (schema, table) -> [(db.table, as spelt)]


def _configured_targets(pipeline: Pipeline, requested: set[str]) -> _Targets:
    """The targets (folded as the warehouse spells them) of the pipeline's configured tables not in
    ``requested``: each target's tables and their "schema.table" as configured."""
    fold = dialect_of(pipeline.target.type).fold
    targets: _Targets = {}
    for name, cfg in pipeline.tables.items():
        if name not in requested:
            key = (fold(pipeline.target.schema), fold(cfg.target_table))
            targets.setdefault(key, []).append((name, f"{pipeline.target.schema}.{cfg.target_table}"))
    return targets


def _final(agg: Aggregator, interrupted: list[str]) -> RunReport:
    reason = "run interrupted ({}) before this table finished; target and watermark unchanged"
    return agg.report(missing_reason=reason.format(interrupted[0] if interrupted else "cancelled"))


async def _run_plans(
    agg: Aggregator,
    pipeline: Pipeline,
    plans: list[TablePlan],
    mode: RunMode,
    redshift_connect: RedshiftConnect | None,
    workers: Workers | None,
    interrupted: list[str],
) -> RunReport:
    processes = workers.processes if workers else 1
    limits = Limits.for_pipeline(pipeline, index=0, processes=processes)
    slots = [share(pipeline.processing.max_parallel_tables, i, processes) for i in range(processes)]
    dispenser = Dispenser(len(plans), slots)
    resources: Resources | None = None

    def stop() -> None:
        dispenser.stop()
        if workers:
            workers.terminate()
        if resources is not None:
            resources.s3.hurry()

    async with watching_signals(interrupted, stop) as cancel_on_signal, AsyncExitStack() as stack:
        failed: Exception | None = None
        with cancel_on_signal:  # a signal cancels the connecting and the scan as well as the tables
            try:
                resources = await open_resources(
                    stack,
                    pipeline,
                    limits,
                    redshift_connect,
                    source=mode != "load_only",
                    keep_written=mode == "sync",
                )
            except Exception as exc:
                return _fail_all(agg, [p.table for p in plans], first_error(exc), phase="connect")
            try:
                marked = _mark_and_scan(stack, resources.s3, pipeline, plans, agg.execution_id, mode)
                states, scan = await states_beside(resources.warehouse, pipeline, plans, marked)
            except Exception as exc:
                failed = exc
            else:
                ctx = run_context(agg.execution_id, pipeline, limits, resources, mode, plans, scan, states)
                job = Job(agg.execution_id, pipeline, tuple(plans), mode, scan, states, 0, processes)

                async def record(_: int, result: TableResult) -> None:
                    dispenser.finished(0)
                    agg.record(result)

                async def take() -> int | None:
                    return await dispenser.take(0)

                warehouse = resources.warehouse

                async def landed(table: str) -> StateRow | None:
                    row = await warehouse.read_state(pipeline.name, table)
                    return row if row is not None and row.loaded_by == agg.execution_id else None

                async with anyio.create_task_group() as tg:
                    for worker in workers.procs if workers else ():
                        job_of = replace(job, index=worker.index)
                        tg.start_soon(serve_worker, worker, job_of, dispenser, agg.record, landed)
                    _pull(tg, ctx, plans, take, record)
        if resources is None:  # a signal while connecting (waiting up to connect_timeout, say)
            return _final(agg, interrupted)
        if workers and interrupted:
            await drain(workers, dispenser, agg.record)
        if workers:  # their failed cleanups keep the run marker, as the parent's own do
            resources.s3.left_behind(workers.unclean)
        if failed is None or interrupted:  # a signal during the start: the start's failure is its echo (S3
            # requests waiting out an outage fail at once when the run is stopped)
            report = _final(agg, interrupted)
        else:
            cause = first_error(failed)
            report = _fail_all(agg, [p.table for p in plans], cause, phase=failed_phase(cause, "state"))
            if isinstance(cause, StageError):  # S3 itself failed: no report can be kept there
                return report
        await _persist(resources.s3, pipeline, report)
        return report


async def _run_unit(
    agg: Aggregator,
    pipeline: Pipeline,
    plan: TablePlan,
    unit: Unit,
    redshift_connect: RedshiftConnect | None,
    interrupted: list[str],
) -> RunReport:
    """One unit of a plan (``unitrun``) in this process, with the run's signals, resources and report.
    It writes under the plan's own prefix, which no run's cleanup touches: no run marker."""
    limits = Limits.for_pipeline(pipeline)
    extracts, loads = unit.kind != "load", unit.kind != "extract"
    async with watching_signals(interrupted) as cancel_on_signal, AsyncExitStack() as stack:
        with cancel_on_signal:
            try:
                resources = await open_resources(
                    stack,
                    pipeline,
                    limits,
                    redshift_connect,
                    source=extracts,
                    keep_written=extracts and loads,
                )
            except Exception as exc:
                return _fail_all(agg, [plan.table], first_error(exc), phase="connect")
            mode: RunMode = "sync" if extracts and loads else "backup_only" if extracts else "load_only"
            ctx = run_context(unit.plan_id, pipeline, limits, resources, mode, [plan], None, None)
            agg.record(await unit_result(ctx, plan, unit, agg.execution_id))
        report = _final(agg, interrupted)
        await _persist(resources.s3, pipeline, report)
        return report


async def _mark_and_scan(
    stack: AsyncExitStack,
    s3: S3Stage,
    pipeline: Pipeline,
    plans: list[TablePlan],
    execution_id: str,
    mode: RunMode,
) -> PipelineScan:
    """A run that uploads marks itself alive (one marker naming its tables, until the run ends) before
    anything else; then the listings for every table at once, instead of one per table; then the
    cleanup after the pipeline's dead runs."""
    uploads = mode != "load_only"
    marker = (
        run_marker(s3, pipeline.name, execution_id, [p.table for p in plans]) if uploads else nullcontext()
    )
    await stack.enter_async_context(marker)
    scan = await scan_pipeline(s3, pipeline.name, own_execution_id=execution_id if uploads else None)
    if aborted := await bury_dead_runs(s3, pipeline.name, scan.runs, own_execution_id=execution_id):
        log.warning("aborted %d multipart upload(s) left by killed runs", aborted)
    return scan


async def _persist(s3: S3Stage, pipeline: Pipeline, report: RunReport) -> None:
    """The run report, beside the data: ``<prefix><pipeline>/_reports/<execution_id>.json``. Best effort:
    a report that cannot be written is logged, never turns a run into a failure."""
    key = f"{pipeline.s3.prefix}{pipeline.name}/_reports/{report.execution_id}.json"
    with anyio.CancelScope(shield=True), anyio.move_on_after(REPORT_TIMEOUT):
        try:
            await s3.put_bytes(key, dumps_bytes(report.to_dict()), content_type="application/json")
        except Exception as exc:
            log.warning(
                "could not write the run report to s3://%s/%s: %s", pipeline.s3.bucket, key, describe(exc)
            )


@asynccontextmanager
async def watching_signals(
    interrupted: list[str],
    on_signal: Callable[[], None] | None = None,
    signums: tuple[signal.Signals, ...] = STOP_SIGNALS,
) -> AsyncIterator[anyio.CancelScope]:
    """SIGTERM/SIGINT/SIGHUP (``STOP_SIGNALS``) cancel the run: the yielded scope, which the block enters
    around its work; in-flight loads roll back, uploads are aborted (shielded cleanup), and the report
    still names every table. ``on_signal`` first (the parent's workers get SIGTERM). The signals stay
    caught until the block ends: a later one is logged and ignored, never the default death half-way
    through a rollback (the cleanup is time-boxed, so the run still ends). A worker gets SIGTERM once per
    thread of a dying parent: the kernel hands it from thread to thread (``PR_SET_PDEATHSIG``)."""
    scope = anyio.CancelScope()

    async def watch(*, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        with anyio.open_signal_receiver(*signums) as signals:
            task_status.started()
            async for signum in signals:
                name = signal.Signals(signum).name
                if interrupted:
                    log.warning("%s received: the run is already ending", name)
                    continue
                log.warning("%s received: cancelling the run", name)
                interrupted.append(name)
                if on_signal is not None:
                    on_signal()
                scope.cancel()

    async with anyio.create_task_group() as tg:
        await tg.start(watch)  # caught from here on
        if interrupted:  # received before (held by the CLI): the run ends now
            log.warning("%s received: cancelling the run", interrupted[0])
            if on_signal is not None:
                on_signal()
            scope.cancel()
        try:
            yield scope
        finally:
            tg.cancel_scope.cancel()


async def unless_signalled(interrupted: list[str] | None, work: Callable[[], Awaitable[T]]) -> T | None:
    """``work()``, cancelled at once by a stop signal (``STOP_SIGNALS``), held before it (``interrupted``:
    the CLI's) or received during it: then None. Without ``interrupted`` (not the CLI) the signals are not
    watched."""
    if interrupted is None:
        return await work()
    result: T | None = None
    try:
        async with watching_signals(interrupted) as cancel_on_signal:
            with cancel_on_signal:
                result = await work()
    except BaseExceptionGroup as group:  # the signal watcher's task group wraps what the work raised
        raise first_error(group) from None
    return result


NextTable = Callable[[], Awaitable[int | None]]
Deliver = Callable[[int, TableResult], Awaitable[None]]


def _pull(
    tg: anyio.abc.TaskGroup,
    ctx: RunContext,
    plans: Sequence[TablePlan],
    next_table: NextTable,
    deliver: Deliver,
) -> None:
    """One task per table slot of this process; each runs the next table it is handed until none is left
    (the run's tables are shared with its other processes, if any)."""

    async def slot() -> None:
        while (index := await next_table()) is not None:
            await deliver(index, await sync_table(ctx, plans[index], functools.partial(deliver, index)))

    for _ in range(int(ctx.limits.tables.total_tokens)):
        tg.start_soon(slot)


async def _worker_run(channel: Channel, index: int) -> None:
    """A worker process's part of the parent's run (``src.engine.workers``): its job, its own pools with
    its share of the limits, then tables until the parent has none left; each result goes back at once."""
    job: Job | None = await channel.receive()
    if job is None:
        return
    pipeline, mode = job.pipeline, job.mode
    limits = Limits.for_pipeline(pipeline, index=job.index, processes=job.processes)
    asker = Asker(channel)
    resources: Resources | None = None

    def stop() -> None:
        if resources is not None:
            resources.s3.hurry()

    async with (
        watching_signals([], stop, (signal.SIGTERM,)) as cancel_on_signal,
        AsyncExitStack() as stack,
    ):
        with cancel_on_signal:
            try:
                resources = await open_resources(
                    stack, pipeline, limits, None, source=mode != "load_only", keep_written=mode == "sync"
                )
            except Exception as exc:
                log.warning(
                    "worker process %d could not connect; the other processes run the tables: %s",
                    index,
                    describe(first_error(exc)),
                )
            else:
                ctx = run_context(
                    job.execution_id, pipeline, limits, resources, mode, job.plans, job.scan, job.states
                )
                async with anyio.create_task_group() as tg:
                    _pull(tg, ctx, job.plans, asker.next_table, asker.done)
                log.info("worker process %d ran %d table(s)", index, asker.delivered)
        if resources is not None and resources.s3.unclean:  # the parent keeps the run marker
            await asker.unclean(resources.s3.unclean)


async def states_beside(
    warehouse: Warehouse, pipeline: Pipeline, plans: Sequence[TablePlan], listing: Awaitable[T]
) -> tuple[dict[str, StateRow], T]:
    """Every table's state, located (``located_states``), read from the warehouse while ``listing`` (the
    S3 scan of the run's start) runs; both results."""
    located: list[dict[str, StateRow]] = []

    async def read_states() -> None:
        located.append(await located_states(warehouse, pipeline, plans))

    async with anyio.create_task_group() as tg:
        tg.start_soon(read_states)
        listed = await listing
    return located[0], listed


def run_context(
    execution_id: str,
    pipeline: Pipeline,
    limits: Limits,
    resources: Resources,
    mode: RunMode,
    plans: Sequence[TablePlan],
    scan: PipelineScan | None,
    states: Mapping[str, StateRow] | None,
) -> RunContext:
    """What the run's tables share: the source catalog read in batches, the listings and states read at
    the start (a dry run makes the same, read-only)."""
    return RunContext(
        execution_id,
        pipeline,
        limits,
        resources.source,
        resources.s3,
        resources.warehouse,
        mode,
        catalog=Catalog([(p.database, p.source_table) for p in plans]) if mode != "load_only" else None,
        scan=scan,
        states=states,
        tables_at_once=min(len(plans), int(limits.tables.total_tokens)),
    )


def source_pool(pipeline: Pipeline, limits: Limits) -> MySQLSource:
    """The pipeline's MySQL pool in this process: its share of the source's connections."""
    return MySQLSource(pipeline.source, limits.mysql, share=limits.share_of)


@dataclass(frozen=True)
class Resources:
    source: MySQLSource | None
    s3: S3Stage
    warehouse: Warehouse


async def open_resources(
    stack: AsyncExitStack,
    pipeline: Pipeline,
    limits: Limits,
    redshift_connect: RedshiftConnect | None,
    *,
    source: bool = True,
    s3_check: bool = True,
    keep_written: bool = False,
) -> Resources:
    """Open the source pool, the S3 client and the warehouse pool once for the run, checking each
    concurrently. Read-only: nothing is written anywhere. ``keep_written``: the run loads what it stages,
    so PostgreSQL reads its small files from memory (``S3Stage.remember``)."""
    mysql = await stack.enter_async_context(source_pool(pipeline, limits)) if source else None
    keep = keep_written and pipeline.target.type == "postgres"  # Redshift COPYs from S3 itself
    s3 = await stack.enter_async_context(S3Stage(pipeline.s3, limits.s3_parts, keep_written=keep))

    def batches(stage: StageResult) -> AsyncIterator[pa.RecordBatch]:
        return iter_staged_batches(s3, stage.files, cpu_limiter=limits.cpu)

    warehouse = await stack.enter_async_context(
        open_warehouse(
            pipeline.target,
            batches=batches,
            load_limiter=limits.loads,
            redshift_connect=redshift_connect,
            cpu_limiter=limits.cpu,
        )
    )
    async with anyio.create_task_group() as tg:
        if mysql is not None:
            tg.start_soon(mysql.ping)
        if s3_check:
            tg.start_soon(s3.check)
        tg.start_soon(warehouse.ping)
    return Resources(mysql, s3, warehouse)


def _fail_all(agg: Aggregator, tables: Sequence[str], exc: BaseException, *, phase: str) -> RunReport:
    log.error("%s", describe(exc))
    for table in tables:
        agg.record(failure(table, exc, phase=phase))
    return agg.report()
