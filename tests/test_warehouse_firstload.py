"""A table's first merge into an empty PostgreSQL target COPYs the stage straight into it (``direct``):
the values are those the merge stores, and the load merges whenever that is not certain (a target with
rows, found under the lock; a key staged twice; a target without the key). Which path a load took is
read from the statements it sent (``Recording``)."""

from __future__ import annotations

import datetime as dt

import anyio
import asyncpg
import pytest

from src.config.models import S3Conn
from src.warehouse.base import LoadResult
from src.warehouse.direct import SAVEPOINT
from tests.conftest import PG_DATABASE, PG_HOST, PG_PORT, PG_USER
from tests.test_warehouse_load import (
    ALL_TYPES,
    JSON_EDGES,
    ROWS,
    arrow_table,
    pg,
    pg_rows,
    stage,
    target_conn,
)
from tests.test_warehouse_merge import _wait_for_waiters, content, request, rows, staged, state_rows, ts
from tests.test_warehouse_messages import Recording, recording

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def path(sent: list[str], schema: str, table: str) -> str:
    """'direct' when the load COPYed into the target and kept it; 'merge' when it staged and merged."""
    target = f'"{schema}"."{table}"'
    copied = f"COPY {table}" in sent and f"ROLLBACK TO SAVEPOINT {SAVEPOINT}" not in sent
    merged = any(s.startswith(f"DELETE FROM {target} USING") for s in sent)
    assert copied != merged, sent
    return "direct" if copied else "merge"


async def test_a_first_merge_into_an_empty_target_copies_exactly_the_rows_the_merge_would(
    pg_schema: str, s3_conn: S3Conn
) -> None:
    """Every logical type (jsonb, timestamptz, numeric(p,s) uncast, binary, edge JSON), in two files:
    into a target the load creates, COPYed; into one holding a row (a first load for its table too),
    merged (the row's key is staged, so the merge replaces it). The two targets are equal value by value."""
    table = arrow_table(ALL_TYPES, [*ROWS, *({"id": 100 + i, "j": j} for i, j in enumerate(JSON_EDGES))])
    sent: dict[str, list[str]] = {}
    results: dict[str, LoadResult] = {}
    async with recording(target_conn("postgres", pg_schema), s3_conn) as wh:
        for target in ("direct", "merged"):
            if target == "merged":
                await pg(f'CREATE TABLE "{pg_schema}".merged (LIKE "{pg_schema}".direct INCLUDING ALL)')
                await pg(f"INSERT INTO \"{pg_schema}\".merged (id, s) VALUES (1, 'old')")
            Recording.sent.clear()
            result = stage(s3_conn, [table.slice(0, 3), table.slice(3)])
            req = request(result, schema=ALL_TYPES, target=target, table=f"db.{target}")
            results[target] = await wh.load(req)
            sent[target] = list(Recording.sent)
    assert path(sent["direct"], pg_schema, "direct") == "direct"
    assert path(sent["merged"], pg_schema, "merged") == "merge"
    assert not any(s.startswith("CREATE TEMP TABLE") for s in sent["direct"])  # no staging table
    assert results["direct"] == LoadResult(len(table), f"{pg_schema}.direct", rows_deleted=0)
    assert results["merged"] == LoadResult(len(table), f"{pg_schema}.merged", rows_deleted=1)
    assert await pg_rows(pg_schema, "direct") == await pg_rows(pg_schema, "merged")
    assert len(await pg_rows(pg_schema, "direct")) == len(table)
    committed = await pg(f'SELECT target_table, row_count FROM "{pg_schema}".s3shift_state ORDER BY seq')
    assert [tuple(r) for r in committed] == [("x.direct", len(table)), ("x.merged", len(table))]


