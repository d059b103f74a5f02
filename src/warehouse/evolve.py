"""Schema evolution: compare the target's columns (from the catalog) with a load's, and change the target.

- a new column: ``ALTER TABLE ADD COLUMN`` (nullable), inside the data transaction; older rows get NULL;
- a wider type: ``ALTER COLUMN TYPE`` where the warehouse can. PostgreSQL: any lossless widening, inside
  the data transaction (its DDL is transactional). Redshift: only a VARCHAR (not a key column, not under
  BYTEDICT/RUNLENGTH/TEXT255/TEXT32K), and never inside a transaction: it runs just before the data
  transaction. A wider VARCHAR holds every value the narrower one did, so the table stays valid (and the
  next run finds nothing left to do) if the load then fails;
- a column the source dropped stays in the target, NULL in new rows;
- a narrower type that the target's type holds exactly: the target keeps its type;
- anything else is incompatible. Policy ``fail`` raises before anything changed. ``rebuild`` recreates the
  table inside the data transaction (CREATE the new definition, INSERT ... SELECT with lossless casts,
  DROP the old, RENAME the new), and fails naming the column when no lossless conversion exists. A
  replace (full_sync) loses no row by a rebuild, since every row is replaced: it copies nothing, so any
  change can be rebuilt.

Every change is reported in words (``Plan.notes``) for the table result. Pure functions.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from src.common.errors import WarehouseError
from src.warehouse.ddl import (
    NO_ALTER_ENCODINGS,
    STAGING_PREFIX,
    create_table_sql,
    encode_sql,
    insert_select_sql,
)
from src.warehouse.statements import LoadSpec

REBUILD_PREFIX = "s3shift_rebuild_"
_INT_DIGITS = {16: 5, 32: 10, 64: 19}  # digits the largest value has
_INT_SAFE_DIGITS = {16: 4, 32: 9, 64: 18}  # every number of this many digits fits
_INT_TEXT_CHARS = {16: 6, 32: 11, 64: 20}  # the longest value as text, sign included
_SIMPLE = {
    "smallint": ("int", 16),
    "int2": ("int", 16),
    "integer": ("int", 32),
    "int": ("int", 32),
    "int4": ("int", 32),
    "bigint": ("int", 64),
    "int8": ("int", 64),
    "real": ("float", 32),
    "float4": ("float", 32),
    "double precision": ("float", 64),
    "float8": ("float", 64),
    "boolean": ("bool", None),
    "bool": ("bool", None),
    "date": ("date", None),
    "timestamp": ("timestamp", None),
    "timestamp without time zone": ("timestamp", None),
    "timestamptz": ("timestamptz", None),
    "timestamp with time zone": ("timestamptz", None),
    "jsonb": ("json", None),
    "super": ("json", None),
    "text": ("varchar", None),
    "bytea": ("binary", None),
}
_SIZED = [
    (re.compile(r"(?:character varying|varchar|nvarchar)\((\d+)\)"), "varchar"),
    (re.compile(r"(?:varbyte|binary varying|varbinary)\((\d+)\)"), "binary"),
    (re.compile(r"(?:character|char|bpchar)\((\d+)\)"), "char"),
]
_DECIMAL = re.compile(r"(?:numeric|decimal)\((\d+),\s*(\d+)\)")


@dataclass(frozen=True)
class SqlType:
    """A column type reduced to what decides whether one holds another: kind, size (bits for int and
    float, characters or bytes for varchar and binary, precision for decimal; None = unbounded), scale."""

    kind: str
    size: int | None = None
    scale: int | None = None


def parse_type(text: str) -> SqlType:
    t = " ".join(text.lower().replace('"', "").split())
    if t in _SIMPLE:
        return SqlType(*_SIMPLE[t])
    if m := _DECIMAL.fullmatch(t):
        return SqlType("decimal", int(m[1]), int(m[2]))
    for pattern, kind in _SIZED:
        if m := pattern.fullmatch(t):
            return SqlType(kind, int(m[1]))
    return SqlType("other:" + t)


_SHOW = {
    ("int", 16): "SMALLINT",
    ("int", 32): "INTEGER",
    ("int", 64): "BIGINT",
    ("float", 32): "REAL",
    ("float", 64): "DOUBLE PRECISION",
    ("varchar", None): "TEXT",
    ("binary", None): "BYTEA",
    ("bool", None): "BOOLEAN",
    ("date", None): "DATE",
    ("timestamp", None): "TIMESTAMP",
    ("timestamptz", None): "TIMESTAMPTZ",
}
_SHOW_SIZED = {"varchar": "VARCHAR", "binary": "VARBYTE", "char": "CHAR"}


def show(text: str) -> str:
    """A type in one spelling whichever way the catalog or the DDL wrote it: NUMERIC(14,2), VARCHAR(40)."""
    t = parse_type(text)
    if t.kind == "decimal":
        return f"NUMERIC({t.size},{t.scale})"
    if (t.kind, t.size) in _SHOW:
        return _SHOW[(t.kind, t.size)]
    if t.kind in _SHOW_SIZED:
        return f"{_SHOW_SIZED[t.kind]}({t.size})"
    return " ".join(text.upper().replace('"', "").split())


def holds(a: SqlType, b: SqlType) -> bool:
    """Every value of type ``b`` is exactly a value of type ``a``."""
    if a == b:
        return True
    if a.kind == b.kind and a.kind in ("int", "float"):
        return (a.size or 0) >= (b.size or 0)
    if a.kind == b.kind and a.kind in ("varchar", "binary"):
        return a.size is None or (b.size is not None and a.size >= b.size)
    if a.kind == b.kind == "decimal":
        return _scale(a) >= _scale(b) and _whole(a) >= _whole(b)
    if (a.kind, b.kind) == ("decimal", "int"):
        return _whole(a) >= _INT_DIGITS[b.size or 64]
    if (a.kind, b.kind) == ("int", "decimal"):
        return _scale(b) == 0 and (b.size or 99) <= _INT_SAFE_DIGITS[a.size or 16]
    if (a.kind, b.kind) == ("float", "int"):
        return (a.size, b.size) in {(32, 16), (64, 16), (64, 32)}
    return (a.kind, b.kind) == ("timestamp", "date")


def castable(old: SqlType, new: SqlType) -> bool:
    """A rebuild can convert every ``old`` value to ``new`` without loss (widening, or exact text)."""
    if holds(new, old):
        return True
    if new.kind != "varchar":
        return False
    chars = _text_chars(old)
    return chars is not None and (new.size is None or new.size >= chars)


def _text_chars(t: SqlType) -> int | None:
    if t.kind == "int":
        return _INT_TEXT_CHARS[t.size or 64]
    if t.kind == "decimal":
        return (t.size or 0) + 2  # sign and point
    return len("false") if t.kind == "bool" else None


def _scale(t: SqlType) -> int:
    return t.scale or 0


def _whole(t: SqlType) -> int:
    return (t.size or 0) - _scale(t)


# ---- the plan ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Change:
    note: str  # for the table result
    sql: tuple[str, ...] = ()
    before_transaction: bool = False


@dataclass(frozen=True)
class Plan:
    changes: tuple[Change, ...] = ()

    @property
    def before(self) -> list[str]:
        """Statements to run (and commit) before the data transaction."""
        return [sql for c in self.changes if c.before_transaction for sql in c.sql]

    @property
    def inside(self) -> list[str]:
        return [sql for c in self.changes if not c.before_transaction for sql in c.sql]

    def notes(self, *, before: bool) -> tuple[str, ...]:
        return tuple(c.note for c in self.changes if c.before_transaction == before)


@dataclass(frozen=True)
class _Diff:
    """One wanted column against the target: ``old`` is the catalog's type text ("" = missing)."""

    name: str
    old: str
    new: str

    @property
    def old_type(self) -> SqlType:
        return parse_type(self.old)

    @property
    def new_type(self) -> SqlType:
        return parse_type(self.new)


