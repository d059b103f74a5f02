"""``watermark get|set|reset``: read or move a table's position in the warehouse state log."""

from __future__ import annotations

from contextlib import AsyncExitStack
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal

from src.common.errors import ConfigError, S3ShiftError, SourceError, first_error
from src.common.naming import split_table
from src.config.models import Pipeline
from src.engine.limits import Limits
from src.engine.run import load_config, open_resources, source_pool, unless_signalled
from src.engine.table import target_of
from src.plan.models import Watermark
from src.plan.planner import plan_table
from src.report.models import iso, new_execution_id, utc_now
from src.source.introspect import Catalog
from src.warehouse.base import StateRow
from src.warehouse.redshift import RedshiftConnect

Action = Literal["get", "set", "reset"]


@dataclass(frozen=True)
class WatermarkRequest:
    action: Action
    pipeline: str
    table: str
    config_dir: str | Path | None = None
    watermark: Watermark | None = None  # for "set"


async def run_watermark(
    req: WatermarkRequest,
    *,
    redshift_connect: RedshiftConnect | None = None,
    interrupted: list[str] | None = None,
) -> dict[str, Any]:
    """Returns the table's state after the action. Raises S3ShiftError with a one-line message.
    ``interrupted`` (the CLI's held signals): SIGTERM/SIGINT/SIGHUP, held before or received during it, cancel
    the action (a lock wait, a stalled server) instead of being ignored until it ends."""
    result = await unless_signalled(interrupted, partial(_run_watermark, req, redshift_connect))
    if result is not None:
        return result
    raise S3ShiftError(
        f"watermark {req.action} of {req.table} interrupted ({interrupted and interrupted[0]}) before it "
        "finished" + ("" if req.action == "get" else "; check it with watermark get before setting it again"),
        table=req.table,
        retryable=True,
    )


async def _run_watermark(req: WatermarkRequest, redshift_connect: RedshiftConnect | None) -> dict[str, Any]:
    try:
        split_table(req.table)
    except ValueError as exc:
        raise ConfigError(str(exc), table=req.table) from None
    if req.action == "set" and req.watermark is None:
        raise ConfigError("watermark set needs --timestamp and/or --id")
    pipeline = load_config(req.pipeline, req.config_dir)
    if req.action == "set":
        _check_readable(pipeline, req.table, req.watermark)
    limits = Limits.for_pipeline(pipeline)
    async with AsyncExitStack() as stack:
        try:
            res = await open_resources(
                stack, pipeline, limits, redshift_connect, source=False, s3_check=False
            )
        except BaseExceptionGroup as group:  # the connection checks run in a task group
            err = first_error(group)
            if isinstance(err, S3ShiftError):
                raise err from None
            raise
        wh = res.warehouse
        if await wh.read_state(pipeline.name, req.table) is None:
            await _check_source_has(stack, pipeline, limits, req.table)
        if req.action != "get":
            await wh.write_state(
                StateRow(
                    pipeline=pipeline.name,
                    table=req.table,
                    target=target_of(pipeline, plan_table(pipeline, req.table)),
                    strategy="manual" if req.action == "set" else "reset",
                    stage_id="",
                    loaded_by=new_execution_id(utc_now()),
                    watermark=req.watermark if req.action == "set" else None,
                    window_start=None,
                    rows=0,
                    schema_hash="",
                    extracted_at=None,
                )
            )
        state = await wh.read_state(pipeline.name, req.table)
    return describe_state(pipeline.name, req.table, state)


def _check_readable(pipeline: Pipeline, table: str, mark: Watermark | None) -> None:
    """A watermark the table's strategy cannot start a window at (no timestamp for a timestamp_only or
    hybrid table, no id for an id_only one) is refused before it is written: every later sync of the table
    would fail on it."""
    plan = plan_table(pipeline, table)
    needs = {"timestamp_only": "timestamp", "hybrid": "timestamp", "id_only": "id"}.get(plan.strategy)
    if needs is None or mark is None or (mark.ts if needs == "timestamp" else mark.id) is not None:
        return
    raise ConfigError(
        f"watermark set of {table}: {plan.key_path('cdc_strategy')} is {plan.strategy}, whose windows start "
        f"at a{'n' if needs == 'id' else ''} {needs}: give --{needs}"
        + (" (with --id: the last id already loaded at that timestamp)" if plan.strategy == "hybrid" else "")
        + "; nothing was written",
        table=table,
        key=plan.key_path("cdc_strategy"),
    )


async def _check_source_has(stack: AsyncExitStack, pipeline: Pipeline, limits: Limits, table: str) -> None:
    """A table never synced is known only if the source has it: it may then get a watermark (a start point
    for its first sync), and ``get`` says it has none. A name the source lacks is a typo, which would
    otherwise pass unnoticed (``get``: "no watermark"; ``set``: a state row no sync ever reads)."""
    database, name = split_table(table)
    source = await stack.enter_async_context(source_pool(pipeline, limits))
    async with source.connection() as conn:
        if await Catalog([(database, name)]).rows(conn, database, name):
            return
    raise SourceError(
        f"table {table} not found in MySQL source {pipeline.source.name!r} and never synced by pipeline "
        f"{pipeline.name} — check the database and table names (they are case-sensitive); a watermark is "
        "kept only for a table the source has",
        table=table,
        retryable=False,
    )


def describe_state(pipeline: str, table: str, state: StateRow | None) -> dict[str, Any]:
    out: dict[str, Any] = {"pipeline": pipeline, "table": table, "watermark": None, "state": None}
    if state is None:
        return out
    out["watermark"] = state.watermark.to_dict() if state.watermark else None
    out["state"] = {
        "strategy": state.strategy,
        "target": state.target,
        "stage_id": state.stage_id,
        "loaded_by": state.loaded_by,
        "rows": state.rows,
        "schema_hash": state.schema_hash,
        "window_start": state.window_start.to_dict() if state.window_start else None,
        "extracted_at": iso(state.extracted_at) if state.extracted_at else None,
        "committed_at": iso(state.committed_at) if state.committed_at else None,
    }
    return out
