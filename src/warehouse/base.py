"""The warehouse contract, and the commit protocol both loaders share.

A load (DESIGN.md section 4, research/reliability.md sections 1.7-1.8):

1. outside any data transaction, each race-safe: the target schema, the state schema and table (once
   per warehouse); on a table's first load (no state row to plan from) the target table, created from
   the schema if missing, or compared with the load's columns (``evolve``): an incompatible change fails
   here, before anything changed, and the changes a warehouse cannot make inside a transaction
   (Redshift's VARCHAR widening) are made here. A table loaded before is not asked about here: step 3
   finds it under the lock, and a target missing after all (dropped; the LOCK's undefined_table) or
   needing such a change rolls back, is prepared as above, and the transaction runs again (once);
2. the staging table (a temp table mirroring the Parquet schema in order), filled by COPY, its row
   count checked against the stage manifest;
3. LOCK the target (serialising loads of one table), LOCK the state table for writing (and TRUNCATE
   the target when the mode empties it so: it depends on nothing the next steps decide, and a failed
   guard rolls it back), read the latest state row and compare it with the one the caller planned from
   (the concurrency guard), read the target's columns (``catalog.table_shape``: once per load);
4. evolve the target (ADD COLUMN, ALTER COLUMN TYPE, or a rebuild; planned from that read, under the
   lock), change the target by mode (``statements.apply_steps``), drop the staging table, append the
   state row, COMMIT.

A table's first merge on PostgreSQL (``first_merge``) takes step 3 before step 2, and under its LOCKs
COPYs the stage straight into the target when the target is empty and that gives the merge's rows
(``direct``); else it fills the staging table there and goes on as any merge.

Steps 2-4 are ONE transaction on PostgreSQL, in READ COMMITTED: the guard's SELECT sees every commit
that the LOCK waited for. On Redshift a transaction's snapshot is fixed by its first query, so step 2
runs before the transaction and the LOCKs are its first statements (``Dialect.snapshot_per_transaction``);
Redshift's LOCK excludes everyone, so the commit phases of all loads into one state table take turns,
which also keeps its serializable isolation from aborting them. Any failure rolls the transaction back:
target and state are untouched; the staging table is dropped (or dies with the session).

Round trips: statements without bound values that run back to back go as one message (``batch``):
BEGIN, the LOCKs and a TRUNCATE (on PostgreSQL with a staging table, BEGIN, then the rest after the fill).
``render`` lists the messages in the order they are sent, built by the same functions.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Protocol

import anyio
import pyarrow as pa

from src.common.errors import WarehouseError, describe
from src.common.log import get_logger
from src.stage.models import StageResult
from src.warehouse import evolve
from src.warehouse import state as st
from src.warehouse.catalog import (
    MISSING,
    Executor,
    PrimaryKey,
    Shape,
    ensure_schema,
    ensure_table,
    shape_sql,
    table_layout,
    table_shape,
)
from src.warehouse.ddl import check_distsort, check_identifiers
from src.warehouse.direct import Direct, copy_if_empty, direct_sqls, takes_created
from src.warehouse.errors import NOT_NULL_VIOLATION, UNIQUE_VIOLATION, outcome_unknown, sqlstate_of
from src.warehouse.state import Clear, LoadRequest, Mode, StateRow
from src.warehouse.statements import (
    LoadSpec,
    Step,
    apply_steps,
    check_keys,
    clear_step,
    count_sql,
    drop_staging_sql,
    staging_create_sql,
    target_create_sql,
    target_lock_sql,
)

__all__ = [
    "BatchOpener",
    "Clear",
    "Commit",
    "Executor",
    "LoadRequest",
    "LoadResult",
    "LoadSpec",
    "Mode",
    "StateRow",
    "StreamedLoad",
    "Warehouse",
    "batch",
    "render",
    "run_load",
    "transaction",
]

BatchOpener = Callable[[StageResult], AsyncIterator[pa.RecordBatch]]
# Loads the staged files into the (quoted) staging table; returns the rows it loaded when the COPY's
# command tag says so (PostgreSQL's "COPY n"), else None and the staging table is counted.
Fill = Callable[[str], Awaitable[int | None]]
ROLLBACK_TIMEOUT = 30.0
UNDEFINED_TABLE = "42P01"  # SQLSTATE of a LOCK on a missing table (both warehouses)
log = get_logger("warehouse")


@dataclass(frozen=True)
class LoadResult:
    rows_loaded: int  # rows inserted into the target
    target: str  # "schema.table"
    rows_deleted: int | None = 0  # None: emptied by TRUNCATE, which does not count them
    schema_changes: tuple[str, ...] = ()  # what evolving the target did, in words


class StreamedLoad(Protocol):
    """A replace loaded while its stage is written (``Warehouse.stream_replace``): the target is locked,
    guarded and emptied in an open transaction before the first row is read; ``copy`` loads the rows as
    they are extracted; ``finish`` checks them against the completed stage and appends the state row;
    leaving the context commits (or, on any error, rolls back: target and state as they were)."""

    async def copy(self, batches: AsyncIterator[pa.RecordBatch]) -> None: ...

    async def finish(self, stage: StageResult) -> LoadResult: ...


class Warehouse(Protocol):
    @property
    def max_varchar_bytes(self) -> int | None:
        """The longest text a column can hold, in bytes (None: unbounded)."""
        ...

    @property
    def max_row_bytes(self) -> int | None:
        """The most bytes a row's values may hold in a load (None: unbounded)."""
        ...

    @property
    def loads_while_staging(self) -> bool:
        """A full replace can be loaded while it is staged (``stream_replace``)."""
        ...

    async def ping(self) -> None: ...

    async def read_state(self, pipeline: str, table: str) -> StateRow | None: ...

    async def read_states(self, pipeline: str, tables: Sequence[str]) -> dict[str, StateRow]: ...

    async def committed_stage_ids(self, pipeline: str, table: str) -> set[str]: ...

    async def existing_tables(self, schema_name: str, tables: Sequence[str]) -> set[str]:
        """Which of ``tables`` exist in the schema, views too (one listing of the schema); names as
        configured (folded where the warehouse folds), as ``tables`` spells them."""
        ...

    async def write_state(self, row: StateRow) -> None: ...

    def check_load(self, req: LoadRequest) -> None:
        """Raise what ``load(req)`` would refuse before touching the warehouse (its spec: names, keys,
        physical design); no I/O."""
        ...

    async def load(self, req: LoadRequest) -> LoadResult: ...

    async def create_target(self, req: LoadRequest) -> bool:
        """The target ``load(req)`` would create, created empty if missing (no rows, no state row): what a
        table's first window shows when it is empty. True when it was missing."""
        ...

    def stream_replace(self, req: LoadRequest) -> AbstractAsyncContextManager[StreamedLoad] | None:
        """A load of the replace ``req`` that takes the rows while they are staged, if this warehouse can
        do that now (None: load the stage once it is complete)."""
        ...

    def render_load(self, req: LoadRequest) -> list[str]: ...


