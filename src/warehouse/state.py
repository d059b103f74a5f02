"""The state log: where each table's position lives, in the warehouse, beside the data it covers.

``<state_schema>.s3shift_state`` is append-only: every load commits one row in the same transaction as
its data, and ``watermark set|reset`` appends one of their own. The latest row of a (pipeline, table)
is its current state; "latest" is ``seq`` (1 + the previous row's, computed under the locks that
serialise the writers of that table's state), then ``committed_at`` (the server's UTC clock).
Watermark ids are NUMERIC(20,0): a BIGINT UNSIGNED cursor may exceed 2**63.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Literal

from src.common.policy import SchemaChange
from src.common.schema import TableSchema
from src.plan.models import Watermark
from src.stage.models import StageResult
from src.warehouse.catalog import Executor, ensure_schema, ensure_table, table_columns
from src.warehouse.ddl import Dialect, DistSort, create_table_sql, lock_sql

STATE_TABLE = "s3shift_state"
READ_BATCH = 500  # tables whose current state one query reads (``read_latest_many``)
Mode = Literal["replace", "merge", "append"]


@dataclass(frozen=True)
class StateRow:
    pipeline: str
    table: str  # source "db.table"
    target: str  # "schema.table"
    strategy: str  # full_sync | timestamp_only | id_only | hybrid | manual | reset
    stage_id: str  # execution_id of the run that EXTRACTED the loaded data ("" for manual/reset)
    loaded_by: str  # execution_id of the run that loaded it (or ran the watermark command)
    watermark: Watermark | None  # None after a reset
    window_start: Watermark | None
    rows: int
    schema_hash: str
    extracted_at: datetime | None  # source clock (naive UTC) when the extraction started
    committed_at: datetime | None = None  # set by the warehouse on read


@dataclass(frozen=True)
class Clear:
    """An append whose target may already hold rows of its window (the position it starts at was set,
    reset, or left by a full snapshot, rather than reached by appending the windows before it): the target
    rows after ``after`` in the cursor order (None: every row whose cursor is not NULL) are deleted before
    the window is appended. Rows after the window's end are deleted too: the next windows read them again."""

    after: Watermark | None


@dataclass(frozen=True)
class LoadRequest:
    table: str  # source "db.table"
    schema: TableSchema
    target_table: str
    stage: StageResult
    execution_id: str  # this run
    mode: Mode
    key: tuple[str, ...]  # merge key (non-empty for "merge")
    order_by: tuple[str, ...]  # cursor columns; the LAST row by these wins the dedup
    state: StateRow  # written in the same transaction
    expect_stage: str | None  # the stage_id of the latest state row the caller saw ("" / None: none)
    rename: tuple[tuple[str, str], ...] = ()  # (source column, target column); key/order_by are source names
    schema_change: SchemaChange = "fail"  # an incompatible column change: fail, or rebuild the target
    distsort: DistSort | None = None  # Redshift DISTSTYLE/DISTKEY/SORTKEY/ENCODE, by target column name
    clear: Clear | None = None  # append: the target rows the window may hold already, deleted first
    needs_target: bool = False  # the target holds the rows before this window (``Commit.needs_target``)
    # told the rows the load inserted as soon as its COMMIT went through, before any step a cancellation
    # can interrupt: a run interrupted then still knows what it loaded (``load``'s result never arrives)
    committed: Callable[[int], None] | None = field(default=None, compare=False)


# (column, type); the first BOUND are bound from a StateRow, the last two computed by the server.
COLUMNS: tuple[tuple[str, str], ...] = (
    ("pipeline", "VARCHAR(256)"),
    ("source_table", "VARCHAR(1024)"),
    ("target_table", "VARCHAR(1024)"),
    ("strategy", "VARCHAR(32)"),
    ("stage_id", "VARCHAR(256)"),
    ("loaded_by", "VARCHAR(256)"),
    ("watermark_ts", "TIMESTAMP"),
    ("watermark_id", "NUMERIC(20,0)"),
    ("window_start_ts", "TIMESTAMP"),
    ("window_start_id", "NUMERIC(20,0)"),
    ("row_count", "BIGINT"),
    ("schema_hash", "VARCHAR(128)"),
    ("extracted_at", "TIMESTAMP"),
    ("committed_at", "TIMESTAMP"),
    ("seq", "BIGINT"),
)
BOUND = 13


def state_schema(cfg: Any) -> str:
    """The schema of the state table: ``state_schema`` when the target sets it, else its ``schema``."""
    return str(getattr(cfg, "state_schema", None) or cfg.schema)


def qualified(dialect: Dialect, schema_name: str) -> str:
    return dialect.qualify(schema_name, STATE_TABLE)


