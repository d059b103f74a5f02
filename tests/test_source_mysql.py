"""Connections and the pool, against the real MariaDB, for both drivers."""

from __future__ import annotations

import datetime
import socket
import time
import traceback
from collections.abc import Iterator
from dataclasses import replace

import anyio
import pytest

from src.common.errors import SourceError
from src.common.secret import Secret
from src.config.models import Driver, SourceConn
from src.source import mysql
from src.source.mysql import MySQLSource, inline_args
from tests.conftest import mysql_connect, mysql_exec, mysql_rows

PASSWORD = "S3cr3t-pw"


@pytest.fixture(params=["asyncmy", "aiomysql"])
def cfg(request: pytest.FixtureRequest, source_conn: SourceConn) -> SourceConn:
    driver: Driver = request.param
    return replace(source_conn, driver=driver)


@pytest.fixture
def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A port that accepts TCP connections but never says a word (a hung server)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        yield int(s.getsockname()[1])


def server_sessions(database: str | None = None) -> set[int]:
    """Session ids on the server (other than the one asking), optionally only those using ``database``."""
    sql = "SELECT ID FROM information_schema.PROCESSLIST WHERE ID <> CONNECTION_ID()"
    rows = mysql_rows("mysql", sql + " AND DB = %s", (database,)) if database else mysql_rows("mysql", sql)
    return {int(r[0]) for r in rows}


def assert_no_secret(err: BaseException) -> None:
    text = "".join(traceback.format_exception(err))
    assert PASSWORD not in text and "***" not in str(err)


@pytest.mark.anyio
async def test_session_is_pinned(cfg: SourceConn) -> None:
    async with MySQLSource(cfg) as src:
        await src.ping()
        async with src.connection() as conn:
            rows = await conn.fetchall(
                "SELECT @@session.time_zone, @@character_set_connection, @@character_set_results, "
                "@@autocommit, @@lock_wait_timeout, @@net_write_timeout, DATABASE()"
            )
    assert rows == [("+00:00", "utf8mb4", "utf8mb4", 1, 60, 600, cfg.database)]


@pytest.mark.anyio
async def test_bound_parameters(cfg: SourceConn) -> None:
    async with MySQLSource(cfg) as src, src.connection() as conn:
        rows = await conn.fetchall("SELECT %s, %s, CHAR_LENGTH(%s)", ("it's `x`; --", None, "😀"))
    assert rows == [("it's `x`; --", None, 1)]


@pytest.mark.anyio
async def test_refused_port_is_retryable_and_names_host_port(cfg: SourceConn, closed_port: int) -> None:
    bad = replace(cfg, port=closed_port, password=Secret(PASSWORD))
    async with MySQLSource(bad) as src:
        with pytest.raises(SourceError) as err:
            await src.ping()
    message = str(err.value)
    assert message.startswith(f"cannot connect to MySQL source 'test_mysql' at 127.0.0.1:{closed_port}: ")
    assert "Connection refused" in message and "check host/port" in message
    assert err.value.retryable is True
    assert_no_secret(err.value)


@pytest.mark.anyio
async def test_wrong_password_is_not_retryable(cfg: SourceConn) -> None:
    async with MySQLSource(replace(cfg, password=Secret(PASSWORD))) as src:
        with pytest.raises(SourceError, match=r"\(1045\) Access denied .* check the username") as err:
            await src.ping()
    assert err.value.retryable is False
    assert_no_secret(err.value)


@pytest.mark.anyio
async def test_unknown_database_is_not_retryable(cfg: SourceConn) -> None:
    async with MySQLSource(replace(cfg, database="no_such_db_s3s")) as src:
        with pytest.raises(SourceError, match=r"\(1049\) Unknown database 'no_such_db_s3s'") as err:
            await src.ping()
    assert err.value.retryable is False


@pytest.mark.anyio
async def test_silent_server_times_out(cfg: SourceConn, silent_server: int) -> None:
    started = time.monotonic()
    async with MySQLSource(replace(cfg, port=silent_server, connect_timeout=0.5)) as src:
        with pytest.raises(SourceError, match=rf"at 127\.0\.0\.1:{silent_server}: timed out") as err:
            await src.ping()
    assert err.value.retryable is True
    assert time.monotonic() - started < 5


@pytest.mark.anyio
async def test_sql_error_keeps_the_connection(cfg: SourceConn) -> None:
    async with MySQLSource(cfg) as src:
        async with src.connection() as conn:
            first = conn.thread_id
            with pytest.raises(SourceError, match=r"\(1146\) Table .* doesn't exist") as err:
                await conn.fetchall("SELECT * FROM no_such_table")
            assert err.value.retryable is False
        async with src.connection() as conn:
            assert conn.thread_id == first  # an ordinary SQL error leaves the session reusable


