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

from src.common.errors import WarehouseError
from src.common.log import get_logger
from src.common.schema import Column, TableSchema
from src.config.models import TargetConn
from src.warehouse.base import Fill
from src.warehouse.catalog import Executor
from src.warehouse.ddl import (
    REDSHIFT,
    check_iam_role,
    redshift_copy_sql,
    redshift_type,
    staging_name,
)
from src.warehouse.errors import classify, where
from src.warehouse.postgres import connection
from src.warehouse.sqlwarehouse import SqlWarehouse
from src.warehouse.state import LoadRequest
from src.warehouse.statements import LoadSpec

RedshiftConnect = Callable[[TargetConn], AbstractAsyncContextManager[Executor]]
log = get_logger("warehouse.redshift")


def connect_asyncpg(cfg: TargetConn) -> AbstractAsyncContextManager[Executor]:
    """The default ``RedshiftConnect``: one asyncpg connection, closed (or terminated) on exit."""
    return connection(cfg)


def insert_expr(col: Column, table: str | None = None) -> str:
    """The target value of ``col`` from its staging column (qualified by ``table`` when given)."""
    ref = REDSHIFT.ident(col.name) if table is None else f"{table}.{REDSHIFT.ident(col.name)}"
    return f"JSON_PARSE({ref})" if col.logical == "json" else ref


def key_exprs(schema: TableSchema, key: tuple[str, ...], staging: str) -> tuple[str, ...]:
    """Each key column's target value, from the staging column qualified by the staging table."""
    return tuple(insert_expr(schema.column(k), REDSHIFT.ident(staging)) for k in key if k in schema.names)


def build_spec(req: LoadRequest, *, schema_name: str) -> LoadSpec:
    """The spec of a request already in target names."""
    schema, target_table, stage = req.schema, req.target_table, req.stage
    staging = staging_name(f"{req.execution_id}\x1f{stage.manifest_url}", schema_name, target_table)
    return LoadSpec(
        dialect=REDSHIFT,
        schema_name=schema_name,
        target_table=target_table,
        schema=schema,
        stage=stage,
        staging_table=staging,
        target_types=tuple(redshift_type(c) for c in schema.columns),
        staging_types=tuple(redshift_type(c, staging=True) for c in schema.columns),
        insert_exprs=tuple(insert_expr(c) for c in schema.columns),
        distsort=req.distsort,
        mode=req.mode,
        key=req.key,
        order_by=req.order_by,
        schema_change=req.schema_change,
        key_exprs=key_exprs(schema, req.key, staging),
        clear=req.clear,
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


class RedshiftWarehouse(SqlWarehouse):
    """A Redshift target; at most ``cfg.max_connections`` connections and ``load_limiter`` loads at once."""

    dialect = REDSHIFT

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
    async def _session(self, *, load: bool) -> AsyncIterator[Executor]:
        limiter = self._load_limiter if load else None
        if limiter is not None:
            await limiter.acquire()
        try:
            async with self._connections, self._connect(self.cfg) as ex:
                yield self._watched(ex)
        finally:
            if limiter is not None:
                limiter.release()

    def _fresh(self) -> AbstractAsyncContextManager[Executor]:
        return self._connect(self.cfg)

    async def ping(self) -> None:
        try:
            with anyio.fail_after(self.cfg.connect_timeout + 5):
                async with self._connections, self._connect(self.cfg) as ex:
                    await ex.fetchval("SELECT 1")
        except Exception as exc:
            raise classify(exc, cfg=self.cfg, action="connecting to") from exc

    def _spec(self, req: LoadRequest) -> LoadSpec:
        require_iam_role(self.cfg)
        return build_spec(req, schema_name=self.cfg.schema)

    def _fill(self, ex: Executor, spec: LoadSpec) -> Fill:
        async def fill(staging_sql: str) -> int | None:
            await ex.execute(self._fill_sql(spec))
            return None  # counted by SELECT COUNT(*): Redshift's COPY tag is not relied on

        return fill

    def _fill_sql(self, spec: LoadSpec) -> str:
        return redshift_copy_sql(spec.staging_sql, spec.stage.manifest_url, require_iam_role(self.cfg))