# ---- statements ---------------------------------------------------------------------------------


def create_sql(dialect: Dialect, schema_name: str) -> str:
    return create_table_sql(
        dialect,
        qualified(dialect, schema_name),
        COLUMNS,
        if_not_exists=True,
        distsort=DistSort(sortkey=("pipeline", "source_table", "seq")),
    )


def _where(dialect: Dialect, first: int) -> str:
    return f"{dialect.ident('pipeline')} = ${first} AND {dialect.ident('source_table')} = ${first + 1}"


def _names(dialect: Dialect, columns: Sequence[tuple[str, str]]) -> str:
    return ", ".join(dialect.ident(name) for name, _ in columns)


def latest_sql(dialect: Dialect, schema_name: str) -> str:
    """The current state of ($1 pipeline, $2 table)."""
    order = f"{dialect.ident('seq')} DESC, {dialect.ident('committed_at')} DESC"
    return (
        f"SELECT {_names(dialect, COLUMNS)} FROM {qualified(dialect, schema_name)} "
        f"WHERE {_where(dialect, 1)} ORDER BY {order} LIMIT 1"
    )


def latest_many_sql(dialect: Dialect, schema_name: str, count: int) -> str:
    """The current state of each of ``count`` tables ($2 ..) of ($1 pipeline): the row ``latest_sql``
    would return for each, in one scan of the state table."""
    names = _names(dialect, COLUMNS)
    order = f"{dialect.ident('seq')} DESC, {dialect.ident('committed_at')} DESC"
    tables = ", ".join(f"${i + 2}" for i in range(count))
    latest, table = dialect.ident("s3shift_latest"), qualified(dialect, schema_name)
    return (
        f"SELECT {names} FROM (SELECT {names}, ROW_NUMBER() OVER (PARTITION BY "
        f"{dialect.ident('source_table')} ORDER BY {order}) AS {latest} FROM {table} "
        f"WHERE {dialect.ident('pipeline')} = $1 AND {dialect.ident('source_table')} IN ({tables})) AS "
        f"{dialect.ident('s3shift_state_rows')} WHERE {latest} = 1"
    )


def stage_ids_sql(dialect: Dialect, schema_name: str) -> str:
    stage = dialect.ident("stage_id")
    return (
        f"SELECT DISTINCT {stage} FROM {qualified(dialect, schema_name)} "
        f"WHERE {_where(dialect, 1)} AND {stage} <> ''"
    )


def committed_sql(dialect: Dialect, schema_name: str) -> str:
    """How many state rows of ($1 pipeline, $2 table) have stage_id $3 and were loaded by $4: a load's own
    row, which only its commit makes visible."""
    ident = dialect.ident
    return (
        f"SELECT COUNT(*) FROM {qualified(dialect, schema_name)} WHERE {_where(dialect, 1)} "
        f"AND {ident('stage_id')} = $3 AND {ident('loaded_by')} = $4"
    )


def insert_sql(dialect: Dialect, schema_name: str) -> str:
    """One state row from BOUND parameters ($BOUND+1, $BOUND+2 repeat pipeline and table), numbered
    after the latest row of its table. Every parameter is CAST: an INSERT ... SELECT does not type
    them from the target columns."""
    table = qualified(dialect, schema_name)
    values = [f"CAST(${i + 1} AS {sqltype})" for i, (_, sqltype) in enumerate(COLUMNS[:BOUND])]
    values += [dialect.now_sql, f"COALESCE(MAX({dialect.ident('seq')}), 0) + 1"]
    order = [COLUMNS[i] for i in range(BOUND)] + [("committed_at", ""), ("seq", "")]
    return (
        f"INSERT INTO {table} ({_names(dialect, order)}) SELECT {', '.join(values)} "
        f"FROM {table} WHERE {_where(dialect, BOUND + 1)}"
    )


def lock_for_load(dialect: Dialect, schema_name: str) -> str:
    """Loads of different tables may write state at once (PostgreSQL); a watermark command may not."""
    return lock_sql(dialect, qualified(dialect, schema_name), "writers")


def lock_for_command(dialect: Dialect, schema_name: str) -> str:
    return lock_sql(dialect, qualified(dialect, schema_name), "exclusive")


# ---- values -------------------------------------------------------------------------------------


def _naive_utc(ts: datetime | None) -> datetime | None:
    if ts is None or ts.tzinfo is None:
        return ts
    return ts.astimezone(UTC).replace(tzinfo=None)


def _id(value: int | None) -> Decimal | None:
    return None if value is None else Decimal(value)


