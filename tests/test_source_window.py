"""Incremental windows against the real MariaDB, both drivers: bounds, keyset pages, ties, late commits."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from typing import Any

import anyio
import pyarrow as pa
import pytest

from src.common.errors import ConfigError, SourceError
from src.common.schema import Column, TableSchema
from src.config.models import Driver, SourceConn
from src.plan.models import Watermark, Window
from src.source.extract import ExtractStats
from src.source.introspect import describe_table
from src.source.mysql import MySQLSource, SourceConnection
from src.source.window import (
    check_window,
    estimate_rows,
    extract_window,
    index_for,
    source_now,
    ts_bound,
    upper_bound,
    window_sql,
)
from tests.conftest import mysql_connect, mysql_exec, mysql_rows

T0 = datetime(2024, 3, 1, 12, 0, 0)
FAR = Watermark(ts=datetime(2100, 1, 1))
OnBatch = Callable[[int, pa.RecordBatch], Awaitable[None]]


@pytest.fixture(params=["asyncmy", "aiomysql"])
def cfg(request: pytest.FixtureRequest, source_conn: SourceConn) -> SourceConn:
    driver: Driver = request.param
    return replace(source_conn, driver=driver)


@dataclass
class Read:
    rows: list[dict[str, Any]]
    sizes: list[int]
    stats: ExtractStats

    def col(self, name: str) -> list[Any]:
        return [r[name] for r in self.rows]


async def read(
    cfg: SourceConn,
    table: str,
    window: Window,
    *,
    batch_size: int = 1000,
    on_batch: OnBatch | None = None,
    primary_key: tuple[str, ...] | None = None,
) -> Read:
    """extract_window into a consumer that sees each batch (buffer 0: the reader waits for it);
    ``primary_key``: a configured key overriding the table's."""
    assert cfg.database
    stats = ExtractStats()
    batches: list[pa.RecordBatch] = []
    send, receive = anyio.create_memory_object_stream[pa.RecordBatch](0)
    async with MySQLSource(cfg) as src, src.connection() as conn:
        schema = await describe_table(conn, cfg.database, table, primary_key=primary_key)
        async with anyio.create_task_group() as tg:
            tg.start_soon(
                lambda: extract_window(
                    conn,
                    cfg.database or "",
                    table,
                    schema,
                    send,
                    window=window,
                    batch_size=batch_size,
                    stats=stats,
                )
            )
            async with receive:
                async for batch in receive:
                    assert batch.schema == schema.arrow_schema()
                    batches.append(batch)
                    if on_batch:
                        await on_batch(len(batches), batch)
    rows = pa.Table.from_batches(batches, schema.arrow_schema()).to_pylist()
    return Read(rows, [b.num_rows for b in batches], stats)


async def with_conn(
    cfg: SourceConn, fn: Callable[[SourceConnection, TableSchema], Awaitable[Any]], table: str
) -> Any:
    assert cfg.database
    async with MySQLSource(cfg) as src, src.connection() as conn:
        return await fn(conn, await describe_table(conn, cfg.database, table))


def hybrid(start: Watermark | None = None, end: Watermark | None = FAR) -> Window:
    return Window("hybrid", ts_column="ts", id_column="id", start=start, end=end)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def us(n: int) -> datetime:
    return T0 + timedelta(microseconds=n)


ORDERS = "CREATE TABLE o (id INT PRIMARY KEY, ts DATETIME(6) NULL, v VARCHAR(10), KEY k_ts (ts))"


def insert(db: str, table: str, rows: list[tuple[int, datetime | None]]) -> None:
    values = ", ".join(f"({i}, {'NULL' if t is None else repr(str(t))}, 'v{i}')" for i, t in rows)
    mysql_exec(db, f"INSERT INTO {table} (id, ts, v) VALUES {values}")


# ---- keyset pages ------------------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("strategy", ["hybrid", "timestamp_only"])
async def test_ties_at_page_boundaries_are_read_exactly_once(
    cfg: SourceConn, mysql_db: str, strategy: str
) -> None:
    mysql_exec(mysql_db, ORDERS)
    tied = [(i, at(5)) for i in (40, 12, 33, 7, 25, 18, 3, 29, 11, 50)]  # ten rows, one timestamp
    insert(mysql_db, "o", [(1, at(9)), (2, at(1)), *tied, (60, at(5.000001)), (61, at(4.999999))])
    window = Window(strategy, ts_column="ts", id_column="id" if strategy == "hybrid" else None, end=FAR)  # type: ignore[arg-type]
    got = await read(cfg, "o", window, batch_size=3)
    assert got.col("id") == [2, 61, 3, 7, 11, 12, 18, 25, 29, 33, 40, 50, 60, 1]  # (ts, id) order, each once
    assert got.sizes == [3, 3, 3, 3, 2] and got.stats.rows == 14 and got.stats.batches == 5
    resumed = await read(cfg, "o", replace(window, start=Watermark(ts=at(5), id=25)), batch_size=3)
    assert resumed.col("id") == [29, 33, 40, 50, 60, 1]


