"""What the loaders ask the catalog, and the race-safe creation of schemas and tables.

Both warehouses answer the same ``pg_catalog`` queries. Creation runs outside any data transaction, in
its own implicit one: two loads creating the same object at once make one of them fail even with
IF NOT EXISTS (PostgreSQL's catalog unique index); that one then finds the object and goes on.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

from src.warehouse.ddl import Dialect


class Executor(Protocol):
    """What a loader needs from a connection; ``asyncpg.Connection`` is one, the Redshift emulator another.
    ``execute`` without arguments sends the simple-query message: it may hold several statements (one
    round trip; the first failure stops the rest and is raised), such as ``BEGIN`` and the LOCKs after it.
    """

    async def execute(self, query: str, *args: Any) -> str: ...

    async def fetch(self, query: str, *args: Any) -> list[Any]: ...

    async def fetchval(self, query: str, *args: Any) -> Any: ...


_SCHEMA_EXISTS = "SELECT COUNT(*) FROM pg_catalog.pg_namespace WHERE nspname = $1"
_COLUMNS = (
    "SELECT CAST(a.attname AS VARCHAR(128)) AS name FROM pg_catalog.pg_attribute a "
    "JOIN pg_catalog.pg_class c ON c.oid = a.attrelid "
    "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
    "WHERE n.nspname = $1 AND c.relname = $2 AND a.attnum > 0 AND NOT a.attisdropped "
    "ORDER BY a.attnum"
)


# The catalog's view of a table: (name, type as the catalog spells it) of each column in order, and its
# ``pg_class.relkind`` ("r": a plain table, "p": a partitioned one); ([], None) when it is missing.
Shape = tuple[list[tuple[str, str]], str | None]
MISSING: Shape = ([], None)
SHAPE_SQL = (
    "SELECT CAST(a.attname AS VARCHAR(128)) AS name, "
    "CAST(format_type(a.atttypid, a.atttypmod) AS VARCHAR(256)) AS sqltype, "
    "CAST(c.relkind AS VARCHAR(1)) AS kind FROM pg_catalog.pg_attribute a "
    "JOIN pg_catalog.pg_class c ON c.oid = a.attrelid "
    "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
    "WHERE n.nspname = $1 AND c.relname = $2 AND a.attnum > 0 AND NOT a.attisdropped "
    "ORDER BY a.attnum"
)


# PostgreSQL's (which enforces primary keys: ``base.rekey``) also says which columns form the primary key,
# in key order, and the constraint's name: in the same round trip (W4's loads send six messages each).
# Redshift's keys are informational, never enforced; its catalog is asked as before.
PG_SHAPE_SQL = (
    "SELECT CAST(a.attname AS VARCHAR(128)) AS name, "
    "CAST(format_type(a.atttypid, a.atttypmod) AS VARCHAR(256)) AS sqltype, "
    "CAST(c.relkind AS VARCHAR(1)) AS kind, array_position(k.conkey, a.attnum) AS key_position, "
    "CAST(k.conname AS VARCHAR(128)) AS key_name FROM pg_catalog.pg_attribute a "
    "JOIN pg_catalog.pg_class c ON c.oid = a.attrelid "
    "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
    "LEFT JOIN pg_catalog.pg_constraint k ON k.conrelid = c.oid AND k.contype = 'p' "
    "WHERE n.nspname = $1 AND c.relname = $2 AND a.attnum > 0 AND NOT a.attisdropped "
    "ORDER BY a.attnum"
)

# A table's primary key: its constraint's name and its columns in key order; ("", ()) when it has none
# (or the warehouse does not enforce keys).
PrimaryKey = tuple[str, tuple[str, ...]]
NO_KEY: PrimaryKey = ("", ())


def shape_sql(dialect: Dialect) -> str:
    return PG_SHAPE_SQL if dialect.name == "postgres" else SHAPE_SQL


async def table_shape(ex: Executor, dialect: Dialect, schema_name: str, table: str) -> Shape:
    """The table's ``Shape``: its columns and kind, or ``MISSING``."""
    return (await table_layout(ex, dialect, schema_name, table))[0]


async def table_layout(
    ex: Executor, dialect: Dialect, schema_name: str, table: str
) -> tuple[Shape, PrimaryKey]:
    """The table's ``Shape`` and, on PostgreSQL, its ``PrimaryKey`` (``NO_KEY`` elsewhere), in one query."""
    rows = await ex.fetch(shape_sql(dialect), dialect.fold(schema_name), dialect.fold(table))
    columns = [(str(row["name"]), str(row["sqltype"])) for row in rows]
    shape: Shape = (columns, (str(rows[0]["kind"]) if rows else None))
    if dialect.name != "postgres":
        return shape, NO_KEY
    keyed = sorted((int(row["key_position"]), str(row["name"])) for row in rows if row["key_position"])
    name = next((str(row["key_name"]) for row in rows if row["key_name"]), "")
    return shape, (name, tuple(column for _, column in keyed))


_TABLES = (
    "SELECT CAST(c.relname AS VARCHAR(128)) AS name FROM pg_catalog.pg_class c "
    "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
    "WHERE n.nspname = $1 AND c.relkind IN ('r', 'p', 'v', 'm', 'f')"
)


async def existing_tables(
    ex: Executor, dialect: Dialect, schema_name: str, tables: Iterable[str]
) -> set[str]:
    """Which of ``tables`` (names as configured) exist in the schema, tables and views alike: one listing
    of the schema, matched as the warehouse spells names (``Dialect.fold``)."""
    listed = {str(row["name"]) for row in await ex.fetch(_TABLES, dialect.fold(schema_name))}
    return {table for table in tables if dialect.fold(table) in listed}


async def table_columns(ex: Executor, dialect: Dialect, schema_name: str, table: str) -> list[str]:
    """The table's column names in order; empty when the table does not exist."""
    rows = await ex.fetch(_COLUMNS, dialect.fold(schema_name), dialect.fold(table))
    return [str(row["name"]) for row in rows]


async def schema_exists(ex: Executor, dialect: Dialect, schema_name: str) -> bool:
    return bool(await ex.fetchval(_SCHEMA_EXISTS, dialect.fold(schema_name)))


async def ensure_schema(ex: Executor, dialect: Dialect, schema_name: str) -> None:
    """Create the schema only when missing (CREATE SCHEMA IF NOT EXISTS needs CREATE on the database)."""
    if await schema_exists(ex, dialect, schema_name):
        return
    try:
        await ex.execute(f"CREATE SCHEMA IF NOT EXISTS {dialect.ident(schema_name)}")
    except Exception:
        if not await schema_exists(ex, dialect, schema_name):
            raise


async def ensure_table(ex: Executor, dialect: Dialect, schema_name: str, table: str, create_sql: str) -> bool:
    """Run ``create_sql`` (a CREATE TABLE IF NOT EXISTS) unless the table exists; True if it was missing."""
    if await table_columns(ex, dialect, schema_name, table):
        return False
    try:
        await ex.execute(create_sql)
    except Exception:
        if not await table_columns(ex, dialect, schema_name, table):
            raise
    return True
