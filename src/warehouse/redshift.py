"""Amazon Redshift as a target: COPY ... FORMAT AS PARQUET MANIFEST into a staging table, then replace.

All SQL runs through an ``Executor`` obtained from a ``RedshiftConnect``: an async context manager
factory ``cfg -> Executor``. The default opens one asyncpg connection per load (asyncpg's pool reset
does not work on Redshift) and closes it afterwards; tests pass the Redshift emulator instead, so this
module's SQL runs unchanged against it. Concurrency is bounded by a limiter of ``max_connections``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import anyio
import asyncpg

from src.common.errors import WarehouseError
from src.common.log import get_logger
from src.common.schema import Column, TableSchema
from src.config.models import TargetConn
from src.stage.models import StageResult
from src.warehouse.base import Executor, LoadResult, LoadSpec, full_refresh
from src.warehouse.ddl import (
    REDSHIFT,
    DistSort,
    check_iam_role,
    redshift_copy_sql,
    redshift_type,
    staging_name,
)
from src.warehouse.errors import classify, where
from src.warehouse.postgres import connect_kwargs, ssl_context

RedshiftConnect = Callable[[TargetConn], AbstractAsyncContextManager[Executor]]
CLOSE_TIMEOUT = 10.0
log = get_logger("warehouse.redshift")


@asynccontextmanager
async def connect_asyncpg(cfg: TargetConn) -> AsyncIterator[Executor]:
    """The default ``RedshiftConnect``: one asyncpg connection, closed (or terminated) on exit."""
    tls = await anyio.to_thread.run_sync(ssl_context, cfg)
    try:
        conn = await asyncpg.connect(**connect_kwargs(cfg, tls))
    except Exception as exc:
        raise classify(exc, cfg=cfg, action="connecting to") from exc
    try:
        yield conn
    finally:
        with anyio.CancelScope(shield=True):
            with anyio.move_on_after(CLOSE_TIMEOUT) as scope:
                await conn.close()
            if scope.cancelled_caught:
                conn.terminate()


def insert_expr(col: Column) -> str:
    ref = REDSHIFT.ident(col.name)
    return f"JSON_PARSE({ref})" if col.logical == "json" else ref


def build_spec(
    schema: TableSchema,
    *,
    schema_name: str,
    target_table: str,
    stage: StageResult,
    execution_id: str,
    distsort: DistSort | None = None,
) -> LoadSpec:
    return LoadSpec(
        dialect=REDSHIFT,
        schema_name=schema_name,
        target_table=target_table,
        schema=schema,
        stage=stage,
        staging_table=staging_name(execution_id, schema_name, target_table),
        target_types=tuple(redshift_type(c) for c in schema.columns),
        staging_types=tuple(redshift_type(c, staging=True) for c in schema.columns),
        insert_exprs=tuple(insert_expr(c) for c in schema.columns),
        distsort=distsort,
    )


def require_iam_role(cfg: TargetConn) -> str:
    if not cfg.iam_role:
        raise WarehouseError(
            f"{where(cfg)} is a Redshift target without iam_role: set "
            f"connections.targets.{cfg.name}.iam_role "
            "to the ARN of a role the cluster may assume to read the staging bucket",
            key="iam_role",
        )
    try:
        check_iam_role(cfg.iam_role)
    except WarehouseError as exc:
        raise WarehouseError(f"{where(cfg)}: {exc.message}", key="iam_role") from exc
    return cfg.iam_role


class RedshiftWarehouse:
    """A Redshift target; at most ``cfg.max_connections`` connections and ``load_limiter`` loads at once."""

    def __init__(
        self,
        cfg: TargetConn,
        *,
        connect: RedshiftConnect = connect_asyncpg,
        load_limiter: anyio.CapacityLimiter | None = None,
    ) -> None:
        self.cfg = cfg
        self._connect = connect
        self._load_limiter = load_limiter
        self._connections = anyio.CapacityLimiter(max(1, cfg.max_connections))
        if cfg.region:
            log.warning(
                "%s: region %r is not sent: COPY FORMAT AS PARQUET rejects REGION, so the staging bucket "
                "must be in the cluster's region",
                where(cfg),
                cfg.region,
            )

    @asynccontextmanager
    async def _session(self) -> AsyncIterator[Executor]:
        if self._load_limiter is not None:
            await self._load_limiter.acquire()
        try:
            async with self._connections, self._connect(self.cfg) as ex:
                yield ex
        finally:
            if self._load_limiter is not None:
                self._load_limiter.release()

    async def ping(self) -> None:
        try:
            with anyio.fail_after(self.cfg.connect_timeout + 5):
                async with self._connections, self._connect(self.cfg) as ex:
                    await ex.fetchval("SELECT 1")
        except Exception as exc:
            raise classify(exc, cfg=self.cfg, action="connecting to") from exc

    async def load_full_refresh(
        self, *, table: str, schema: TableSchema, target_table: str, stage: StageResult, execution_id: str
    ) -> LoadResult:
        role = require_iam_role(self.cfg)
        name = f"{self.cfg.schema}.{target_table}"
        try:
            spec = build_spec(
                schema,
                schema_name=self.cfg.schema,
                target_table=target_table,
                stage=stage,
                execution_id=execution_id,
            )
            async with self._session() as ex:

                async def fill(staging_sql: str) -> None:
                    await ex.execute(redshift_copy_sql(staging_sql, stage.manifest_url, role))

                return await full_refresh(ex, spec, fill)
        except Exception as exc:
            raise classify(exc, cfg=self.cfg, action="full refresh of", table=name) from exc