@pytest.mark.anyio
async def test_read_timeout_breaks_the_connection(cfg: SourceConn) -> None:
    async with MySQLSource(replace(cfg, read_timeout=0.5)) as src:
        async with src.connection() as conn:
            first = conn.thread_id
            with pytest.raises(SourceError, match="timed out") as err:
                await conn.fetchall("SELECT SLEEP(5)")
            assert err.value.retryable is True and conn.broken
        async with src.connection() as conn:
            assert conn.thread_id != first


@pytest.mark.anyio
async def test_pool_reuses_and_never_exceeds_max_connections(cfg: SourceConn) -> None:
    cfg = replace(cfg, max_connections=2)
    borrowed = peak = 0
    seen: set[int] = set()

    async def worker() -> None:
        nonlocal borrowed, peak
        async with src.connection() as conn:
            borrowed += 1
            peak = max(peak, borrowed)
            seen.add(conn.thread_id)
            await conn.fetchall("SELECT SLEEP(0.05)")
            assert len(server_sessions(cfg.database)) <= 2
            borrowed -= 1

    async with MySQLSource(cfg) as src:
        async with anyio.create_task_group() as tg:
            for _ in range(8):
                tg.start_soon(worker)
        assert peak == 2 and len(seen) == 2 and src.open_connections == 2
    assert not seen & server_sessions()  # closed on exit


@pytest.mark.anyio
async def test_external_limiter_bounds_borrowing(cfg: SourceConn) -> None:
    limiter = anyio.CapacityLimiter(1)
    borrowed = peak = 0

    async def worker() -> None:
        nonlocal borrowed, peak
        async with src.connection() as conn:
            borrowed += 1
            peak = max(peak, borrowed)
            await conn.fetchall("SELECT SLEEP(0.02)")
            borrowed -= 1

    async with MySQLSource(cfg, limiter) as src, anyio.create_task_group() as tg:
        for _ in range(4):
            tg.start_soon(worker)
    assert peak == 1 and limiter.borrowed_tokens == 0


@pytest.mark.anyio
async def test_one_task_may_borrow_two_connections(cfg: SourceConn) -> None:
    async with (
        MySQLSource(cfg, anyio.CapacityLimiter(2)) as src,
        src.connection() as one,
        src.connection() as two,
    ):
        assert one.thread_id != two.thread_id


@pytest.mark.anyio
async def test_a_pooled_connection_the_server_ended_is_not_reused(cfg: SourceConn) -> None:
    """A session killed while idle in the pool (KILL, wait_timeout, a restart) is not handed out again: the
    next table got '(2006) MySQL server has gone away' (only sessions idle for 30 s are pinged)."""
    async with MySQLSource(cfg) as src:
        async with src.connection() as conn:
            first = conn.thread_id
        mysql_exec("mysql", f"KILL {first}")
        await _wait_gone(first)
        await anyio.sleep(0.1)  # the event loop sees the socket's EOF
        async with src.connection() as conn:
            assert await conn.fetchall("SELECT 1") == [(1,)]
            assert conn.thread_id != first
        assert src.open_connections == 1


@pytest.mark.anyio
async def test_error_while_borrowed_closes_the_connection(cfg: SourceConn) -> None:
    async with MySQLSource(cfg) as src:
        with pytest.raises(RuntimeError):
            async with src.connection() as conn:
                first = conn.thread_id
                raise RuntimeError("boom")
        assert src.open_connections == 0
        async with src.connection() as conn:
            assert conn.thread_id != first
        await _wait_gone(first)


@pytest.mark.anyio
async def test_cancel_mid_stream_drops_the_connection_without_draining(
    cfg: SourceConn, mysql_db: str
) -> None:
    mysql_exec(
        mysql_db,
        "CREATE TABLE big (id INT PRIMARY KEY, pad CHAR(200))",
        "INSERT INTO big SELECT seq, 'x' FROM seq_1_to_300000",
    )
    async with MySQLSource(cfg) as src:
        started = time.monotonic()
        with anyio.move_on_after(0.5) as scope:
            async with src.connection() as conn, conn.stream("SELECT id, pad FROM big") as rows:
                first = conn.thread_id
                assert len(await rows.fetchmany(10)) == 10
                await anyio.sleep(5)  # a stalled consumer, cancelled
        assert scope.cancelled_caught and time.monotonic() - started < 2
        assert conn.broken and src.open_connections == 0
        await _wait_gone(first)


@pytest.mark.anyio
async def test_leaving_a_stream_early_discards_the_connection(cfg: SourceConn) -> None:
    async with MySQLSource(cfg) as src:
        async with src.connection() as conn:
            first = conn.thread_id
            async with conn.stream("SELECT seq FROM seq_1_to_100000") as rows:
                assert len(await rows.fetchmany(5)) == 5
        async with src.connection() as conn:
            assert conn.thread_id != first
            async with conn.stream("SELECT seq FROM seq_1_to_3") as rows:
                assert [r[0] for r in await rows.fetchmany(10)] == [1, 2, 3] and rows.done
            second = conn.thread_id
        async with src.connection() as conn:
            assert conn.thread_id == second  # a fully read stream leaves the connection reusable
            assert await conn.fetchall("SELECT 1") == [(1,)]


