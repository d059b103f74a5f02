"""``s3shift plan``: every table's window fixed from the source now, the key ranges of a table the engine
would read in ranges, and the units that run them (``src.engine.units``). Read-only, as ``sync --dry-run``
(whose table loop it shares: ``dryrun.plan_each``): nothing is written to S3 or the warehouse."""

from __future__ import annotations

from functools import partial
from typing import Any

from src.common.errors import S3ShiftError
from src.common.schema import TableSchema
from src.engine.context import RunContext
from src.engine.dryrun import plan_each
from src.engine.pending import describe_stage
from src.engine.reading import fast_window, plan_window, range_workers, too_few_rows, window_is_empty
from src.engine.run import Resources, SyncRequest, unique
from src.engine.table import load_request, pending_chain, planned_stage, stage_meta, table_state
from src.engine.units import Unit, table_units
from src.plan.models import Window, format_ts
from src.plan.planner import TablePlan, read_window
from src.report.models import iso, new_execution_id, utc_now
from src.source.fastpath import key_layout, key_window, split_window
from src.source.mysql import SourceConnection
from src.source.ranges import KeyRange, split_key
from src.source.window import estimate_rows, source_now
from src.warehouse.redshift import RedshiftConnect


async def plan_units(
    request: SyncRequest,
    *,
    redshift_connect: RedshiftConnect | None = None,
    interrupted: list[str] | None = None,
) -> dict[str, Any]:
    """The plan: ``{"plan_id", "generated_at", "pipeline", "status", "tables": {table: summary | error},
    "units": [unit, ...]}``, the units that depend on nothing first. ``status``: ``planned`` when every
    table is, else ``failed`` (the planned tables' units are still listed)."""
    start = utc_now()
    plan_id = new_execution_id(start)
    tables = await plan_each(
        request,
        plan_id,
        partial(_plan_table, plan_id),
        "plan",
        redshift_connect=redshift_connect,
        interrupted=interrupted,
    )
    units = [u for t in tables.values() for u in t.pop("units", [])]
    return {
        "plan_id": plan_id,
        "generated_at": iso(start),
        "pipeline": request.pipeline,
        "status": "planned" if all(t["status"] == "planned" for t in tables.values()) else "failed",
        "tables": {t: tables[t] for t in unique(request.tables)},
        "units": [u for u in units if not u["depends_on"]] + [u for u in units if u["depends_on"]],
    }


async def _plan_table(plan_id: str, ctx: RunContext, res: Resources, plan: TablePlan) -> dict[str, Any]:
    state = await table_state(ctx, plan)
    chain, _ = await pending_chain(ctx, plan, state)
    if chain.load:  # a unit's window would not continue the chain: load those first
        ids = ", ".join(describe_stage(s)["execution_id"] for s in chain.load)
        raise S3ShiftError(
            f"{plan.table} has staged run(s) waiting to be loaded ({ids}): load them first (s3shift sync "
            f"--load-only -p {ctx.pipeline.name} -t {plan.table}), then plan again",
            table=plan.table,
            retryable=True,
        )
    assert res.source is not None
    async with res.source.connection(plan.table) as conn:
        schema, resolved, win = await plan_window(conn, plan, chain.position, ctx.catalog)
        now = await source_now(conn, ctx.clock)
        meta = stage_meta(ctx, plan, schema, resolved, win, now)  # what the load unit would refuse: now
        res.warehouse.check_load(load_request(ctx, plan, planned_stage(ctx, plan, meta), state))
        ranges, estimate = await _ranges(ctx, conn, plan, schema, win)
    base = Unit(
        plan_id=plan_id,
        pipeline=ctx.pipeline.name,
        table=plan.table,
        kind="sync",
        window=win,
        extracted_at=format_ts(now),
        expect_stage=state.stage_id if state else "",
        schema_hash=schema.schema_hash(),
    )
    units = table_units(base, ranges)
    return {
        "status": "planned",
        "strategy": plan.strategy,
        "window": {**win.bounds(), "empty": window_is_empty(win)},
        "estimated_rows": estimate,
        "key_ranges": len(ranges),
        "unit_ids": [u.id for u in units],
        "units": [u.to_dict() for u in units],
    }


async def _ranges(
    ctx: RunContext, conn: SourceConnection, plan: TablePlan, schema: TableSchema, win: Window
) -> tuple[list[KeyRange], int]:
    """The key ranges a run would read the window in (none: one reader), as ``FastRead`` splits it, and
    the window's estimated rows."""
    if window_is_empty(win):
        return [], 0
    reading = read_window(plan, win)
    db, name = plan.database, plan.source_table
    estimate = await estimate_rows(conn, db, name, schema, reading, where=plan.where, catalog=ctx.catalog)
    keys = fast_window(ctx, schema, reading)
    key = split_key(schema)
    if isinstance(keys, str) or key is None or await too_few_rows(ctx, conn, plan, schema, reading, estimate):
        return [], estimate
    window = key_window(*keys)
    processing = ctx.pipeline.processing
    layout = await key_layout(conn, db, name, key.name, window, processing.range_rows)
    if layout is None:
        return [], estimate
    workers = range_workers(processing.range_workers, int(ctx.limits.mysql.total_tokens), 1)
    return split_window(layout, window, estimate, workers), estimate