# Called when a COMMIT's answer was lost (``errors.outcome_unknown``) with that failure: returns when the
# transaction committed after all, raises (saying what became of it) when it did not or cannot be known.
Confirm = Callable[[BaseException], Awaitable[None]]


@dataclass(frozen=True)
class Commit:
    """The state row a load appends with its data, and the guard: the stage_id of the latest state row
    the caller planned from ("" or None: no state yet). ``confirm``: how to learn, on a new connection,
    whether the transaction committed when its COMMIT's answer is lost."""

    row: StateRow
    expect_stage: str | None
    state_schema: str
    confirm: Confirm | None = None
    needs_target: bool = False  # the rows before this window are in the target (an incremental position
    # committed there): a target missing now lost them, and the load must not create it afresh


def batch(*statements: str) -> str:
    """Statements without bound values as one message (one round trip), run in order; the first that
    fails stops the rest and is raised."""
    return "; ".join(statements)


@asynccontextmanager
async def transaction(ex: Executor, begin: str, confirm: Confirm | None = None) -> AsyncIterator[None]:
    """``begin`` (a BEGIN, and whatever is sent with it in one ``batch``), the body, COMMIT. Any failure,
    the begin's included, rolls back; the rollback survives cancellation and is time-boxed. A COMMIT once
    sent is seen through, cancellation or not (its outcome is what the run must report: a SIGTERM then
    ends the run at the next step); one whose answer is lost is settled by ``confirm`` when given."""
    try:
        await ex.execute(begin)
        yield
    except BaseException:
        with anyio.CancelScope(shield=True), anyio.move_on_after(ROLLBACK_TIMEOUT):
            try:
                await ex.execute("ROLLBACK")
            except Exception as rollback_exc:  # the original failure matters more
                log.debug("rollback failed: %s", rollback_exc)
        raise
    with anyio.CancelScope(shield=True):  # bounded: a server that stops answering fails it (``watch``)
        try:
            await ex.execute("COMMIT")
        except Exception as exc:
            if confirm is None or not outcome_unknown(exc):
                raise
            log.warning("the answer to a COMMIT was lost (%s): checking whether it committed", exc)
            await confirm(exc)


