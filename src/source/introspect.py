"""Describe source tables from information_schema: columns in order, primary key, planned types.

One catalog round (a few queries, each filtered on the table names) describes any number of tables, so
thousands of small tables stay cheap. The table's ``ColumnSelection`` (include, then exclude) is applied
before types are mapped, so an excluded column of a type s3shift cannot carry never fails the
table; the ``TypePolicy`` decides the types a policy governs (see ``src.source.typemap``). A table whose
columns the account may read only in part (a column-level grant hides the others from the catalog) fails
unless its ``include_columns`` lists the columns to read (``check_column_grants``).
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import anyio

from src.common.errors import ConfigError, S3ShiftError, SourceError, UnsupportedTypeError
from src.common.naming import qualify_mysql, quote_mysql
from src.common.policy import ColumnSelection, TypePolicy
from src.common.schema import TableSchema
from src.source.mysql import SourceConnection, driver_error_code
from src.source.typemap import DEFAULT_POLICY, ColumnInfo, data_type_of, map_column

ALL_COLUMNS = ColumnSelection()
CATALOG_BATCH: Final = 100  # tables per catalog round of a run (``_catalog``)
CATALOG_MAX_AGE: Final = 30.0  # seconds a batched description may wait for its table's turn
CLOCK_REFRESH: Final = 60.0  # seconds a SourceClock goes on the local clock before it reads the source's


async def _check_view(conn: SourceConnection, database: str, table: str) -> None:
    """A view MySQL cannot resolve (a table or column it reads was dropped, its definer lost rights) has no
    columns in the catalog, like a table that does not exist: say which it is."""
    found = await conn.fetchall(
        "SELECT 1 FROM information_schema.VIEWS WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s",
        (database, table),
    )
    if found:
        raise SourceError(
            f"view {database}.{table} of MySQL source {conn.cfg.name!r} cannot be read: it references a "
            "table, column or function that no longer exists, or its definer lacks the rights to use them — "
            f"fix the view (SHOW CREATE VIEW {qualify_mysql(database, table)}) or leave it out of the run",
            table=f"{database}.{table}",
            retryable=False,
        )


# One catalog round per batch of tables: four simple queries, each filtered on TABLE_SCHEMA and TABLE_NAME
# so that MariaDB opens only the named tables. Joined in SQL, the same lookup cost MariaDB 0.6-0.9 s of CPU
# per 100 tables on a server of 1,000 tables (it filled the joined information_schema tables whole), the
# four queries 0.03 s (measured; session 7 in benchmarks/README.md).
_COLUMNS = """
SELECT TABLE_NAME, COLUMN_NAME, DATA_TYPE, COLUMN_TYPE, IS_NULLABLE, CHARACTER_MAXIMUM_LENGTH,
       CHARACTER_OCTET_LENGTH, NUMERIC_PRECISION, NUMERIC_SCALE, DATETIME_PRECISION, CHARACTER_SET_NAME,
       COLUMN_KEY, PRIVILEGES
FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = %s AND TABLE_NAME IN ({names})
ORDER BY TABLE_NAME, ORDINAL_POSITION
"""
_PRIMARY_KEYS = """
SELECT TABLE_NAME, COLUMN_NAME, SEQ_IN_INDEX FROM information_schema.STATISTICS
WHERE TABLE_SCHEMA = %s AND TABLE_NAME IN ({names}) AND INDEX_NAME = 'PRIMARY'
"""
_TABLE_ROWS = """
SELECT TABLE_NAME, TABLE_ROWS FROM information_schema.TABLES
WHERE TABLE_SCHEMA = %s AND TABLE_NAME IN ({names})
"""
# MariaDB's JSON is an alias of LONGTEXT with a column-level CHECK (json_valid(`col`)) named after the column.
_COLUMN_CHECKS = """
SELECT TABLE_NAME, CONSTRAINT_NAME, CHECK_CLAUSE FROM information_schema.CHECK_CONSTRAINTS
WHERE CONSTRAINT_SCHEMA = %s AND TABLE_NAME IN ({names}) AND LEVEL = 'Column'
"""
# The SELECT grants of the session's own account on whole tables, schemas and the server; the views show an
# account its own grants only (MariaDB 10.11: not its roles', nor PUBLIC's), and every account's to one that
# may read the mysql schema, hence the filter on GRANTEE ('user'@'host', as CURRENT_USER() names it).
_GRANTS = """
SELECT 'global', '', '' FROM information_schema.USER_PRIVILEGES
WHERE GRANTEE = %s AND PRIVILEGE_TYPE = 'SELECT'
UNION ALL SELECT 'schema', TABLE_SCHEMA, '' FROM information_schema.SCHEMA_PRIVILEGES
WHERE GRANTEE = %s AND PRIVILEGE_TYPE = 'SELECT'
UNION ALL SELECT 'table', TABLE_SCHEMA, TABLE_NAME FROM information_schema.TABLE_PRIVILEGES
WHERE GRANTEE = %s AND PRIVILEGE_TYPE = 'SELECT'
"""
_DENIED = (1142, 1143)  # SELECT denied on the table, on a column
_JSON_VALID = re.compile(r"^\s*json_valid\(\s*`?(?P<col>(?:[^`]|``)+?)`?\s*\)\s*$", re.IGNORECASE)


async def describe_tables(
    conn: SourceConnection,
    database: str,
    tables: Sequence[str],
    *,
    policy: TypePolicy = DEFAULT_POLICY,
    selection: ColumnSelection = ALL_COLUMNS,
    grants: Grants | None = None,
) -> dict[str, TableSchema | S3ShiftError]:
    """Describe many tables of one database with one catalog round. Per table: its schema (the selected
    columns, typed by ``policy``), or the error that stops it (not found, unsupported type, a selection
    naming unknown or key columns, a TINYINT(1) that holds other values than 0/1 under ``tinyint1:
    boolean``, a column-level grant: ``check_column_grants``). The TINYINT(1) check costs one query per
    table that has such a column (only when opted in); ``grants`` (``read_grants``) are read when not given.
    """
    if not tables:
        return {}
    grouped = await _catalog(conn, database, tables)
    grants = grants or await read_grants(conn)
    found: dict[str, TableSchema | S3ShiftError] = {}
    for table in tables:
        rows = list(grouped.get(table, {}).values())
        found[table] = await _describe(conn, database, table, rows, policy, selection, None, grants)
    return found


async def describe_table(
    conn: SourceConnection,
    database: str,
    table: str,
    *,
    primary_key: tuple[str, ...] | None = None,
    policy: TypePolicy = DEFAULT_POLICY,
    selection: ColumnSelection = ALL_COLUMNS,
    catalog: Catalog | None = None,
) -> TableSchema:
    """Describe one table; ``primary_key`` overrides the catalog's key (its columns must exist and be
    selected). With the run's ``catalog``, its rows come from a batch read for many tables. Raises the
    error ``describe_tables`` would report."""
    if catalog is not None:
        rows, grants = await catalog.rows(conn, database, table), await catalog.grants(conn)
    else:
        rows = list((await _catalog(conn, database, [table])).get(table, {}).values())
        grants = await read_grants(conn)
    result = await _describe(conn, database, table, rows, policy, selection, primary_key, grants)
    if isinstance(result, S3ShiftError):
        raise result
    return result


class Catalog:
    """The catalog rows of a run's tables, read in batches: describing one table also fetches the next
    ``batch - 1`` tables of its database in the run's order, so a run of many tables costs one catalog
    round per batch instead of one per table. Rows are used once and never older than ``max_age``
    seconds (a change after that is seen; one in between is caught as drift by the extract). Use inside
    one event loop."""

    def __init__(
        self,
        tables: Sequence[tuple[str, str]],
        *,
        batch: int = CATALOG_BATCH,
        max_age: float = CATALOG_MAX_AGE,
    ) -> None:
        self._upcoming: dict[str, list[str]] = {}
        for database, table in dict.fromkeys(tables):
            self._upcoming.setdefault(database, []).append(table)
        self._batch = max(1, batch)
        self._max_age = max_age
        self._rows: dict[tuple[str, str], tuple[float, list[tuple[Any, ...]]]] = {}
        self._table_rows: dict[tuple[str, str], int] = {}
        self._grants: Grants | None = None
        self._lock = anyio.Lock()

    async def grants(self, conn: SourceConnection) -> Grants:
        """The account's own SELECT grants (``read_grants``): read once for the run."""
        async with self._lock:
            if self._grants is None:
                self._grants = await read_grants(conn)
            return self._grants

    def table_rows(self, database: str, table: str) -> int | None:
        """``information_schema.TABLES.TABLE_ROWS`` (the engine's estimate) of a table this catalog has
        described: read with its columns, so that a full read's estimate costs no query of its own."""
        return self._table_rows.get((database, table))

    async def rows(self, conn: SourceConnection, database: str, table: str) -> list[tuple[Any, ...]]:
        """The catalog rows of one table (fetched with the next batch of the run's tables when needed)."""
        async with self._lock:
            fetched = self._rows.pop((database, table), None)
            if fetched is not None and time.monotonic() - fetched[0] <= self._max_age:
                return fetched[1]
            names = self._next_batch(database, table)
            at = time.monotonic()
            grouped = await _catalog(conn, database, names)
            for name, columns in grouped.items():
                first = next(iter(columns.values()))
                self._table_rows[(database, name)] = int(first[13] or 0)
            for name in names[1:]:
                self._rows[(database, name)] = (at, list(grouped.get(name, {}).values()))
            return list(grouped.get(table, {}).values())

    def _next_batch(self, database: str, table: str) -> list[str]:
        """``table`` and the next tables of ``database`` whose rows are not held yet."""
        upcoming = self._upcoming.get(database, [])
        if table in upcoming:
            upcoming.remove(table)
        names = [table]
        while upcoming and len(names) < self._batch:
            name = upcoming.pop(0)
            if (database, name) not in self._rows:
                names.append(name)
        return names


