"""What a load sends, message by message: each message is a round trip and, on a small box, a context
switch each way, which W4's many small tables pay per table. A replace of a table loaded before sends
six (BEGIN, the LOCKs and TRUNCATE as one message, guard, the target's shape read once, COPY, state row,
COMMIT), streamed or not; a merge eleven; a table's first merge into an empty target eight (no staging
table: BEGIN with the LOCKs, guard, shape, the emptiness check, SAVEPOINT, COPY into the target, state
row, COMMIT); on Redshift both eleven. ``render_load`` (the dry run) lists
exactly these messages. Recorded by a connection class that logs every statement
s3shift sends through asyncpg (asyncpg's own Parse of a new statement on a new connection is cached per
connection and not counted). A target dropped after its table was loaded, which the load then no longer
examines before its transaction, is found under the lock and created again."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, ClassVar

import asyncpg
import pytest

from src.config.models import S3Conn, TargetConn
from src.warehouse.base import LoadRequest, Mode, Warehouse
from src.warehouse.postgres import PooledConnection, PostgresWarehouse, connect_kwargs
from tests.redshift_emulator import RedshiftEmulator
from tests.test_warehouse_load import pg, s3_batches, target_conn, warehouse
from tests.test_warehouse_merge import content, request, rows, staged, state_rows, ts

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Recording(PooledConnection):
    """A pooled connection that records every statement sent through it (a COPY by its target)."""

    sent: ClassVar[list[str]] = []

    async def execute(self, query: str, *args: Any, **kw: Any) -> str:
        self.sent.append(query)
        return str(await super().execute(query, *args, **kw))

    async def fetch(self, query: str, *args: Any, **kw: Any) -> list[Any]:
        self.sent.append(query)
        return list(await super().fetch(query, *args, **kw))

    async def fetchval(self, query: str, *args: Any, **kw: Any) -> Any:
        self.sent.append(query)
        return await super().fetchval(query, *args, **kw)

    async def fetchrow(self, query: str, *args: Any, **kw: Any) -> Any:
        self.sent.append(query)
        return await super().fetchrow(query, *args, **kw)

    async def copy_to_table(self, table_name: str, **kw: Any) -> str:
        self.sent.append(f"COPY {table_name}")
        return str(await super().copy_to_table(table_name, **kw))


@asynccontextmanager
async def recording(cfg: TargetConn, s3: S3Conn) -> AsyncIterator[PostgresWarehouse]:
    """A PostgreSQL warehouse over one ``Recording`` connection."""
    pool = await asyncpg.create_pool(
        **connect_kwargs(cfg, False), min_size=0, max_size=1, connection_class=Recording
    )
    try:
        yield PostgresWarehouse(cfg, pool, batches=s3_batches(s3))
    finally:
        await pool.close()
        Recording.sent.clear()


def kinds(sent: list[str], schema: str) -> list[str]:
    """Each message by what it does."""
    target, state = f'"{schema}"."t"', f'"{schema}"."s3shift_state"'
    locks = f"LOCK TABLE {target} IN SHARE ROW EXCLUSIVE MODE; LOCK TABLE {state} IN ROW EXCLUSIVE MODE"
    begin = "BEGIN ISOLATION LEVEL READ COMMITTED"
    names = {
        f"{begin}; {locks}; TRUNCATE {target}": "begin+truncate",
        f"{begin}; {locks}": "begin+locks",
        locks: "locks",
        begin: "begin",
        "COMMIT": "commit",
    }
    out = []
    for sql in sent:
        if sql in names:
            out.append(names[sql])
        elif sql.startswith(f"SELECT NOT EXISTS (SELECT 1 FROM {target})"):
            out.append("empty")
        elif sql.startswith("SELECT") and "s3shift_state" in sql and "ORDER BY" in sql:
            out.append("guard")
        elif "pg_catalog.pg_attribute" in sql and "relkind" in sql:
            out.append("shape")
        elif sql.startswith("INSERT INTO") and "s3shift_state" in sql:
            out.append("state")
        else:
            out.append(sql.split()[0].lower())  # truncate, copy, create, delete, insert, drop
    return out


CREATION = ("CREATE SCHEMA IF NOT EXISTS", "CREATE TABLE IF NOT EXISTS", "CREATE INDEX IF NOT EXISTS")


def as_sent(sql: list[str]) -> list[str]:
    """Messages compared as the load sends them: a COPY by its verb (asyncpg writes PostgreSQL's own)."""
    return ["COPY" if s.startswith("COPY") else s for s in sql]


def rendered(wh: Warehouse, req: LoadRequest) -> list[str]:
    """What ``render_load`` says ``load(req)`` sends into a target that exists (creation runs only when
    something is missing)."""
    return as_sent([s for s in wh.render_load(req) if not s.startswith(CREATION)])


async def loaded_before(wh: Warehouse, s3: S3Conn, mode: Mode = "replace") -> LoadRequest:
    """A request planned from the state its table's first load left."""
    first = request(staged(s3, rows((1, 1, "a"), (2, 1, "b"))), mode=mode)
    await wh.load(first)
    return request(staged(s3, rows((2, 2, "b2"), (3, 2, "c"))), mode=mode, expect=first.execution_id)


async def test_a_streamed_replace_of_a_loaded_table_sends_six_messages(
    pg_schema: str, s3_conn: S3Conn
) -> None:
    async with recording(target_conn("postgres", pg_schema), s3_conn) as wh:
        req = await loaded_before(wh, s3_conn)
        Recording.sent.clear()
        streamed = wh.stream_replace(req)
        assert streamed is not None
        async with streamed as load:
            await load.copy(s3_batches(s3_conn)(req.stage))
            result = await load.finish(req.stage)
        sent = list(Recording.sent)
    assert kinds(sent, pg_schema) == ["begin+truncate", "guard", "shape", "copy", "state", "commit"]
    assert result.rows_loaded == 2 and result.rows_deleted is None  # TRUNCATE: not counted
    assert await content(pg_schema) == [(2, ts(2), "b2"), (3, ts(2), "c")]


async def test_a_replace_loaded_after_staging_sends_six_and_a_merge_eleven(
    pg_schema: str, s3_conn: S3Conn
) -> None:
    async with recording(target_conn("postgres", pg_schema), s3_conn) as wh:
        req = await loaded_before(wh, s3_conn)
        Recording.sent.clear()
        await wh.load(req)
        assert as_sent(Recording.sent) == rendered(wh, req)  # the dry run shows what is sent
        replaced = kinds(Recording.sent, pg_schema)
        merge = request(staged(s3_conn, rows((4, 3, "d"))), mode="merge", expect=req.execution_id)
        Recording.sent.clear()
        await wh.load(merge)
        assert as_sent(Recording.sent) == rendered(wh, merge)
        merged = kinds(Recording.sent, pg_schema)
    assert replaced == ["begin+truncate", "guard", "shape", "state", "copy", "commit"]
    assert merged == [
        *("begin", "create", "copy", "locks", "guard", "shape"),  # the staging table, then the LOCKs
        *("delete", "insert", "drop", "state", "commit"),
    ]
    assert await content(pg_schema) == [(2, ts(2), "b2"), (3, ts(2), "c"), (4, ts(3), "d")]


async def test_a_first_merge_into_an_empty_target_sends_eight_messages(
    pg_schema: str, s3_conn: S3Conn
) -> None:
    """It takes its LOCKs first and COPYs into the target under them; a first merge whose target has rows
    stages under the LOCKs and merges: the eleven messages of any merge, and the emptiness check."""
    async with recording(target_conn("postgres", pg_schema), s3_conn) as wh:
        first = request(staged(s3_conn, rows((1, 1, "a"), (2, 1, "b"))), mode="merge")
        await wh.load(first)
        sent = list(Recording.sent)
        assert as_sent(sent[sent.index(first_begin(pg_schema)) :]) == rendered(wh, first)
        await pg(f'DELETE FROM "{pg_schema}".s3shift_state')  # the next load is a first load again
        again = request(staged(s3_conn, rows((2, 2, "b2"), (3, 2, "c"))), mode="merge")
        Recording.sent.clear()
        await wh.load(again)
        merged = list(Recording.sent)
    assert kinds(sent[sent.index(first_begin(pg_schema)) :], pg_schema) == [
        *("begin+locks", "guard", "shape", "empty", "savepoint", "copy", "state", "commit")
    ]
    assert kinds(merged[merged.index(first_begin(pg_schema)) :], pg_schema) == [
        *("begin+locks", "guard", "shape", "empty", "create", "copy"),  # the staging table, under the LOCKs
        *("delete", "insert", "drop", "state", "commit"),
    ]
    assert await content(pg_schema) == [(1, ts(1), "a"), (2, ts(2), "b2"), (3, ts(2), "c")]


def first_begin(schema: str) -> str:
    """The first message of a first merge's transaction: BEGIN with the LOCKs."""
    target, state = f'"{schema}"."t"', f'"{schema}"."s3shift_state"'
    return (
        f"BEGIN ISOLATION LEVEL READ COMMITTED; LOCK TABLE {target} IN SHARE ROW EXCLUSIVE MODE; "
        f"LOCK TABLE {state} IN ROW EXCLUSIVE MODE"
    )


@pytest.mark.parametrize("mode", ["replace", "merge"])
async def test_redshift_sends_eleven_messages_as_rendered(
    mode: Mode, pg_schema: str, s3_conn: S3Conn
) -> None:
    """Staging (CREATE TEMP, COPY, COUNT) before the transaction; BEGIN and the LOCKs as one message;
    guard, shape, DELETE, INSERT, DROP, state row, COMMIT."""
    sessions: list[RedshiftEmulator] = []
    async with warehouse(target_conn("redshift", pg_schema), s3_conn, sessions=sessions) as wh:
        req = await loaded_before(wh, s3_conn, mode)
        sessions.clear()
        await wh.load(req)
    [session] = sessions
    assert as_sent(session.statements) == rendered(wh, req) and len(session.statements) == 11
    assert session.statements[3] == f'BEGIN; LOCK "{pg_schema}"."t"; LOCK "{pg_schema}"."s3shift_state"'


@pytest.mark.parametrize(
    ("kind", "mode"), [("postgres", "replace"), ("postgres", "merge"), ("redshift", "merge")]
)
async def test_a_target_dropped_after_its_first_load_is_created_again(
    kind: str, mode: Mode, pg_schema: str, s3_conn: S3Conn
) -> None:
    """The LOCK finds it missing: the transaction rolls back, the target is created, and the load runs
    again (refilling the staging table where the transaction holds it) and commits once."""
    async with warehouse(target_conn(kind, pg_schema), s3_conn) as wh:
        req = await loaded_before(wh, s3_conn, mode)
        await pg(f'DROP TABLE "{pg_schema}".t')
        result = await wh.load(req)
    assert result.rows_loaded == 2
    assert await content(pg_schema) == [(2, ts(2), "b2"), (3, ts(2), "c")]
    assert [r[0] for r in await state_rows(pg_schema)][-1] == req.execution_id
    assert len(await state_rows(pg_schema)) == 2
