"""Identifier quoting for each engine. Values are always bound, never formatted into SQL."""

from __future__ import annotations


def quote_mysql(name: str) -> str:
    """`name` with backticks doubled."""
    return "`" + name.replace("`", "``") + "`"


def qualify_mysql(database: str, table: str) -> str:
    return f"{quote_mysql(database)}.{quote_mysql(table)}"


def quote_pg(name: str) -> str:
    """ "name" with double quotes doubled (PostgreSQL and Redshift). NUL can never be an identifier."""
    if "\x00" in name:
        raise ValueError("identifier contains a NUL byte")
    return '"' + name.replace('"', '""') + '"'


def qualify_pg(schema: str, table: str) -> str:
    return f"{quote_pg(schema)}.{quote_pg(table)}"


def split_table(ref: str) -> tuple[str, str]:
    """'db.table' -> ('db', 'table'). The first dot separates; table names may contain dots only if quoted
    upstream, which we do not support: exactly one dot is required."""
    db, sep, table = ref.partition(".")
    if not sep or not db or not table or "." in table:
        raise ValueError(f"table {ref!r} must be written as database.table")
    return db, table
