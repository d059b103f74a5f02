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
REDSHIFT_MAX_PRECISION = 38
SYSTEM_COLUMNS = frozenset({"oid", "tableoid", "xmin", "cmin", "xmax", "cmax", "ctid"})
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
    """

    name: Literal["postgres", "redshift"]
    max_identifier_bytes: int
    folds_case: bool
    snapshot_per_transaction: bool = False
    now_sql: str = "(clock_timestamp() AT TIME ZONE 'UTC')"

    def fold(self, name: str) -> str:
        if not self.folds_case:
            return name
        return "".join(ch.lower() if ch.isascii() else ch for ch in name)

    def ident(self, name: str) -> str:
        return quote_pg(self.fold(name))

    def qualify(self, schema: str, table: str) -> str:
        return f"{self.ident(schema)}.{self.ident(table)}"


POSTGRES = Dialect("postgres", max_identifier_bytes=63, folds_case=False)
REDSHIFT = Dialect(
    "redshift", max_identifier_bytes=127, folds_case=True, snapshot_per_transaction=True, now_sql="GETDATE()"
)


@dataclass(frozen=True)
class DistSort:
    """Redshift physical design for a new target table (DISTSTYLE / DISTKEY / SORTKEY)."""

    diststyle: Literal["AUTO", "EVEN", "ALL", "KEY"] | None = None
    distkey: str | None = None
    sortkey: tuple[str, ...] = ()


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
    """Reject names the warehouse would mangle: control characters, over-long, system or colliding."""
    where = f"{schema_name}.{target_table}"
    for kind, name in (("schema", schema_name), ("table", target_table)):
        _check_name(dialect, kind, name, where)
    folded: dict[str, str] = {}
    for col in schema.columns:
        _check_name(dialect, "column", col.name, where)
        if dialect.fold(col.name).lower() in SYSTEM_COLUMNS:
            raise WarehouseError(
                f"column {col.name!r} of {where} is a system column name in {dialect.name}: rename it "
                "at the source or in a view",
                table=where,
                column=col.name,
            )
        other = folded.setdefault(dialect.fold(col.name), col.name)
        if other != col.name:
            raise WarehouseError(
                f"columns {other!r} and {col.name!r} of {where} collide once {dialect.name} folds them "
                "to lowercase: rename one at the source",
                table=where,
                column=col.name,
            )


def _check_name(dialect: Dialect, kind: str, name: str, where: str) -> None:
    problem = None
    if not name:
        problem = "is empty"
    elif _CONTROL.search(name):
        problem = "contains a control character"
    elif len(dialect.fold(name).encode()) > dialect.max_identifier_bytes:
        problem = f"is longer than {dialect.max_identifier_bytes} bytes"
    if problem:
        raise WarehouseError(
            f"{kind} name {name!r} of {where} {problem}, which {dialect.name} does not allow",
            table=where,
            column=name if kind == "column" else None,
        )


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
    body = [f"{dialect.ident(name)} {sqltype}" for name, sqltype in columns]
    if primary_key:
        body.append(f"PRIMARY KEY ({', '.join(dialect.ident(k) for k in primary_key)})")
    head = "CREATE TEMP TABLE" if temp else "CREATE TABLE"
    if if_not_exists:
        head += " IF NOT EXISTS"
    return f"{head} {qualified} ({', '.join(body)}){_distsort_sql(dialect, distsort)}"


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
