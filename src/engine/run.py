"""The run: load config, plan every table, open shared resources once, sync tables concurrently in one
task group, aggregate results into the report. Never raises for a table or config problem: every
requested table ends up in the report, failed with a message naming the cause when it could not run."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

import anyio
import pyarrow as pa
from anyio.streams.memory import MemoryObjectSendStream

from src.common.errors import S3ShiftError, describe
from src.common.log import get_logger
from src.config.loader import config_dir, load_pipeline
from src.config.models import Pipeline
from src.engine.limits import Limits
from src.engine.table import RunContext, first_error, sync_table
from src.plan.planner import TablePlan, plan_table
from src.report.aggregator import Aggregator
from src.report.models import RunReport, TableFailure, TableResult, new_execution_id, utc_now
from src.source.mysql import MySQLSource
from src.stage.models import StageResult
from src.stage.reader import iter_staged_batches
from src.stage.s3 import S3Stage
from src.warehouse.factory import open_warehouse
from src.warehouse.redshift import RedshiftConnect

log = get_logger("engine")
STALE_UPLOAD_SECONDS = 24 * 3600


@dataclass(frozen=True)
class SyncRequest:
    pipeline: str
    tables: tuple[str, ...]
    config_dir: str | Path | None = None


def unique(tables: Sequence[str]) -> tuple[str, ...]:
    """Request order kept; a table named twice is synced once."""
    return tuple(dict.fromkeys(t.strip() for t in tables))


async def run_sync(request: SyncRequest, *, redshift_connect: RedshiftConnect | None = None) -> RunReport:
    start = utc_now()
    tables = unique(request.tables)
    agg = Aggregator(new_execution_id(start), start, request.pipeline, tables)
    log.info("run %s: pipeline %s, %d table(s)", agg.execution_id, request.pipeline, len(tables))
    try:
        directory = config_dir(str(request.config_dir) if request.config_dir else None)
        pipeline = load_pipeline(directory, request.pipeline)
    except S3ShiftError as exc:
        return _fail_all(agg, tables, exc, phase="config")
    plans: list[TablePlan] = []
    for table in tables:
        try:
            plans.append(plan_table(pipeline, table))
        except S3ShiftError as exc:
            agg.record(_failure(table, exc, phase="plan"))
    if plans:
        await _run_plans(agg, pipeline, plans, redshift_connect)
    return agg.report()


async def _run_plans(
    agg: Aggregator, pipeline: Pipeline, plans: list[TablePlan], redshift_connect: RedshiftConnect | None
) -> None:
    limits = Limits.for_pipeline(pipeline)
    async with AsyncExitStack() as stack:
        try:
            ctx = await _open(stack, agg.execution_id, pipeline, limits, redshift_connect)
        except Exception as exc:
            _fail_all(agg, [p.table for p in plans], first_error(exc), phase="connect")
            return
        async with anyio.create_task_group() as tg:
            tg.start_soon(agg.run)
            for plan in plans:
                tg.start_soon(_one, ctx, plan, agg.sender())
            agg.close_origin()


async def _one(ctx: RunContext, plan: TablePlan, send: MemoryObjectSendStream[TableResult]) -> None:
    async with send:
        await send.send(await sync_table(ctx, plan))


async def _open(
    stack: AsyncExitStack,
    execution_id: str,
    pipeline: Pipeline,
    limits: Limits,
    redshift_connect: RedshiftConnect | None,
) -> RunContext:
    """Open the source pool, the S3 client and the warehouse pool once for the run, checking each."""
    source = await stack.enter_async_context(MySQLSource(pipeline.source, limits.mysql))
    s3 = await stack.enter_async_context(S3Stage(pipeline.s3, limits.s3_parts))

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
        tg.start_soon(source.ping)
        tg.start_soon(s3.check)
        tg.start_soon(warehouse.ping)
    aborted = await s3.abort_stale_uploads(f"{pipeline.s3.prefix}{pipeline.name}/", STALE_UPLOAD_SECONDS)
    if aborted:
        log.warning("aborted %d stale multipart upload(s) under pipeline %s", aborted, pipeline.name)
    return RunContext(execution_id, pipeline, limits, source, s3, warehouse)


def _failure(table: str, exc: BaseException, *, phase: str) -> TableFailure:
    extra: dict[str, object] = {"phase": phase}
    if isinstance(exc, S3ShiftError):
        extra["retryable"] = exc.retryable
    return TableFailure(table=table, error_message=describe(exc), failed_at=utc_now(), extra=extra)


def _fail_all(agg: Aggregator, tables: Sequence[str], exc: BaseException, *, phase: str) -> RunReport:
    log.error("%s", describe(exc))
    for table in tables:
        agg.record(_failure(table, exc, phase=phase))
    return agg.report()