def plan(spec: LoadSpec, existing: Sequence[tuple[str, str]]) -> Plan:
    """What to change so the target takes this load; ``existing`` is the catalog's (name, type) list."""
    if not existing:
        return Plan()
    d = spec.dialect
    have = dict(existing)
    diffs = [
        _Diff(c.name, have.get(d.fold(c.name), ""), t)
        for c, t in zip(spec.schema.columns, spec.target_types, strict=True)
    ]
    wanted = {d.fold(c.name) for c in spec.schema.columns}
    dropped = [(n, t) for n, t in existing if n not in wanted]
    conflicts = [x for x in diffs if x.old and not holds(x.old_type, x.new_type) and not _alterable(spec, x)]
    kept = tuple(Change(f"source dropped {n} (kept, NULL for new rows)") for n, _ in dropped)
    if conflicts:
        _refuse(spec, conflicts)
        return Plan((_rebuild(spec, diffs, dropped, conflicts), *kept))
    changes = [_in_place(spec, x) for x in diffs if x.old != x.new]
    return Plan((*(c for c in changes if c is not None), *kept))


def _alterable(spec: LoadSpec, x: _Diff) -> bool:
    """A widening this warehouse applies with ALTER COLUMN TYPE."""
    old, new = x.old_type, x.new_type
    if not holds(new, old):
        return False
    if spec.dialect.alter_type_in_transaction:
        return True
    encoding = (spec.distsort.encoding(x.name) or "") if spec.distsort else ""
    return (
        old.kind == new.kind == "varchar"
        and x.name not in spec.schema.primary_key
        and encoding.upper() not in NO_ALTER_ENCODINGS
    )