class _Unprepared(Exception):
    """The target needs a change no transaction can make (``evolve.Plan.before``): roll back, prepare it."""


def stages_inside(spec: LoadSpec) -> bool:
    """The staging table is created and filled inside the commit transaction, before its LOCKs
    (PostgreSQL); on Redshift before the transaction, whose snapshot its first statement fixes."""
    return spec.has_staging and not spec.dialect.snapshot_per_transaction


def lock_sqls(spec: LoadSpec, commit: Commit | None) -> list[str]:
    """The LOCKs the commit transaction takes before its guard reads the state: target, then state."""
    state = [st.lock_for_load(spec.dialect, commit.state_schema)] if commit is not None else []
    return [target_lock_sql(spec), *state]


def truncate_sqls(spec: LoadSpec) -> list[str]:
    """The TRUNCATE among the target's changes, which goes with the LOCKs: it empties whatever columns
    the target has, so it waits for neither the guard (which rolls it back) nor the evolution."""
    return [sql for kind, sql in apply_steps(spec) if kind == "truncate"]


def opening_sqls(spec: LoadSpec, commit: Commit | None, *, first: bool = False) -> list[str]:
    """The commit transaction's first messages: BEGIN with the LOCKs (and ``truncate_sqls``), or
    (``stages_inside``, unless ``first``: a ``first_merge``) BEGIN, and the LOCKs once the staging table
    is filled."""
    begin, locking = spec.dialect.begin_sql, [*lock_sqls(spec, commit), *truncate_sqls(spec)]
    if stages_inside(spec) and not first:
        return [begin, batch(*locking)]
    return [batch(begin, *locking)]


def first_merge(spec: LoadSpec, commit: Commit | None, direct: Direct | None) -> Direct | None:
    """``direct`` when this load is a merge planned from no state row (a table's first) into a warehouse
    that can COPY into the target: its staging table is filled only once the LOCKs are held, and only if
    the target cannot take the stage directly (``direct.copy_if_empty``)."""
    if direct is None or spec.mode != "merge" or not stages_inside(spec):
        return None
    return direct if commit is None or not commit.expect_stage else None