def insert_args(row: StateRow) -> tuple[Any, ...]:
    wm, start = row.watermark, row.window_start
    return (
        row.pipeline,
        row.table,
        row.target,
        row.strategy,
        row.stage_id,
        row.loaded_by,
        _naive_utc(wm.ts) if wm else None,
        _id(wm.id) if wm else None,
        _naive_utc(start.ts) if start else None,
        _id(start.id) if start else None,
        row.rows,
        row.schema_hash,
        _naive_utc(row.extracted_at),
        row.pipeline,
        row.table,
    )


def _watermark(ts: datetime | None, id_: Any) -> Watermark | None:
    if ts is None and id_ is None:
        return None
    return Watermark(ts=ts, id=None if id_ is None else int(id_))


def row_from_record(record: Any) -> StateRow:
    r = [record[i] for i in range(len(COLUMNS))]
    return StateRow(
        pipeline=r[0],
        table=r[1],
        target=r[2],
        strategy=r[3],
        stage_id=r[4],
        loaded_by=r[5],
        watermark=_watermark(r[6], r[7]),
        window_start=_watermark(r[8], r[9]),
        rows=int(r[10]),
        schema_hash=r[11],
        extracted_at=r[12],
        committed_at=r[13],
    )


# ---- I/O ----------------------------------------------------------------------------------------


async def read_latest(
    ex: Executor, dialect: Dialect, schema_name: str, pipeline: str, table: str
) -> StateRow | None:
    """The current state, or None when the table has none (or the state table does not exist)."""
    return (await read_latest_many(ex, dialect, schema_name, pipeline, [table])).get(table)


async def read_latest_many(
    ex: Executor, dialect: Dialect, schema_name: str, pipeline: str, tables: Sequence[str]
) -> dict[str, StateRow]:
    """The current state of each of ``tables`` that has one, by table (one query per ``READ_BATCH``
    tables, so a run of many tables reads them all at its start); empty when the state table does not
    exist."""
    wanted = list(dict.fromkeys(tables))
    if not wanted or not await table_columns(ex, dialect, schema_name, STATE_TABLE):
        return {}
    found: dict[str, StateRow] = {}
    for start in range(0, len(wanted), READ_BATCH):
        chunk = wanted[start : start + READ_BATCH]
        for record in await ex.fetch(latest_many_sql(dialect, schema_name, len(chunk)), pipeline, *chunk):
            row = row_from_record(record)
            found[row.table] = row
    return found


async def stage_ids(ex: Executor, dialect: Dialect, schema_name: str, pipeline: str, table: str) -> set[str]:
    if not await table_columns(ex, dialect, schema_name, STATE_TABLE):
        return set()
    records = await ex.fetch(stage_ids_sql(dialect, schema_name), pipeline, table)
    return {str(r[0]) for r in records}


STATE_INDEX = "s3shift_state_latest"
_INDEX_EXISTS = (
    "SELECT COUNT(*) FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
    "WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind = 'i'"
)


async def ensure(ex: Executor, dialect: Dialect, schema_name: str) -> None:
    """Create the state schema and table if missing (race-safe, outside any data transaction). On
    PostgreSQL also the index every state query uses, (pipeline, source_table, seq): without it each
    table's state read, guard and insert would scan the whole append-only log (Redshift has no indexes:
    the table's sort key orders it the same way)."""
    await ensure_schema(ex, dialect, schema_name)
    await ensure_table(ex, dialect, schema_name, STATE_TABLE, create_sql(dialect, schema_name))
    if sql := index_sql(dialect, schema_name):
        await _ensure_index(ex, dialect, schema_name, sql)


def index_sql(dialect: Dialect, schema_name: str) -> str | None:
    """The state log's index (None where the warehouse has no indexes: Redshift)."""
    if dialect.name != "postgres":
        return None
    columns = ", ".join(dialect.ident(c) for c in ("pipeline", "source_table", "seq"))
    table = qualified(dialect, schema_name)
    return f"CREATE INDEX IF NOT EXISTS {dialect.ident(STATE_INDEX)} ON {table} ({columns})"


async def _ensure_index(ex: Executor, dialect: Dialect, schema_name: str, sql: str) -> None:
    async def exists() -> bool:
        return bool(await ex.fetchval(_INDEX_EXISTS, dialect.fold(schema_name), STATE_INDEX))

    if await exists():
        return
    try:
        await ex.execute(sql)
    except Exception:  # another run created it at the same moment
        if not await exists():
            raise


async def insert(ex: Executor, dialect: Dialect, schema_name: str, row: StateRow) -> None:
    await ex.execute(insert_sql(dialect, schema_name), *insert_args(row))
