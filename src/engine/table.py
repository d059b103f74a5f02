"""One table's sync: introspect -> extract || stage -> load. Returns a result; never raises a table error."""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import partial
from typing import Any

import anyio
import pyarrow as pa

from src.common.errors import S3ShiftError, describe
from src.common.log import get_logger
from src.common.schema import TableSchema
from src.config.models import Pipeline
from src.engine.limits import Limits
from src.engine.streams import CheckedReceive, Completion, ProducerFailed
from src.plan.planner import TablePlan
from src.report.models import TableFailure, TableResult, TableSuccess, utc_now
from src.source.extract import ExtractStats, extract_table
from src.source.introspect import describe_table
from src.source.mysql import MySQLSource, SourceConnection
from src.stage.models import StageResult
from src.stage.s3 import S3Stage
from src.stage.writer import write_parquet
from src.warehouse.base import Warehouse

log = get_logger("engine")
BATCHES_IN_FLIGHT = 2  # bound of the stream between extract and stage, in record batches


@dataclass(frozen=True)
class RunContext:
    execution_id: str
    pipeline: Pipeline
    limits: Limits
    source: MySQLSource
    s3: S3Stage
    warehouse: Warehouse


@dataclass
class _Progress:
    phase: str = "plan"
    started: float = 0.0


async def sync_table(ctx: RunContext, plan: TablePlan) -> TableResult:
    progress = _Progress(started=time.monotonic())
    try:
        async with ctx.limits.tables:
            return await _sync(ctx, plan, progress)
    except Exception as exc:  # a table's failure is a result; cancellation (BaseException) passes through
        err = first_error(exc)
        log.debug("%s failed in %s", plan.table, progress.phase, exc_info=err)
        extra: dict[str, Any] = {"phase": progress.phase}
        if isinstance(err, S3ShiftError):
            extra["retryable"] = err.retryable
        return TableFailure(table=plan.table, error_message=describe(err), failed_at=utc_now(), extra=extra)


async def _sync(ctx: RunContext, plan: TablePlan, progress: _Progress) -> TableSuccess:
    stats = ExtractStats()
    phases: dict[str, float] = {}
    async with ctx.source.connection() as conn:
        progress.phase = "introspect"
        schema = await describe_table(conn, plan.database, plan.source_table, primary_key=plan.primary_key)
        progress.phase = "extract"
        mark = time.monotonic()
        stage = await _extract_and_stage(ctx, conn, plan, schema, stats)
        phases["extract_stage"] = round(time.monotonic() - mark, 6)
    progress.phase = "load"
    mark = time.monotonic()
    loaded = await ctx.warehouse.load_full_refresh(
        table=plan.table,
        schema=schema,
        target_table=plan.target_table,
        stage=stage,
        execution_id=ctx.execution_id,
    )
    phases["load"] = round(time.monotonic() - mark, 6)
    extra: dict[str, Any] = {
        "strategy": plan.strategy,
        "target": loaded.target,
        "rows_loaded": loaded.rows_loaded,
        "bytes_written": stage.bytes,
        "manifest": stage.manifest_url,
        "phases": phases,
    }
    if stats.coercions:
        extra["coercions"] = stats.coercions
    return TableSuccess(
        table=plan.table,
        rows_processed=stats.rows,
        files_created=stage.files_created,
        duration_seconds=time.monotonic() - progress.started,
        completed_at=utc_now(),
        extra=extra,
    )


async def _extract_and_stage(
    ctx: RunContext, conn: SourceConnection, plan: TablePlan, schema: TableSchema, stats: ExtractStats
) -> StageResult:
    """Extract and stage run concurrently through a bounded stream; the manifest is written only when
    extraction finished cleanly."""
    send, receive = anyio.create_memory_object_stream[pa.RecordBatch](max_buffer_size=BATCHES_IN_FLIGHT)
    completion = Completion()
    extract = partial(
        extract_table,
        conn,
        plan.database,
        plan.source_table,
        schema,
        send,
        batch_size=plan.batch_size,
        stats=stats,
        cpu_limiter=ctx.limits.cpu,
    )

    async def produce() -> None:
        try:
            await extract()
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
                receive=checked,
                file_size_bytes=plan.file_size_bytes,
                cpu_limiter=ctx.limits.cpu,
                schema_hash=schema.schema_hash(),
            )
    return result


def first_error(exc: BaseException) -> BaseException:
    """The first leaf of an exception group, preferring our own errors (they carry the cause)."""
    if isinstance(exc, BaseExceptionGroup):
        leaves = [first_error(e) for e in exc.exceptions]
        leaves = [e for e in leaves if not isinstance(e, ProducerFailed)] or leaves
        ours = [e for e in leaves if isinstance(e, S3ShiftError)]
        return (ours or leaves)[0]
    return exc
