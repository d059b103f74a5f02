"""What the loaders ask the catalog, and the race-safe creation of schemas and tables.

Both warehouses answer the same ``pg_catalog`` queries. Creation runs outside any data transaction, in
its own implicit one: two loads creating the same object at once make one of them fail even with
IF NOT EXISTS (PostgreSQL's catalog unique index); that one then finds the object and goes on.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
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


# The shape read with the target's primary key, in the same round trip (W4's loads send six messages each):
# the constraint's name, and which columns form it. PostgreSQL (which enforces keys) says in which order;
# Redshift's leader node has no array_position, so there the key is read as a set (its keys are
# informational: the planner trusts them, but key order means nothing to it), with each column's NOT NULL
# (Redshift's ADD PRIMARY KEY refuses a nullable column). Both: ``base.rekey``.
_KEYED_SHAPE = (
    "SELECT CAST(a.attname AS VARCHAR(128)) AS name, "
    "CAST(format_type(a.atttypid, a.atttypmod) AS VARCHAR(256)) AS sqltype, "
    "CAST(c.relkind AS VARCHAR(1)) AS kind, {position} AS key_position, "
    "CAST(k.conname AS VARCHAR(128)) AS key_name, a.attnotnull AS not_null FROM pg_catalog.pg_attribute a "
    "JOIN pg_catalog.pg_class c ON c.oid = a.attrelid "
    "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
    "LEFT JOIN pg_catalog.pg_constraint k ON k.conrelid = c.oid AND k.contype = 'p'{member} "
    "WHERE n.nspname = $1 AND c.relname = $2 AND a.attnum > 0 AND NOT a.attisdropped "
    "ORDER BY a.attnum"
)
PG_SHAPE_SQL = _KEYED_SHAPE.format(position="array_position(k.conkey, a.attnum)", member="")
RS_SHAPE_SQL = _KEYED_SHAPE.format(
    position="CASE WHEN k.conname IS NULL THEN 0 ELSE a.attnum END", member=" AND a.attnum = ANY (k.conkey)"
)


@dataclass(frozen=True)
class PrimaryKey:
    """A table's primary key as the catalog has it: the constraint's name ("" when it has none) and its
    columns (in key order on PostgreSQL, in column order on Redshift), and the table's NOT NULL columns."""

    name: str = ""
    columns: tuple[str, ...] = ()
    not_null: frozenset[str] = frozenset()


def shape_sql(dialect: Dialect) -> str:
    return PG_SHAPE_SQL if dialect.name == "postgres" else RS_SHAPE_SQL


async def table_shape(ex: Executor, dialect: Dialect, schema_name: str, table: str) -> Shape:
    """The table's ``Shape``: its columns and kind, or ``MISSING``."""
    return (await table_layout(ex, dialect, schema_name, table))[0]


async def table_layout(
    ex: Executor, dialect: Dialect, schema_name: str, table: str
) -> tuple[Shape, PrimaryKey]:
    """The table's ``Shape`` and its ``PrimaryKey``, in one query."""
    rows = await ex.fetch(shape_sql(dialect), dialect.fold(schema_name), dialect.fold(table))
    columns = [(str(row["name"]), str(row["sqltype"])) for row in rows]
    shape: Shape = (columns, (str(rows[0]["kind"]) if rows else None))
    keyed = sorted((int(row["key_position"]), str(row["name"])) for row in rows if row["key_position"])
    name = next((str(row["key_name"]) for row in rows if row["key_name"]), "")
    not_null = frozenset(str(row["name"]) for row in rows if row["not_null"])
    return shape, PrimaryKey(name, tuple(column for _, column in keyed), not_null)


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