@pytest.mark.anyio
async def test_ties_of_a_cursor_that_is_not_the_whole_key_are_never_cut_by_a_page(
    cfg: SourceConn, mysql_db: str
) -> None:
    """A per-tenant id (key ``(tenant, id)``) repeats across tenants, a log's ``seq`` repeats: pages
    ordered by the cursor alone cut such a tie at a page boundary and the next page (``id > last``)
    skipped the rest of it (hybrid and id_only read 8 of these 12 rows). The key's other columns now
    complete the order; a table without a key is read in one query."""
    mysql_exec(
        mysql_db,
        "CREATE TABLE c (tenant INT NOT NULL, id INT NOT NULL, ts DATETIME(6) NOT NULL,"
        " PRIMARY KEY (tenant, id), KEY (ts, id))",
        f"INSERT INTO c SELECT t.seq, i.seq, '{T0}' FROM seq_1_to_3 t, seq_1_to_4 i",
        "CREATE TABLE g (seq INT NOT NULL, v VARCHAR(10), KEY (seq))",
        "INSERT INTO g SELECT seq DIV 3, 'x' FROM seq_0_to_11",
    )
    every = [(t, i) for i in range(1, 5) for t in range(1, 4)]  # (ts, id, tenant) order
    hyb = Window("hybrid", ts_column="ts", id_column="id", end=FAR)
    got = await read(cfg, "c", hyb, batch_size=2)
    assert list(zip(got.col("tenant"), got.col("id"), strict=True)) == every
    resumed = await read(cfg, "c", replace(hyb, start=Watermark(ts=T0, id=2)), batch_size=2)
    assert list(zip(resumed.col("tenant"), resumed.col("id"), strict=True)) == every[6:]
    by_id = await read(cfg, "c", Window("id_only", id_column="id", end=Watermark(id=4)), batch_size=2)
    assert list(zip(by_id.col("tenant"), by_id.col("id"), strict=True)) == every
    log = await read(cfg, "g", Window("id_only", id_column="seq", end=Watermark(id=3)), batch_size=2)
    assert sorted(log.col("seq")) == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert "ORDER BY `ts`, `id`, `tenant` LIMIT" in await with_conn(cfg, _sql(hyb), "c")


@pytest.mark.anyio
async def test_a_configured_key_that_can_be_null_hides_no_row(cfg: SourceConn, mysql_db: str) -> None:
    """``primary_key: [code]`` on a nullable column: pages broke timestamp ties on it with ``code > last``
    and ``code IS NOT NULL``, so every row whose code was NULL was silently never read. Such a key does
    not order the rows: the window is one query, and a NULL key reaches the load (which refuses it)."""
    mysql_exec(
        mysql_db,
        "CREATE TABLE k (code VARCHAR(5) NULL, ts DATETIME(6) NOT NULL, KEY (ts))",
        f"INSERT INTO k VALUES ('a', '{T0}'), (NULL, '{T0}'), ('c', '{T0}'), (NULL, '{at(1)}')",
    )
    window = Window("timestamp_only", ts_column="ts", end=FAR)
    got = await read(cfg, "k", window, batch_size=1, primary_key=("code",))
    assert sorted(got.col("code"), key=str) == [None, None, "a", "c"]


@pytest.mark.anyio
async def test_a_full_last_page_ends_with_an_empty_page(cfg: SourceConn, mysql_db: str) -> None:
    mysql_exec(mysql_db, ORDERS)
    insert(mysql_db, "o", [(i, at(i % 2)) for i in range(1, 7)])
    got = await read(cfg, "o", hybrid(), batch_size=3)
    assert got.col("id") == [2, 4, 6, 1, 3, 5] and got.sizes == [3, 3]
    assert (await read(cfg, "o", hybrid(start=Watermark(ts=at(1))), batch_size=3)).rows == []


