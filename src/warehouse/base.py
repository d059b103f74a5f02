"""The warehouse contract, and the one transaction both loaders share.

A full refresh (DESIGN.md section 4, research/reliability.md section 1.7) runs in ONE transaction on
one connection: schema and target created if missing -> staging table mirroring the Parquet schema
in order -> load it -> check its row count -> LOCK + DELETE (never TRUNCATE: it commits implicitly on
Redshift) -> INSERT ... SELECT by column name -> drop the staging table -> ``extra`` statements (the
state row, later) -> COMMIT. Any failure rolls everything back: the target is untouched.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import anyio
import pyarrow as pa

from src.common.errors import WarehouseError
from src.common.log import get_logger
from src.common.schema import TableSchema
from src.stage.models import StageResult
from src.warehouse.ddl import Dialect, DistSort, check_identifiers, create_table_sql, insert_select_sql

BatchOpener = Callable[[StageResult], AsyncIterator[pa.RecordBatch]]
ROLLBACK_TIMEOUT = 30.0
log = get_logger("warehouse")


@dataclass(frozen=True)
class LoadResult:
    rows_loaded: int
    target: str  # "schema.table"
    rows_deleted: int = 0


class Warehouse(Protocol):
    async def ping(self) -> None: ...

    async def load_full_refresh(
        self, *, table: str, schema: TableSchema, target_table: str, stage: StageResult, execution_id: str
    ) -> LoadResult: ...


class Executor(Protocol):
    """What a loader needs from a connection; ``asyncpg.Connection`` is one, the Redshift emulator another."""

    async def execute(self, query: str, *args: Any) -> str: ...

    async def fetch(self, query: str, *args: Any) -> list[Any]: ...

    async def fetchval(self, query: str, *args: Any) -> Any: ...

    def transaction(self) -> AbstractAsyncContextManager[Any]: ...


@dataclass(frozen=True)
class LoadSpec:
    """One table's full refresh, with every column's SQL already chosen by the dialect."""

    dialect: Dialect
    schema_name: str
    target_table: str
    schema: TableSchema
    stage: StageResult
    staging_table: str
    target_types: tuple[str, ...]  # per schema column, for CREATE TABLE target
    staging_types: tuple[str, ...]  # per schema column, mirroring the Parquet schema in order
    insert_exprs: tuple[str, ...]  # per schema column, an expression over the staging column
    distsort: DistSort | None = None

    @property
    def target_name(self) -> str:
        return f"{self.schema_name}.{self.target_table}"

    @property
    def target_sql(self) -> str:
        return self.dialect.qualify(self.schema_name, self.target_table)

    @property
    def staging_sql(self) -> str:
        return self.dialect.ident(self.staging_table)


Fill = Callable[[str], Awaitable[None]]  # loads the staged files into the (quoted) staging table
Extra = Callable[[Executor], Awaitable[None]]  # more statements inside the same transaction


@asynccontextmanager
async def transaction(ex: Executor) -> AsyncIterator[None]:
    """Like ``ex.transaction()``, but the rollback survives cancellation and is time-boxed."""
    tx = ex.transaction()
    await tx.__aenter__()
    try:
        yield
    except BaseException as exc:
        with anyio.CancelScope(shield=True), anyio.move_on_after(ROLLBACK_TIMEOUT):
            try:
                await tx.__aexit__(type(exc), exc, exc.__traceback__)
            except Exception as rollback_exc:  # the original failure matters more
                log.debug("rollback failed: %s", rollback_exc)
        raise
    await tx.__aexit__(None, None, None)


async def full_refresh(ex: Executor, spec: LoadSpec, fill: Fill, extra: Extra | None = None) -> LoadResult:
    """Replace the target's rows with the staged ones, atomically (see the module docstring)."""
    check_identifiers(spec.dialect, spec.schema_name, spec.target_table, spec.schema)
    await ensure_schema(ex, spec)  # outside the transaction: concurrent loads may race to create it
    async with transaction(ex):
        await ensure_target(ex, spec)
        loaded = await load_staging(ex, spec, fill)
        deleted = await replace_rows(ex, spec, loaded)
        if extra is not None:
            await extra(ex)
    return LoadResult(rows_loaded=loaded, target=spec.target_name, rows_deleted=deleted)


