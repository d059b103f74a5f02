"""Open the configured warehouse: ``async with open_warehouse(cfg, batches=...) as wh``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import anyio

from src.config.models import TargetConn
from src.warehouse.base import BatchOpener, Warehouse
from src.warehouse.postgres import PostgresWarehouse, open_pool
from src.warehouse.redshift import RedshiftConnect, RedshiftWarehouse, connect_asyncpg


def open_warehouse(
    cfg: TargetConn,
    *,
    batches: BatchOpener,
    load_limiter: anyio.CapacityLimiter | None = None,
    redshift_connect: RedshiftConnect | None = None,
    cpu_limiter: anyio.CapacityLimiter | None = None,
) -> AbstractAsyncContextManager[Warehouse]:
    """The warehouse for ``cfg.type``. Opening never connects; call ``ping()`` to check reachability.

    ``batches`` reads a stage's Parquet back from S3 (PostgreSQL only; Redshift COPYs from S3 itself);
    ``load_limiter`` bounds concurrent loads (WLM slots); ``redshift_connect`` replaces the default
    asyncpg connection (tests pass the Redshift emulator); ``cpu_limiter`` bounds encoding threads.
    """
    if cfg.type == "redshift":
        return _redshift(cfg, load_limiter, redshift_connect or connect_asyncpg)
    return _postgres(cfg, batches, load_limiter, cpu_limiter)


@asynccontextmanager
async def _postgres(
    cfg: TargetConn,
    batches: BatchOpener,
    load_limiter: anyio.CapacityLimiter | None,
    cpu_limiter: anyio.CapacityLimiter | None,
) -> AsyncIterator[Warehouse]:
    async with open_pool(cfg) as pool:
        yield PostgresWarehouse(
            cfg, pool, batches=batches, load_limiter=load_limiter, cpu_limiter=cpu_limiter
        )


@asynccontextmanager
async def _redshift(
    cfg: TargetConn, load_limiter: anyio.CapacityLimiter | None, connect: RedshiftConnect
) -> AsyncIterator[Warehouse]:
    yield RedshiftWarehouse(cfg, connect=connect, load_limiter=load_limiter)
