"""Test-only: Redshift's SQL dialect for the emulator (``tests/redshift_emulator.py``). Rewrites
Redshift-only syntax for PostgreSQL outside quoted identifiers and literals, and refuses the PostgreSQL-only
syntax and the ALTER TABLE forms Redshift lacks, statement by statement."""

from __future__ import annotations

import itertools
import re

from asyncpg.exceptions import PostgresSyntaxError

_TOKEN = re.compile(r"\"(?:[^\"]|\"\")*\"|'(?:[^'\\]|''|\\.)*'|[A-Za-z_][A-Za-z0-9_$]*|\d+|\s+|.", re.S)


def tokenize(sql: str) -> list[str]:
    return _TOKEN.findall(sql)


def _next(tokens: list[str], i: int) -> int:
    """Index of the next non-blank token at or after ``i`` (len(tokens) if none)."""
    while i < len(tokens) and tokens[i].isspace():
        i += 1
    return i


def _skip_parens(tokens: list[str], i: int) -> int:
    """If tokens[i] (after blanks) opens a parenthesis, the index after its match; else ``i``."""
    j = _next(tokens, i)
    if j >= len(tokens) or tokens[j] != "(":
        return i
    depth = 0
    for k in range(j, len(tokens)):
        depth += {"(": 1, ")": -1}.get(tokens[k], 0)
        if depth == 0:
            return k + 1
    raise ValueError("unbalanced parentheses")


def rewrite(sql: str) -> str:
    """Redshift DDL/DML -> PostgreSQL. Quoted identifiers and literals are never touched."""
    tokens, out, i = tokenize(sql), [], 0
    while i < len(tokens):
        word = tokens[i].upper()
        if word == "VARBYTE":
            end = _skip_parens(tokens, i + 1)
            size = "".join(tokens[i + 1 : end]).strip().strip("()").strip()
            out.append(f'public."varbyte({int(size)})"' if size else "bytea")
            i = end
        elif word == "SUPER":
            out.append("jsonb")
            i += 1
        elif word == "JSON_PARSE":
            out.append("jsonb")  # PostgreSQL's function-style cast text -> jsonb
            i += 1
        elif word == "GETDATE":  # Redshift: the current statement's start, UTC by default
            out.append("(statement_timestamp() AT TIME ZONE 'UTC')")
            i = _skip_parens(tokens, i + 1)
        elif word in {"ENCODE", "DISTSTYLE", "BACKUP"}:
            i = _next(tokens, i + 1) + 1  # the keyword and its one-word argument
        elif word in {"DISTKEY", "SORTKEY"}:
            j = _skip_parens(tokens, i + 1)
            if j == i + 1:  # no parenthesis: a column attribute, or SORTKEY AUTO
                k = _next(tokens, i + 1)
                j = k + 1 if k < len(tokens) and tokens[k].upper() == "AUTO" else i + 1
            i = j
        elif word in {"COMPOUND", "INTERLEAVED"}:
            i += 1
        else:
            out.append(tokens[i])
            i += 1
    return "".join(out)


def split_statements(sql: str) -> list[str]:
    """The statements of one simple-query message: split at semicolons outside quotes, blanks dropped."""
    out: list[str] = []
    current: list[str] = []
    for token in tokenize(sql):
        if token == ";":
            out.append("".join(current))
            current = []
        else:
            current.append(token)
    out.append("".join(current))
    return [s.strip() for s in out if s.strip()]


def first_word(sql: str) -> str:
    return next((t.upper() for t in tokenize(sql) if not t.isspace()), "")


BEGIN_WORDS = {"BEGIN", "START"}
END_WORDS = {"COMMIT", "END", "ROLLBACK", "ABORT"}
_PG_ONLY_PAIRS = {("ON", "CONFLICT"), ("FOR", "UPDATE"), ("FOR", "SHARE"), ("SET", "TRANSACTION")}
_PG_ONLY_WORDS = {"RETURNING", "CLOCK_TIMESTAMP", "STATEMENT_TIMESTAMP", "TRANSACTION_TIMESTAMP"}


def check_redshift_sql(sql: str, *, in_transaction: bool) -> None:
    """Refuse what the loader must never send to Redshift (it would fail or behave differently there)."""
    words = [t.upper() for t in tokenize(sql) if not t.isspace() and not t.startswith(("'", '"'))]
    found = next((" ".join(p) for p in itertools.pairwise(words) if p in _PG_ONLY_PAIRS), None)
    found = found or next((w for w in words if w in _PG_ONLY_WORDS or w.startswith("PG_ADVISORY")), None)
    if words[:1] == ["LOCK"] and "MODE" in words:
        found = "LOCK ... IN ... MODE (Redshift's LOCK has no modes)"
    if words[:1] == ["TRUNCATE"] and in_transaction:
        found = "TRUNCATE inside a transaction (it commits implicitly on Redshift)"
    found = found or _alter_problem(sql, words, in_transaction=in_transaction)
    if found:
        raise PostgresSyntaxError(f"emulator: Redshift does not support {found}")


def _top_level_commas(sql: str) -> int:
    depth, commas = 0, 0
    for token in tokenize(sql):
        depth += {"(": 1, ")": -1}.get(token, 0)
        commas += token == "," and depth == 0
    return commas


def alter_type_target(sql: str) -> tuple[str, str] | None:
    """(table as written, column name) of an ALTER TABLE ... ALTER COLUMN ... TYPE, else None."""
    tokens = [t for t in tokenize(sql) if not t.isspace()]
    upper = [t.upper() for t in tokens]
    if upper[:2] != ["ALTER", "TABLE"] or "TYPE" not in upper or "ALTER" not in upper[2:]:
        return None
    at = upper.index("ALTER", 2)
    column = tokens[at + 2] if upper[at + 1] == "COLUMN" else tokens[at + 1]
    return "".join(tokens[2:at]), _unquote(column)


def _unquote(token: str) -> str:
    return token[1:-1].replace('""', '"') if token.startswith('"') else token.lower()


def add_key_target(sql: str) -> tuple[str, list[str]] | None:
    """(table as written, column names) of an ALTER TABLE ... ADD [CONSTRAINT name] PRIMARY KEY (...)."""
    tokens = [t for t in tokenize(sql) if not t.isspace()]
    upper = [t.upper() for t in tokens]
    if upper[:2] != ["ALTER", "TABLE"] or "ADD" not in upper:
        return None
    at = upper.index("ADD")
    rest = upper[at + 1 :]
    rest = rest[2:] if rest[:1] == ["CONSTRAINT"] else rest
    if rest[:2] != ["PRIMARY", "KEY"]:
        return None
    opened = upper.index("(", at)
    columns = [_unquote(t) for t in tokens[opened + 1 : upper.index(")", opened)] if t != ","]
    return "".join(tokens[2:at]), columns


def _alter_problem(sql: str, words: list[str], *, in_transaction: bool) -> str | None:
    if words[:2] != ["ALTER", "TABLE"]:
        return None
    if _top_level_commas(sql):
        return "several actions in one ALTER TABLE (one column per statement)"
    if alter_type_target(sql) is None:
        return None
    if in_transaction:
        return "ALTER TABLE ALTER COLUMN TYPE inside a transaction block"
    after = words[words.index("TYPE") + 1 :]
    if after[:1] != ["VARCHAR"] and after[:2] != ["CHARACTER", "VARYING"]:
        return "ALTER COLUMN TYPE to anything but a VARCHAR size (" + " ".join(after) + ")"
    return None
