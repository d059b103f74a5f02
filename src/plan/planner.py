"""Pure planning: pipeline config (+ the source schema and the warehouse state) -> what to do per table."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Literal

from src.common.errors import ConfigError
from src.common.naming import split_table
from src.common.policy import ColumnSelection, TypePolicy
from src.common.schema import TableSchema
from src.config.models import Pipeline, Strategy
from src.plan.models import Watermark, Window

MIB = 1024 * 1024
DEFAULT_TS_COLUMN = "updated_at"  # the default of the tool s3shift replaces
DEFAULT_ID_COLUMN = "id"
LoadMode = Literal["replace", "merge", "append"]


@dataclass(frozen=True)
class TablePlan:
    table: str  # "db.table" as requested
    database: str
    source_table: str
    strategy: Strategy
    target_schema: str
    target_table: str
    batch_size: int
    file_size_bytes: int
    primary_key: tuple[str, ...] | None  # configured override of the source's key
    ts_column: str | None  # configured cdc_timestamp_column
    id_column: str | None  # configured cdc_id_column
    lag_seconds: float
    lookback_seconds: float
    policy: TypePolicy = field(default_factory=TypePolicy)
    columns: ColumnSelection = field(default_factory=ColumnSelection)
    where: str | None = None
    diststyle: str | None = None
    distkey: str | None = None
    sortkey: tuple[str, ...] = ()
    encode: tuple[tuple[str, str], ...] = ()

    def key_path(self, what: str) -> str:
        return f"tables.{self.table}.{what}"


@dataclass(frozen=True)
class Resolved:
    """A plan completed with the source schema: how the window is read and how it is loaded."""

    mode: LoadMode
    key: tuple[str, ...]  # merge key (empty for replace/append)
    order_by: tuple[str, ...]  # cursor columns: the last row by these wins within one stage
    ts_column: str | None
    id_column: str | None


def plan_table(pipeline: Pipeline, table: str) -> TablePlan:
    """Raise ConfigError (naming the pipeline and table) when the table cannot be planned."""
    try:
        database, name = split_table(table)
    except ValueError as exc:
        raise ConfigError(f"{exc} (pipeline '{pipeline.name}')", table=table) from None
    cfg = pipeline.table(table)
    return TablePlan(
        table=table,
        database=database,
        source_table=name,
        strategy=cfg.cdc_strategy,
        target_schema=pipeline.target.schema,
        target_table=cfg.target_table,
        batch_size=cfg.batch_size,
        file_size_bytes=cfg.file_size_mb * MIB,
        primary_key=cfg.primary_key,
        ts_column=cfg.cdc_timestamp_column,
        id_column=cfg.cdc_id_column,
        lag_seconds=cfg.lag_seconds,
        lookback_seconds=cfg.lookback_seconds,
        policy=cfg.type_policies,
        columns=cfg.columns,
        where=cfg.where,
        diststyle=cfg.diststyle,
        distkey=cfg.distkey,
        sortkey=cfg.sortkey,
        encode=cfg.encode,
    )


def resolve(plan: TablePlan, schema: TableSchema) -> Resolved:
    """Choose columns and the load mode. Keyed tables merge; unkeyed ones append exactly once per
    window; what needs a key and has none is refused with what to configure."""
    key = schema.primary_key
    if plan.strategy == "full_sync":
        return Resolved("replace", (), (), None, None)
    ts = (plan.ts_column or DEFAULT_TS_COLUMN) if plan.strategy in ("timestamp_only", "hybrid") else None
    ident: str | None = None
    if plan.strategy in ("id_only", "hybrid"):
        ident = plan.id_column or (key[0] if len(key) == 1 else DEFAULT_ID_COLUMN)
    for column, what in ((ts, "cdc_timestamp_column"), (ident, "cdc_id_column")):
        if column is not None and column not in schema.names:
            raise _cursor_missing(plan, schema, column, what)
    if plan.lookback_seconds and not key:
        raise ConfigError(
            f"{plan.table} has no primary key, so lookback_seconds cannot be used (re-read rows could not be "
            f"merged and would be duplicated); configure {plan.key_path('primary_key')} or set lookback to 0",
            table=plan.table,
            key=plan.key_path("lookback_seconds"),
        )
    order_by = tuple(c for c in (ts, ident) if c is not None)
    return Resolved("merge" if key else "append", key, order_by, ts, ident)


def _cursor_missing(plan: TablePlan, schema: TableSchema, column: str, what: str) -> ConfigError:
    """A cursor column the synced columns lack: left out by the column selection (the merge and the
    watermark read it), or not in the source table at all."""
    cols = plan.columns
    selection = "exclude_columns" if column in cols.exclude else "include_columns"
    if column in cols.exclude or (cols.include and column not in cols.include):
        return ConfigError(
            f"pipeline table {plan.table}: {selection} leaves out the {what} '{column}', which the "
            f"{plan.strategy} window and the merge read — keep it in the synced columns, or set "
            f"{plan.key_path(what)} to a synced column",
            table=plan.table,
            key=plan.key_path(selection),
        )
    return ConfigError(
        f"pipeline table {plan.table}: {what} '{column}' is not a column of the source table "
        f"(columns: {', '.join(schema.names)}); set {plan.key_path(what)}",
        table=plan.table,
        key=plan.key_path(what),
    )


def window(plan: TablePlan, resolved: Resolved, position: Watermark | None) -> Window:
    """The next window after ``position`` (its end is fixed later from the source)."""
    return Window(plan.strategy, resolved.ts_column, resolved.id_column, start=position)


def read_window(plan: TablePlan, win: Window) -> Window:
    """What to actually read: the window, started ``lookback_seconds`` earlier (merge absorbs the overlap)."""
    if not plan.lookback_seconds or win.start is None or win.start.ts is None:
        return win
    try:
        start = win.start.ts - timedelta(seconds=plan.lookback_seconds)
    except OverflowError:  # a watermark set near the year 1: read from the earliest time there is
        start = datetime.min.replace(tzinfo=win.start.ts.tzinfo)
    return replace(win, start=Watermark(ts=start, id=None))
