"""``sync --dry-run``: what a run would do per table, with zero side effects (read-only queries only)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from datetime import datetime
from functools import partial
from typing import Any

import anyio

from src.common.errors import S3ShiftError, describe, first_error
from src.common.log import get_logger
from src.common.schema import TableSchema
from src.config.models import Pipeline
from src.engine.context import RunContext, RunMode
from src.engine.limits import Limits
from src.engine.pending import describe_stage
from src.engine.reading import fast_window, plan_window, too_few_rows, window_is_empty
from src.engine.run import (
    Resources,
    SyncRequest,
    load_config,
    open_resources,
    plan_tables,
    run_context,
    states_beside,
    unique,
    unless_signalled,
)
from src.engine.table import (
    load_request,
    pending_chain,
    stage_meta,
    stream_blocker,
    table_state,
    target_of,
)
from src.engine.workers import process_count
from src.plan.models import Window, format_ts
from src.plan.planner import TablePlan, read_window
from src.report.models import iso, new_execution_id, utc_now
from src.source.fastpath import paged
from src.source.mysql import SourceConnection
from src.source.window import estimate_rows, index_for, source_now, window_sql
from src.stage.manifest import stage_result
from src.stage.models import StagedFile
from src.stage.pending import scan_pipeline
from src.warehouse.redshift import RedshiftConnect

log = get_logger("dryrun")


async def plan_sync(
    request: SyncRequest,
    *,
    redshift_connect: RedshiftConnect | None = None,
    interrupted: list[str] | None = None,
) -> dict[str, Any]:
    """The JSON plan: ``{"dry_run": true, "execution_id", "pipeline", "mode", "processes",
    "tables": {table: plan | error}}``. ``interrupted`` (the CLI's held signals): SIGTERM/SIGINT/SIGHUP, held
    before or received during it, end it at once, every table not yet planned an ``error`` naming it."""
    start = utc_now()
    tables = unique(request.tables)
    doc: dict[str, Any] = {
        "dry_run": True,
        "execution_id": new_execution_id(start),
        "generated_at": iso(start),
        "pipeline": request.pipeline,
        "mode": request.mode,
        "tables": {},
    }

    def configured(pipeline: Pipeline) -> None:
        doc["processes"] = process_count(pipeline, len(tables))  # what the run would fork (start_workers)

    doc["tables"] = await plan_each(
        request,
        doc["execution_id"],
        _plan_one,
        "dry run",
        configured=configured,
        redshift_connect=redshift_connect,
        interrupted=interrupted,
    )
    return doc


PlanOne = Callable[[RunContext, Resources, TablePlan], Awaitable[dict[str, Any]]]


async def plan_each(
    request: SyncRequest,
    execution_id: str,
    plan_one: PlanOne,
    what: str,
    *,
    configured: Callable[[Pipeline], None] | None = None,
    redshift_connect: RedshiftConnect | None = None,
    interrupted: list[str] | None = None,
) -> dict[str, dict[str, Any]]:
    """Each requested table's ``plan_one`` (or ``{"status": "error", "error_message"}``), read-only, in
    request order, in the context a run ``execution_id`` would have (``configured`` is told the config).
    ``interrupted`` (the CLI's held signals): SIGTERM/SIGINT/SIGHUP, held before or received during it, end it
    at once, every table not yet planned an error naming it (``what`` was interrupted)."""
    tables = unique(request.tables)
    results: dict[str, dict[str, Any]] = {}
    work = partial(_plan_all, request, execution_id, tables, redshift_connect, results, plan_one, configured)
    await unless_signalled(interrupted, work)
    stopped = {"status": "error", "error_message": f"{what} interrupted ({interrupted and interrupted[0]})"}
    return {t: results.get(t) or dict(stopped) for t in tables}


async def _plan_all(
    request: SyncRequest,
    execution_id: str,
    tables: tuple[str, ...],
    redshift_connect: RedshiftConnect | None,
    results: dict[str, dict[str, Any]],
    plan_one: PlanOne,
    configured: Callable[[Pipeline], None] | None,
) -> None:
    """Each table's plan (or error) into ``results`` as it is made."""
    try:
        pipeline = load_config(request.pipeline, request.config_dir)
    except S3ShiftError as exc:
        log.error("%s", describe(exc))
        results.update({t: {"status": "error", "error_message": describe(exc)} for t in tables})
        return
    if configured is not None:
        configured(pipeline)
    limits = Limits.for_pipeline(pipeline)
    async with AsyncExitStack() as stack:
        try:
            res = await open_resources(
                stack, pipeline, limits, redshift_connect, source=request.mode != "load_only"
            )
        except Exception as exc:
            err = describe(first_error(exc))
            log.error("%s", err)
            results.update({t: {"status": "error", "error_message": err} for t in tables})
            return
        planned = plan_tables(pipeline, tables)
        plans = [p for p in planned.values() if isinstance(p, TablePlan)]
        try:  # what a sync reads once at its start, for every table
            ctx = await _run_context(execution_id, pipeline, limits, res, request.mode, plans)
        except Exception as exc:
            err = describe(first_error(exc))
            log.error("%s", err)
            results.update({t: {"status": "error", "error_message": err} for t in tables})
            return

        async def one(table: str) -> None:
            try:
                plan = planned[table]
                if isinstance(plan, S3ShiftError):
                    raise plan
                results[table] = await plan_one(ctx, res, plan)
            except Exception as exc:
                results[table] = {"status": "error", "error_message": describe(first_error(exc))}
                log.error("%s: %s", table, results[table]["error_message"])

        async with anyio.create_task_group() as tg:
            for table in tables:
                tg.start_soon(one, table)


async def _run_context(
    execution_id: str,
    pipeline: Pipeline,
    limits: Limits,
    res: Resources,
    mode: RunMode,
    plans: list[TablePlan],
) -> RunContext:
    """The context a sync of ``plans`` would run in, read-only: every table's state located (one query, and
    one listing of the target schema when needed) while the pipeline's prefix is listed (no run markers
    read), and the source catalog read in batches, as a sync reads them."""
    states, scan = await states_beside(res.warehouse, pipeline, plans, scan_pipeline(res.s3, pipeline.name))
    return run_context(execution_id, pipeline, limits, res, mode, plans, scan, states)


async def _plan_one(ctx: RunContext, res: Resources, plan: TablePlan) -> dict[str, Any]:
    state = await table_state(ctx, plan)
    chain, _ = await pending_chain(ctx, plan, state)
    out: dict[str, Any] = {
        "status": "planned",
        "strategy": plan.strategy,
        "state": _state(state),
        "pending_stages": [describe_stage(s) for s in chain.load],
        "stages_skipped": [describe_stage(s) for s in chain.skipped],
    }
    if ctx.mode == "load_only" or res.source is None:
        out["sql"] = {
            "load": [
                sql
                for s in chain.load
                for sql in res.warehouse.render_load(load_request(ctx, plan, s, state))
            ]
        }
        return out
    async with res.source.connection(plan.table) as conn:
        schema, resolved, win = await plan_window(conn, plan, chain.position, ctx.catalog)
        now: datetime = await source_now(conn, ctx.clock)
        empty = window_is_empty(win)
        reading = read_window(plan, win)
        where = plan.where
        db, name = plan.database, plan.source_table
        estimate = (
            0
            if empty
            else await estimate_rows(conn, db, name, schema, reading, where=where, catalog=ctx.catalog)
        )
        index = None if empty else await index_for(conn, db, name, reading, schema=schema, where=where)
        extract_path = await _extract_path(ctx, conn, plan, schema, reading, estimate)
    meta = stage_meta(ctx, plan, schema, resolved, win, now)
    prefix = res.s3.run_prefix(ctx.pipeline.name, plan.table, ctx.execution_id)
    part = f"{prefix}part-00000.parquet"
    would_be = stage_result(res.s3, prefix, (StagedFile(part, res.s3.url(part), 0, estimate),), None, meta)
    load_sql = [
        sql
        for s in (*chain.load, would_be)
        for sql in res.warehouse.render_load(load_request(ctx, plan, s, state))
    ]
    out.update(
        mode=resolved.mode,
        key=list(resolved.key),
        window={**win.bounds(), "empty": empty},
        source_now=format_ts(now),
        estimated_rows=estimate,
        extract_path=extract_path,
        load_path=_load_path(ctx, plan),
        index=index.used if index else None,
        target=target_of(ctx.pipeline, plan),
        s3_prefix=res.s3.url(prefix),
        sql={
            "extract": window_sql(db, name, schema, reading, batch_size=plan.batch_size, where=where),
            "load": load_sql,
        },
    )
    if index is not None and not index.possible and plan.strategy != "full_sync":
        reads = "each page is" if index.paged else "the window query is"
        out["warning"] = f"no index serves the window query: {reads} a full scan; add an index on the cursor"
    return out


async def _extract_path(
    ctx: RunContext,
    conn: SourceConnection,
    plan: TablePlan,
    schema: TableSchema,
    reading: Window,
    estimate: int,
) -> str:
    """Which extract path the run would take, and why."""
    keys = fast_window(ctx, schema, reading)
    if isinstance(keys, str):
        return f"asyncmy: {keys}"
    if reason := await too_few_rows(ctx, conn, plan, schema, reading, estimate):
        return f"asyncmy: {reason}"
    if paged(schema):
        return "connectorx: keyset pages in primary-key order"
    return "connectorx: primary-key ranges read in parallel"


def _load_path(ctx: RunContext, plan: TablePlan) -> str:
    """When the run would load the table, and why."""
    if reason := stream_blocker(ctx, plan):
        return f"after staging: {reason}"
    return "while staging: target locked and emptied before the read, committed after the manifest"


def _state(state: Any) -> dict[str, Any] | None:
    if state is None:
        return None
    return {
        "strategy": state.strategy,
        "watermark": state.watermark.to_dict() if state.watermark else None,
        "stage_id": state.stage_id,
        "loaded_by": state.loaded_by,
        "rows": state.rows,
        "committed_at": iso(state.committed_at) if state.committed_at else None,
    }
