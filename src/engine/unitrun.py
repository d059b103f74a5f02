"""One unit of a plan (``src.engine.units``), run by ``sync --unit`` in any process on any host: the
extract of its window (or key ranges) into the plan's place in S3, and/or the load of the table's
extract units as ONE stage (one manifest, one COPY, merged on the key, the state row in the same
transaction: ``Warehouse.load``, as every load). Returns the table's result; never raises a table error.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any

import anyio

from src.common.errors import S3ShiftError, StageError, first_error
from src.common.log import get_logger
from src.common.schema import TableSchema
from src.engine.context import RunContext
from src.engine.pending import parse_ts, stage_window
from src.engine.reading import TableRead, describe_and_resolve, extract_and_stage, window_is_empty
from src.engine.table import failed_phase, load_request, stage_meta, table_state
from src.engine.units import Unit, moved_since, plan_prefix, stale_plan, unit_prefix
from src.plan.models import format_ts
from src.plan.planner import TablePlan, read_window
from src.report.aggregator import failure
from src.report.models import TableResult, TableSuccess, utc_now
from src.source.extract import ExtractStats
from src.source.fastpath import key_window
from src.source.mysql import SourceConnection
from src.source.ranges import KeyRange, split_key
from src.source.window import check_window, upper_bound
from src.stage.manifest import MANIFEST_NAME, build_manifest, stage_from_manifest, stage_result
from src.stage.models import StageResult
from src.stage.pending import delete_stage
from src.stage.s3 import S3Stage
from src.warehouse.base import StateRow

log = get_logger("engine.unit")


@dataclass
class _Progress:
    phase: str = "state"
    started: float = field(default_factory=time.monotonic)
    rows: int = 0
    files: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


async def unit_result(ctx: RunContext, plan: TablePlan, unit: Unit, run_id: str) -> TableResult:
    """The unit's result for its table. ``ctx.execution_id`` is the plan id (the stage's execution id);
    ``run_id``, this process's run, is what the state row names as the loader."""
    progress = _Progress(extra={"unit": unit.id, "plan_id": unit.plan_id, "kind": unit.kind})
    try:
        async with ctx.limits.tables:
            await _run(ctx, plan, unit, run_id, progress)
    except Exception as exc:  # a table's failure is a result; cancellation passes through
        err = first_error(exc)
        log.debug("%s failed in %s", unit.id, progress.phase, exc_info=err)
        return failure(plan.table, err, phase=failed_phase(err, progress.phase))
    progress.extra["strategy"] = plan.strategy
    return TableSuccess(
        table=plan.table,
        rows_processed=progress.rows,
        files_created=progress.files,
        duration_seconds=time.monotonic() - progress.started,
        completed_at=utc_now(),
        extra=progress.extra,
    )


async def _run(ctx: RunContext, plan: TablePlan, unit: Unit, run_id: str, progress: _Progress) -> None:
    progress.extra["window"] = unit.window.bounds()
    progress.phase = "plan"
    if unit.window.strategy != plan.strategy:
        raise stale_plan(
            unit, f"{plan.key_path('cdc_strategy')} is {plan.strategy} now, not {unit.window.strategy}"
        )
    if unit.kind == "sync" and window_is_empty(unit.window):
        progress.extra.update(rows_loaded=0, note="the planned window holds no row: nothing to do")
        return
    if unit.kind == "sync" and (await _position(ctx, plan, unit, progress))[0]:  # before reading a row
        return
    if unit.kind != "load":
        progress.phase = "connect"
        await ctx.s3.ensure_reachable()
        stage = await _extract(ctx, plan, unit, progress)
        if unit.kind == "sync" and stage.rows == 0 and plan.strategy != "full_sync":
            await _nothing_new(ctx, stage, progress)
            return
    if unit.kind != "extract":
        await _load(ctx, plan, unit, run_id, progress)


async def _nothing_new(ctx: RunContext, stage: StageResult, progress: _Progress) -> None:
    """A sync unit whose window was found empty once read ends as a sync of an empty window does: its
    stage removed (nothing of it left in S3), no COPY, the state untouched. An extract unit's empty stage
    stays: the load unit gathers every one of its table's."""
    await delete_stage(ctx.s3, stage)
    for key in ("manifest", "bytes_written"):
        progress.extra.pop(key, None)
    progress.files = 0
    progress.extra["rows_loaded"] = 0