async def run_load(
    ex: Executor,
    spec: LoadSpec,
    fill: Fill,
    commit: Commit | None,
    ready: set[str] | None = None,
    direct: Direct | None = None,
) -> LoadResult:
    """The protocol in the module docstring; ``commit`` None = no state row and no guard; ``ready`` as in
    ``prepare``; ``direct``: how this warehouse COPYs a stage into the target (``first_merge``)."""
    prepared = await prepare(ex, spec, commit, ready)
    if stages_inside(spec):
        first = first_merge(spec, commit, direct)
        async with committing(ex, spec, commit, prepared, fill=fill, first=first) as (result, _):
            pass
        return result
    try:
        await load_staging(ex, spec, fill)
        async with committing(ex, spec, commit, prepared) as (result, _):
            pass
        return result
    except BaseException:
        await _drop_quietly(ex, spec)
        raise


@asynccontextmanager
async def committing(
    ex: Executor,
    spec: LoadSpec,
    commit: Commit | None,
    prepared: tuple[str, ...] | None,
    *,
    fill: Fill | None = None,
    record: bool = True,
    first: Direct | None = None,
) -> AsyncIterator[tuple[LoadResult, Shape]]:
    """The commit transaction (``opening_sqls``, the staging fill between them when ``fill`` is given,
    then ``apply``) around the body, which gets ``apply``'s result; leaving commits, an error rolls back.
    ``first`` (``first_merge``): ``apply`` fills the staging table, unless it COPYs into the target.
    A target not prepared before (``prepared`` None) that turns out missing or to need a change no
    transaction can make is prepared now and the transaction run again: only until the body starts."""
    late = (first, fill) if first is not None and fill is not None else None
    while True:
        started = False
        try:
            begin, *then = opening_sqls(spec, commit, first=late is not None)
            async with transaction(ex, begin, commit.confirm if commit is not None else None):
                if fill is not None and late is None:
                    await load_staging(ex, spec, fill)
                for sql in then:
                    await ex.execute(sql)
                applied = await apply(ex, spec, commit, prepared, record=record, late=late)
                started = True
                yield applied
            return
        except Exception as exc:
            if started or prepared is not None or not _unprepared(exc):
                raise
            if commit is not None and commit.needs_target and sqlstate_of(exc) == UNDEFINED_TABLE:
                raise _target_gone(spec, commit) from exc
        log.debug("%s: preparing the target, then the load again", spec.target_name)
        prepared = await prepare_target(ex, spec)


def _target_gone(spec: LoadSpec, commit: Commit) -> WarehouseError:
    """The target of a table loaded incrementally is gone (dropped since the run began, say): creating it
    afresh and loading this window alone would silently lose every row before the window."""
    return WarehouseError(
        f"{spec.target_name} no longer exists, though the watermark of {commit.row.table} was committed "
        "there (dropped during this run?): nothing was loaded; the next run reads the table again from "
        "the beginning",
        table=spec.target_name,
        retryable=True,
    )


def _unprepared(exc: Exception) -> bool:
    return isinstance(exc, _Unprepared) or sqlstate_of(exc) == UNDEFINED_TABLE


async def prepare(
    ex: Executor, spec: LoadSpec, commit: Commit | None, ready: set[str] | None = None
) -> tuple[str, ...] | None:
    """What every load does before its transaction: check the spec, create the schema and the state table
    if missing, and on a table's first load (the caller planned from no state row) create the target if
    missing or plan its evolution. Returns the evolution's notes; None when the target was not examined
    (``committing`` finds it under its lock). ``ready``: the schemas and state tables already ensured by
    this warehouse's earlier loads (updated here), which are not asked about again."""
    check_spec(spec)
    ready = set() if ready is None else ready
    await _ensure_schema(ex, spec, ready)
    if commit is not None and (state := f"state {spec.dialect.fold(commit.state_schema)}") not in ready:
        await st.ensure(ex, spec.dialect, commit.state_schema)
        ready.add(state)
    if commit is not None and commit.expect_stage:
        return None
    return await prepare_target(ex, spec)


async def _ensure_schema(ex: Executor, spec: LoadSpec, ready: set[str]) -> None:
    if (schema := f"schema {spec.dialect.fold(spec.schema_name)}") not in ready:
        await ensure_schema(ex, spec.dialect, spec.schema_name)
        ready.add(schema)