@pytest.mark.anyio
@pytest.mark.parametrize("column", ["DATETIME(6)", "TIMESTAMP(6) NULL"])
async def test_window_bounds_are_exact_to_the_microsecond(
    cfg: SourceConn, mysql_db: str, column: str
) -> None:
    mysql_exec(mysql_db, f"CREATE TABLE o (id INT PRIMARY KEY, ts {column}, v VARCHAR(10), KEY (ts))")
    insert(mysql_db, "o", [(1, us(0)), (2, us(1)), (3, us(1)), (4, us(2)), (5, us(3)), (6, us(4))])
    window = hybrid(start=Watermark(ts=us(1), id=2), end=Watermark(ts=us(3)))
    got = await read(cfg, "o", window, batch_size=2)
    assert got.col("id") == [3, 4, 5]  # start (us1, 2) exclusive, end us3 inclusive
    tz = UTC if column.startswith("TIMESTAMP") else None
    assert got.col("ts") == [us(1).replace(tzinfo=tz), us(2).replace(tzinfo=tz), us(3).replace(tzinfo=tz)]
    after_ts = await read(cfg, "o", hybrid(start=Watermark(ts=us(1)), end=Watermark(ts=us(3))), batch_size=1)
    assert after_ts.col("id") == [4, 5]  # a start without id: every row at us1 was read already
    ts_only = Window("timestamp_only", ts_column="ts", start=Watermark(ts=us(0)), end=Watermark(ts=us(2)))
    assert (await read(cfg, "o", ts_only, batch_size=1)).col("id") == [2, 3, 4]


@pytest.mark.anyio
async def test_timestamp_only_without_a_single_column_key_streams_one_query(
    cfg: SourceConn, mysql_db: str
) -> None:
    mysql_exec(mysql_db, "CREATE TABLE o (id INT NOT NULL, ts DATETIME(6) NULL, v VARCHAR(10))")
    insert(mysql_db, "o", [(1, at(1)), (2, at(2)), (3, at(2)), (4, at(3)), (5, None), (6, at(4))])
    window = Window("timestamp_only", ts_column="ts", start=Watermark(ts=at(1)), end=Watermark(ts=at(3)))
    got = await read(cfg, "o", window, batch_size=2)
    assert sorted(got.col("id")) == [2, 3, 4] and got.sizes == [2, 1]
    assert "ORDER BY" not in await with_conn(cfg, _sql(window), "o")


def _sql(window: Window) -> Callable[[SourceConnection, TableSchema], Awaitable[str]]:
    async def go(conn: SourceConnection, schema: TableSchema) -> str:
        return window_sql("db", "o", schema, window, batch_size=5)

    return go


@pytest.mark.anyio
async def test_id_only_with_gaps_and_bigint_unsigned_max(cfg: SourceConn, mysql_db: str) -> None:
    mysql_exec(mysql_db, "CREATE TABLE u (id BIGINT UNSIGNED PRIMARY KEY, v INT)")
    ids = [1, 5, 1000, 2**63 - 1, 2**63, 2**64 - 2, 2**64 - 1]
    mysql_exec(mysql_db, "INSERT INTO u VALUES " + ", ".join(f"({i}, 0)" for i in ids))

    async def bound(conn: SourceConnection, schema: TableSchema) -> Watermark | None:
        return await upper_bound(
            conn, mysql_db, "u", schema, Window("id_only", id_column="id"), lag_seconds=5
        )

    end = await with_conn(cfg, bound, "u")
    assert end == Watermark(id=2**64 - 1)
    got = await read(
        cfg, "u", Window("id_only", id_column="id", start=Watermark(id=5), end=end), batch_size=2
    )
    assert [int(i) for i in got.col("id")] == ids[2:] and got.sizes == [2, 2, 1]
    below = Window("id_only", id_column="id", start=Watermark(id=0), end=Watermark(id=2**63))
    assert [int(i) for i in (await read(cfg, "u", below, batch_size=3)).col("id")] == ids[:5]


@pytest.mark.anyio
async def test_id_only_on_an_empty_table_has_no_bound_and_reads_nothing(
    cfg: SourceConn, mysql_db: str
) -> None:
    mysql_exec(mysql_db, "CREATE TABLE e (id INT PRIMARY KEY, v INT)")
    window = Window("id_only", id_column="id")

    async def bound(conn: SourceConnection, schema: TableSchema) -> Watermark | None:
        return await upper_bound(conn, mysql_db, "e", schema, window, lag_seconds=0)

    assert await with_conn(cfg, bound, "e") is None
    mysql_exec(mysql_db, "INSERT INTO e VALUES (1, 1)")
    got = await read(cfg, "e", window)  # end None: nothing to read, even though a row arrived since
    assert got.rows == [] and got.stats.batches == 0