async def _extract(ctx: RunContext, plan: TablePlan, unit: Unit, progress: _Progress) -> StageResult:
    """Stage the unit's rows under its own directory of the plan, replacing what an earlier attempt of
    it left there (its manifest first: a load never sees it half replaced). Returns the stage."""
    assert ctx.source is not None
    progress.phase = "cleanup"
    prefix = unit_prefix(ctx.s3, unit)
    await _clear(ctx.s3, prefix)
    progress.phase = "connect"
    async with ctx.source.connection(plan.table) as conn:
        progress.phase = "introspect"
        schema, resolved = await describe_and_resolve(conn, plan)
        if schema.schema_hash() != unit.schema_hash:
            raise stale_plan(unit, f"the columns of {plan.table} (or the pipeline's column config) changed")
        cursor = (resolved.ts_column, resolved.id_column)
        if cursor != (unit.window.ts_column, unit.window.id_column):
            raise stale_plan(unit, f"the cursor columns of {plan.table} are {cursor} now in the pipeline")
        check_window(plan.table, schema, unit.window)
        if unit.ranges and split_key(schema) is None:  # a key changed since, or a unit edited by hand
            raise stale_plan(unit, f"the primary key of {plan.table} has no integer first column to split")
        await _check_end(conn, plan, schema, unit)
        meta = stage_meta(ctx, plan, schema, resolved, unit.window, parse_ts(unit.extracted_at))
        meta["unit"] = unit.id
        meta["ranges"] = [[r.low, r.high] for r in unit.ranges]  # what the load unit checks it tiles
        progress.phase = "extract"
        stats = ExtractStats()
        window = read_window(plan, unit.window)
        read = TableRead(ctx, conn, plan, schema, window, stats, meta, prefix=prefix, ranges=unit.ranges)
        stage = await extract_and_stage(read)
    progress.rows, progress.files = stats.rows, stage.files_created
    progress.extra.update(manifest=stage.manifest_url, bytes_written=stage.bytes)
    if stats.path:
        progress.extra["extract"] = stats.path
    if stats.coercions:
        progress.extra["coercions"] = stats.coercions
    return stage


async def _check_end(conn: SourceConnection, plan: TablePlan, schema: TableSchema, unit: Unit) -> None:
    """A timestamp window's end is a time the source's clock has passed (``plan`` fixed it from that clock):
    one still ahead of it (a unit edited by hand, or a clock set back since) would commit a watermark past
    rows not written yet, which no later run would read."""
    end = unit.window.end
    if unit.window.strategy not in ("timestamp_only", "hybrid") or end is None or end.ts is None:
        return
    now = await upper_bound(conn, plan.database, plan.source_table, schema, unit.window, lag_seconds=0)
    if now is not None and now.ts is not None and end.ts > now.ts:
        raise stale_plan(
            unit,
            f"its window ends at {format_ts(end.ts)}, after the source's clock now ({format_ts(now.ts)}): "
            "edited by hand, or the source's clock was set back since planning",
        )


async def _clear(s3: S3Stage, prefix: str) -> None:
    await s3.abort_stale_uploads(prefix, older_than_seconds=0)
    await s3.delete_keys([f"{prefix}{MANIFEST_NAME}"])
    await s3.delete_prefix(prefix)


async def _position(
    ctx: RunContext, plan: TablePlan, unit: Unit, progress: _Progress
) -> tuple[bool, StateRow | None]:
    """Whether the plan is committed already (noted in ``progress``), and the table's latest state
    (located), which the plan was made from. Raises when the plan is stale: the table was
    loaded since (another state), or its target lost the rows before the planned window."""
    progress.phase = "state"
    state = await table_state(ctx, plan)
    committed = await ctx.warehouse.committed_stage_ids(ctx.pipeline.name, plan.table)
    if unit.plan_id in committed:
        log.info("%s: plan %s is already loaded: nothing to do", plan.table, unit.plan_id)
        progress.extra.update(rows_loaded=0, already_loaded=True)
        return True, state
    current = state.stage_id if state else ""
    if current != unit.expect_stage:
        raise stale_plan(unit, moved_since(unit, current, state.loaded_by if state else ""))
    position = state.watermark if state else None
    if unit.window.strategy != "full_sync" and position != unit.window.start:  # ``locate``: target gone
        where = f"{ctx.pipeline.target.schema}.{plan.target_table}"
        raise stale_plan(unit, f"{where} no longer holds the rows before the planned window (dropped since?)")
    return False, state


