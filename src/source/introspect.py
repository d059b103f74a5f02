"""Describe source tables from information_schema: columns in order, primary key, planned types.

One catalog query describes any number of tables, so thousands of small tables stay cheap.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from src.common.errors import ConfigError, S3ShiftError, SourceError
from src.common.schema import TableSchema
from src.source.mysql import SourceConnection
from src.source.typemap import ColumnInfo, map_column

_COLUMNS = """
SELECT c.TABLE_NAME, c.COLUMN_NAME, c.DATA_TYPE, c.COLUMN_TYPE, c.IS_NULLABLE,
       c.CHARACTER_MAXIMUM_LENGTH, c.CHARACTER_OCTET_LENGTH, c.NUMERIC_PRECISION, c.NUMERIC_SCALE,
       c.DATETIME_PRECISION, c.CHARACTER_SET_NAME, s.SEQ_IN_INDEX, {check_clause}
FROM information_schema.COLUMNS c
LEFT JOIN information_schema.STATISTICS s
  ON s.TABLE_SCHEMA = c.TABLE_SCHEMA AND s.TABLE_NAME = c.TABLE_NAME
 AND s.COLUMN_NAME = c.COLUMN_NAME AND s.INDEX_NAME = 'PRIMARY'
{check_join}
WHERE c.TABLE_SCHEMA = %s AND c.TABLE_NAME IN ({names})
ORDER BY c.TABLE_NAME, c.ORDINAL_POSITION
"""
# MariaDB's JSON is an alias of LONGTEXT with a column-level CHECK (json_valid(`col`)).
_MARIADB_CHECK_JOIN = """
LEFT JOIN information_schema.CHECK_CONSTRAINTS k
  ON k.CONSTRAINT_SCHEMA = c.TABLE_SCHEMA AND k.TABLE_NAME = c.TABLE_NAME
 AND k.CONSTRAINT_NAME = c.COLUMN_NAME AND k.LEVEL = 'Column'
"""
_JSON_VALID = re.compile(r"^\s*json_valid\(\s*`?(?P<col>(?:[^`]|``)+?)`?\s*\)\s*$", re.IGNORECASE)


async def describe_tables(
    conn: SourceConnection, database: str, tables: Sequence[str]
) -> dict[str, TableSchema | S3ShiftError]:
    """Describe many tables of one database with one catalog query. Per table: its schema, or the error
    that stops it (not found, unsupported type)."""
    if not tables:
        return {}
    mariadb = conn.is_mariadb
    sql = _COLUMNS.format(
        check_clause="k.CHECK_CLAUSE" if mariadb else "NULL",
        check_join=_MARIADB_CHECK_JOIN if mariadb else "",
        names=", ".join(["%s"] * len(tables)),
    )
    rows = await conn.fetchall(sql, (database, *tables))
    grouped: dict[str, dict[str, tuple[Any, ...]]] = {}
    for row in rows:  # a column may repeat once per column-level CHECK; keep the JSON one
        columns = grouped.setdefault(_text(row[0]), {})
        if _text(row[1]) not in columns or _is_json_check(row):
            columns[_text(row[1])] = row
    return {t: _schema_or_error(conn, database, t, list(grouped.get(t, {}).values())) for t in tables}


async def describe_table(
    conn: SourceConnection, database: str, table: str, *, primary_key: tuple[str, ...] | None = None
) -> TableSchema:
    """Describe one table; ``primary_key`` overrides the catalog's key (its columns must exist)."""
    result = (await describe_tables(conn, database, [table]))[table]
    if isinstance(result, S3ShiftError):
        raise result
    if primary_key is None:
        return result
    missing = [name for name in primary_key if name not in result.names]
    if missing:
        raise ConfigError(
            f"primary_key of {database}.{table} names {', '.join(map(repr, missing))}, which the table "
            f"does not have (columns: {_preview(result.names)}) — fix primary_key in the pipeline",
            table=f"{database}.{table}",
        )
    return TableSchema(result.columns, tuple(primary_key))


async def server_now(conn: SourceConnection) -> datetime:
    """The source's own clock (UTC, microseconds): the upper bound of an incremental window."""
    rows = await conn.fetchall("SELECT UTC_TIMESTAMP(6)")
    value = rows[0][0]
    if not isinstance(value, datetime):
        raise SourceError(f"MySQL source {conn.cfg.name!r} returned {value!r} for UTC_TIMESTAMP(6)")
    return value.replace(tzinfo=UTC)


def _schema_or_error(
    conn: SourceConnection, database: str, table: str, rows: list[tuple[Any, ...]]
) -> TableSchema | S3ShiftError:
    ref = f"{database}.{table}"
    if not rows:
        return SourceError(
            f"table {ref} not found in MySQL source {conn.cfg.name!r} — check the database and table "
            "names (they are case-sensitive) and that the user may see the table",
            table=ref,
            retryable=False,
        )
    try:
        columns = tuple(map_column(_column_info(row), table=ref) for row in rows)
    except S3ShiftError as exc:
        return exc
    keyed = sorted((int(row[11]), _text(row[1])) for row in rows if row[11] is not None)
    return TableSchema(columns, tuple(name for _, name in keyed))


def _is_json_check(row: tuple[Any, ...]) -> bool:
    match = _JSON_VALID.match(_text(row[12])) if row[12] is not None else None
    return match is not None and match["col"].replace("``", "`") == _text(row[1])


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
        json_check=_is_json_check(row),
    )


def _text(value: object) -> str:
    """Catalog text; some servers hand information_schema columns over as bytes."""
    return value.decode() if isinstance(value, bytes | bytearray) else str(value)


def _int(value: object) -> int | None:
    return None if value is None else int(_text(value))


def _preview(names: Sequence[str], limit: int = 12) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", … ({len(names) - limit} more)" if len(names) > limit else "")