@pytest.mark.anyio
async def test_null_cursors_are_never_read_and_zero_dates_once(cfg: SourceConn, mysql_db: str) -> None:
    mysql_exec(
        mysql_db,
        "CREATE TABLE z (id INT PRIMARY KEY, ts DATETIME NULL, v VARCHAR(10), KEY (ts))",
        "SET SESSION sql_mode=''",
        "INSERT INTO z VALUES (1, NULL, 'a'), (2, '0000-00-00 00:00:00', 'b'),"
        " (3, '0000-00-00 00:00:00', 'c'), (4, '2024-01-01 00:00:00', 'd'), (5, NULL, 'e'),"
        " (6, '2024-01-02 00:00:00', 'f')",
    )
    first = await read(cfg, "z", replace(hybrid(), end=Watermark(ts=datetime(2024, 1, 1))), batch_size=1)
    assert first.col("id") == [2, 3, 4] and first.col("ts") == [None, None, datetime(2024, 1, 1)]
    assert first.stats.coercions == {"ts": {"zero_date_to_null": 2}}
    second = await read(cfg, "z", hybrid(start=Watermark(ts=datetime(2024, 1, 1))), batch_size=1)
    assert second.col("id") == [6]


@pytest.mark.anyio
async def test_hybrid_on_a_nullable_id_skips_null_ids_and_pages_exactly(
    cfg: SourceConn, mysql_db: str
) -> None:
    mysql_exec(mysql_db, "CREATE TABLE n (pk INT PRIMARY KEY, ts DATETIME(6), id INT NULL, KEY (ts, id))")
    rows = [(1, 1, None), (2, 1, 7), (3, 1, 5), (4, 1, None), (5, 1, 9), (6, 2, None), (7, 2, 1)]
    mysql_exec(
        mysql_db,
        "INSERT INTO n VALUES "
        + ", ".join(f"({pk}, '{at(t)}', {'NULL' if i is None else i})" for pk, t, i in rows),
    )
    got = await read(cfg, "n", Window("hybrid", ts_column="ts", id_column="id", end=FAR), batch_size=2)
    assert got.col("pk") == [3, 2, 5, 7] and got.sizes == [2, 2]


# ---- updates and late commits ------------------------------------------------------------------------


@pytest.mark.anyio
async def test_rows_moved_during_the_read_never_loop_or_skip_others(cfg: SourceConn, mysql_db: str) -> None:
    mysql_exec(mysql_db, ORDERS)
    insert(mysql_db, "o", [(i, at(i)) for i in range(1, 31)])
    end = Watermark(ts=at(100))

    async def meddle(n: int, batch: pa.RecordBatch) -> None:
        if n == 1:  # the reader is at page 2 now; every statement below lands before page 3 is read
            await anyio.to_thread.run_sync(
                mysql_exec,
                mysql_db,
                f"UPDATE o SET ts = '{at(200)}' WHERE id = 20",  # out of the window (ts = NOW())
                f"UPDATE o SET ts = '{at(2.5)}' WHERE id = 25",  # back to a position already passed
                f"UPDATE o SET ts = '{at(26.5)}' WHERE id = 3",  # an already read row moves forward
                f"UPDATE o SET ts = '{at(15)}' WHERE id = 14",  # to a tie with a row ahead of the reader
            )

    got = await read(cfg, "o", hybrid(end=end), batch_size=5, on_batch=meddle)
    expected = [*range(1, 11), 11, 12, 13, 14, 15, 16, 17, 18, 19, 21, 22, 23, 24, 26, 3, 27, 28, 29, 30]
    assert got.col("id") == expected  # 20 and 25 skipped here, 3 read twice, nothing else touched
    assert sorted(set(got.col("id"))) == [i for i in range(1, 31) if i not in (20, 25)]
    following = await read(cfg, "o", hybrid(start=end), batch_size=5)
    assert following.col("id") == [20]  # the next window picks up the row updated to a later ts


