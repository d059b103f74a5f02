"""The state log: read_state / committed_stage_ids / write_state, its creation, and render_load, on
PostgreSQL and on Redshift-through-the-emulator (real services)."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace

import anyio
import asyncpg
import pytest

from src.config.models import S3Conn
from src.plan.models import Watermark
from src.warehouse import state as st
from src.warehouse.base import StateRow
from src.warehouse.catalog import Executor
from src.warehouse.ddl import POSTGRES, REDSHIFT
from tests.conftest import PG_DATABASE, PG_HOST, PG_PORT, PG_USER
from tests.redshift_emulator import RedshiftEmulator
from tests.redshift_sql import check_redshift_sql, split_statements
from tests.test_warehouse_load import pg, stage, target_conn, warehouse
from tests.test_warehouse_merge import U64_MAX, request, rows, staged

pytestmark = pytest.mark.anyio
KINDS = ["postgres", "redshift"]
MICRO = dt.datetime(9999, 12, 31, 23, 59, 59, 999999)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def manual(watermark: Watermark | None, *, table: str = "db.t", by: str = "sync_cmd") -> StateRow:
    return StateRow(
        pipeline="p",
        table=table,
        target="x.t",
        strategy="manual" if watermark else "reset",
        stage_id="",
        loaded_by=by,
        watermark=watermark,
        window_start=None,
        rows=0,
        schema_hash="",
        extracted_at=None,
    )


async def relations(schema_name: str) -> list[str]:
    found = await pg(
        "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = $1",
        schema_name,
    )
    return [r[0] for r in found]


@pytest.mark.parametrize("kind", KINDS)
async def test_reading_state_creates_nothing(kind: str, pg_schema: str, s3_conn: S3Conn) -> None:
    async with warehouse(target_conn(kind, pg_schema), s3_conn) as wh:
        assert await wh.read_state("p", "db.t") is None
        assert await wh.committed_stage_ids("p", "db.t") == set()
        assert await pg("SELECT 1 FROM pg_namespace WHERE nspname = $1", pg_schema) == []
        await pg(f'CREATE SCHEMA "{pg_schema}"')
        assert await wh.read_state("p", "db.t") is None
        assert await wh.committed_stage_ids("p", "db.t") == set()
    assert await relations(pg_schema) == []


@pytest.mark.parametrize("kind", KINDS)
async def test_set_and_reset_round_trip(kind: str, pg_schema: str, s3_conn: S3Conn) -> None:
    mark = Watermark(ts=MICRO, id=U64_MAX)
    loaded = replace(
        manual(mark),
        strategy="hybrid",
        stage_id="sync_x",
        window_start=Watermark(ts=dt.datetime(2000, 1, 1, 0, 0, 0, 1), id=-(2**63)),
        rows=12,
        schema_hash="abc",
        extracted_at=dt.datetime(2024, 2, 29, 23, 59, 59, 5),
    )
    async with warehouse(target_conn(kind, pg_schema), s3_conn) as wh:
        await wh.write_state(loaded)
        got = await wh.read_state("p", "db.t")
        assert got is not None and got.committed_at is not None
        assert replace(got, committed_at=None) == loaded
        assert abs(got.committed_at - dt.datetime.now(dt.UTC).replace(tzinfo=None)) < dt.timedelta(minutes=1)
        await wh.write_state(manual(None, by="sync_reset"))
        reset = await wh.read_state("p", "db.t")
        assert reset is not None and reset.watermark is None and reset.strategy == "reset"
        assert reset.loaded_by == "sync_reset"
        await wh.write_state(manual(Watermark(ts=dt.datetime(2024, 1, 1, 0, 0, 0, 1))))
        again = await wh.read_state("p", "db.t")
        assert again is not None and again.watermark == Watermark(ts=dt.datetime(2024, 1, 1, 0, 0, 0, 1))
        assert await wh.read_state("p", "db.other") is None and await wh.read_state("q", "db.t") is None
        assert await wh.committed_stage_ids("p", "db.t") == {"sync_x"}


@pytest.mark.parametrize("kind", KINDS)
async def test_latest_is_the_last_written_even_within_one_clock_tick(
    kind: str, pg_schema: str, s3_conn: S3Conn
) -> None:
    async with warehouse(target_conn(kind, pg_schema), s3_conn) as wh:
        for i in range(6):
            await wh.write_state(manual(Watermark(id=i), by=f"sync_{i}"))
            assert (await wh.read_state("p", "db.t")).loaded_by == f"sync_{i}"  # type: ignore[union-attr]
    await pg(f'UPDATE "{pg_schema}".s3shift_state SET committed_at = $1', dt.datetime(2024, 1, 1))
    async with warehouse(target_conn(kind, pg_schema), s3_conn) as wh:
        assert (await wh.read_state("p", "db.t")).loaded_by == "sync_5"  # type: ignore[union-attr]


@pytest.mark.parametrize("kind", KINDS)
async def test_concurrent_first_writes_create_the_table_once(
    kind: str, pg_schema: str, s3_conn: S3Conn
) -> None:
    cfg = target_conn(kind, pg_schema, max_connections=6)
    async with warehouse(cfg, s3_conn) as wh, anyio.create_task_group() as tg:
        for i in range(6):
            tg.start_soon(wh.write_state, manual(Watermark(id=i), by=f"sync_{i}"))
    seqs = await pg(f'SELECT seq FROM "{pg_schema}".s3shift_state ORDER BY seq')
    assert [r[0] for r in seqs] == [1, 2, 3, 4, 5, 6]
    index = ["s3shift_state_latest"] if kind == "postgres" else []  # Redshift: no indexes, a sort key
    assert sorted(await relations(pg_schema)) == ["s3shift_state", *index]


@pytest.mark.parametrize("kind", KINDS)
async def test_state_schema_apart_from_the_target(kind: str, pg_schema: str, s3_conn: S3Conn) -> None:
    state_schema = pg_schema + "_st"
    cfg = target_conn(kind, pg_schema, state_schema=state_schema)
    try:
        async with warehouse(cfg, s3_conn) as wh:
            req = request(staged(s3_conn, rows((1, 1, "a"))))
            await wh.load(req)
            assert (await wh.read_state("p", "db.t")).stage_id == req.execution_id  # type: ignore[union-attr]
            assert await wh.committed_stage_ids("p", "db.t") == {req.execution_id}
        assert "t" in await relations(pg_schema) and "s3shift_state" not in await relations(pg_schema)
        assert "s3shift_state" in await relations(state_schema)
    finally:
        await pg(f'DROP SCHEMA IF EXISTS "{state_schema}" CASCADE')


@pytest.mark.parametrize("kind", KINDS)
async def test_render_load_touches_nothing(kind: str, pg_schema: str, s3_conn: S3Conn) -> None:
    sessions: list[RedshiftEmulator] = []
    unreachable = target_conn(kind, pg_schema, port=1, connect_timeout=1.0)
    req = request(staged(s3_conn, rows((1, 1, "a"))), expect="sync_prev")
    async with warehouse(unreachable, s3_conn, sessions=sessions) as wh:
        sql = wh.render_load(req)
        empty = wh.render_load(request(replace(stage(s3_conn, []), files=(), rows=0), mode="replace"))
    assert sessions == []
    assert await pg("SELECT 1 FROM pg_namespace WHERE nspname = $1", pg_schema) == []
    at = {key: next(i for i, s in enumerate(sql) if s.startswith(key)) for key in ("BEGIN", "COMMIT")}
    locks = next(i for i, s in enumerate(sql) if "LOCK " in s)
    copy = next(i for i, s in enumerate(sql) if s.startswith("COPY"))
    guard = next(i for i, s in enumerate(sql) if s.startswith("SELECT") and "ORDER BY" in s)
    shape = next(i for i, s in enumerate(sql) if "pg_catalog.pg_attribute" in s)
    assert at["BEGIN"] <= locks < guard < shape < at["COMMIT"] and sql[-1] == "COMMIT"
    assert any(s.startswith("DELETE FROM") and "USING" in s for s in sql)
    assert any("ROW_NUMBER() OVER (PARTITION BY" in s for s in sql)
    assert any(s.startswith("INSERT INTO") and "s3shift_state" in s for s in sql)
    if kind == "redshift":
        assert req.stage.manifest_url in sql[copy] and "FORMAT AS PARQUET MANIFEST" in sql[copy]
        assert copy < at["BEGIN"] == locks  # the snapshot must not predate the LOCK: one message
        assert sql[locks].startswith("BEGIN; LOCK ")
        for s in sql:
            for statement in split_statements(s):
                check_redshift_sql(statement, in_transaction=False)
    else:  # the staging table is filled inside the transaction, before the LOCKs
        assert sql[at["BEGIN"]] == "BEGIN ISOLATION LEVEL READ COMMITTED" and at["BEGIN"] < copy < locks
    assert not any(s.startswith("COPY") for s in empty)
    if kind == "redshift":  # TRUNCATE would commit there; PostgreSQL's is transactional
        assert any(s.startswith("DELETE FROM") and "USING" not in s for s in empty)
        assert any(s.startswith("SELECT COUNT(*)") for s in sql)  # the staging table is counted
        assert not any("TRUNCATE" in s for s in sql + empty)
    else:
        begin = next(s for s in empty if s.startswith("BEGIN"))  # BEGIN, LOCKs, TRUNCATE: one message
        assert (
            begin.startswith("BEGIN ISOLATION LEVEL READ COMMITTED; LOCK TABLE ") and "; TRUNCATE " in begin
        )
        assert not any(s.startswith("DELETE FROM") and "USING" not in s for s in sql + empty)
        assert not any(s.startswith("SELECT COUNT(*)") for s in sql + empty)  # the COPY's tag counts


@pytest.mark.parametrize("kind", KINDS)
async def test_render_load_of_a_replace(kind: str, pg_schema: str, s3_conn: S3Conn) -> None:
    """PostgreSQL COPYs a replace straight into the target it has just emptied, in the same transaction
    as the state row; Redshift stages it and DELETEs."""
    req = request(staged(s3_conn, rows((1, 1, "a"))), mode="replace")
    async with warehouse(target_conn(kind, pg_schema), s3_conn) as wh:
        sql = wh.render_load(req)
    copy = next(i for i, s in enumerate(sql) if s.startswith("COPY"))
    state = next(i for i, s in enumerate(sql) if s.startswith("INSERT INTO") and "s3shift_state" in s)
    begin = next(i for i, s in enumerate(sql) if s.startswith("BEGIN"))
    if kind == "redshift":
        assert any(s.startswith("CREATE TEMP TABLE") for s in sql) and copy < begin
        return
    assert not any(s.startswith("CREATE TEMP TABLE") or "s3shift_stage_" in s for s in sql)
    assert sql[begin].endswith(f'; TRUNCATE "{pg_schema}"."t"')  # with BEGIN and the LOCKs
    assert begin < state < copy == len(sql) - 2 and sql[-1] == "COMMIT"
    assert sql[copy] == f'COPY "{pg_schema}"."t" ("id", "ts", "v") FROM STDIN (FORMAT binary, FREEZE)'


@pytest.mark.parametrize("kind", KINDS)
async def test_reading_many_tables_at_once_answers_like_one_at_a_time(
    kind: str, pg_schema: str, s3_conn: S3Conn, s3_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``read_latest_many`` (a run reads every table's state at its start) returns, for each table, the
    row the one-table query (``latest_sql``, also the load's guard) returns: histories of several rows,
    rows committed within one clock tick, a reset, tables without state, other pipelines; in batches."""
    monkeypatch.setattr(st, "READ_BATCH", 3)  # 8 tables: three queries
    tables = [f"db.t{i}" for i in range(7)] + ["db.none"]
    async with warehouse(target_conn(kind, pg_schema), s3_conn) as wh:
        for i, table in enumerate(tables[:7]):
            for n in range(i % 3 + 1):
                await wh.write_state(manual(Watermark(id=10 * i + n), table=table, by=f"sync_{i}_{n}"))
        await wh.write_state(manual(None, table="db.t3", by="sync_reset"))
        await wh.write_state(replace(manual(Watermark(id=99), table="db.t1"), pipeline="q"))
    await pg(
        f'UPDATE "{pg_schema}".s3shift_state SET committed_at = $1 WHERE source_table = $2', MICRO, "db.t2"
    )
    dialect = REDSHIFT if kind == "redshift" else POSTGRES
    conn = await asyncpg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, database=PG_DATABASE)
    try:
        ex: Executor = RedshiftEmulator(conn, s3_endpoint=s3_endpoint) if kind == "redshift" else conn
        many = await st.read_latest_many(ex, dialect, pg_schema, "p", [*tables, "db.t0"])
        one_at_a_time = {}
        for table in tables:
            records = await ex.fetch(st.latest_sql(dialect, pg_schema), "p", table)
            if records:
                one_at_a_time[table] = st.row_from_record(records[0])
        assert many == one_at_a_time and sorted(many) == tables[:7]
        assert many["db.t2"].loaded_by == "sync_2_2" and many["db.t3"].loaded_by == "sync_reset"
        assert many["db.t1"].watermark == Watermark(id=11)  # pipeline "q" is another pipeline
        assert await st.read_latest(ex, dialect, pg_schema, "p", "db.t4") == many["db.t4"]
        assert await st.read_latest_many(ex, dialect, pg_schema, "p", []) == {}
        assert await st.read_latest_many(ex, dialect, pg_schema + "_none", "p", tables) == {}
    finally:
        await conn.close()


async def test_a_state_table_without_the_index_gets_it_and_the_latest_read_uses_it(
    pg_schema: str, s3_conn: S3Conn
) -> None:
    """A state table made by an earlier version (no index) is given one by the next load's ensure, and
    the per-table reads of the append-only log go through it instead of scanning the whole log."""
    await pg(f'CREATE SCHEMA "{pg_schema}"')
    await pg(st.create_sql(POSTGRES, pg_schema))
    async with warehouse(target_conn("postgres", pg_schema), s3_conn) as wh:
        await wh.write_state(manual(Watermark(id=1), by="sync_1"))
    assert sorted(await relations(pg_schema)) == ["s3shift_state", "s3shift_state_latest"]
    conn = await asyncpg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, database=PG_DATABASE)
    try:
        await conn.execute("SET enable_seqscan = off")  # a tiny table: ask whether the index CAN serve
        plan = await conn.fetch(f"EXPLAIN {st.latest_sql(POSTGRES, pg_schema)}", "p", "db.t")
    finally:
        await conn.close()
    assert "s3shift_state_latest" in "\n".join(r[0] for r in plan)
