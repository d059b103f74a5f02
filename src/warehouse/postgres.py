"""PostgreSQL as a target: the staged Parquet, read back from S3, is COPYed in binary, encoded by pgpq.

A replace (with files) COPYs straight into the target, which the same transaction has just emptied
(``run_refill``): with FREEZE, the rows are written once and never revisited to set hint bits. That needs
every target column to be exactly the type the binary data is: json is sent as jsonb, a UTC timestamp's
binary form is timestamptz's; a wide decimal (staged as text), a target column kept wider than the
source's, or a partitioned target are staged instead (decided from the columns the commit transaction
read under its lock, before evolving: a target this load has just evolved is staged, this once). Other
modes COPY into a staging table whose columns are what pgpq emits for the Parquet (Arrow) schema; the
INSERT into the target casts where the two differ (json -> jsonb, timestamp -> timestamptz at UTC, wide
decimals staged as text -> numeric).

Reading, decoding and encoding run ahead of the COPY in a task of their own (the CPU work in worker
threads), through a stream of ``CHUNKS_AHEAD`` encoded batches: PostgreSQL stores one batch while the
next is read and encoded, and memory stays bounded (a few batches, whatever the table's size).
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import AsyncGenerator, AsyncIterator, Collection, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import anyio
import asyncpg
import pyarrow as pa
from anyio.abc import ObjectReceiveStream, ObjectSendStream
from pgpq import ArrowToPostgresBinaryEncoder
from pgpq.encoders import StringEncoderBuilder
from pgpq.schema import Jsonb

from src.common.errors import WarehouseError, describe
from src.common.schema import Column, TableSchema
from src.config.models import TargetConn
from src.warehouse.base import BatchOpener, Fill, fill_staging
from src.warehouse.catalog import Executor, Shape
from src.warehouse.ddl import POSTGRES, postgres_type, staging_name
from src.warehouse.direct import Direct
from src.warehouse.errors import classify, client_side_cause, lost_connection, where
from src.warehouse.evolve import parse_type
from src.warehouse.sqlwarehouse import Refill, SqlWarehouse
from src.warehouse.state import LoadRequest
from src.warehouse.statements import (
    LoadSpec,
    drop_staging_sql,
    insert_all_sql,
)

CLOSE_TIMEOUT = 10.0
SESSION_STATE_SQL = "SELECT state FROM pg_catalog.pg_stat_activity WHERE pid = $1"
CHUNKS_AHEAD = 1  # encoded batches queued for the COPY (8 MB for 65,536 rows of 12 columns); one more encodes
Chunk = bytes | Exception | None  # COPY data; the producer's failure; the end of the data


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


def copies_directly(schema: TableSchema, existing: Sequence[tuple[str, str]], kind: str | None) -> bool:
    """Binary COPY can fill the target as it is: a plain table (FREEZE refuses a partitioned one) whose
    every load column has exactly the type of the binary data, no cast needed (a wide decimal, staged as
    text, needs one; so does a target column kept wider than the source's)."""
    have = dict(existing)
    return kind == "r" and all(
        not pa.types.is_decimal256(c.arrow_type())
        and parse_type(have.get(c.name, "")) == parse_type(postgres_type(c))
        for c in schema.columns
    )


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
        clear=req.clear,
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


def copy_encoder(arrow_schema: pa.Schema, jsonb: Collection[str] = ()) -> ArrowToPostgresBinaryEncoder:
    """pgpq's encoder for ``arrow_schema``; the ``jsonb`` string columns are sent as jsonb, not text."""
    if not jsonb:
        return ArrowToPostgresBinaryEncoder(arrow_schema)
    encoders = {
        f.name: StringEncoderBuilder.new_with_output(f, Jsonb())
        if f.name in jsonb
        else ArrowToPostgresBinaryEncoder.infer_encoder(f)
        for f in arrow_schema
    }
    return ArrowToPostgresBinaryEncoder.new_with_encoders(arrow_schema, encoders)


async def binary_copy_source(
    batches: AsyncIterator[pa.RecordBatch],
    arrow_schema: pa.Schema,
    where_: str,
    cpu_limiter: anyio.CapacityLimiter | None,
    *,
    jsonb: Collection[str] = (),
) -> AsyncIterator[bytes]:
    """PostgreSQL binary COPY data, encoded one Arrow batch at a time in a worker thread."""
    encoder = copy_encoder(arrow_schema, jsonb)
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


async def encode_ahead(chunks: AsyncIterator[bytes], send: ObjectSendStream[Chunk]) -> None:
    """Send every chunk, then None; or the first failure (the consumer raises it, so the COPY aborts
    instead of committing what it had). A consumer gone (its COPY failed) stops this quietly."""
    async with send:
        end: Exception | None = None
        try:
            async for chunk in chunks:
                await send.send(chunk)
        except Exception as exc:
            end = exc
        with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
            await send.send(end)


async def received(receive: ObjectReceiveStream[Chunk]) -> AsyncGenerator[bytes, None]:
    """The chunks ``encode_ahead`` sent; its failure, raised; an end without its None, an error."""
    async with receive:
        async for chunk in receive:
            if chunk is None:
                return
            if isinstance(chunk, Exception):
                raise chunk
            yield chunk
    raise WarehouseError("the COPY data ended before it was complete: nothing was changed; re-run the table")


async def while_open(
    conn: Any, chunks: AsyncGenerator[bytes, None], cut: list[bool]
) -> AsyncGenerator[bytes, None]:
    """``chunks`` while the COPY's connection is open; ``cut`` gets True when it closed first. asyncpg's
    COPY takes its source to the end even when the connection is lost (a backend terminated, a network
    cut): the table was read to its last row into a dead socket, and asyncio logged 'socket.send() raised
    exception.' on stderr for every chunk. Ended here, the COPY fails with asyncpg's error for the loss
    (nothing commits on a closed connection)."""
    async with contextlib.aclosing(chunks):
        async for chunk in chunks:
            if closed(conn):
                cut.append(True)
                return
            yield chunk


def closed(conn: Any) -> bool:
    """The connection is closed (a pool's proxy is detached when its connection closes)."""
    try:
        return bool(conn.is_closed())
    except asyncpg.InterfaceError:
        return True


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
                yield self._watched(conn)
            except Exception as exc:
                if broken(conn, exc):
                    with contextlib.suppress(asyncpg.InterfaceError):  # detached: already closed
                        conn.terminate()
                    raise lost_connection(exc, self.cfg) from exc
                raise
            finally:
                discard_if_in_transaction(conn)

    def _fresh(self) -> AbstractAsyncContextManager[Executor]:
        return connection(self.cfg, session_settings(self.cfg))

    async def _still_working(self, ex: Executor, pid: int) -> str | None:
        state = await ex.fetchval(SESSION_STATE_SQL, pid)
        if state == "active":  # running a statement: a long COPY or INSERT, a lock wait (lock_timeout)
            return None
        return f"though its session is {state or 'gone'}, not running it: the answer was lost on the way"

    def _spec(self, req: LoadRequest) -> LoadSpec:
        return build_spec(req, schema_name=self.cfg.schema)

    def _fill(
        self, ex: Executor, spec: LoadSpec, batches: AsyncIterator[pa.RecordBatch] | None = None
    ) -> Fill:
        async def fill(_staging_sql: str) -> int | None:
            return await self._copy(ex, spec, direct=False, batches=batches)

        return fill

    def _fill_sql(self, spec: LoadSpec) -> str:
        return f"COPY {spec.staging_sql} FROM STDIN (FORMAT binary)"

    refills = True

    def _refill(
        self, ex: Executor, spec: LoadSpec, batches: AsyncIterator[pa.RecordBatch] | None = None
    ) -> Refill:
        count_target = f"SELECT COUNT(*) FROM {spec.target_sql}"  # only if a COPY's tag had no count

        async def refill(shape: Shape) -> int:
            existing, kind = shape
            if copies_directly(spec.schema, existing, kind):
                copied = await self._copy(ex, spec, direct=True, batches=batches)
                return int(await ex.fetchval(count_target)) if copied is None else copied
            staged = await fill_staging(ex, spec, self._fill(ex, spec, batches))
            await ex.execute(insert_all_sql(spec))
            await ex.execute(drop_staging_sql(spec))
            return staged

        return refill

    def _direct(self, spec: LoadSpec) -> Direct:
        """A binary COPY into the target (no FREEZE: the target was not emptied by this transaction)."""
        columns = ", ".join(POSTGRES.ident(n) for n in spec.schema.names)

        async def copy(ex: Executor) -> int | None:
            return await self._copy(ex, spec, direct=True, freeze=False)

        return Direct(
            sql=f"COPY {spec.target_sql} ({columns}) FROM STDIN (FORMAT binary)",
            fits=lambda shape: copies_directly(spec.schema, *shape),
            copy=copy,
        )

    def _load_slot_free(self) -> bool:
        return self._load_limiter is None or self._load_limiter.available_tokens >= 1

    def _refill_sql(self, spec: LoadSpec) -> str:
        columns = ", ".join(POSTGRES.ident(n) for n in spec.schema.names)
        return f"COPY {spec.target_sql} ({columns}) FROM STDIN (FORMAT binary, FREEZE)"

    async def _copy(
        self,
        ex: Executor,
        spec: LoadSpec,
        *,
        direct: bool,
        freeze: bool = True,
        batches: AsyncIterator[pa.RecordBatch] | None = None,
    ) -> int | None:
        """COPY the stage (or ``batches``) into the staging table, or (``direct``) into the target, with
        FREEZE unless told not to (only a table this transaction created or emptied takes it); the rows
        copied. The batches are read and encoded ahead, in a task of their own."""
        conn: Any = ex
        into: dict[str, Any] = {"table_name": spec.staging_table}
        if direct:
            into = {"table_name": spec.target_table, "schema_name": spec.schema_name, "freeze": freeze}
            into["columns"] = list(spec.schema.names)
        send, receive = anyio.create_memory_object_stream[Chunk](CHUNKS_AHEAD)
        failure: Exception | None = None
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._encode, spec, direct, send, batches)
            cut: list[bool] = []
            try:
                async with contextlib.aclosing(while_open(conn, received(receive), cut)) as source:
                    status = await conn.copy_to_table(**into, source=source, format="binary")
            except Exception as exc:  # raised outside the task group, so not wrapped in a group
                failure = exc
            tg.cancel_scope.cancel()  # the producer, if the COPY failed before taking everything
        if failure is not None:
            raise failure
        if cut:  # asyncpg raises its own error for the lost connection; this only makes sure
            raise asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation")
        return copied_rows(status)

    async def _encode(
        self,
        spec: LoadSpec,
        direct: bool,
        send: ObjectSendStream[Chunk],
        given: AsyncIterator[pa.RecordBatch] | None,
    ) -> None:
        arrow_schema = staging_arrow_schema(spec.schema)
        jsonb = [c.name for c in spec.schema.columns if c.logical == "json"] if direct else []
        async with closing(self._batches(spec.stage) if given is None else given) as batches:
            chunks = binary_copy_source(
                batches, arrow_schema, spec.target_name, self._cpu_limiter, jsonb=jsonb
            )
            await encode_ahead(chunks, send)