async def _load(ctx: RunContext, plan: TablePlan, unit: Unit, run_id: str, progress: _Progress) -> None:
    """Load the table's staged units as one stage, once (``_position``: not a plan already committed,
    nor a stale one; the load's guard checks the same state again under its lock)."""
    loaded, state = await _position(ctx, plan, unit, progress)
    if loaded:
        return
    progress.phase = "load"
    stage = await _gathered(ctx.s3, unit)
    rows = stage.rows
    if unit.kind == "load":
        progress.rows = rows
        progress.extra["units_loaded"] = len(unit.depends_on)
    if rows == 0 and unit.window.strategy != "full_sync":  # nothing new: no COPY, state untouched
        progress.extra["rows_loaded"] = 0
        return
    await ctx.s3.put_bytes(stage.manifest_key, build_manifest(stage), content_type="application/json")
    req = load_request(ctx, plan, stage, state)
    req = replace(req, state=replace(req.state, loaded_by=run_id))
    result = await ctx.warehouse.load(req)
    if unit.kind == "load":
        progress.rows = result.rows_loaded
    mark = req.state.watermark
    progress.extra.update(
        rows_loaded=result.rows_loaded,
        target=result.target,
        watermark=mark.to_dict() if mark else None,
        load_manifest=stage.manifest_url,
    )
    if result.schema_changes:
        progress.extra["schema_changes"] = list(result.schema_changes)


async def _gathered(s3: S3Stage, unit: Unit) -> StageResult:
    """The stages of the unit's extract units (itself, for a ``sync`` unit) as one: their files, under
    the plan's manifest of the table. Fails, retryable, naming every unit not staged yet."""
    ids = unit.depends_on or (unit.id,)
    keys = [f"{unit_prefix(s3, unit, i.rpartition(':')[2])}{MANIFEST_NAME}" for i in ids]
    found: dict[str, bytes | None] = {}

    async def fetch(key: str) -> None:
        found[key] = await s3.get_optional(key)

    async with anyio.create_task_group() as tg:
        for key in keys:
            tg.start_soon(fetch, key)
    missing = [i for i, key in zip(ids, keys, strict=True) if found[key] is None]
    if missing:
        raise S3ShiftError(
            f"unit {unit.id} of plan {unit.plan_id}: extract unit(s) not staged yet: {', '.join(missing)}; "
            "nothing was loaded — run them, then this unit again",
            table=unit.table,
            retryable=True,
        )
    stages = [await stage_from_manifest(s3, key, found[key] or b"") for key in keys]
    for stage in stages:
        if (
            stage.meta.get("execution_id") != unit.plan_id
            or stage.schema_hash != stages[0].schema_hash
            or stage_window(stage) != unit.window
        ):
            raise StageError(
                f"{stage.manifest_url} is not a stage of plan {unit.plan_id} with the plan's columns and "
                f"window (after {unit.window.start or 'the beginning'}, up to {unit.window.end}); rerun "
                "its extract unit from the plan",
                key=stage.manifest_key,
                retryable=False,
            )
    if unit.depends_on:
        _check_tiling(unit, [stage.meta.get("ranges") for stage in stages])
    meta = {k: v for k, v in stages[0].meta.items() if k != "unit"}
    files = tuple(f for stage in stages for f in stage.files)
    return stage_result(s3, plan_prefix(s3, unit), files, stages[0].schema_hash, meta)


def _check_tiling(unit: Unit, staged: list[Any]) -> None:
    """The extract units' key ranges, in order, cover the planned window once: no gap (rows the committed
    watermark would pass over unread) and no overlap. Units edited by hand (or by a scheduler) fail here,
    before anything is loaded."""
    ranges = [KeyRange(low, high) for per_unit in staged for low, high in per_unit or [[0, 0]]]
    win = unit.window
    whole = KeyRange(None, None)
    if win.strategy == "id_only":
        whole = key_window(win.start.id if win.start else None, win.end.id if win.end else None)
    lows = [r.low for r in ranges] + [whole.high]
    highs = [whole.low] + [r.high for r in ranges]
    if lows != highs:
        spans = ", ".join(f"[{r.low}, {r.high})" for r in ranges)
        raise S3ShiftError(
            f"unit {unit.id} of plan {unit.plan_id}: the key ranges its extract units staged ({spans}) do "
            f"not cover [{whole.low}, {whole.high}) once, without gap or overlap; nothing was loaded — rerun "
            "the extract units of the plan unchanged, or make a new plan",
            table=unit.table,
            retryable=False,
        )