async def create_target(ex: Executor, spec: LoadSpec, ready: set[str]) -> bool:
    """The target of a load with no rows to bring (an incremental table's first window, empty), created
    empty as ``prepare`` creates it, its schema too; an existing one is left as it is (no evolution
    without a load), and no state row is written. True when it was missing."""
    check_spec(spec)
    await _ensure_schema(ex, spec, ready)
    return await ensure_table(ex, spec.dialect, spec.schema_name, spec.target_table, target_create_sql(spec))


def check_spec(spec: LoadSpec) -> None:
    check_identifiers(spec.dialect, spec.schema_name, spec.target_table, spec.schema)
    check_keys(spec)
    check_distsort(spec.distsort, spec.schema, spec.target_name)


async def prepare_target(ex: Executor, spec: LoadSpec) -> tuple[str, ...]:
    """Create the target if missing; else plan its evolution (raising for an incompatible change before
    anything changed) and make the changes that cannot run inside a transaction. Returns their notes."""
    existing, _ = await table_shape(ex, spec.dialect, spec.schema_name, spec.target_table)
    if not existing:
        await ensure_table(ex, spec.dialect, spec.schema_name, spec.target_table, target_create_sql(spec))
        return ()
    plan = evolve.plan(spec, existing)
    for sql in plan.before:
        await ex.execute(sql)
    return plan.notes(before=True)


async def fill_staging(ex: Executor, spec: LoadSpec, fill: Fill) -> int:
    """Create and fill the staging table; return its row count."""
    await ex.execute(staging_create_sql(spec))
    copied = await fill(spec.staging_sql)
    return int(await ex.fetchval(count_sql(spec))) if copied is None else copied


async def load_staging(ex: Executor, spec: LoadSpec, fill: Fill) -> int:
    """``fill_staging`` when the stage has files; its row count, which must equal the stage's."""
    loaded = await fill_staging(ex, spec, fill) if spec.has_staging else 0
    check_rows(spec, spec.stage, loaded, f"staging for {spec.target_name}")
    return loaded


def check_rows(spec: LoadSpec, stage: StageResult, loaded: int, into: str) -> None:
    """The rows loaded ``into`` the staging table or the target must be the rows ``stage`` promised."""
    if loaded != stage.rows:
        raise WarehouseError(
            f"loaded {loaded} rows into {into} but the stage manifest {stage.manifest_url} promised "
            f"{stage.rows}: nothing was changed; re-run the table",
            table=spec.target_name,
            file=stage.manifest_url,
        )


async def apply(
    ex: Executor,
    spec: LoadSpec,
    commit: Commit | None,
    prepared: tuple[str, ...] | None,
    *,
    record: bool = True,
    late: tuple[Direct, Fill] | None = None,
) -> tuple[LoadResult, Shape]:
    """Inside the commit transaction, its LOCKs held (``opening_sqls``): guard, schema evolution, target
    changes, state row (not when ``record`` is false: the caller appends it once the rows it loads are
    known). ``late``: the staging table is not filled yet (``first_merge``): COPY into the target if it
    can (``direct.copy_if_empty``), else fill it now. Returns the result and the target's shape as read
    under the lock (``MISSING`` when the evolution changed it)."""
    if commit is not None:
        await guard(ex, spec, commit)
    notes, shape, key = await evolve_locked(ex, spec, prepared)
    if late is not None:
        copied = await copy_if_empty(ex, spec, shape, key, late[0])
        if copied is not None:
            check_rows(spec, spec.stage, copied, spec.target_name)
            if commit is not None and record:
                await st.insert(ex, spec.dialect, commit.state_schema, commit.row)
            return LoadResult(copied, spec.target_name, schema_changes=(*(prepared or ()), *notes)), shape
        await load_staging(ex, spec, late[1])
    counts = {"delete": 0, "insert": 0}
    if (clear := clear_step(spec)) is not None:
        counts["delete"] += _affected(await ex.execute(clear[0], *clear[1]))
    steps = changing_steps(spec)  # the DELETEs come before the INSERT
    for kind, sql in [step for step in steps if step[0] != "insert"]:
        counts[kind] += _affected(await ex.execute(sql))
    notes = (*notes, *await rekey(ex, spec, key))  # the rows this load replaces gone, its own not yet in
    for kind, sql in [step for step in steps if step[0] == "insert"]:
        counts[kind] += _affected(await ex.execute(sql))
    deleted = None if truncate_sqls(spec) else counts["delete"]
    if spec.has_staging:
        await ex.execute(drop_staging_sql(spec))
    if commit is not None and record:
        await st.insert(ex, spec.dialect, commit.state_schema, commit.row)
    changes = (*(prepared or ()), *notes)
    return LoadResult(counts["insert"], spec.target_name, rows_deleted=deleted, schema_changes=changes), shape