async def _catalog(
    conn: SourceConnection, database: str, tables: Sequence[str]
) -> dict[str, dict[str, tuple[Any, ...]]]:
    """The catalog round: per table, per column (in order), one row ``(TABLE_NAME, COLUMN_NAME, DATA_TYPE,
    COLUMN_TYPE, IS_NULLABLE, CHARACTER_MAXIMUM_LENGTH, CHARACTER_OCTET_LENGTH, NUMERIC_PRECISION,
    NUMERIC_SCALE, DATETIME_PRECISION, CHARACTER_SET_NAME, SEQ_IN_INDEX, CHECK_CLAUSE, TABLE_ROWS,
    COLUMN_KEY, PRIVILEGES)``: SEQ_IN_INDEX of the PRIMARY KEY (or None), the column's CHECK clause
    (MariaDB; the JSON one when there are several, else None), the table's TABLE_ROWS."""
    names = ", ".join(["%s"] * len(tables))
    args = (database, *tables)
    columns = await conn.fetchall(_COLUMNS.format(names=names), args)
    if not columns:
        return {}
    keys = {
        (_text(t), _text(c)): seq
        for t, c, seq in await conn.fetchall(_PRIMARY_KEYS.format(names=names), args)
    }
    counts = {_text(t): rows for t, rows in await conn.fetchall(_TABLE_ROWS.format(names=names), args)}
    checks: dict[tuple[str, str], Any] = {}
    if conn.is_mariadb:
        for t, c, clause in await conn.fetchall(_COLUMN_CHECKS.format(names=names), args):
            at = (_text(t), _text(c))
            if at not in checks or _is_json_check(at[1], clause):  # several on a column: keep the JSON one
                checks[at] = clause
    grouped: dict[str, dict[str, tuple[Any, ...]]] = {}
    for row in columns:
        table, column = _text(row[0]), _text(row[1])
        at = (table, column)
        grouped.setdefault(table, {})[column] = (
            *row[:11],
            keys.get(at),
            checks.get(at),
            counts.get(table),
            row[11],
            row[12],
        )
    return grouped


async def _describe(
    conn: SourceConnection,
    database: str,
    table: str,
    rows: list[tuple[Any, ...]],
    policy: TypePolicy,
    selection: ColumnSelection,
    primary_key: tuple[str, ...] | None,
    grants: Grants,
) -> TableSchema | S3ShiftError:
    try:
        if not rows:
            await _check_view(conn, database, table)
        schema = _schema(conn, f"{database}.{table}", rows, policy, selection, primary_key)
        if not selection.include:
            await check_column_grants(conn, database, table, rows, grants)
        await check_booleans(conn, database, table, schema)
    except S3ShiftError as exc:
        return exc
    return schema


def _schema(
    conn: SourceConnection,
    ref: str,
    rows: list[tuple[Any, ...]],
    policy: TypePolicy,
    selection: ColumnSelection,
    primary_key: tuple[str, ...] | None,
) -> TableSchema:
    if not rows:
        raise SourceError(
            f"table {ref} not found in MySQL source {conn.cfg.name!r} — check the database and table "
            "names (they are case-sensitive) and that the user may see the table",
            table=ref,
            retryable=False,
        )
    infos = [_column_info(row) for row in rows]
    names = tuple(info.name for info in infos)
    key = _source_key(rows) if primary_key is None else _check_key(ref, names, primary_key)
    kept = select_columns(ref, names, key, selection)
    columns = tuple(map_column(info, table=ref, policy=policy) for info in infos if info.name in kept)
    return TableSchema(columns, key)


