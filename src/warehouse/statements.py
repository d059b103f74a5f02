"""The SQL of one load, as pure functions of a ``LoadSpec``: what ``load`` runs and ``render_load`` shows.

A spec's column names are the TARGET names (after the request's rename map); the staging table has the
Parquet file's columns, types and order, under those names (both fills map columns by position).
Modes (the target is written by column name):
- ``replace``: DELETE every target row, INSERT every staged row; where TRUNCATE is transactional
  (``Dialect.truncate_in_transaction``: PostgreSQL) TRUNCATE it instead, its rows not counted (never on
  Redshift, where TRUNCATE commits). A warehouse that COPYs into the emptied target itself
  (PostgreSQL) runs the steps of ``emptied(spec)`` and then its COPY, without a staging table;
- ``merge``: DELETE the target rows whose key is staged, INSERT the staged rows deduplicated by key,
  the last by ``order_by`` winning (ROW_NUMBER, which both warehouses have; no MERGE, no ON CONFLICT);
- ``append``: INSERT every staged row; when the target may hold rows of the window already (``Clear``:
  after a ``watermark set``/``reset`` or a full snapshot), first DELETE its rows after the window's start
  in the cursor order (``clear_step``), so a window read again is never appended twice.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC
from decimal import Decimal
from typing import Any, Literal

from src.common.errors import WarehouseError
from src.common.keyorder import after_position
from src.common.policy import SchemaChange
from src.common.schema import Column, TableSchema
from src.plan.models import Watermark
from src.stage.models import StageResult
from src.warehouse.ddl import Dialect, DistSort, create_table_sql, insert_select_sql, lock_sql
from src.warehouse.state import Clear, Mode

Step = tuple[Literal["delete", "truncate", "insert"], str]  # truncate: empties, its tag has no count
ROW_NUMBER_ALIAS = "s3shift_rn"


@dataclass(frozen=True)
class LoadSpec:
    """One table's load, with every column's SQL already chosen by the dialect."""

    dialect: Dialect
    schema_name: str
    target_table: str
    schema: TableSchema
    stage: StageResult
    staging_table: str
    target_types: tuple[str, ...]  # per schema column, for CREATE TABLE target
    staging_types: tuple[str, ...]  # per schema column, mirroring the Parquet schema in order
    insert_exprs: tuple[str, ...]  # per schema column, an expression over the staging column
    distsort: DistSort | None = None
    mode: Mode = "replace"
    key: tuple[str, ...] = ()
    order_by: tuple[str, ...] = ()
    key_exprs: tuple[str, ...] = ()  # per key column, an expression over the QUALIFIED staging column
    schema_change: SchemaChange = "fail"  # what an incompatible change of the target's columns does
    clear: Clear | None = None  # append: the target rows the window may hold, deleted first

    @property
    def target_name(self) -> str:
        return f"{self.schema_name}.{self.target_table}"

    @property
    def target_sql(self) -> str:
        return self.dialect.qualify(self.schema_name, self.target_table)

    @property
    def staging_sql(self) -> str:
        return self.dialect.ident(self.staging_table)

    @property
    def has_staging(self) -> bool:
        """A manifest with no entries makes Redshift's COPY fail: no files, no staging table."""
        return bool(self.stage.files)


def emptied(spec: LoadSpec) -> LoadSpec:
    """The same load with no files staged: a replace's steps then only empty the target (and count it)."""
    return replace(spec, stage=replace(spec.stage, files=()))


def check_keys(spec: LoadSpec) -> None:
    """A merge needs a key; key and order columns must be columns of the table."""
    if spec.mode == "merge" and not spec.key:
        raise WarehouseError(
            f"merging into {spec.target_name} needs a key: the table has no primary key; set primary_key "
            "in the table's config or use a strategy that appends",
            table=spec.target_name,
        )
    names = set(spec.schema.names)
    for kind, columns in (("key", spec.key), ("order", spec.order_by)):
        missing = [c for c in columns if c not in names]
        if missing:
            raise WarehouseError(
                f"{kind} column {missing[0]!r} is not a column of {spec.target_name}: "
                "check the table's config",
                table=spec.target_name,
                column=missing[0],
            )


def target_create_sql(spec: LoadSpec) -> str:
    columns = list(zip(spec.schema.names, spec.target_types, strict=True))
    return create_table_sql(
        spec.dialect,
        spec.target_sql,
        columns,
        primary_key=spec.schema.primary_key,
        if_not_exists=True,
        distsort=spec.distsort,
    )


def staging_create_sql(spec: LoadSpec) -> str:
    columns = list(zip(spec.schema.names, spec.staging_types, strict=True))
    return create_table_sql(spec.dialect, spec.staging_sql, columns, temp=True)


def count_sql(spec: LoadSpec) -> str:
    return f"SELECT COUNT(*) FROM {spec.staging_sql}"


def drop_staging_sql(spec: LoadSpec, *, if_exists: bool = False) -> str:
    return f"DROP TABLE {'IF EXISTS ' if if_exists else ''}{spec.staging_sql}"