@pytest.mark.anyio
@pytest.mark.parametrize(("lag", "found"), [(1.0, True), (0.0, False)], ids=["with_lag", "no_lag"])
async def test_a_late_commit_inside_the_lag_is_read_by_the_next_window(
    cfg: SourceConn, mysql_db: str, lag: float, found: bool
) -> None:
    """A transaction writes ts = NOW() and commits after the first window was read. With a lag longer than
    its commit delay the row is past window 1's end, so window 2 reads it; without a lag it is lost."""
    mysql_exec(mysql_db, ORDERS, "INSERT INTO o VALUES (1, UTC_TIMESTAMP(6) - INTERVAL 5 SECOND, 'old')")
    writer = mysql_connect(mysql_db)
    try:
        writer.autocommit(False)
        with writer.cursor() as cur:
            cur.execute("INSERT INTO o VALUES (2, UTC_TIMESTAMP(6), 'late')")  # ts fixed now, not yet visible
        first_end = await with_conn(cfg, _bound(mysql_db, lag), "o")
        first = await read(cfg, "o", hybrid(end=first_end))
        writer.commit()
    finally:
        writer.close()
    assert first.col("id") == [1]  # committed rows with ts <= now - lag are visible at read time
    await anyio.sleep(lag + 0.1)
    second_end = await with_conn(cfg, _bound(mysql_db, lag), "o")
    second = await read(cfg, "o", hybrid(start=first_end, end=second_end))
    assert second.col("id") == ([2] if found else [])


def _bound(db: str, lag: float) -> Callable[[SourceConnection, TableSchema], Awaitable[Watermark | None]]:
    async def go(conn: SourceConnection, schema: TableSchema) -> Watermark | None:
        return await upper_bound(conn, db, "o", schema, hybrid(), lag_seconds=lag)

    return go


@pytest.mark.anyio
async def test_no_query_stays_open_while_the_consumer_stalls(cfg: SourceConn, mysql_db: str) -> None:
    mysql_exec(mysql_db, ORDERS)
    insert(mysql_db, "o", [(i, at(i)) for i in range(1, 41)])
    assert cfg.database
    commands: list[str] = []
    async with MySQLSource(cfg) as src, src.connection() as conn:
        schema = await describe_table(conn, cfg.database, "o")
        send, receive = anyio.create_memory_object_stream[pa.RecordBatch](0)
        stats = ExtractStats()
        async with anyio.create_task_group() as tg:
            tg.start_soon(
                lambda: extract_window(
                    conn, mysql_db, "o", schema, send, window=hybrid(), batch_size=10, stats=stats
                )
            )
            async with receive:
                await receive.receive()
                await anyio.sleep(0.2)  # the reader has read page 2 and waits to send it
                sql = "SELECT COMMAND FROM information_schema.PROCESSLIST WHERE ID = %s"
                commands = [str(r[0]) for r in mysql_rows("mysql", sql, (conn.thread_id,))]
                assert len([b async for b in receive]) == 3
        assert not conn.broken
    assert commands == ["Sleep"] and stats.rows == 40


@pytest.mark.anyio
async def test_schema_change_between_pages_is_retryable(cfg: SourceConn, mysql_db: str) -> None:
    mysql_exec(mysql_db, ORDERS)
    insert(mysql_db, "o", [(i, at(i)) for i in range(1, 11)])

    async def alter(n: int, batch: pa.RecordBatch) -> None:
        if n == 1:
            await anyio.to_thread.run_sync(mysql_exec, mysql_db, "ALTER TABLE o DROP COLUMN v")

    with pytest.RaisesGroup(pytest.RaisesExc(SourceError, match="changed since it was planned")) as err:
        await read(cfg, "o", hybrid(), batch_size=3, on_batch=alter)
    assert all(e.retryable for e in err.value.exceptions if isinstance(e, SourceError))


# ---- the source's clock and time zones ---------------------------------------------------------------


def server_utc() -> datetime:
    value = mysql_rows("mysql", "SELECT UTC_TIMESTAMP(6)")[0][0]
    assert isinstance(value, datetime)
    return value


@pytest.mark.anyio
@pytest.mark.parametrize(
    "column", ["DATETIME(6)", "TIMESTAMP(6) NULL", "TIMESTAMP NULL", "DATETIME(3)", "DATE"]
)
async def test_upper_bound_is_the_source_clock_minus_lag(cfg: SourceConn, mysql_db: str, column: str) -> None:
    mysql_exec(mysql_db, f"CREATE TABLE o (id INT PRIMARY KEY, ts {column})")
    before = server_utc()
    end = await with_conn(cfg, _bound(mysql_db, 30.5), "o")
    after = server_utc()
    assert end is not None and end.id is None and end.ts is not None and end.ts.tzinfo is None
    low, high = before - timedelta(seconds=30.5), after - timedelta(seconds=30.5)
    if column == "DATE":
        assert end.ts == datetime.combine(low.date() - timedelta(days=1), datetime.min.time()) or (
            end.ts == datetime.combine(high.date() - timedelta(days=1), datetime.min.time())
        )
        return
    digits = 6 if "(6)" in column else 3 if "(3)" in column else 0
    unit = timedelta(microseconds=10 ** (6 - digits))
    assert end.ts.microsecond % 10 ** (6 - digits) == 0
    # the end of the last complete unit: a row written now, in the unit the clock is in, comes after it
    assert low - 2 * unit < end.ts and end.ts + unit <= high


