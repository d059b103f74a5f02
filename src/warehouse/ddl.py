"""SQL text for both warehouses: column types from logical types, DDL, and the load statements.

Pure functions only. Identifiers are always quoted; the only literals (Redshift COPY's manifest URL and
IAM role, which COPY cannot bind) go through ``redshift_literal``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from src.common.errors import WarehouseError
from src.common.naming import quote_pg
from src.common.schema import Column, TableSchema

REDSHIFT_MAX_VARCHAR = 65_535
REDSHIFT_MAX_VARBYTE = 16_777_216
REDSHIFT_MAX_ROW = 4 * 1024 * 1024  # COPY's limit on one input row (4 MB)
REDSHIFT_MAX_PRECISION = 38
PG_SYSTEM_COLUMNS = frozenset({"tableoid", "xmin", "cmin", "xmax", "cmax", "ctid"})  # "oid" since PG 12: no
SYSTEM_COLUMNS = PG_SYSTEM_COLUMNS | {"oid"}  # Redshift's
STAGING_PREFIX = "s3shift_stage_"
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_ROLE_ARN = re.compile(r"arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]+")


@dataclass(frozen=True)
class Dialect:
    """How one warehouse spells identifiers (Redshift folds ASCII letters to lowercase, even quoted),
    and the capabilities the load protocol depends on.

    ``snapshot_per_transaction``: a transaction sees one snapshot, fixed by its first query (Redshift's
    serializable and snapshot isolation); a lock taken later does not make the commits it waited for
    visible. Such a warehouse fills the staging table before the commit transaction, whose first
    statements are the LOCKs. PostgreSQL runs the commit transaction in READ COMMITTED instead, where
    every statement sees what committed before it. ``now_sql``: the server's UTC wall clock.
    ``max_varchar_bytes``: the longest text a column holds (None: unbounded), which the extractor's
    ``long_text`` policy needs; ``max_row_bytes``: the most bytes one row may hold (None: unbounded),
    which the run checks while it reads. ``alter_type_in_transaction``: ALTER COLUMN TYPE may run inside a
    transaction (PostgreSQL; Redshift only widens a VARCHAR, and never inside one).
    ``truncate_in_transaction``: TRUNCATE is transactional (PostgreSQL: rolled back with the load), so a
    replace may empty the target with it instead of DELETE (Redshift's TRUNCATE commits implicitly:
    DELETE there). TRUNCATE gives the target a fresh, empty file and index (no dead rows for the INSERT
    to step over, no VACUUM debt) but takes ACCESS EXCLUSIVE: readers of the target wait for the commit
    instead of reading the old rows meanwhile, and it fails on a table that a foreign key references.
    """

    name: Literal["postgres", "redshift"]
    max_identifier_bytes: int
    folds_case: bool
    snapshot_per_transaction: bool = False
    now_sql: str = "(clock_timestamp() AT TIME ZONE 'UTC')"
    max_varchar_bytes: int | None = None
    max_row_bytes: int | None = None
    alter_type_in_transaction: bool = True
    truncate_in_transaction: bool = False
    system_columns: frozenset[str] = PG_SYSTEM_COLUMNS  # names a column cannot have (after folding)
    max_columns: int = 1600  # columns a table may have (PostgreSQL's MaxHeapAttributeNumber; Redshift's too)

    @property
    def begin_sql(self) -> str:
        """Opens the commit transaction: READ COMMITTED where snapshots are per statement (whatever the
        server's default), so the guard's SELECT sees every commit its LOCK waited for; plain BEGIN on
        Redshift, which has no such level (SET TRANSACTION is PostgreSQL's)."""
        return "BEGIN" if self.snapshot_per_transaction else "BEGIN ISOLATION LEVEL READ COMMITTED"

    def fold(self, name: str) -> str:
        if not self.folds_case:
            return name
        return "".join(ch.lower() if ch.isascii() else ch for ch in name)

    def ident(self, name: str) -> str:
        return quote_pg(self.fold(name))

    def qualify(self, schema: str, table: str) -> str:
        return f"{self.ident(schema)}.{self.ident(table)}"


POSTGRES = Dialect("postgres", max_identifier_bytes=63, folds_case=False, truncate_in_transaction=True)
REDSHIFT = Dialect(
    "redshift",
    max_identifier_bytes=127,
    folds_case=True,
    snapshot_per_transaction=True,
    now_sql="GETDATE()",
    max_varchar_bytes=REDSHIFT_MAX_VARCHAR,
    max_row_bytes=REDSHIFT_MAX_ROW,
    alter_type_in_transaction=False,
    system_columns=SYSTEM_COLUMNS,
)


def dialect_of(kind: str) -> Dialect:
    """The dialect of a target ``type`` (``redshift`` or ``postgres``)."""
    return REDSHIFT if kind == "redshift" else POSTGRES


ENCODINGS = frozenset(
    {"RAW", "AZ64", "BYTEDICT", "DELTA", "DELTA32K", "LZO", "MOSTLY8", "MOSTLY16", "MOSTLY32", "RUNLENGTH"}
    | {"TEXT255", "TEXT32K", "ZSTD"}
)
# Encodings a Redshift VARCHAR cannot be widened under (ALTER COLUMN TYPE refuses them).
NO_ALTER_ENCODINGS = frozenset({"BYTEDICT", "RUNLENGTH", "TEXT255", "TEXT32K"})


@dataclass(frozen=True)
class DistSort:
    """Redshift physical design of a target table (DISTSTYLE / DISTKEY / SORTKEY / per-column ENCODE),
    by TARGET column name; ignored on PostgreSQL."""

    diststyle: Literal["AUTO", "EVEN", "ALL", "KEY"] | None = None
    distkey: str | None = None
    sortkey: tuple[str, ...] = ()
    encode: tuple[tuple[str, str], ...] = ()  # (column, encoding)

    def encoding(self, column: str) -> str | None:
        return dict(self.encode).get(column)


# The encodings Redshift accepts for each column type (docs: "Compression encodings", its table of data
# types); a type it does not list there (SUPER, VARBYTE) is left to the server.
_INTEGERS = frozenset({"RAW", "AZ64", "BYTEDICT", "DELTA", "LZO", "MOSTLY8", "RUNLENGTH", "ZSTD"})
_DATES = frozenset({"RAW", "AZ64", "BYTEDICT", "DELTA", "DELTA32K", "LZO", "RUNLENGTH", "ZSTD"})
_ENCODINGS_OF: dict[str, frozenset[str]] = {
    "int16": _INTEGERS,
    "int32": _INTEGERS | {"DELTA32K", "MOSTLY16"},
    "int64": _INTEGERS | {"DELTA32K", "MOSTLY16", "MOSTLY32"},
    "time": _INTEGERS | {"DELTA32K", "MOSTLY16", "MOSTLY32"},
    "decimal": _INTEGERS | {"DELTA32K", "MOSTLY16", "MOSTLY32"},
    "float32": frozenset({"RAW", "BYTEDICT", "RUNLENGTH", "ZSTD"}),
    "float64": frozenset({"RAW", "BYTEDICT", "RUNLENGTH", "ZSTD"}),
    "bool": frozenset({"RAW", "RUNLENGTH", "ZSTD"}),
    "string": frozenset({"RAW", "BYTEDICT", "LZO", "RUNLENGTH", "TEXT255", "TEXT32K", "ZSTD"}),
    "date": _DATES,
    "timestamp": _DATES,
    "timestamptz": _DATES - {"DELTA", "DELTA32K"},
}
_NO_KEY_TYPES = {"json": "SUPER"}  # Redshift: a SUPER column is never a distribution or sort key


def check_distsort(distsort: DistSort | None, schema: TableSchema, where: str) -> None:
    """Every DISTKEY / SORTKEY / ENCODE column exists; encodings are Redshift's and fit the column's type;
    no SUPER key; DISTKEY goes with KEY, and KEY needs a DISTKEY (Redshift refuses such a CREATE TABLE)."""
    if distsort is None:
        return
    known = set(schema.names)
    named = [("distkey", distsort.distkey)] if distsort.distkey else []
    named += [("sortkey", c) for c in distsort.sortkey] + [("encode", c) for c, _ in distsort.encode]
    for key, name in named:
        if name not in known:
            raise WarehouseError(
                f"{key} column {name!r} is not a column of {where} (columns are named as in the target, "
                "after rename_columns): fix the table's config",
                table=where,
                column=name,
                key=key,
            )
    bad = [f"{c}: {e}" for c, e in distsort.encode if e.upper() not in ENCODINGS]
    if bad:
        raise WarehouseError(
            f"unknown ENCODE for {where} ({', '.join(bad)}): use one of {', '.join(sorted(ENCODINGS))}",
            table=where,
            key="encode",
        )
    if distsort.distkey and distsort.diststyle not in (None, "KEY"):
        raise WarehouseError(
            f"{where} sets distkey with diststyle {distsort.diststyle}: a DISTKEY needs diststyle KEY",
            table=where,
            key="diststyle",
        )
    if distsort.diststyle == "KEY" and not distsort.distkey:
        raise WarehouseError(
            f"{where} sets diststyle KEY without a distkey: name the distkey column, or choose another "
            "diststyle",
            table=where,
            key="distkey",
        )
    _check_types(distsort, schema, where, [(k, n) for k, n in named if k != "encode"])


def _check_types(distsort: DistSort, schema: TableSchema, where: str, keys: list[tuple[str, str]]) -> None:
    for key, name in keys:
        no_key = _NO_KEY_TYPES.get(schema.column(name).logical)
        if no_key:
            raise WarehouseError(
                f"{key} column {name!r} of {where} is {no_key}, which Redshift never uses as a distribution "
                "or sort key: choose another column",
                table=where,
                column=name,
                key=key,
            )
    bad = []
    for name, encoding in distsort.encode:
        col = schema.column(name)
        allowed = _ENCODINGS_OF.get(col.logical)
        if allowed is not None and encoding.upper() not in allowed:
            fits = ", ".join(sorted(allowed))
            bad.append(f"{name} ({redshift_type(col)}): {encoding.upper()}, use one of {fits}")
    if bad:
        raise WarehouseError(
            f"encode of {where} that Redshift refuses for the column's type: {'; '.join(bad)} — fix the "
            "table's config",
            table=where,
            key="encode",
        )


# ---- column types -------------------------------------------------------------------------------

_PG_TYPES = {
    "bool": "boolean",
    "int16": "smallint",
    "int32": "integer",
    "int64": "bigint",
    "float32": "real",
    "float64": "double precision",
    "string": "text",
    "json": "jsonb",
    "binary": "bytea",
    "date": "date",
    "timestamp": "timestamp",
    "timestamptz": "timestamptz",
    "time": "bigint",  # signed microseconds, never wrapped at 24 h
}

_RS_TYPES = {
    "bool": "BOOLEAN",
    "int16": "SMALLINT",
    "int32": "INTEGER",
    "int64": "BIGINT",
    "float32": "REAL",
    "float64": "DOUBLE PRECISION",
    "date": "DATE",
    "timestamp": "TIMESTAMP",
    "timestamptz": "TIMESTAMPTZ",
    "time": "BIGINT",
}


def postgres_type(col: Column) -> str:
    if col.logical == "decimal":
        return f"numeric({col.precision},{col.scale})"
    return _PG_TYPES[col.logical]


def redshift_type(col: Column, *, staging: bool = False) -> str:
    """The Redshift column type; ``staging`` gives the type COPY loads from the Parquet column."""
    if col.logical == "decimal":
        if col.precision is None or col.precision > REDSHIFT_MAX_PRECISION:
            raise WarehouseError(
                f"column {col.name!r} is DECIMAL({col.precision},{col.scale}); Redshift allows precision "
                f"up to {REDSHIFT_MAX_PRECISION}: choose the text policy for wide decimals",
                column=col.name,
            )
        return f"DECIMAL({col.precision},{col.scale})"
    if col.logical == "string":
        return f"VARCHAR({_capped(col.byte_length, REDSHIFT_MAX_VARCHAR)})"
    if col.logical == "json":
        return f"VARCHAR({REDSHIFT_MAX_VARCHAR})" if staging else "SUPER"
    if col.logical == "binary":
        return f"VARBYTE({_capped(col.byte_length, REDSHIFT_MAX_VARBYTE)})"
    return _RS_TYPES[col.logical]


def _capped(length: int | None, cap: int) -> int:
    return cap if length is None else max(1, min(length, cap))


# ---- identifiers --------------------------------------------------------------------------------


def check_identifiers(dialect: Dialect, schema_name: str, target_table: str, schema: TableSchema) -> None:
    """Reject names the warehouse would mangle (control characters, over-long, system or colliding) and
    more columns than a table can have.
    Column problems are reported all at once, with the ``rename_columns`` that would fix them."""
    where = f"{schema_name}.{target_table}"
    fixes = {
        "schema": "set schema in the target connection",
        "table": "set target_name in the table's config",
    }
    for kind, name in (("schema", schema_name), ("table", target_table)):
        problem = _name_problem(dialect, name)
        if problem:
            raise WarehouseError(
                f"{kind} name {name!r} of {where} {problem}, which {dialect.name} does not allow: "
                + fixes[kind],
                table=where,
            )
    if len(schema.columns) > dialect.max_columns:
        raise WarehouseError(
            f"{where} would have {len(schema.columns)} columns, more than the {dialect.max_columns} a "
            f"{dialect.name} table can hold: leave some out with exclude_columns (or list the ones to keep "
            "in include_columns) in the table's config",
            table=where,
        )
    twice = sorted({n for n in schema.names if schema.names.count(n) > 1})
    if twice:  # only rename_columns makes two columns one name: the load would fail on a duplicate column
        raise WarehouseError(
            f"columns of {where}: {', '.join(map(repr, twice))} would name more than one column once "
            "renamed: give each column its own target name in the table's rename_columns",
            table=where,
            column=twice[0],
            key="rename_columns",
        )
    problems: dict[str, str] = {}
    folded: dict[str, str] = {}
    for name in schema.names:
        other = folded.setdefault(dialect.fold(name), name)
        if other != name:
            problems[name] = f"collides with {other!r} once {dialect.name} folds names to lowercase"
        elif dialect.fold(name) in dialect.system_columns:
            problems[name] = f"is a system column name in {dialect.name}"
        elif problem := _name_problem(dialect, name):
            problems[name] = problem
    if problems:
        raise WarehouseError(
            f"columns of {where} that {dialect.name} cannot hold: "
            + "; ".join(f"{n!r} {p}" for n, p in problems.items())
            + f": set rename_columns: {{{', '.join(f'{n!r}: NEW_NAME' for n in problems)}}} "
            "in the table's config",
            table=where,
            column=next(iter(problems)),
        )


def _name_problem(dialect: Dialect, name: str) -> str | None:
    if not name:
        return "is empty"
    if _CONTROL.search(name):
        return "contains a control character"
    if len(dialect.fold(name).encode()) > dialect.max_identifier_bytes:
        return f"is longer than {dialect.max_identifier_bytes} bytes"
    return None


def staging_name(execution_id: str, schema_name: str, target_table: str) -> str:
    """A per-run unique temp table name (a hash: user names never reach the temp namespace)."""
    digest = hashlib.sha256(f"{execution_id}\x1f{schema_name}\x1f{target_table}".encode()).hexdigest()
    return STAGING_PREFIX + digest[:16]


# ---- statements ---------------------------------------------------------------------------------


def create_table_sql(
    dialect: Dialect,
    qualified: str,
    columns: Sequence[tuple[str, str]],
    *,
    primary_key: Sequence[str] = (),
    temp: bool = False,
    if_not_exists: bool = False,
    distsort: DistSort | None = None,
) -> str:
    body = [f"{dialect.ident(n)} {sqltype}{encode_sql(dialect, distsort, n)}" for n, sqltype in columns]
    if primary_key:
        body.append(f"PRIMARY KEY ({', '.join(dialect.ident(k) for k in primary_key)})")
    head = "CREATE TEMP TABLE" if temp else "CREATE TABLE"
    if if_not_exists:
        head += " IF NOT EXISTS"
    return f"{head} {qualified} ({', '.join(body)}){_distsort_sql(dialect, distsort)}"


def encode_sql(dialect: Dialect, distsort: DistSort | None, column: str) -> str:
    encoding = distsort.encoding(column) if distsort is not None and dialect.name == "redshift" else None
    return f" ENCODE {encoding.upper()}" if encoding else ""


def _distsort_sql(dialect: Dialect, distsort: DistSort | None) -> str:
    if distsort is None or dialect.name != "redshift":
        return ""
    parts = []
    if distsort.diststyle:
        parts.append(f"DISTSTYLE {distsort.diststyle}")
    if distsort.distkey:
        parts.append(f"DISTKEY ({dialect.ident(distsort.distkey)})")
    if distsort.sortkey:
        parts.append(f"SORTKEY ({', '.join(dialect.ident(k) for k in distsort.sortkey)})")
    return "".join(" " + p for p in parts)


def insert_select_sql(dialect: Dialect, target: str, staging: str, columns: Sequence[tuple[str, str]]) -> str:
    """INSERT by column name; each pair is (column name, expression over the staging table)."""
    names = ", ".join(dialect.ident(name) for name, _ in columns)
    exprs = ", ".join(expr for _, expr in columns)
    return f"INSERT INTO {target} ({names}) SELECT {exprs} FROM {staging}"


LockMode = Literal["writers", "exclusive"]


def lock_sql(dialect: Dialect, qualified: str, mode: LockMode) -> str:
    """LOCK a table. PostgreSQL: ``writers`` admits other writers (ROW EXCLUSIVE) but no ``exclusive``
    holder, ``exclusive`` (SHARE ROW EXCLUSIVE) excludes every other writer; readers are never blocked.
    Redshift has one lock mode (ACCESS EXCLUSIVE): both modes exclude everyone."""
    if dialect.name != "postgres":
        return f"LOCK {qualified}"
    level = "ROW EXCLUSIVE" if mode == "writers" else "SHARE ROW EXCLUSIVE"
    return f"LOCK TABLE {qualified} IN {level} MODE"


def redshift_literal(value: str, *, what: str) -> str:
    """A Redshift string literal: quotes doubled AND backslashes escaped; control characters rejected."""
    if _CONTROL.search(value):
        raise WarehouseError(f"{what} contains a control character and cannot be used in COPY")
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def check_iam_role(role: str) -> None:
    """One role ARN, or a comma-separated chain of them."""
    if not all(_ROLE_ARN.fullmatch(part) for part in role.split(",")):
        raise WarehouseError(
            "iam_role must be an IAM role ARN like arn:aws:iam::123456789012:role/NAME "
            "(or a comma-separated chain of them)",
            key="iam_role",
        )


def redshift_copy_sql(staging: str, manifest_url: str, iam_role: str) -> str:
    """COPY FORMAT AS PARQUET accepts only a few options: no REGION, no COMPUPDATE, no MAXERROR."""
    if not manifest_url.startswith("s3://"):
        raise WarehouseError(f"manifest URL {manifest_url!r} is not an s3:// URL")
    check_iam_role(iam_role)
    return (
        f"COPY {staging} FROM {redshift_literal(manifest_url, what='manifest URL')} "
        f"IAM_ROLE {redshift_literal(iam_role, what='iam_role')} "
        "FORMAT AS PARQUET MANIFEST STATUPDATE OFF"
    )