def changing_steps(spec: LoadSpec) -> list[Step]:
    """``apply_steps`` after the guard and the evolution: all but the TRUNCATE sent with the LOCKs."""
    return [(kind, sql) for kind, sql in apply_steps(spec) if kind != "truncate"]


async def evolve_locked(
    ex: Executor, spec: LoadSpec, prepared: tuple[str, ...] | None
) -> tuple[tuple[str, ...], Shape, PrimaryKey | None]:
    """Read the target under its lock (another load may have changed it since any earlier read), plan
    its evolution and apply it. Returns the notes, the shape read (``MISSING`` if it changed) and the
    primary key read with it (None if the evolution changed the table: a rebuild gives it a new one)."""
    shape, key = await table_layout(ex, spec.dialect, spec.schema_name, spec.target_table)
    plan = evolve.plan(spec, shape[0])
    if plan.before and prepared is None:
        raise _Unprepared(spec.target_name)
    if plan.before:
        raise WarehouseError(
            f"the columns of {spec.target_name} changed while this load prepared it: nothing was "
            "changed; rerun",
            table=spec.target_name,
            retryable=True,
        )
    for sql in plan.inside:
        await ex.execute(sql)
    if plan.inside:
        return plan.notes(before=False), MISSING, None
    return plan.notes(before=False), shape, key


async def rekey(ex: Executor, spec: LoadSpec, key: PrimaryKey | None) -> tuple[str, ...]:
    """Give the target the source's primary key when the source's changed since the target was created (a
    key widened to ``(id, tenant)``, say), inside the data transaction, after the load's DELETE (or
    TRUNCATE) and before its INSERT: the target's rows it keeps are the ones the new key must fit, and
    the INSERT's rows fit it by the staging table's dedup. PostgreSQL enforces keys: the old one refused
    every later load (``_rekey_enforced``). Redshift's are informational, but its planner trusts them (a
    SELECT DISTINCT may return duplicates, joins be dropped), so a stale one is worse than none
    (``_rekey_informational``). A target without a primary key is left
    so (one may have been dropped on purpose). ``key``: the target's, read with its shape under the lock
    (None: read it again, the evolution changed the table). Returns the change's note."""
    if key is None:
        _, key = await table_layout(ex, spec.dialect, spec.schema_name, spec.target_table)
    wanted = tuple(spec.schema.primary_key)
    if not key.columns or _same_key(spec, key, wanted):
        return ()
    if spec.dialect.name == "postgres":
        return await _rekey_enforced(ex, spec, key, wanted)
    return await _rekey_informational(ex, spec, key, wanted)


def _same_key(spec: LoadSpec, key: PrimaryKey, wanted: tuple[str, ...]) -> bool:
    """PostgreSQL's key in key order; Redshift's as a set (its catalog read gives no order: ``catalog``)."""
    if spec.dialect.name == "postgres":
        return key.columns == wanted
    return set(key.columns) == {spec.dialect.fold(c) for c in wanted}


