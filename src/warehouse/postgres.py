"""PostgreSQL as a target: the staged Parquet, read back from S3, is COPYed in binary, encoded by pgpq.

The staging table's columns are exactly what pgpq emits for the Parquet (Arrow) schema; the INSERT
into the target casts where the two differ (json -> jsonb, timestamp -> timestamptz at UTC, wide
decimals staged as text -> numeric). Encoding is CPU work and runs in worker threads, batch by batch.
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import asyncpg
import pyarrow as pa
from pgpq import ArrowToPostgresBinaryEncoder

from src.common.errors import WarehouseError, describe
from src.common.schema import Column, TableSchema
from src.config.models import TargetConn
from src.warehouse.base import BatchOpener, Fill
from src.warehouse.catalog import Executor
from src.warehouse.ddl import POSTGRES, postgres_type, staging_name
from src.warehouse.errors import classify, where
from src.warehouse.sqlwarehouse import SqlWarehouse
from src.warehouse.state import LoadRequest
from src.warehouse.statements import LoadSpec

CLOSE_TIMEOUT = 10.0


def staging_arrow_schema(schema: TableSchema) -> pa.Schema:
    """The Parquet schema, with what pgpq cannot encode (decimal256) carried as exact text."""
    fields = []
    for col in schema.columns:
        arrow_type = col.arrow_type()
        if pa.types.is_decimal256(arrow_type):
            arrow_type = pa.string()
        fields.append(pa.field(col.name, arrow_type, nullable=True))
    return pa.schema(fields)


def insert_expr(col: Column, table: str | None = None) -> str:
    """The target value of ``col`` from its staging column (qualified by ``table`` when given)."""
    ref = POSTGRES.ident(col.name) if table is None else f"{table}.{POSTGRES.ident(col.name)}"
    if col.logical == "json":
        return f"{ref}::jsonb"
    if col.logical == "timestamptz":
        return f"({ref} AT TIME ZONE 'UTC')"  # pgpq stages a UTC timestamp without time zone
    if col.logical == "decimal":
        return f"{ref}::{postgres_type(col)}"
    return ref


def key_exprs(schema: TableSchema, key: tuple[str, ...], staging: str) -> tuple[str, ...]:
    """Each key column's target value, from the staging column qualified by the staging table."""
    return tuple(insert_expr(schema.column(k), POSTGRES.ident(staging)) for k in key if k in schema.names)


def build_spec(req: LoadRequest, *, schema_name: str) -> LoadSpec:
    """The spec of a request already in target names."""
    schema, target_table, stage = req.schema, req.target_table, req.stage
    arrow_schema = staging_arrow_schema(schema)
    pg_schema = ArrowToPostgresBinaryEncoder(arrow_schema).schema()
    staging = staging_name(f"{req.execution_id}\x1f{stage.manifest_url}", schema_name, target_table)
    return LoadSpec(
        dialect=POSTGRES,
        schema_name=schema_name,
        target_table=target_table,
        schema=schema,
        stage=stage,
        staging_table=staging,
        target_types=tuple(postgres_type(c) for c in schema.columns),
        staging_types=tuple(str(c.data_type.ddl()) for c in pg_schema.columns),
        insert_exprs=tuple(insert_expr(c) for c in schema.columns),
        mode=req.mode,
        key=req.key,
        order_by=req.order_by,
        schema_change=req.schema_change,
        key_exprs=key_exprs(schema, req.key, staging),
    )


def conform(batch: pa.RecordBatch, arrow_schema: pa.Schema, where_: str) -> pa.RecordBatch:
    """The batch, checked against the planned schema by position and type, wide decimals as text."""
    if batch.num_columns != len(arrow_schema):
        raise WarehouseError(
            f"staged data for {where_} has {batch.num_columns} columns, the plan has {len(arrow_schema)}: "
            "the stage does not match this run's schema; re-run the table",
            table=where_,
        )
    columns = []
    for i, field in enumerate(arrow_schema):
        column = batch.column(i)
        if pa.types.is_decimal256(column.type) and field.type == pa.string():
            column = column.cast(pa.string())
        if column.type != field.type:
            raise WarehouseError(
                f"staged column {batch.schema.field(i).name!r} of {where_} is {column.type}, the plan says "
                f"{field.type}: the stage does not match this run's schema; re-run the table",
                table=where_,
                column=field.name,
            )
        columns.append(column)
    return pa.RecordBatch.from_arrays(columns, schema=arrow_schema)


async def binary_copy_source(
    batches: AsyncIterator[pa.RecordBatch],
    arrow_schema: pa.Schema,
    where_: str,
    cpu_limiter: anyio.CapacityLimiter | None,
) -> AsyncIterator[bytes]:
    """PostgreSQL binary COPY data, encoded one Arrow batch at a time in a worker thread."""
    encoder = ArrowToPostgresBinaryEncoder(arrow_schema)
    yield encoder.write_header()
    async for batch in batches:
        if batch.num_rows:
            conformed = conform(batch, arrow_schema, where_)
            yield await anyio.to_thread.run_sync(encoder.write_batch, conformed, limiter=cpu_limiter)
    yield encoder.finish()