async def ensure_schema(ex: Executor, spec: LoadSpec) -> None:
    """Create the schema only when missing (CREATE SCHEMA IF NOT EXISTS needs CREATE on the database).

    Runs in its own implicit transaction: two loads creating the same schema at once make one of them
    fail with a unique violation even with IF NOT EXISTS; that one then finds the schema and goes on."""
    name = spec.dialect.fold(spec.schema_name)
    query = "SELECT COUNT(*) FROM pg_catalog.pg_namespace WHERE nspname = $1"
    if await ex.fetchval(query, name):
        return
    try:
        await ex.execute(f"CREATE SCHEMA IF NOT EXISTS {spec.dialect.ident(spec.schema_name)}")
    except Exception:
        if not await ex.fetchval(query, name):
            raise


async def existing_columns(ex: Executor, spec: LoadSpec) -> list[str]:
    rows = await ex.fetch(
        "SELECT CAST(a.attname AS VARCHAR(128)) AS name FROM pg_catalog.pg_attribute a "
        "JOIN pg_catalog.pg_class c ON c.oid = a.attrelid "
        "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = $1 AND c.relname = $2 AND a.attnum > 0 AND NOT a.attisdropped "
        "ORDER BY a.attnum",
        spec.dialect.fold(spec.schema_name),
        spec.dialect.fold(spec.target_table),
    )
    return [str(row["name"]) for row in rows]


async def ensure_target(ex: Executor, spec: LoadSpec) -> None:
    """Create the target from the schema if missing; refuse one whose column set differs."""
    existing = await existing_columns(ex, spec)
    if not existing:
        columns = list(zip(spec.schema.names, spec.target_types, strict=True))
        await ex.execute(
            create_table_sql(
                spec.dialect,
                spec.target_sql,
                columns,
                primary_key=spec.schema.primary_key,
                if_not_exists=True,
                distsort=spec.distsort,
            )
        )
        return
    wanted = [spec.dialect.fold(n) for n in spec.schema.names]
    only_source = [n for n in wanted if n not in existing]
    only_target = [n for n in existing if n not in wanted]
    if only_source or only_target:
        raise WarehouseError(
            f"target table {spec.target_name} exists with a different column set (only in the source: "
            f"{_names(only_source)}; only in the target: {_names(only_target)}); schema evolution is not "
            "supported yet: drop the table or rename it (or set target_name) and run again",
            table=spec.target_name,
        )


def _names(names: Sequence[str]) -> str:
    return ", ".join(repr(n) for n in names) or "none"


async def load_staging(ex: Executor, spec: LoadSpec, fill: Fill) -> int:
    """Create and fill the staging table; return its row count, which must equal the stage's."""
    loaded = 0
    if spec.stage.files:  # a manifest with no entries makes Redshift's COPY fail: skip it
        columns = list(zip(spec.schema.names, spec.staging_types, strict=True))
        await ex.execute(create_table_sql(spec.dialect, spec.staging_sql, columns, temp=True))
        await fill(spec.staging_sql)
        loaded = int(await ex.fetchval(f"SELECT COUNT(*) FROM {spec.staging_sql}"))
    if loaded != spec.stage.rows:
        raise WarehouseError(
            f"loaded {loaded} rows into staging for {spec.target_name} but the stage manifest "
            f"{spec.stage.manifest_url} promised {spec.stage.rows}: nothing was changed; re-run the table",
            table=spec.target_name,
            file=spec.stage.manifest_url,
        )
    return loaded


async def replace_rows(ex: Executor, spec: LoadSpec, loaded: int) -> int:
    """LOCK, DELETE every target row, INSERT the staged ones by name, drop the staging table."""
    lock = "IN SHARE ROW EXCLUSIVE MODE" if spec.dialect.name == "postgres" else ""
    await ex.execute(f"LOCK TABLE {spec.target_sql} {lock}".rstrip())
    deleted = _affected(await ex.execute(f"DELETE FROM {spec.target_sql}"))
    if spec.stage.files:
        if loaded:
            pairs = list(zip(spec.schema.names, spec.insert_exprs, strict=True))
            await ex.execute(insert_select_sql(spec.dialect, spec.target_sql, spec.staging_sql, pairs))
        await ex.execute(f"DROP TABLE {spec.staging_sql}")
    return deleted


def _affected(status: str) -> int:
    """Rows from a command tag such as 'DELETE 42' (a protocol field, not an error message)."""
    last = status.rsplit(" ", 1)[-1] if status else ""
    return int(last) if last.isdigit() else 0


def staging_ref(dialect: Dialect, name: str) -> str:
    """The quoted staging column a loader's INSERT expression reads."""
    return dialect.ident(name)
