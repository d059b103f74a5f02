"""Identifier quoting for each engine. Values are always bound, never formatted into SQL."""

from __future__ import annotations

import re

from src.common.jsonio import printable


def quote_mysql(name: str) -> str:
    """`name` with backticks doubled."""
    return "`" + name.replace("`", "``") + "`"


def qualify_mysql(database: str, table: str) -> str:
    return f"{quote_mysql(database)}.{quote_mysql(table)}"


# A piece of MySQL text: a backtick-quoted name, a quoted string or a comment, or anything else (one char).
_MYSQL_TOKEN = re.compile(
    r"(?P<name>`(?:[^`]|``)*`?)"
    r"|(?P<text>'(?:[^'\\]|\\.|'')*'?|\"(?:[^\"\\]|\\.|\"\")*\"?|--\s[^\n]*|#[^\n]*|/\*.*?(?:\*/|$))"
    r"|(?P<code>[^`'\"#/-]+|.)",
    re.DOTALL,
)


def escape_percent(sql: str, *, names: bool, rest: bool) -> str:
    """``sql`` with ``%`` doubled for a query that takes ``%s`` arguments (the driver formats the text
    with them): in backtick-quoted names (``names``), and in strings, comments and the rest (``rest``)."""
    out = []
    for match in _MYSQL_TOKEN.finditer(sql):
        piece = match.group()
        in_name = match.lastgroup == "name"
        out.append(piece.replace("%", "%%") if (names if in_name else rest) else piece)
    return "".join(out)


def quote_pg(name: str) -> str:
    """ "name" with double quotes doubled (PostgreSQL and Redshift). NUL can never be an identifier."""
    if "\x00" in name:
        raise ValueError("identifier contains a NUL byte")
    return '"' + name.replace('"', '""') + '"'


def qualify_pg(schema: str, table: str) -> str:
    return f"{quote_pg(schema)}.{quote_pg(table)}"


def split_table(ref: str) -> tuple[str, str]:
    """'db.table' -> ('db', 'table'). Exactly one dot is required: a database or table name holding a dot
    cannot be told apart from the separator, nor one holding a '/' be one S3 folder, so the error says how
    to reach such a table (a view)."""
    if not ref.isascii():
        try:
            ref.encode("utf-8")
        except UnicodeEncodeError:  # a byte of a non-UTF-8 argument, as Python decodes it (0xff: \udcff)
            raise ValueError(
                f"table '{printable(ref)}' is not UTF-8 text (each \\xNN is a byte that is not): MySQL "
                "names are UTF-8, pass the name in UTF-8"
            ) from None
    db, sep, table = ref.partition(".")
    if not sep or not db or not table:
        raise ValueError(f"table {ref!r} must be written as database.table")
    if "." in table:
        view = table.replace(".", "_")
        raise ValueError(
            f"table {ref!r} has more than one dot: a database or table name holding a dot cannot be named "
            f"as database.table — sync a view with a plain name instead, e.g. CREATE VIEW "
            f"{qualify_mysql(db, view)} AS SELECT * FROM {qualify_mysql(db, table)}, then -t {db}.{view}"
        )
    if "/" in ref:  # the stage of db.table is the S3 folder <pipeline>/<db.table>/: one key segment
        view = table.replace("/", "_")
        raise ValueError(
            f"table {ref!r} holds a '/', which cannot be part of its S3 folder "
            "(<pipeline>/<database.table>/) — sync a view with a plain name instead, e.g. CREATE VIEW "
            f"{qualify_mysql(db, view)} AS SELECT * FROM {qualify_mysql(db, table)}, then -t {db}.{view}"
        )
    return db, table
