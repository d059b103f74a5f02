"""What both warehouses share above their connections: the state log and the load protocol.

A subclass says how to open a session (``_session``), how its columns map (``_spec``) and how the
staging table is filled (``_fill``, ``_fill_sql``); a warehouse that ``refills`` also loads a replace
straight into the target it has just emptied (``_refill``, ``_refill_sql``: ``run_refill``). Everything
else, including every error's classification, is here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import replace
from functools import cached_property
from typing import Any

import anyio
import pyarrow as pa

from src.common.errors import S3ShiftError, WarehouseError, describe
from src.common.log import get_logger
from src.common.schema import TableSchema
from src.config.models import TargetConn
from src.stage.models import StageResult
from src.warehouse import state as st
from src.warehouse.base import (
    Commit,
    Fill,
    LoadResult,
    StreamedLoad,
    batch,
    check_rows,
    check_spec,
    committing,
    create_target,
    prepare,
    render,
    run_load,
    transaction,
)
from src.warehouse.catalog import Executor, Shape, existing_tables
from src.warehouse.ddl import Dialect
from src.warehouse.direct import Direct
from src.warehouse.errors import AnswerLost, classify, where
from src.warehouse.state import LoadRequest, StateRow
from src.warehouse.statements import LoadSpec, emptied, target_lock_sql
from src.warehouse.watch import Watched

log = get_logger("warehouse")
# Loads the stage into the target emptied in this transaction, whose shape (as read under the lock) it is
# given; returns the rows it loaded.
Refill = Callable[[Shape], Awaitable[int]]


def renamed(req: LoadRequest) -> LoadRequest:
    """The request in TARGET column names: schema, primary key, merge key and order columns renamed by
    ``req.rename`` (source -> target). Renames of columns the schema lacks are ignored (the source may
    have dropped them; config validation is the config layer's)."""
    if not req.rename:
        return req
    mapping = dict(req.rename)

    def name(n: str) -> str:
        return mapping.get(n, n)

    columns = tuple(replace(c, name=name(c.name)) for c in req.schema.columns)
    schema = TableSchema(columns, tuple(map(name, req.schema.primary_key)))
    key, order_by = tuple(map(name, req.key)), tuple(map(name, req.order_by))
    return replace(req, schema=schema, key=key, order_by=order_by, rename=())


class SqlWarehouse:
    cfg: TargetConn
    dialect: Dialect

    @property
    def max_varchar_bytes(self) -> int | None:
        return self.dialect.max_varchar_bytes

    @property
    def max_row_bytes(self) -> int | None:
        return self.dialect.max_row_bytes

    @property
    def loads_while_staging(self) -> bool:
        return self.refills

    # ---- what a warehouse provides ---------------------------------------------------------------

    def _session(self, *, load: bool) -> AbstractAsyncContextManager[Executor]:
        raise NotImplementedError

    def _spec(self, req: LoadRequest) -> LoadSpec:
        """The spec of a request already in target names (``renamed``)."""
        raise NotImplementedError

    def _fill(self, ex: Executor, spec: LoadSpec) -> Fill:
        raise NotImplementedError

    def _fill_sql(self, spec: LoadSpec) -> str:
        raise NotImplementedError

    fill_counts = False  # the fill returns the rows it loaded (so the staging table is not counted)
    refills = False  # a replace with files loads the emptied target itself (``_refill``), not via staging

    def _refill(
        self, ex: Executor, spec: LoadSpec, batches: AsyncIterator[pa.RecordBatch] | None = None
    ) -> Refill:
        """Loads the emptied target from the stage's files, or from ``batches`` when given."""
        raise NotImplementedError

    def _direct(self, spec: LoadSpec) -> Direct | None:
        """How this warehouse COPYs the stage straight into the target, if it can (``base.first_merge``)."""
        return None

    def _load_slot_free(self) -> bool:
        """A load could start now without waiting for a slot."""
        raise NotImplementedError

    def _refill_sql(self, spec: LoadSpec) -> str:
        raise NotImplementedError

    @cached_property
    def _ready(self) -> set[str]:
        """The schemas and state tables this warehouse's loads have ensured (``base.prepare``)."""
        return set()

    # ---- the state log ---------------------------------------------------------------------------

    @property
    def state_schema(self) -> str:
        return st.state_schema(self.cfg)

    async def read_state(self, pipeline: str, table: str) -> StateRow | None:
        """The latest state row; None when there is none. Never creates anything."""
        try:
            async with self._session(load=False) as ex:
                return await st.read_latest(ex, self.dialect, self.state_schema, pipeline, table)
        except Exception as exc:
            raise self._error(exc, "reading the state of", table) from exc

    async def read_states(self, pipeline: str, tables: Sequence[str]) -> dict[str, StateRow]:
        """The latest state row of each of ``tables`` that has one (a run reads them all at its start)."""
        try:
            async with self._session(load=False) as ex:
                return await st.read_latest_many(ex, self.dialect, self.state_schema, pipeline, tables)
        except Exception as exc:
            raise self._error(exc, "reading the state of", ", ".join(tables[:3])) from exc

    async def committed_stage_ids(self, pipeline: str, table: str) -> set[str]:
        try:
            async with self._session(load=False) as ex:
                return await st.stage_ids(ex, self.dialect, self.state_schema, pipeline, table)
        except Exception as exc:
            raise self._error(exc, "reading the state of", table) from exc

    async def existing_tables(self, schema_name: str, tables: Sequence[str]) -> set[str]:
        try:
            async with self._session(load=False) as ex:
                return await existing_tables(ex, self.dialect, schema_name, tables)
        except Exception as exc:
            raise self._error(exc, "looking up", ", ".join(f"{schema_name}.{t}" for t in tables[:3])) from exc

    async def write_state(self, row: StateRow) -> None:
        """Append a state row in its own transaction (watermark set / reset, by ``row.strategy``: manual /
        reset). A COMMIT whose answer is lost is checked as a load's is (``_check_commit``)."""
        schema = self.state_schema
        lock = st.lock_for_command(self.dialect, schema)
        command = "watermark reset" if row.strategy == "reset" else "watermark set"
        get = f"s3shift watermark get -p {row.pipeline} -t {row.table}"

        async def confirm(lost: BaseException) -> None:
            await self._check_commit(
                row,
                lost,
                what=f"{command} of {row.table}",
                lock=lock,
                table=row.table,
                unchanged="the watermark is unchanged; run the command again",
                unknown=f"`{get}` shows the current watermark; running the command again is safe",
            )

        try:
            async with self._session(load=False) as ex:
                await st.ensure(ex, self.dialect, schema)
                async with transaction(ex, batch(self.dialect.begin_sql, lock), confirm):
                    await st.insert(ex, self.dialect, schema, row)
        except Exception as exc:
            raise self._error(exc, "writing the state of", row.table) from exc

    # ---- loads -----------------------------------------------------------------------------------

    def _request_spec(self, req: LoadRequest) -> LoadSpec:
        return self._spec(renamed(req))

    def _commit(self, req: LoadRequest, spec: LoadSpec) -> Commit:
        async def confirm(lost: BaseException) -> None:
            await self._confirm(spec, req.state, lost)

        return Commit(req.state, req.expect_stage, self.state_schema, confirm, req.needs_target)

    async def _confirm(self, spec: LoadSpec, row: StateRow, lost: BaseException) -> None:
        """After the answer to a load's COMMIT was lost: ``_check_commit`` under the target's lock."""
        name = spec.target_name
        command = f"s3shift watermark get -p {row.pipeline} -t {row.table}"
        await self._check_commit(
            row,
            lost,
            what=f"the load of {name}",
            lock=target_lock_sql(spec),
            table=name,
            unchanged="target and watermark unchanged; rerun the table",
            unknown=f"`{command}` shows the committed position; a rerun is safe (it loads only what is "
            "not committed)",
        )

    async def _check_commit(
        self,
        row: StateRow,
        lost: BaseException,
        *,
        what: str,
        lock: str,
        table: str,
        unchanged: str,
        unknown: str,
    ) -> None:
        """After the answer to the COMMIT of ``what`` was lost: return if it committed, else raise
        ``AnswerLost`` saying what became of it (``unchanged``: it did not commit; ``unknown``: the check
        failed). Asked on a new connection once the transaction has ended (``lock``, the lock it held, taken
        here too, waits for that: the old session may still be running the COMMIT): is ``row``, the state
        row it appended, in the state log? No other row has its stage_id and loaded_by: it is the commit's
        own marker."""
        cfg = self.cfg
        cause = lost.why if isinstance(lost, AnswerLost) else describe(lost)
        lost_how = f"the answer to the COMMIT of {what} was lost ({cause})"
        try:
            with anyio.fail_after(cfg.connect_timeout + cfg.read_timeout):
                async with self._fresh() as ex, transaction(ex, batch(self.dialect.begin_sql, lock)):
                    sql = st.committed_sql(self.dialect, self.state_schema)
                    found = await ex.fetchval(sql, row.pipeline, row.table, row.stage_id, row.loaded_by)
        except Exception as exc:
            raise AnswerLost(
                f"{lost_how}, and whether it committed could not be checked on {where(cfg)} "
                f"({describe(exc)}): {unknown}",
                table=table,
            ) from lost
        if not found:
            raise AnswerLost(
                f"{lost_how}; checked on a new connection to {where(cfg)}: it did not commit, {unchanged}",
                table=table,
            ) from lost
        log.warning("%s: checked on a new connection: it committed", lost_how)

    # ---- sessions that hang --------------------------------------------------------------------

    def _fresh(self) -> AbstractAsyncContextManager[Executor]:
        """A connection of its own, outside the pool and the load slots: checks while a session hangs."""
        raise NotImplementedError

    def _watched(self, ex: Any) -> Watched:
        """``ex`` with every wait for an answer checked after ``read_timeout`` (``watch``)."""
        pid, cfg = ex.get_server_pid(), self.cfg

        async def probe() -> str | None:
            try:
                with anyio.fail_after(cfg.connect_timeout):
                    async with self._fresh() as other:
                        return await self._still_working(other, pid)
            except Exception as exc:
                cause = "" if isinstance(exc, TimeoutError) else f" ({describe(exc)})"
                within = f"{cfg.connect_timeout:g} s{cause}"
                return f"nor did a new connection within {within}: it is stalled or unreachable"

        return Watched(ex, every=cfg.read_timeout, probe=probe, explain=self._no_answer)

    async def _still_working(self, ex: Executor, pid: int) -> str | None:
        """None while the session ``pid`` may still be working on its statement: here, as long as the
        server answers (a warehouse that can tell more says more)."""
        await ex.fetchval("SELECT 1")
        return None

    def _no_answer(self, why: str) -> str:
        key = f"connections.targets.{self.cfg.name}.read_timeout"
        return (
            f"{where(self.cfg)} did not answer a statement for {self.cfg.read_timeout:g} s, {why}; the "
            "session was dropped with its transaction (target and watermark unchanged): check the "
            f"warehouse, then rerun the table ({key} sets the wait before this check)"
        )

    def _refilling(self, spec: LoadSpec) -> bool:
        return self.refills and spec.mode == "replace" and spec.has_staging

    def check_load(self, req: LoadRequest) -> None:
        """Raise what ``load(req)`` would refuse before touching the warehouse (the spec it builds, checked
        by ``check_spec``: names, keys, physical design), as ``load`` raises it; no I/O. A run checks a
        table with it as soon as the source schema is known, before reading a row."""
        try:
            check_spec(self._request_spec(req))
        except Exception as exc:
            raise self._error(exc, f"{req.mode} load of", self._target(req)) from exc

    def _target(self, req: LoadRequest) -> str:
        return f"{self.cfg.schema}.{req.target_table}"

    async def load(self, req: LoadRequest) -> LoadResult:
        """Stage, guard, change the target by ``req.mode`` and append ``req.state``: one commit."""
        name = self._target(req)
        try:
            spec = self._request_spec(req)
            commit = self._commit(req, spec)
            async with self._session(load=True) as ex:
                if self._refilling(spec):
                    result = await run_refill(ex, spec, self._refill(ex, spec), commit, self._ready)
                else:
                    fill, direct = self._fill(ex, spec), self._direct(spec)
                    result = await run_load(ex, spec, fill, commit, self._ready, direct)
                if req.committed is not None:  # no checkpoint since the COMMIT: before the session's exit
                    req.committed(result.rows_loaded)
                return result
        except Exception as exc:
            raise self._error(exc, f"{req.mode} load of", name) from exc

    async def create_target(self, req: LoadRequest) -> bool:
        name = self._target(req)
        try:
            spec = self._request_spec(req)
            async with self._session(load=True) as ex:
                return await create_target(ex, spec, self._ready)
        except Exception as exc:
            raise self._error(exc, "creation of", name) from exc

    def stream_replace(self, req: LoadRequest) -> AbstractAsyncContextManager[StreamedLoad] | None:
        """A refilling warehouse loads a replace while it is staged, when a load slot is free now (the
        extraction must never stall on a slot while it holds a MySQL connection)."""
        if not self.refills or req.mode != "replace" or not self._load_slot_free():
            return None
        return self._streamed(req)

    @asynccontextmanager
    async def _streamed(self, req: LoadRequest) -> AsyncIterator[StreamedLoad]:
        """``run_refill``'s protocol, with the target locked, guarded and emptied before the rows exist
        and the state row appended by ``finish``. Only this warehouse's own steps are classified here:
        an error of the caller's body (the extraction) passes through unchanged, after the rollback."""
        name, action = self._target(req), f"{req.mode} load of"
        ours = True  # False while the caller's body runs
        try:
            spec = self._request_spec(req)
            commit = self._commit(req, spec)
            async with (
                self._session(load=True) as ex,
                emptied_target(ex, spec, commit, self._ready, record=False) as (emptying, shape),
            ):
                load = _Streamed(self, ex, spec, commit, emptying, shape)
                ours = False
                yield load
                ours = True
                if not load.finished:
                    raise WarehouseError(
                        f"the {action} {name} ended before its stage was complete: nothing was "
                        "changed; re-run the table",
                        table=name,
                    )
        except Exception as exc:
            if not ours:
                raise
            raise self._error(exc, action, name) from exc

    def render_load(self, req: LoadRequest) -> list[str]:
        """The DDL and SQL ``load(req)`` would run, in order; no I/O. What the load would refuse is raised
        as ``check_load`` (and a run's early check) raises it."""
        self.check_load(req)
        spec = self._request_spec(req)
        commit = self._commit(req, spec)
        if self._refilling(spec):
            return render_refill(spec, self._refill_sql(spec), commit)
        direct = self._direct(spec)
        return render(spec, self._fill_sql(spec), commit, fill_counts=self.fill_counts, direct=direct)

    def _error(self, exc: Exception, action: str, table: str) -> S3ShiftError:
        return classify(exc, cfg=self.cfg, action=action, table=table)


class _Streamed:
    """The open load of ``SqlWarehouse._streamed``."""

    def __init__(
        self,
        wh: SqlWarehouse,
        ex: Executor,
        spec: LoadSpec,
        commit: Commit,
        emptying: LoadResult,
        shape: Shape,
    ) -> None:
        self._wh, self._ex, self._spec, self._commit, self._emptying = wh, ex, spec, commit, emptying
        self._shape = shape
        self._copied: int | None = None
        self.finished = False

    def _error(self, exc: Exception) -> S3ShiftError:
        return self._wh._error(exc, f"{self._spec.mode} load of", self._spec.target_name)

    async def copy(self, batches: AsyncIterator[pa.RecordBatch]) -> None:
        try:
            self._copied = await self._wh._refill(self._ex, self._spec, batches)(self._shape)
        except Exception as exc:
            raise self._error(exc) from exc

    async def finish(self, stage: StageResult) -> LoadResult:
        """Check the rows loaded against the completed stage and append the state row."""
        spec, commit = self._spec, self._commit
        if self._copied is None:
            raise WarehouseError(
                f"the load of {spec.target_name} did not take the rows of {stage.manifest_url}: nothing was "
                "changed; re-run the table",
                table=spec.target_name,
                file=stage.manifest_url,
            )
        check_rows(spec, stage, self._copied, spec.target_name)
        try:
            await st.insert(self._ex, spec.dialect, commit.state_schema, replace(commit.row, rows=stage.rows))
        except Exception as exc:
            raise self._error(exc) from exc
        self.finished = True
        return replace(self._emptying, rows_loaded=self._copied)


async def run_refill(
    ex: Executor, spec: LoadSpec, refill: Refill, commit: Commit, ready: set[str] | None = None
) -> LoadResult:
    """A replace that loads the target itself: ``run_load``'s protocol for ``emptied(spec)`` (locks,
    guard, evolution, TRUNCATE, state row), then ``refill`` in the same transaction. No staging table: the
    rows are written once. Only where TRUNCATE is transactional and snapshots are per statement
    (``Dialect.truncate_in_transaction``, not ``snapshot_per_transaction``)."""
    async with emptied_target(ex, spec, commit, ready) as (result, shape):
        loaded = await refill(shape)
        check_rows(spec, spec.stage, loaded, spec.target_name)
    return replace(result, rows_loaded=loaded)


@asynccontextmanager
async def emptied_target(
    ex: Executor, spec: LoadSpec, commit: Commit, ready: set[str] | None, *, record: bool = True
) -> AsyncIterator[tuple[LoadResult, Shape]]:
    """A refill's transaction up to the rows: ``prepare``, then ``committing`` of ``emptied(spec)`` (BEGIN
    with the locks, guard, the target's shape, evolution, TRUNCATE, the state row unless ``record`` is
    false); the body loads the target, as the shape says; leaving commits (an error rolls back)."""
    empty = emptied(spec)
    prepared = await prepare(ex, empty, commit, ready)
    async with committing(ex, empty, commit, prepared, record=record) as applied:
        yield applied


def render_refill(spec: LoadSpec, refill_sql: str, commit: Commit) -> list[str]:
    """What ``run_refill`` sends: ``render`` of ``emptied(spec)``, with the refill just before COMMIT."""
    *statements, last = render(emptied(spec), "", commit)
    return [*statements, refill_sql, last]