@pytest.mark.anyio
async def test_upper_bound_ignores_the_session_time_zone(cfg: SourceConn, mysql_db: str) -> None:
    mysql_exec(mysql_db, "CREATE TABLE o (id INT PRIMARY KEY, ts TIMESTAMP(6) NULL)")

    async def go(conn: SourceConnection, schema: TableSchema) -> tuple[Watermark | None, datetime]:
        await conn.execute("SET time_zone = '+05:00'")
        return await upper_bound(conn, mysql_db, "o", schema, hybrid(), lag_seconds=0), await source_now(conn)

    end, now = await with_conn(cfg, go, "o")
    reference = server_utc()
    assert end is not None and end.ts is not None and now.tzinfo is None
    assert timedelta(0) <= reference - end.ts < timedelta(seconds=5)
    assert timedelta(0) <= reference - now < timedelta(seconds=5)


@pytest.mark.anyio
async def test_timestamp_cursor_written_in_another_zone_is_compared_in_utc(
    cfg: SourceConn, mysql_db: str
) -> None:
    mysql_exec(
        mysql_db,
        "CREATE TABLE o (id INT PRIMARY KEY, ts TIMESTAMP(6) NULL, v VARCHAR(10), KEY (ts))",
        "SET time_zone = '+05:00'",  # the writer's zone: stored instants are 5 hours earlier in UTC
        "INSERT INTO o VALUES (1, '2024-01-01 05:00:00', 'a'), (2, '2024-01-01 05:00:00.000001', 'b'),"
        " (3, '2024-01-01 05:00:01', 'c'), (4, '2024-01-01 05:00:01.000001', 'd')",
    )
    window = hybrid(start=Watermark(ts=datetime(2024, 1, 1)), end=Watermark(ts=datetime(2024, 1, 1, 0, 0, 1)))
    got = await read(cfg, "o", window, batch_size=1)
    assert got.col("id") == [2, 3]
    assert got.col("ts") == [
        datetime(2024, 1, 1, 0, 0, 0, 1, tzinfo=UTC),
        datetime(2024, 1, 1, 0, 0, 1, tzinfo=UTC),
    ]


def test_ts_bound_truncates_to_the_column_and_dates_to_complete_days() -> None:
    value = datetime(2024, 5, 6, 7, 8, 9, 987654)

    def col(source_type: str) -> Column:
        return Column("ts", "date" if source_type == "date" else "timestamp", True, source_type)

    # the last complete unit: a row stamped later in the unit ``value`` is in belongs to the next window
    assert ts_bound(col("datetime(6)"), value) == value.replace(microsecond=987653)
    assert ts_bound(col("datetime(3)"), value) == value.replace(microsecond=986000)
    assert ts_bound(col("timestamp"), value) == value.replace(second=8, microsecond=0)
    assert ts_bound(col("timestamp"), value.replace(microsecond=0)) == value.replace(second=8, microsecond=0)
    assert ts_bound(col("date"), value) == datetime(2024, 5, 5)


@pytest.mark.anyio
async def test_date_cursor_reads_complete_days(cfg: SourceConn, mysql_db: str) -> None:
    mysql_exec(
        mysql_db,
        "CREATE TABLE d (id INT PRIMARY KEY, ts DATE, KEY (ts))",
        "INSERT INTO d VALUES (1, '2024-05-04'), (2, '2024-05-05'), (3, '2024-05-05'), (4, '2024-05-06')",
    )
    end = ts_bound(Column("ts", "date", True, "date"), datetime(2024, 5, 6, 7, 8, 9))
    first = await read(
        cfg, "d", hybrid(start=Watermark(ts=datetime(2024, 5, 4)), end=Watermark(ts=end)), batch_size=1
    )
    assert first.col("id") == [2, 3] and first.col("ts") == [date(2024, 5, 5)] * 2
    second = await read(cfg, "d", hybrid(start=Watermark(ts=end)), batch_size=1)
    assert second.col("id") == [4]


# ---- plans: index, estimate, query text ----------------------------------------------------------------