def _source_key(rows: list[tuple[Any, ...]]) -> tuple[str, ...]:
    """The PRIMARY KEY's columns in key order; without one, the key the server reports as ``PRI``: its
    first UNIQUE index whose columns are all NOT NULL (InnoDB's clustered key), in column order. Such an
    index identifies a row as a primary key does, so updates merge instead of appending duplicates."""
    keyed = sorted((int(row[11]), _text(row[1])) for row in rows if row[11] is not None)
    if keyed:
        return tuple(name for _, name in keyed)
    return tuple(_text(row[1]) for row in rows if row[14] is not None and _text(row[14]) == "PRI")


def _check_key(ref: str, names: tuple[str, ...], primary_key: tuple[str, ...]) -> tuple[str, ...]:
    missing = [name for name in primary_key if name not in names]
    if missing:
        raise ConfigError(
            f"primary_key of {ref} names {', '.join(map(repr, missing))}, which the table "
            f"does not have (columns: {_preview(names)}) — fix primary_key in the pipeline",
            table=ref,
            key="primary_key",
        )
    return tuple(primary_key)


def select_columns(
    ref: str, names: tuple[str, ...], key: tuple[str, ...], selection: ColumnSelection
) -> frozenset[str]:
    """The names ``selection`` keeps (include, then exclude). Unknown names and dropped key columns are a
    ``ConfigError`` naming the table, the config key and the table's columns."""
    renamed = tuple(source for source, _ in selection.rename)
    for config_key, listed in (
        ("include_columns", selection.include),
        ("exclude_columns", selection.exclude),
        ("rename_columns", renamed),
    ):
        unknown = [name for name in listed if name not in names]
        if unknown:
            raise ConfigError(
                f"{config_key} of {ref} names {', '.join(map(repr, unknown))}, which the table does not have "
                f"(columns: {_preview(names)}) — fix {config_key} in the pipeline",
                table=ref,
                key=config_key,
            )
    kept = frozenset(selection.include or names) - frozenset(selection.exclude)
    dropped = [name for name in key if name not in kept]
    if dropped:
        config_key = "exclude_columns" if set(dropped) & set(selection.exclude) else "include_columns"
        raise ConfigError(
            f"{config_key} of {ref} leaves out key column(s) {', '.join(map(repr, dropped))}, which the "
            f"merge needs (key: {', '.join(key)}) — keep them, or set primary_key to other columns",
            table=ref,
            column=dropped[0],
            key=config_key,
        )
    return kept


@dataclass(frozen=True)
class Grants:
    """The session account's own SELECT grants on whole tables, schemas (exact names; a wildcard pattern
    proves nothing here) or the server: each lets it read every column of a table."""

    account: str  # 'user'@'host'
    everything: bool
    schemas: frozenset[str]
    tables: frozenset[tuple[str, str]]

    def whole_table(self, database: str, table: str) -> bool:
        return self.everything or database in self.schemas or (database, table) in self.tables


async def read_grants(conn: SourceConnection) -> Grants:
    """The account's own SELECT grants (``_GRANTS``): two small queries, answered from the server's
    privilege cache (0.16 ms measured, as root of a server with a few dozen accounts)."""
    user, _, host = _text((await conn.fetchall("SELECT CURRENT_USER()"))[0][0]).rpartition("@")
    account = f"'{user}'@'{host}'"
    rows = [tuple(map(_text, row)) for row in await conn.fetchall(_GRANTS, (account,) * 3)]
    return Grants(
        account=account,
        everything=any(level == "global" for level, _, _ in rows),
        schemas=frozenset(re.sub(r"\\([_%\\])", r"\1", db) for level, db, _ in rows if level == "schema"),
        tables=frozenset((db, name) for level, db, name in rows if level == "table"),
    )