def _key_note(key: PrimaryKey, wanted: tuple[str, ...]) -> str:
    return f"primary key ({', '.join(key.columns)}) -> ({', '.join(wanted) or 'none'})"


async def _rekey_enforced(
    ex: Executor, spec: LoadSpec, key: PrimaryKey, wanted: tuple[str, ...]
) -> tuple[str, ...]:
    """PostgreSQL: drop the old key and add the new one in one statement. After a replace emptied the target
    any key fits; a merge keeps its other rows, which must be unique and non-NULL under the new key, else
    the load fails saying so, nothing changed."""
    d = spec.dialect
    changes = [f"DROP CONSTRAINT {d.ident(key.name)}"]
    if wanted:
        changes.append(f"ADD PRIMARY KEY ({', '.join(d.ident(c) for c in wanted)})")
    try:
        await ex.execute(f"ALTER TABLE {spec.target_sql} {', '.join(changes)}")
    except Exception as exc:
        if sqlstate_of(exc) not in (UNIQUE_VIOLATION, NOT_NULL_VIOLATION):
            raise
        raise WarehouseError(
            f"the primary key of the source of {spec.target_name} changed from ({', '.join(key.columns)}) to "
            f"({', '.join(wanted) or 'none'}), but the target's rows are not unique and non-NULL under the "
            f"new key ({describe(exc)}): nothing was changed; sync the table once with cdc_strategy "
            "full_sync, or drop the target and rerun",
            table=spec.target_name,
        ) from exc
    return (f"{_key_note(key, wanted)}: the source's key changed",)


async def _rekey_informational(
    ex: Executor, spec: LoadSpec, key: PrimaryKey, wanted: tuple[str, ...]
) -> tuple[str, ...]:
    """Redshift: drop the old key (one ALTER TABLE action per statement, as Redshift requires; both run in a
    transaction block there) and declare the new one only where it is true, for Redshift checks nothing:
    its columns must be NOT NULL in the target (Redshift's ADD PRIMARY KEY refuses a nullable column and no
    ALTER makes one NOT NULL) and the rows the load keeps unique under it. Otherwise
    the target keeps no key (the load goes on; the note and a warning say why and how to get it)."""
    d = spec.dialect
    drop = f"ALTER TABLE {spec.target_sql} DROP CONSTRAINT {d.ident(key.name)}"
    why = await _undeclarable(ex, spec, key, wanted) if wanted else None
    if why is None:
        columns = ", ".join(d.ident(c) for c in wanted)
        adds = [f"ALTER TABLE {spec.target_sql} ADD PRIMARY KEY ({columns})"] if wanted else []
        await ex.execute(batch(drop, *adds))
        return (f"{_key_note(key, wanted)}: the source's key changed",)
    await ex.execute(drop)
    note = (
        f"{_key_note(key, ())}: the source's key changed to ({', '.join(wanted)}), which the target cannot "
        f"declare ({why}); Redshift's planner trusts a declared key, so none is kept — drop the target and "
        "rerun to have it created with the new key"
    )
    log.warning("%s: %s", spec.target_name, note)
    return (note,)


async def _undeclarable(ex: Executor, spec: LoadSpec, key: PrimaryKey, wanted: tuple[str, ...]) -> str | None:
    """Why Redshift's target cannot truthfully declare ``wanted`` as its key, or None when it can."""
    d = spec.dialect
    nullable = [c for c in wanted if d.fold(c) not in key.not_null]
    if nullable:
        return f"{', '.join(nullable)} nullable in the target"
    columns = ", ".join(d.ident(c) for c in wanted)
    duplicate = f"SELECT 1 FROM {spec.target_sql} GROUP BY {columns} HAVING COUNT(*) > 1 LIMIT 1"
    return "its rows not unique under it" if await ex.fetch(duplicate) else None