@pytest.fixture
def thousand(mysql_db: str) -> str:
    mysql_exec(
        mysql_db,
        "CREATE TABLE t (id INT PRIMARY KEY, ts DATETIME(6), other DATETIME(6), pad CHAR(50), KEY k_ts (ts))",
        "INSERT INTO t SELECT seq, '2024-01-01' + INTERVAL seq SECOND,"
        " '2024-01-01' + INTERVAL seq SECOND, 'x' FROM seq_1_to_1000",
        "ANALYZE TABLE t",
    )
    return "t"


@pytest.mark.anyio
async def test_index_for_names_the_index_the_pages_use(cfg: SourceConn, mysql_db: str, thousand: str) -> None:
    start = Watermark(ts=datetime(2024, 1, 1, 0, 5), id=300)
    cases = {
        "k_ts": hybrid(start=start),
        "PRIMARY": Window("id_only", id_column="id", start=Watermark(id=10), end=Watermark(id=900)),
        None: Window("hybrid", ts_column="other", id_column="id", end=FAR),
    }
    for expected, window in cases.items():
        assert await with_conn(cfg, _index(mysql_db, window), thousand) == expected, window
    assert await with_conn(cfg, _index(mysql_db, hybrid()), thousand) == "k_ts"  # first page: no lower bound


def test_a_page_is_one_range_over_ts_and_id(mysql_db: str, thousand: str) -> None:
    """The keyset form reads a page as one range over (ts, PRIMARY) in index order: no index merge, no
    sort of the rest of the window on every page."""
    schema = TableSchema(
        (Column("id", "int32", False, "int(11)"), Column("ts", "timestamp", True, "datetime(6)")), ("id",)
    )
    sql = window_sql(mysql_db, "t", schema, hybrid(), batch_size=100)
    position = datetime(2024, 1, 1, 0, 5)
    conn = mysql_connect(mysql_db)
    try:
        with conn.cursor() as cur:
            cur.execute(f"EXPLAIN {sql}", (position, position, position, 300, FAR.ts))
            plan = dict(zip([d[0] for d in cur.description], cur.fetchone(), strict=True))
    finally:
        conn.close()
    assert (plan["type"], plan["key"], plan["key_len"]) == ("range", "k_ts", "13")  # 9 bytes ts + 4 id
    assert "sort" not in str(plan["Extra"]).lower()


def _index(db: str, window: Window) -> Callable[[SourceConnection, TableSchema], Awaitable[str | None]]:
    async def go(conn: SourceConnection, schema: TableSchema) -> str | None:
        return (await index_for(conn, db, "t", window)).used

    return go


@pytest.mark.anyio
async def test_estimate_rows_is_plausible_and_cheap(cfg: SourceConn, mysql_db: str, thousand: str) -> None:
    windows = {
        "third": hybrid(
            start=Watermark(ts=datetime(2024, 1, 1, 0, 5)), end=Watermark(ts=datetime(2024, 1, 1, 0, 10))
        ),
        "ids": Window("id_only", id_column="id", start=Watermark(id=100), end=Watermark(id=200)),
        "full": Window("full_sync"),
        "empty": Window("id_only", id_column="id"),
    }

    async def go(conn: SourceConnection, schema: TableSchema) -> dict[str, int]:
        before = await _rows_read(conn)
        found = {k: await estimate_rows(conn, mysql_db, "t", schema, w) for k, w in windows.items()}
        assert await _rows_read(conn) - before < 50  # no COUNT(*), no scan
        return found

    found = await with_conn(cfg, go, thousand)
    assert 150 <= found["third"] <= 600 and 50 <= found["ids"] <= 200
    assert 500 <= found["full"] <= 2000 and found["empty"] == 0


async def _rows_read(conn: SourceConnection) -> int:
    rows = await conn.fetchall("SHOW SESSION STATUS LIKE 'Handler_read_rnd_next'")
    more = await conn.fetchall("SHOW SESSION STATUS LIKE 'Handler_read_next'")
    return int(rows[0][1]) + int(more[0][1])