async def check_column_grants(
    conn: SourceConnection, database: str, table: str, rows: list[tuple[Any, ...]], grants: Grants
) -> None:
    """An account granted SELECT on only some columns of a table (``GRANT SELECT (a, b) ON db.t``) sees
    only those in the catalog, and the table would be synced without the others, silently. Unless its own
    grants cover the whole table, the server is asked whether every column is readable (``SELECT *``,
    no row): the answer counts its roles' grants too, which the privilege views do not show. Denied, the
    table fails, saying to grant SELECT on the table or to list the columns to read (include_columns)."""
    readable = [_text(row[1]) for row in rows if "select" in _text(row[15] or "").split(",")]
    if not readable or grants.whole_table(database, table):  # none readable: the read fails, as it is
        return
    try:
        await conn.fetchall(f"SELECT * FROM {qualify_mysql(database, table)} LIMIT 0")
    except SourceError as exc:
        if driver_error_code(exc.__cause__ or exc) not in _DENIED:
            raise
        ref = f"{database}.{table}"
        raise SourceError(
            f"MySQL account {grants.account} of source {conn.cfg.name!r} may read only some columns of {ref} "
            f"({_preview(readable)}): the catalog hides the others, and the table would be synced without "
            f"them — GRANT SELECT ON {qualify_mysql(database, table)} TO {grants.account}, or list the "
            f"columns to sync in include_columns of {ref} in the pipeline",
            table=ref,
            key="include_columns",
            retryable=False,
        ) from exc


async def check_booleans(conn: SourceConnection, database: str, table: str, schema: TableSchema) -> None:
    """TINYINT(1) planned as BOOLEAN (``tinyint1: boolean``): one query proves every value is 0, 1 or NULL,
    else ``UnsupportedTypeError`` naming the column and the value."""
    flags = [c.name for c in schema.columns if c.logical == "bool" and data_type_of(c) == "tinyint"]
    if not flags:
        return
    quoted = [quote_mysql(name) for name in flags]
    where = " OR ".join(f"{q} NOT IN (0, 1)" for q in quoted)
    sql = f"SELECT {', '.join(quoted)} FROM {qualify_mysql(database, table)} WHERE {where} LIMIT 1"
    found = await conn.fetchall(sql)
    if not found:
        return
    name, value = next(
        (n, v) for n, v in zip(flags, found[0], strict=True) if v is not None and v not in (0, 1)
    )
    ref = f"{database}.{table}"
    raise UnsupportedTypeError(
        f"column {name!r} of {ref} is tinyint(1) and type_policies.tinyint1 is boolean, but it holds {value} "
        "(only 0, 1 and NULL are booleans) — set type_policies: {tinyint1: smallint} to keep every value",
        table=ref,
        column=name,
        retryable=False,
    )


class SourceClock:
    """The source's clock for labels (a stage's ``extracted_at``): read from the server at most once per
    ``refresh`` seconds and advanced meanwhile by the local monotonic clock (drift: milliseconds at
    most), so a run of many tables costs one clock query, not one per table. A window's bound never
    comes from here: ``upper_bound`` reads the server's clock itself."""

    def __init__(self, refresh: float = CLOCK_REFRESH) -> None:
        self._refresh = refresh
        self._base: tuple[datetime, float] | None = None

    async def now(self, conn: SourceConnection) -> datetime:
        base = self._base
        if base is None or time.monotonic() - base[1] > self._refresh:
            base = self._base = (await server_now(conn), time.monotonic())
        return base[0] + timedelta(seconds=time.monotonic() - base[1])


async def server_now(conn: SourceConnection) -> datetime:
    """The source's own clock (UTC, microseconds): the upper bound of an incremental window."""
    rows = await conn.fetchall("SELECT UTC_TIMESTAMP(6)")
    value = rows[0][0]
    if not isinstance(value, datetime):
        raise SourceError(f"MySQL source {conn.cfg.name!r} returned {value!r} for UTC_TIMESTAMP(6)")
    return value.replace(tzinfo=UTC)


def _is_json_check(column: str, clause: object) -> bool:
    """``clause`` is MariaDB's JSON check of ``column``: ``json_valid(`column`)``."""
    match = _JSON_VALID.match(_text(clause)) if clause is not None else None
    return match is not None and match["col"].replace("``", "`") == column


def _column_info(row: tuple[Any, ...]) -> ColumnInfo:
    return ColumnInfo(
        name=_text(row[1]),
        data_type=_text(row[2]),
        column_type=_text(row[3]),
        nullable=_text(row[4]).upper() == "YES",
        char_max_length=_int(row[5]),
        char_octet_length=_int(row[6]),
        numeric_precision=_int(row[7]),
        numeric_scale=_int(row[8]),
        datetime_precision=_int(row[9]),
        charset=None if row[10] is None else _text(row[10]),
        json_check=_is_json_check(_text(row[1]), row[12]),
    )


def _text(value: object) -> str:
    """Catalog text; some servers hand information_schema columns over as bytes."""
    return value.decode() if isinstance(value, bytes | bytearray) else str(value)


def _int(value: object) -> int | None:
    return None if value is None else int(_text(value))


def _preview(names: Sequence[str], limit: int = 12) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", … ({len(names) - limit} more)" if len(names) > limit else "")