def _in_place(spec: LoadSpec, x: _Diff) -> Change | None:
    d, target = spec.dialect, spec.target_sql
    if not x.old:
        encode = encode_sql(d, spec.distsort, x.name)
        sql = f"ALTER TABLE {target} ADD COLUMN {d.ident(x.name)} {x.new}{encode}"
        return Change(f"added column {x.name} {show(x.new)}", (sql,))
    if holds(x.old_type, x.new_type):
        if x.old_type == x.new_type:
            return None
        return Change(f"kept {x.name} as {show(x.old)} (holds the source's {show(x.new)})")
    sql = f"ALTER TABLE {target} ALTER COLUMN {d.ident(x.name)} TYPE {x.new}"
    return Change(
        f"widened {x.name} to {show(x.new)}", (sql,), before_transaction=not d.alter_type_in_transaction
    )


def _refuse(spec: LoadSpec, conflicts: Sequence[_Diff]) -> None:
    what = "; ".join(f"column {x.name!r} changed from {show(x.old)} to {show(x.new)}" for x in conflicts)
    replaced = spec.mode == "replace"  # its rebuild copies no row, so needs no lossless conversion
    unsafe = [x for x in conflicts if not replaced and not castable(x.old_type, x.new_type)]
    where = spec.target_name
    if spec.schema_change == "fail" and not unsafe:
        raise WarehouseError(
            f"{where}: {what}, which {spec.dialect.name} cannot apply in place: "
            "set type_policies: {schema_change: rebuild} or migrate the column; nothing was changed",
            table=where,
            column=conflicts[0].name,
        )
    if unsafe:
        names = ", ".join(repr(x.name) for x in unsafe)
        raise WarehouseError(
            f"{where}: {what}; no lossless conversion exists for {names}, so neither a rebuild "
            "(type_policies: {schema_change: rebuild}) nor an ALTER can keep the rows: migrate the column, "
            "or rename the target (target_name) to load a new one; nothing was changed",
            table=where,
            column=unsafe[0].name,
        )


def _rebuild(
    spec: LoadSpec, diffs: Sequence[_Diff], dropped: Sequence[tuple[str, str]], conflicts: Sequence[_Diff]
) -> Change:
    """The new table (wanted columns, then the dropped ones kept), filled from the old (unless the load
    replaces every row), swapped in."""
    d = spec.dialect
    columns: list[tuple[str, str]] = []
    copy: list[tuple[str, str]] = []
    for x in diffs:
        keep = bool(x.old) and holds(x.old_type, x.new_type)
        columns.append((x.name, x.old if keep else x.new))
        if x.old:
            same = keep or x.old_type == x.new_type
            copy.append((x.name, d.ident(x.name) if same else f"CAST({d.ident(x.name)} AS {x.new})"))
    columns += dropped
    copy += [(n, d.ident(n)) for n, _ in dropped]
    tmp = REBUILD_PREFIX + spec.staging_table.removeprefix(STAGING_PREFIX)
    tmp_sql = d.qualify(spec.schema_name, tmp)
    fill = () if spec.mode == "replace" else (insert_select_sql(d, tmp_sql, spec.target_sql, copy),)
    sql = (
        create_table_sql(d, tmp_sql, columns, primary_key=spec.schema.primary_key, distsort=spec.distsort),
        *fill,
        f"DROP TABLE {spec.target_sql}",
        f"ALTER TABLE {tmp_sql} RENAME TO {d.ident(spec.target_table)}",
    )
    what = ", ".join(f"{x.name} {show(x.old)} -> {show(x.new)}" for x in conflicts)
    added = [x.name for x in diffs if not x.old]
    note = f"rebuilt {spec.target_name} ({what}" + (f"; added {', '.join(added)}" if added else "") + ")"
    return Change(note, sql)