def test_window_sql_text() -> None:
    schema = TableSchema(
        (
            Column("id", "int64", False, "bigint(20)"),
            Column("up`d", "timestamp", True, "datetime(6)"),
            Column("v", "string", True, "varchar(5)", byte_length=20),
        ),
        primary_key=("id",),
    )
    select = "SELECT `id`, `up``d`, `v` FROM `shop`.`o`"
    hyb = Window("hybrid", ts_column="up`d", id_column="id")
    assert window_sql("shop", "o", schema, hyb, batch_size=500) == (
        f"{select} WHERE `up``d` >= %s AND (`up``d` > %s OR (`up``d` = %s AND `id` > %s))"
        " AND `up``d` <= %s"
        " ORDER BY `up``d`, `id` LIMIT 500"
    )
    assert window_sql("shop", "o", schema, Window("timestamp_only", ts_column="up`d"), batch_size=9) == (
        f"{select} WHERE `up``d` >= %s AND (`up``d` > %s OR (`up``d` = %s AND `id` > %s))"
        " AND `up``d` <= %s"
        " ORDER BY `up``d`, `id` LIMIT 9"
    )
    assert window_sql("shop", "o", schema, Window("id_only", id_column="id"), batch_size=7) == (
        f"{select} WHERE `id` > %s AND `id` <= %s ORDER BY `id` LIMIT 7"
    )
    keyless = replace(schema, primary_key=())
    assert window_sql("shop", "o", keyless, Window("timestamp_only", ts_column="up`d"), batch_size=7) == (
        f"{select} WHERE `up``d` > %s AND `up``d` <= %s"
    )
    assert window_sql("shop", "o", schema, Window("full_sync"), batch_size=7) == select


SCHEMA = TableSchema(
    (
        Column("id", "decimal", False, "bigint(20) unsigned", precision=20, scale=0),
        Column("ts", "timestamptz", True, "timestamp(6)"),
        Column("name", "string", True, "varchar(5)", byte_length=20),
        Column("flags", "decimal", True, "bit(64)", precision=20, scale=0),
        Column("amount", "decimal", True, "decimal(10,2)", precision=10, scale=2),
    ),
    primary_key=("id",),
)


@pytest.mark.parametrize(
    ("window", "message", "key"),
    [
        (
            Window("hybrid", id_column="id"),
            "tables.shop.o.cdc_timestamp_column is required for cdc_strategy hybrid",
            "cdc_timestamp_column",
        ),
        (Window("hybrid", ts_column="ts"), "tables.shop.o.cdc_id_column is required", "cdc_id_column"),
        (
            Window("id_only"),
            "tables.shop.o.cdc_id_column is required for cdc_strategy id_only",
            "cdc_id_column",
        ),
        (
            Window("timestamp_only", ts_column="upd"),
            "names column 'upd', which shop.o does not have (columns: id, ts, name",
            "cdc_timestamp_column",
        ),
        (
            Window("timestamp_only", ts_column="name"),
            "column 'name' of shop.o, which is varchar(5); a timestamp cursor must be DATE, DATETIME or "
            "TIMESTAMP — set tables.shop.o.cdc_timestamp_column to such a column (unset, it is 'updated_at')",
            "cdc_timestamp_column",
        ),
        (
            Window("id_only", id_column="ts"),
            "'ts' of shop.o, which is timestamp(6); an id cursor must be an integer",
            "cdc_id_column",
        ),
        (
            Window("id_only", id_column="name"),  # the default: a single-column primary key, not an integer
            "the id cursor is column 'name' of shop.o, which is varchar(5); an id cursor must be an integer "
            "(TINYINT … BIGINT UNSIGNED) — set tables.shop.o.cdc_id_column to such a column (unset, it is "
            "the primary key's column, or 'id') or pick another cdc_strategy",
            "cdc_id_column",
        ),
        (Window("hybrid", ts_column="ts", id_column="amount"), "which is decimal(10,2)", "cdc_id_column"),
        (Window("id_only", id_column="flags"), "which is bit(64)", "cdc_id_column"),
        (
            Window("hybrid", ts_column="ts", id_column="id", start=Watermark(id=4)),
            "the start of the window of shop.o (id=4) has no ts",
            "watermark",
        ),
        (
            Window("id_only", id_column="id", end=Watermark(ts=T0)),
            "has no id, which cdc_strategy id_only reads by",
            "watermark",
        ),
    ],
)
def test_check_window_errors(window: Window, message: str, key: str) -> None:
    with pytest.raises(ConfigError) as err:
        check_window("shop.o", SCHEMA, window)
    text = str(err.value)
    assert message in text and (text.startswith(message) or not message.startswith("tables."))
    assert err.value.table == "shop.o" and (err.value.key or "").endswith(key)
    assert " — " in text  # says what to do


def test_check_window_accepts_cursor_types() -> None:
    for window in [
        Window("full_sync"),
        Window("hybrid", ts_column="ts", id_column="id", start=Watermark(ts=T0), end=Watermark(ts=T0)),
        Window("id_only", id_column="id", start=Watermark(id=3), end=Watermark(id=9)),
        Window("timestamp_only", ts_column="ts", start=Watermark(ts=T0, id=3)),
    ]:
        check_window("shop.o", SCHEMA, window)