def broken(conn: Any, exc: Exception) -> bool:
    """``exc`` came from the connection itself failing, not from a statement: asyncpg's protocol is out of
    step (``InternalClientError``; e.g. a termination notice received while idle in the pool), or the
    connection is closed (a pool's proxy is detached when its connection closes, so every later call says
    it was 'released back to the pool'). Such a connection is never reused."""
    cause = client_side_cause(exc)
    if cause is None:
        return False
    return isinstance(cause, asyncpg.InternalClientError) or closed(conn)


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
    """Verified TLS when ``ssl: true`` (hostname checked, against ``ssl_ca`` or the system's CAs: RDS signs
    with its own CA, which no system bundle holds); plain TCP otherwise."""
    return ssl.create_default_context(cafile=cfg.ssl_ca) if cfg.ssl else False


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


def session_settings(cfg: TargetConn) -> dict[str, str]:
    """A statement waits at most ``lock_timeout`` for a lock (a session holding the target or the state
    table, e.g. an idle transaction of a BI tool, made a load wait for as long as it lived, saying nothing);
    then it fails with SQLSTATE 55P03, retryable, and the transaction rolls back.

    No statement or idle-transaction time limit, as pg_dump sets for its own sessions: a role's
    ``statement_timeout`` (set for its OLTP queries) cancelled a load's COPY, which lasts as long as the
    table's read when streamed, on every retry; a stalled server is found by the statement watch instead
    (``src.warehouse.watch``)."""
    return {
        "lock_timeout": str(round(cfg.lock_timeout * 1000)),
        "statement_timeout": "0",
        "idle_in_transaction_session_timeout": "0",
    }