def target_lock_sql(spec: LoadSpec) -> str:
    """Serialises loads of one target: taken before the state is read for the concurrency guard."""
    return lock_sql(spec.dialect, spec.target_sql, "exclusive")


def apply_steps(spec: LoadSpec) -> list[Step]:
    """The statements that change the target, in order."""
    if not spec.has_staging:
        return _empty_all(spec) if spec.mode == "replace" else []
    if spec.mode == "replace":
        return [*_empty_all(spec), ("insert", insert_all_sql(spec))]
    if spec.mode == "append":
        return [("insert", insert_all_sql(spec))]
    return [("delete", _delete_staged_keys(spec)), ("insert", _insert_latest(spec))]


def clear_step(spec: LoadSpec) -> tuple[str, list[Any]] | None:
    """An append's DELETE of the target rows its window may hold (``spec.clear``), with its bound values;
    None when there is nothing to clear. The cursor columns are ``order_by``: ``(ts)``, ``(id)`` or
    ``(ts, id)``; a hybrid start ``(ts, id)`` clears ``ts > $1 OR (ts = $1 AND id > $2)``."""
    if spec.clear is None or spec.mode != "append" or not spec.order_by:
        return None
    ident = spec.dialect.ident
    columns = [spec.schema.column(name) for name in spec.order_by]
    after = spec.clear.after
    values = [_cursor_value(c, after) for c in columns] if after is not None else []
    if all(v is None for v in values):
        where = " AND ".join(f"{ident(c.name)} IS NOT NULL" for c in columns)
        return f"DELETE FROM {spec.target_sql} WHERE {where}", []
    where, order = after_position([ident(c.name) for c in columns], values, lambda i: f"${i + 1}")
    return f"DELETE FROM {spec.target_sql} WHERE {where}", values[: max(order) + 1]


def _cursor_value(column: Column, after: Watermark) -> Any:
    """The position's value of a cursor column, typed as the warehouse column holds it."""
    if column.logical in ("date", "timestamp", "timestamptz"):
        if after.ts is None:
            return None
        if column.logical == "date":
            return after.ts.date()
        return after.ts.replace(tzinfo=UTC) if column.logical == "timestamptz" else after.ts
    if after.id is None:
        return None
    return Decimal(after.id) if column.logical == "decimal" else int(after.id)


def _empty_all(spec: LoadSpec) -> list[Step]:
    """Remove every target row (the caller holds a lock that excludes other writers). TRUNCATE does not
    count them, and counting would read the whole old table for a number no report shows."""
    if not spec.dialect.truncate_in_transaction:
        return [("delete", f"DELETE FROM {spec.target_sql}")]
    return [("truncate", f"TRUNCATE {spec.target_sql}")]


def _pairs(spec: LoadSpec) -> list[tuple[str, str]]:
    return list(zip(spec.schema.names, spec.insert_exprs, strict=True))


def insert_all_sql(spec: LoadSpec) -> str:
    """INSERT every staged row into the target, by column name."""
    return insert_select_sql(spec.dialect, spec.target_sql, spec.staging_sql, _pairs(spec))


def _delete_staged_keys(spec: LoadSpec) -> str:
    """Keys are NOT NULL, so plain equality matches; the target table is not aliased (Redshift)."""
    ident = spec.dialect.ident
    exprs = spec.key_exprs or tuple(f"{spec.staging_sql}.{ident(k)}" for k in spec.key)
    match = " AND ".join(f"{spec.target_sql}.{ident(k)} = {e}" for k, e in zip(spec.key, exprs, strict=True))
    return f"DELETE FROM {spec.target_sql} USING {spec.staging_sql} WHERE {match}"


def row_number_alias(spec: LoadSpec) -> str:
    taken = {spec.dialect.fold(n) for n in spec.schema.names}
    alias, n = ROW_NUMBER_ALIAS, 0
    while alias in taken:
        n += 1
        alias = f"{ROW_NUMBER_ALIAS}_{n}"
    return alias


def dedup_order(spec: LoadSpec) -> list[str]:
    """The last row by ``order_by`` first (NULL cursors last); then every other non-binary column, so
    that ties are broken the same way on every run and both warehouses."""
    ident = spec.dialect.ident
    rest = [
        c.name
        for c in spec.schema.columns
        if c.name not in spec.key and c.name not in spec.order_by and c.logical != "binary"
    ]
    columns = [*spec.order_by, *rest] or list(spec.key)
    return [f"{ident(c)} DESC NULLS LAST" for c in columns]


def _insert_latest(spec: LoadSpec) -> str:
    ident = spec.dialect.ident
    rn = ident(row_number_alias(spec))
    partition = ", ".join(ident(k) for k in spec.key)
    ranked = (
        f"(SELECT *, ROW_NUMBER() OVER (PARTITION BY {partition} ORDER BY {', '.join(dedup_order(spec))}) "
        f"AS {rn} FROM {spec.staging_sql}) AS {ident('s3shift_latest')}"
    )
    names = ", ".join(ident(n) for n in spec.schema.names)
    exprs = ", ".join(spec.insert_exprs)
    return f"INSERT INTO {spec.target_sql} ({names}) SELECT {exprs} FROM {ranked} WHERE {rn} = 1"