async def test_a_key_staged_twice_rolls_the_copy_back_and_merges(pg_schema: str, s3_conn: S3Conn) -> None:
    """Two stages' rows loaded as one (pending stages, a lookback's re-read, planned units): the COPY
    into the empty target meets its primary key twice, rolls back to its savepoint, and the load merges,
    keeping the last version of each key, in the same transaction as its one state row."""
    first = rows((1, 5, "a-old"), (2, 1, "b-1"), (1, 9, "a-new"), (3, 2, "c-tie-a"))
    second = rows((2, 3, "b-3"), (1, 7, "a-mid"), (3, 2, "c-tie-b"), (2, 2, "b-2"))
    async with recording(target_conn("postgres", pg_schema), s3_conn) as wh:
        req = request(staged(s3_conn, first, second))
        result = await wh.load(req)
        sent = list(Recording.sent)
    assert "COPY t" in sent and f"ROLLBACK TO SAVEPOINT {SAVEPOINT}" in sent
    assert path(sent, pg_schema, "t") == "merge"
    assert result == LoadResult(rows_loaded=3, target=f"{pg_schema}.t", rows_deleted=0)
    assert await content(pg_schema) == [(1, ts(9), "a-new"), (2, ts(3), "b-3"), (3, ts(2), "c-tie-b")]
    assert [r[:2] for r in await state_rows(pg_schema)] == [(req.execution_id, 8)]


async def test_an_empty_target_without_the_key_is_merged(pg_schema: str, s3_conn: S3Conn) -> None:
    """Nothing in a target without a primary key would refuse a key staged twice: the load merges it."""
    await pg(f'CREATE SCHEMA "{pg_schema}"')
    await pg(f'CREATE TABLE "{pg_schema}".t (id bigint, ts timestamp, v text)')
    async with recording(target_conn("postgres", pg_schema), s3_conn) as wh:
        await wh.load(request(staged(s3_conn, rows((1, 1, "a"), (2, 1, "b")), rows((1, 2, "a2")))))
        sent = list(Recording.sent)
    assert path(sent, pg_schema, "t") == "merge" and not any(s.startswith("SELECT NOT EXISTS") for s in sent)
    assert await content(pg_schema) == [(1, ts(2), "a2"), (2, ts(1), "b")]


async def test_an_empty_target_with_a_rule_is_merged(pg_schema: str, s3_conn: S3Conn) -> None:
    """An INSERT applies the target's rules; a COPY would not: the load merges."""
    await pg(f'CREATE SCHEMA "{pg_schema}"')
    await pg(f'CREATE TABLE "{pg_schema}".t (id bigint PRIMARY KEY, ts timestamp, v text)')
    await pg(f'CREATE TABLE "{pg_schema}".seen (id bigint)')
    also = f'INSERT INTO "{pg_schema}".seen VALUES (NEW.id)'
    await pg(f'CREATE RULE seen AS ON INSERT TO "{pg_schema}".t DO ALSO {also}')
    async with recording(target_conn("postgres", pg_schema), s3_conn) as wh:
        await wh.load(request(staged(s3_conn, rows((1, 1, "a"), (2, 1, "b")))))
        sent = list(Recording.sent)
    assert path(sent, pg_schema, "t") == "merge"
    assert [r[0] for r in await pg(f'SELECT id FROM "{pg_schema}".seen ORDER BY id')] == [1, 2]


async def test_rows_committed_while_the_load_waits_for_its_lock_make_it_merge(
    pg_schema: str, s3_conn: S3Conn
) -> None:
    """The target is empty when the load prepares it, and a writer holding it commits a row while the load
    waits for its LOCK: the emptiness is read under the lock, so the load merges."""
    await pg(f'CREATE SCHEMA "{pg_schema}"')
    await pg(f'CREATE TABLE "{pg_schema}".t (id bigint PRIMARY KEY, ts timestamp, v text)')
    writer = await asyncpg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, database=PG_DATABASE)
    try:
        await writer.execute("BEGIN")
        await writer.execute(f"INSERT INTO \"{pg_schema}\".t VALUES (9, '2024-01-01', 'theirs')")
        async with recording(target_conn("postgres", pg_schema), s3_conn) as wh:
            async with anyio.create_task_group() as tg:
                tg.start_soon(wh.load, request(staged(s3_conn, rows((1, 1, "a"), (2, 1, "b")))))
                await _wait_for_waiters(f'"{pg_schema}"."t"', 1)
                await writer.execute("COMMIT")
            sent = list(Recording.sent)
    finally:
        await writer.close()
    assert path(sent, pg_schema, "t") == "merge"
    theirs = (9, dt.datetime(2024, 1, 1), "theirs")
    assert await content(pg_schema) == [(1, ts(1), "a"), (2, ts(1), "b"), theirs]