async def guard(ex: Executor, spec: LoadSpec, commit: Commit) -> None:
    row = commit.row
    records = await ex.fetch(st.latest_sql(spec.dialect, commit.state_schema), row.pipeline, row.table)
    latest = st.row_from_record(records[0]) if records else None
    current, expected = (latest.stage_id if latest else ""), (commit.expect_stage or "")
    if current != expected:
        seen = f"stage {current!r} loaded by {latest.loaded_by}" if latest else "no state"
        raise WarehouseError(
            f"another run loaded {row.table} meanwhile (the latest state is {seen}; this load planned from "
            f"{'stage ' + repr(expected) if expected else 'no state'}): nothing was changed; rerun",
            table=spec.target_name,
            retryable=True,
        )


async def _drop_quietly(ex: Executor, spec: LoadSpec) -> None:
    """Best effort: a staging table left by a failure also dies with the session."""
    if not spec.has_staging:
        return
    with anyio.CancelScope(shield=True), anyio.move_on_after(ROLLBACK_TIMEOUT):
        try:
            await ex.execute(drop_staging_sql(spec, if_exists=True))
        except Exception as exc:
            log.debug("dropping staging table %s failed: %s", spec.staging_table, exc)


def _affected(status: str) -> int:
    """Rows from a command tag such as 'DELETE 42' or 'COPY 42' (a protocol field, not an error
    message); 0 for a tag without a count, such as 'TRUNCATE TABLE'."""
    last = status.rsplit(" ", 1)[-1] if status else ""
    return int(last) if last.isdigit() else 0


def render(
    spec: LoadSpec,
    fill_sql: str,
    commit: Commit | None,
    *,
    fill_counts: bool = False,
    direct: Direct | None = None,
) -> list[str]:
    """Every message ``run_load`` may send, in order (creation statements run only when needed; several
    statements in one entry are one message); pure: no I/O. ``fill_sql`` stands for the COPY that fills
    the staging table (``fill_counts``: its command tag gives the row count, so the staging table is not
    counted). A ``first_merge`` is shown COPYing into the target when a target as created would take it
    (under the lock it checks that the target is so, and empty; else it stages and merges). The catalog
    reads before the transaction (on a table's first load) and schema evolution statements depend on the
    catalog at load time and are not shown."""
    check_spec(spec)
    d = spec.dialect
    out = [f"CREATE SCHEMA IF NOT EXISTS {d.ident(spec.schema_name)}"]
    if commit is not None:
        if d.fold(commit.state_schema) != d.fold(spec.schema_name):
            out.append(f"CREATE SCHEMA IF NOT EXISTS {d.ident(commit.state_schema)}")
        out.append(st.create_sql(d, commit.state_schema))
        if index := st.index_sql(d, commit.state_schema):
            out.append(index)
    out.append(target_create_sql(spec))
    counting = [] if fill_counts else [count_sql(spec)]
    staging = [staging_create_sql(spec), fill_sql, *counting] if spec.has_staging else []
    first = first_merge(spec, commit, direct)
    begin, *then = opening_sqls(spec, commit, first=first is not None)
    if first is not None:
        out.append(begin)
    else:
        out += [begin, *staging, *then] if stages_inside(spec) else [*staging, begin]
    if commit is not None:
        out.append(st.latest_sql(d, commit.state_schema))
    out.append(shape_sql(d))
    if first is not None and takes_created(spec, first):
        out += direct_sqls(spec, first)
        return [*out, *([st.insert_sql(d, commit.state_schema)] if commit is not None else []), "COMMIT"]
    if first is not None:
        out += staging
    if (clear := clear_step(spec)) is not None:
        out.append(clear[0])
    out += [sql for _, sql in changing_steps(spec)]
    if spec.has_staging:
        out.append(drop_staging_sql(spec))
    if commit is not None:
        out.append(st.insert_sql(d, commit.state_schema))
    return [*out, "COMMIT"]