async def _wait_gone(thread_id: int) -> None:
    for _ in range(100):
        if thread_id not in server_sessions():
            return
        await anyio.sleep(0.05)
    raise AssertionError(f"session {thread_id} is still open on the server")


def test_inline_args_writes_what_the_driver_sends_and_only_integers_and_dates() -> None:
    """connectorx binds nothing: a window's bounds go into its SQL as asyncmy itself formats them."""
    sql = "`ts%` >= %s AND (`ts%` > %s OR (`ts%` = %s AND `id` > %s)) AND `d` <= %s"
    stamp = datetime.datetime(2026, 11, 27, 17, 40, 17, 678954)
    text = inline_args(sql, [stamp, stamp, stamp, -12, datetime.date(2024, 2, 29)])
    assert text == (
        "`ts%` >= '2026-11-27 17:40:17.678954' AND (`ts%` > '2026-11-27 17:40:17.678954' OR "
        "(`ts%` = '2026-11-27 17:40:17.678954' AND `id` > -12)) AND `d` <= '2024-02-29'"
    )
    assert inline_args("`a%b` IS NOT NULL", []) == "`a%b` IS NOT NULL"
    for value in ("x' OR 1 --", b"\x00", True, 1.5, None):
        with pytest.raises(TypeError):
            inline_args("`k` > %s", [value])


@pytest.mark.anyio
@pytest.mark.parametrize("held_by", ["lock_tables", "ddl"])
async def test_a_read_waiting_for_a_lock_says_so(
    cfg: SourceConn,
    mysql_db: str,
    stage_log: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    held_by: str,
) -> None:
    """A read behind another session's LOCK TABLES ... WRITE (or DDL waiting for the metadata lock) waited
    silently for up to lock_wait_timeout (60 s): a nightly run looked hung. A statement unanswered after a
    few seconds now asks the server, on a free pooled connection, what the session waits for, and one
    warning names the table and the lock; a statement answered sooner asks nothing and logs nothing."""
    monkeypatch.setattr(mysql, "LOCK_REPORT_AFTER_S", 0.3)
    table = f"`{mysql_db}`.`locked`"
    mysql_exec(mysql_db, "CREATE TABLE locked (id INT PRIMARY KEY)", "INSERT INTO locked VALUES (1)")
    holder, alter = mysql_connect(mysql_db), mysql_connect(mysql_db)
    if held_by == "lock_tables":
        holder.cursor().execute(f"LOCK TABLES {table} WRITE")
    else:  # an open transaction that read the table keeps the ALTER waiting, and the ALTER every reader
        holder.cursor().execute("BEGIN")
        holder.cursor().execute(f"SELECT * FROM {table}")

    async def release() -> None:
        await anyio.sleep(1.0)
        await anyio.to_thread.run_sync(
            holder.cursor().execute, "UNLOCK TABLES" if held_by == "lock_tables" else "COMMIT"
        )

    def warnings() -> list[str]:  # each record once (caplog's handler may sit on the root logger too)
        return [
            r.getMessage() for r in set(stage_log.records) if r.funcName == "_report_wait" and r.levelno >= 20
        ]

    try:
        async with MySQLSource(cfg) as src, src.connection(f"{mysql_db}.locked") as conn:
            assert await conn.fetchall("SELECT 1") == [(1,)] and warnings() == []
            async with anyio.create_task_group() as tg:
                if held_by == "ddl":
                    tg.start_soon(
                        anyio.to_thread.run_sync, alter.cursor().execute, f"ALTER TABLE {table} ADD w INT"
                    )
                    await anyio.sleep(0.2)
                tg.start_soon(release)
                assert await conn.fetchall(f"SELECT COUNT(*) FROM {table}") == [(1,)]
    finally:
        holder.close()
        alter.close()
    assert warnings() == [
        f"{mysql_db}.locked: waiting 0.3 s so far for a lock another session holds (MySQL: 'Waiting for "
        "table metadata lock'): a LOCK TABLES ... WRITE, or DDL such as ALTER TABLE; the read goes on when "
        "it is released, or fails after lock_wait_timeout (60 s), retryable"
    ]


@pytest.mark.anyio
async def test_a_wait_with_no_connection_free_to_ask_says_so(
    source_conn: SourceConn,
    mysql_db: str,
    stage_log: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """max_connections reached: the server is not asked (the budget holds), and an info line says why not."""
    monkeypatch.setattr(mysql, "LOCK_REPORT_AFTER_S", 0.3)
    async with MySQLSource(replace(source_conn, max_connections=1)) as src, src.connection("db.slow") as conn:
        await conn.fetchall("SELECT SLEEP(0.8)")
    lines = [
        r.getMessage() for r in set(stage_log.records) if r.funcName == "_report_wait" and r.levelno >= 20
    ]
    assert lines == [
        "db.slow: a query has had no answer for 0.3 s, and no connection is free to ask MySQL why (a lock "
        "another session holds, e.g. LOCK TABLES ... WRITE or an ALTER TABLE, or a slow query)"
    ]