@asynccontextmanager
async def closing(batches: AsyncIterator[pa.RecordBatch]) -> AsyncIterator[AsyncIterator[pa.RecordBatch]]:
    """``contextlib.aclosing`` for any async iterator; the close is shielded and time-boxed."""
    try:
        yield batches
    finally:
        aclose = getattr(batches, "aclose", None)
        if aclose is not None:
            with anyio.CancelScope(shield=True), anyio.move_on_after(CLOSE_TIMEOUT):
                await aclose()


def copied_rows(status: str) -> int | None:
    """The row count of a COPY's command tag ('COPY 42': a protocol field); None when it has none."""
    verb, _, count = (status or "").partition(" ")
    return int(count) if verb == "COPY" and count.isdigit() else None


class PostgresWarehouse(SqlWarehouse):
    """A PostgreSQL target over an asyncpg pool of at most ``cfg.max_connections`` connections."""

    dialect = POSTGRES
    fill_counts = True

    def __init__(
        self,
        cfg: TargetConn,
        pool: Any,
        *,
        batches: BatchOpener,
        load_limiter: anyio.CapacityLimiter | None = None,
        cpu_limiter: anyio.CapacityLimiter | None = None,
    ) -> None:
        self.cfg = cfg
        self._pool = pool
        self._batches = batches
        self._load_limiter = load_limiter
        self._cpu_limiter = cpu_limiter

    async def ping(self) -> None:
        try:
            with anyio.fail_after(self.cfg.connect_timeout + 5):
                async with self._pool.acquire() as conn:
                    await conn.fetchval("SELECT 1")
        except Exception as exc:
            raise classify(exc, cfg=self.cfg, action="connecting to") from exc

    @asynccontextmanager
    async def _session(self, *, load: bool) -> AsyncIterator[Executor]:
        async with _maybe(self._load_limiter if load else None), self._pool.acquire() as conn:
            try:
                yield conn
            finally:
                discard_if_in_transaction(conn)

    def _spec(self, req: LoadRequest) -> LoadSpec:
        return build_spec(req, schema_name=self.cfg.schema)

    def _fill(self, ex: Executor, spec: LoadSpec) -> Fill:
        conn: Any = ex
        arrow_schema = staging_arrow_schema(spec.schema)

        async def fill(_staging_sql: str) -> int | None:
            async with closing(self._batches(spec.stage)) as batches:
                source = binary_copy_source(batches, arrow_schema, spec.target_name, self._cpu_limiter)
                status = await conn.copy_to_table(spec.staging_table, source=source, format="binary")
                return copied_rows(status)

        return fill

    def _fill_sql(self, spec: LoadSpec) -> str:
        return f"COPY {spec.staging_sql} FROM STDIN (FORMAT binary)"


def discard_if_in_transaction(conn: Any) -> None:
    """A connection whose rollback did not finish must never go back to the pool: terminate it."""
    with contextlib.suppress(asyncpg.InterfaceError):  # already lost and detached by the pool
        if not conn.is_closed() and conn.is_in_transaction():
            conn.terminate()


@asynccontextmanager
async def _maybe(limiter: anyio.CapacityLimiter | None) -> AsyncIterator[None]:
    if limiter is None:
        yield
        return
    async with limiter:
        yield


def ssl_context(cfg: TargetConn) -> ssl.SSLContext | bool:
    """Verified TLS (system CAs, hostname checked) when ``ssl: true``; plain TCP otherwise."""
    return ssl.create_default_context() if cfg.ssl else False


def connect_kwargs(cfg: TargetConn, tls: ssl.SSLContext | bool) -> dict[str, Any]:
    """asyncpg connection arguments for a target (PostgreSQL, or Redshift over the same protocol)."""
    return {
        "host": cfg.host,
        "port": cfg.port,
        "user": cfg.username,
        "password": cfg.password.reveal() or None,
        "database": cfg.database,
        "ssl": tls,
        "timeout": cfg.connect_timeout,
    }


@asynccontextmanager
async def open_pool(cfg: TargetConn) -> AsyncIterator[Any]:
    """An asyncpg pool that connects lazily (so opening never fails; ``ping`` reports reachability)."""
    tls = await anyio.to_thread.run_sync(ssl_context, cfg)
    try:
        pool = await asyncpg.create_pool(
            **connect_kwargs(cfg, tls),
            min_size=0,
            max_size=max(1, cfg.max_connections),
        )
    except Exception as exc:
        raise WarehouseError(f"cannot open a connection pool to {where(cfg)}: {describe(exc)}") from exc
    try:
        yield pool
    finally:
        with anyio.CancelScope(shield=True):
            with anyio.move_on_after(CLOSE_TIMEOUT) as scope:
                await pool.close()
            if scope.cancelled_caught:
                pool.terminate()