class PooledConnection(asyncpg.Connection):  # type: ignore[misc]
    """A pooled connection released without asyncpg's reset query (``SELECT pg_advisory_unlock_all();
    CLOSE ALL; UNLISTEN *; RESET ALL``: one more round trip per release, i.e. per load). s3shift keeps no
    session state to reset: no advisory locks, LISTEN, session settings (only SET TRANSACTION) or cursors
    outside a transaction; an open transaction is still rolled back by asyncpg, and a connection whose
    rollback did not finish is terminated, never pooled (``discard_if_in_transaction``)."""

    def get_reset_query(self) -> str:
        return ""


@asynccontextmanager
async def connection(cfg: TargetConn, settings: dict[str, str] | None = None) -> AsyncIterator[Any]:
    """One asyncpg connection of its own (no pool), closed (or terminated) on exit; a failure to open it
    is classified (it names the target and what to check)."""
    tls = await anyio.to_thread.run_sync(ssl_context, cfg)
    try:
        conn = await asyncpg.connect(**connect_kwargs(cfg, tls), server_settings=settings)
    except Exception as exc:
        raise classify(exc, cfg=cfg, action="connecting to") from exc
    try:
        yield conn
    finally:
        await _close(conn)


@asynccontextmanager
async def open_pool(cfg: TargetConn) -> AsyncIterator[Any]:
    """An asyncpg pool that connects lazily (so opening never fails; ``ping`` reports reachability)."""
    tls = await anyio.to_thread.run_sync(ssl_context, cfg)
    try:
        pool = await asyncpg.create_pool(
            **connect_kwargs(cfg, tls),
            min_size=0,
            max_size=max(1, cfg.max_connections),
            connection_class=PooledConnection,
            server_settings=session_settings(cfg),
        )
    except Exception as exc:
        raise WarehouseError(f"cannot open a connection pool to {where(cfg)}: {describe(exc)}") from exc
    try:
        yield pool
    finally:
        await _close(pool)


async def _close(closable: Any) -> None:
    """Close an asyncpg connection or pool, shielded; terminate it when closing takes over
    ``CLOSE_TIMEOUT`` (a server that stopped answering)."""
    with anyio.CancelScope(shield=True):
        with anyio.move_on_after(CLOSE_TIMEOUT) as scope:
            await closable.close()
        if scope.cancelled_caught:
            closable.terminate()
