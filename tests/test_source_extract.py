"""Introspection and streaming extract against the real MariaDB, value by value, for both drivers."""

from __future__ import annotations

import math
import tracemalloc
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import anyio
import pyarrow as pa
import pytest

from src.common.errors import ConfigError, SourceError, UnsupportedTypeError
from src.common.schema import Column, TableSchema
from src.config.models import Driver, SourceConn
from src.source.extract import ExtractStats, check_description, extract_table
from src.source.introspect import describe_table, describe_tables, read_grants, server_now
from src.source.mysql import MySQLSource, SourceConnection
from tests.conftest import mysql_exec, mysql_rows


@pytest.fixture(params=["asyncmy", "aiomysql"])
def cfg(request: pytest.FixtureRequest, source_conn: SourceConn) -> SourceConn:
    driver: Driver = request.param
    return replace(source_conn, driver=driver)


async def extract(
    conn: SourceConnection,
    db: str,
    table: str,
    schema: TableSchema,
    batch_size: int = 1000,
    batches: list[pa.RecordBatch] | None = None,
    **kw: Any,
) -> tuple[list[pa.RecordBatch], ExtractStats]:
    """Run extract_table with a consumer that collects every batch (into ``batches`` if given)."""
    stats = ExtractStats()
    send, receive = anyio.create_memory_object_stream[pa.RecordBatch](1)
    batches = [] if batches is None else batches
    async with anyio.create_task_group() as tg:
        tg.start_soon(
            lambda: extract_table(conn, db, table, schema, send, batch_size=batch_size, stats=stats, **kw)
        )
        async with receive:
            batches.extend([b async for b in receive])
    return batches, stats


async def extract_all(
    cfg: SourceConn, table: str, batch_size: int = 1000, **kw: Any
) -> tuple[list[pa.RecordBatch], ExtractStats, TableSchema]:
    assert cfg.database
    async with MySQLSource(cfg) as src, src.connection() as conn:
        schema = await describe_table(conn, cfg.database, table)
        batches, stats = await extract(conn, cfg.database, table, schema, batch_size, **kw)
    return batches, stats, schema


ALL_TYPES_DDL = """CREATE TABLE all_types (
  id INT PRIMARY KEY, ti TINYINT, tb TINYINT(1), tu TINYINT UNSIGNED, si SMALLINT, su SMALLINT UNSIGNED,
  mi MEDIUMINT, mu MEDIUMINT UNSIGNED, i INT, iu INT UNSIGNED, bi BIGINT, bu BIGINT UNSIGNED,
  d DECIMAL(38,10), f FLOAT, db DOUBLE, c CHAR(5), vc VARCHAR(20), tx TEXT, e ENUM('a','bé'),
  s SET('x','y','z'), j JSON, bn BINARY(4), vb VARBINARY(10), bl BLOB, dt DATE, dtm DATETIME(6),
  ts TIMESTAMP(6) NULL, tm TIME(6), yr YEAR, b1 BIT(1), b10 BIT(10), b64 BIT(64), u UUID)"""
# Inserted with sql_mode='' (zero dates allowed) and time_zone '+05:00' (TIMESTAMPs must come back in UTC).
ALL_TYPES_ROWS = [
    "(1, -128, -1, 0, -32768, 0, -8388608, 0, -2147483648, 0, -9223372036854775808, 0,"
    " '-9999999999999999999999999999.9999999999', -1.5, -1.7976931348623157e308, '', '', '', '', '',"
    " '[]', x'00', x'', x'', '1000-01-01', '1000-01-01 00:00:00.000000', '1970-01-01 05:00:01.000000',"
    " '-838:59:59', 1901, b'0', b'0', 0, '00000000-0000-0000-0000-000000000000')",
    "(2, 127, 2, 255, 32767, 65535, 8388607, 16777215, 2147483647, 4294967295, 9223372036854775807,"
    " 18446744073709551615, '9999999999999999999999999999.9999999999', 0.25, 1.7976931348623157e308,"
    " 'abcde', REPEAT('😀', 20), 'tab\\there', 'bé', 'x,y,z', '{\"k\": \"😀\"}', 'abcd', x'00ff00',"
    " x'deadbeef', '9999-12-31', '9999-12-31 23:59:59.999999', '2038-01-19 08:14:07.999999',"
    " '838:59:59', 2155, b'1', b'1111111111', b'" + "1" * 64 + "',"
    " '123e4567-e89b-12d3-a456-426614174000')",
    "(3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, 0.0000000001, NULL, NULL, NULL,"
    " NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, '0000-00-00', '0000-00-00 00:00:00',"
    " '0000-00-00 00:00:00', '25:00:00.5', 0, NULL, b'1000000001', NULL, NULL)",
    "(4, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,"
    " NULL, NULL, NULL, NULL, NULL, NULL, NULL, '2024-02-30', '2024-00-15 10:00:00.123456', NULL,"
    " '-00:00:00.000001', NULL, NULL, NULL, NULL, NULL)",
]
NAMES = [
    *("id", "ti", "tb", "tu", "si", "su", "mi", "mu", "i", "iu", "bi", "bu", "d", "f", "db", "c", "vc"),
    *("tx", "e", "s", "j", "bn", "vb", "bl", "dt", "dtm", "ts", "tm", "yr", "b1", "b10", "b64", "u"),
]
MAX_TIME_US = (838 * 3600 + 59 * 60 + 59) * 1_000_000
EXPECTED: list[list[Any]] = [
    [1, -128, -1, 0, -32768, 0, -8388608, 0, -(2**31), 0, -(2**63), Decimal(0),
     Decimal("-9999999999999999999999999999.9999999999"), -1.5, -1.7976931348623157e308, "", "", "", "", "",
     "[]", b"\x00\x00\x00\x00", b"", b"", date(1000, 1, 1), datetime(1000, 1, 1),
     datetime(1970, 1, 1, 0, 0, 1, tzinfo=UTC), -MAX_TIME_US, 1901, False, 0, Decimal(0),
     "00000000-0000-0000-0000-000000000000"],
    [2, 127, 2, 255, 32767, 65535, 8388607, 16777215, 2**31 - 1, 2**32 - 1, 2**63 - 1,
     Decimal(18446744073709551615), Decimal("9999999999999999999999999999.9999999999"), 0.25,
     1.7976931348623157e308, "abcde", "😀" * 20, "tab\there", "bé", "x,y,z", '{"k": "😀"}', b"abcd",
     b"\x00\xff\x00", b"\xde\xad\xbe\xef", date(9999, 12, 31), datetime(9999, 12, 31, 23, 59, 59, 999999),
     datetime(2038, 1, 19, 3, 14, 7, 999999, tzinfo=UTC), MAX_TIME_US, 2155, True, 1023,
     Decimal(18446744073709551615), "123e4567-e89b-12d3-a456-426614174000"],
    [3, *[None] * 11, Decimal("0.0000000001"), *[None] * 11, None, None, None, 90_000_500_000, 0, None, 513,
     None, None],
    [4, *[None] * 23, None, None, None, -1, None, None, None, None, None],
]  # fmt: skip


@pytest.mark.anyio
async def test_every_type_and_edge_value_is_exact(cfg: SourceConn, mysql_db: str) -> None:
    inserts = [f"INSERT INTO all_types VALUES {row}" for row in ALL_TYPES_ROWS]
    mysql_exec(mysql_db, ALL_TYPES_DDL, "SET SESSION sql_mode=''", "SET time_zone='+05:00'", *inserts)
    batches, stats, schema = await extract_all(cfg, "all_types", batch_size=3)
    assert [b.num_rows for b in batches] == [3, 1] and (stats.rows, stats.batches) == (4, 2)
    assert all(b.schema == schema.arrow_schema() for b in batches)
    table = pa.Table.from_batches(batches)
    assert table.column_names == NAMES
    for got, want in zip(table.to_pylist(), EXPECTED, strict=True):
        for name, expected in zip(NAMES, want, strict=True):
            assert got[name] == expected, (got["id"], name)
            assert type(got[name]) is type(expected), (got["id"], name)  # Decimal stays Decimal, never float
    assert stats.coercions == {
        "dt": {"zero_date_to_null": 2},
        "dtm": {"zero_date_to_null": 2},
        "ts": {"zero_date_to_null": 1},
    }
    assert table.column("bu").type == pa.decimal128(20, 0) and table.column("tm").type == pa.int64()


@pytest.mark.anyio
@pytest.mark.parametrize("rows", [0, 1, 99, 100, 101, 299, 300, 301])
async def test_batch_boundaries(cfg: SourceConn, mysql_db: str, rows: int) -> None:
    mysql_exec(mysql_db, "CREATE TABLE n (id INT PRIMARY KEY, v BIGINT UNSIGNED NOT NULL)")
    if rows:
        mysql_exec(mysql_db, f"INSERT INTO n SELECT seq, seq + 18446744073709551000 FROM seq_1_to_{rows}")
    batches, stats, _ = await extract_all(cfg, "n", batch_size=100)
    sizes = [b.num_rows for b in batches]
    assert sizes == [100] * (rows // 100) + ([rows % 100] if rows % 100 else [])
    assert (stats.rows, stats.batches, stats.coercions) == (rows, math.ceil(rows / 100), {})
    ids = [i for b in batches for i in b.column("id").to_pylist()]
    assert sorted(ids) == list(range(1, rows + 1))
    values = [v for b in batches for v in b.column("v").to_pylist()]
    assert values == [Decimal(18446744073709551000 + i) for i in ids]


@pytest.mark.anyio
async def test_where_with_bound_arguments(cfg: SourceConn, mysql_db: str) -> None:
    mysql_exec(
        mysql_db,
        "CREATE TABLE w (id INT PRIMARY KEY, tag VARCHAR(10))",
        "INSERT INTO w SELECT seq, 'a' FROM seq_1_to_50",
    )
    batches, _, _ = await extract_all(cfg, "w", where="`id` > %s AND `tag` = %s", args=(40, "a"))
    assert [i for b in batches for i in b.column("id").to_pylist()] == list(range(41, 51))


@pytest.mark.anyio
async def test_unsupported_types_fail_clearly(source_conn: SourceConn, mysql_db: str) -> None:
    mysql_exec(
        mysql_db,
        "CREATE TABLE wide_dec (id INT PRIMARY KEY, amount DECIMAL(65,30))",
        "CREATE TABLE fine (id INT PRIMARY KEY)",
    )
    async with MySQLSource(source_conn) as src, src.connection() as conn:
        with pytest.raises(
            UnsupportedTypeError, match=rf"column 'amount' of {mysql_db}\.wide_dec is decimal"
        ):
            await describe_table(conn, mysql_db, "wide_dec")
        found = await describe_tables(conn, mysql_db, ["wide_dec", "fine"])
    assert isinstance(found["wide_dec"], UnsupportedTypeError) and found["wide_dec"].column == "amount"
    assert "type_policies: {decimal_overflow: text}" in str(found["wide_dec"])
    assert isinstance(found["fine"], TableSchema) and found["fine"].primary_key == ("id",)


@pytest.mark.anyio
async def test_describe_many_tables_in_one_query(source_conn: SourceConn, mysql_db: str) -> None:
    names = [f"t{i:03d}" for i in range(300)]
    mysql_exec(
        mysql_db,
        *[f"CREATE TABLE {n} (id INT PRIMARY KEY, k{i} VARCHAR(5), z DATE)" for i, n in enumerate(names)],
    )
    async with MySQLSource(source_conn) as src, src.connection() as conn:
        grants = await read_grants(conn)  # once per run, whatever the number of tables
        before = await _selects(conn)
        found = await describe_tables(conn, mysql_db, [*names, "missing"], grants=grants)
        # one catalog round (columns, keys, rows, checks); for "missing": is it a view MySQL cannot resolve
        assert await _selects(conn) - before == 4 + 1
    assert list(found) == [*names, "missing"]
    for i, name in enumerate(names):
        schema = found[name]
        assert isinstance(schema, TableSchema)
        assert schema.names == ("id", f"k{i}", "z") and schema.primary_key == ("id",)
    assert isinstance(found["missing"], SourceError)


async def _selects(conn: SourceConnection) -> int:
    return int((await conn.fetchall("SHOW SESSION STATUS LIKE 'Com_select'"))[0][1])


@pytest.mark.anyio
async def test_unknown_table_and_key_override(source_conn: SourceConn, mysql_db: str) -> None:
    mysql_exec(
        mysql_db,
        "CREATE TABLE nokey (a INT NOT NULL, b INT NOT NULL)",
        # no PRIMARY KEY: the first UNIQUE index of NOT NULL columns identifies rows (InnoDB's, MySQL's PRI)
        "CREATE TABLE uniq (n INT, x INT NOT NULL, a INT NOT NULL, b INT NOT NULL, c INT,"
        " UNIQUE KEY un (n), UNIQUE KEY ba (b, a), UNIQUE KEY ux (x))",
        "CREATE TABLE nullable_unique (a INT, b INT NOT NULL, UNIQUE KEY (a), KEY (b))",
    )
    async with MySQLSource(source_conn) as src, src.connection() as conn:
        assert (await describe_table(conn, mysql_db, "uniq")).primary_key == ("a", "b")
        assert (await describe_table(conn, mysql_db, "nullable_unique")).primary_key == ()
        with pytest.raises(SourceError) as err:
            await describe_table(conn, mysql_db, "nope")
        assert str(err.value).startswith(f"table {mysql_db}.nope not found in MySQL source 'test_mysql'")
        assert err.value.retryable is False
        assert (await describe_table(conn, mysql_db, "nokey")).primary_key == ()
        assert (await describe_table(conn, mysql_db, "nokey", primary_key=("b", "a"))).primary_key == (
            "b",
            "a",
        )
        with pytest.raises(ConfigError, match=r"names 'c', which the table does not have \(columns: a, b\)"):
            await describe_table(conn, mysql_db, "nokey", primary_key=("a", "c"))


@pytest.mark.anyio
async def test_server_now_is_the_source_clock_in_utc(source_conn: SourceConn) -> None:
    async with MySQLSource(source_conn) as src, src.connection() as conn:
        now = await server_now(conn)
    reference = mysql_rows("mysql", "SELECT UTC_TIMESTAMP(6)")[0][0].replace(tzinfo=UTC)
    assert now.tzinfo is UTC and abs(reference - now) < timedelta(seconds=5)


@pytest.mark.anyio
@pytest.mark.parametrize(
    "alter", ["MODIFY v VARCHAR(10)", "CHANGE v w INT", "DROP COLUMN v"], ids=["type", "rename", "drop"]
)
async def test_schema_drift_after_planning_is_retryable_and_sends_nothing(
    cfg: SourceConn, mysql_db: str, alter: str
) -> None:
    mysql_exec(mysql_db, "CREATE TABLE drift (id INT PRIMARY KEY, v INT)", "INSERT INTO drift VALUES (1, 1)")
    async with MySQLSource(cfg) as src:
        async with src.connection() as conn:
            schema = await describe_table(conn, mysql_db, "drift")
        mysql_exec(mysql_db, f"ALTER TABLE drift {alter}")
        batches: list[pa.RecordBatch] = []
        with pytest.RaisesGroup(pytest.RaisesExc(SourceError, match="changed since it was planned")) as err:
            async with src.connection() as conn:
                await extract(conn, mysql_db, "drift", schema, batches=batches)
        assert all(e.retryable for e in err.value.exceptions if isinstance(e, SourceError)) and batches == []
        assert src.open_connections == 0  # the result was not drained: the connection was dropped


@pytest.mark.anyio
async def test_description_names_are_checked(cfg: SourceConn) -> None:
    schema = TableSchema((Column("y", "int32", False, "int(11)"),))
    async with MySQLSource(cfg) as src, src.connection() as conn, conn.stream("SELECT 1 AS x") as rows:
        with pytest.raises(SourceError, match=r"returned columns \['x'\] instead of \['y'\]") as err:
            check_description(rows, schema, "db.t")
        assert err.value.retryable is True


@pytest.fixture
def big_table(mysql_db: str) -> str:
    mysql_exec(
        mysql_db,
        "CREATE TABLE big (id INT PRIMARY KEY, pad CHAR(200) NOT NULL)",
        "INSERT INTO big SELECT seq, REPEAT('p', 200) FROM seq_1_to_200000",
    )
    return "big"


@pytest.mark.anyio
async def test_memory_stays_bounded_with_a_slow_consumer(
    cfg: SourceConn, mysql_db: str, big_table: str
) -> None:
    stats = ExtractStats()
    send, receive = anyio.create_memory_object_stream[pa.RecordBatch](1)
    received = max_ahead = 0
    stalled_peak = 0
    async with MySQLSource(cfg) as src, src.connection() as conn:
        schema = await describe_table(conn, mysql_db, big_table)
        async with anyio.create_task_group() as tg:
            tg.start_soon(
                lambda: extract_table(conn, mysql_db, big_table, schema, send, batch_size=5000, stats=stats)
            )
            async with receive:
                async for _batch in receive:
                    received += 1
                    max_ahead = max(max_ahead, stats.batches - received)
                    if received == 3:  # stall: nothing may pile up in our process meanwhile
                        tracemalloc.start()
                        await anyio.sleep(1.5)
                        stalled_peak = tracemalloc.get_traced_memory()[1]
                        tracemalloc.stop()
    assert (stats.rows, stats.batches, received) == (200_000, 40, 40)
    assert max_ahead <= 2  # one batch in the stream buffer, one waiting in send()
    assert stalled_peak < 4 * 2**20, f"{stalled_peak} bytes allocated while the consumer stalled"


@pytest.mark.anyio
@pytest.mark.parametrize("kill", ["QUERY", "CONNECTION"])
async def test_killed_mid_stream_fails_without_hanging(
    cfg: SourceConn, mysql_db: str, big_table: str, kill: str
) -> None:
    async with MySQLSource(cfg) as src:
        async with src.connection() as conn:
            schema = await describe_table(conn, mysql_db, big_table)
        with anyio.fail_after(20), pytest.RaisesGroup(pytest.RaisesExc(SourceError)) as err:
            async with src.connection() as conn:
                stats = ExtractStats()
                send, receive = anyio.create_memory_object_stream[pa.RecordBatch](1)
                async with anyio.create_task_group() as tg:
                    tg.start_soon(
                        lambda: extract_table(
                            conn, mysql_db, big_table, schema, send, batch_size=1000, stats=stats
                        )
                    )
                    async with receive:
                        await receive.receive()
                        await anyio.to_thread.run_sync(mysql_exec, None, f"KILL {kill} {conn.thread_id}")
                        async for _ in receive:
                            pass
        assert all(e.retryable for e in err.value.exceptions if isinstance(e, SourceError))
        assert stats.rows < 200_000 and src.open_connections == 0


@pytest.mark.anyio
async def test_cancellation_is_not_swallowed(cfg: SourceConn, mysql_db: str, big_table: str) -> None:
    finished = False
    async with MySQLSource(cfg) as src:
        async with src.connection() as conn:
            schema = await describe_table(conn, mysql_db, big_table)
        send, receive = anyio.create_memory_object_stream[pa.RecordBatch](0)
        with anyio.move_on_after(0.5) as scope:
            async with receive, src.connection() as conn:  # nobody receives: extract blocks in send()
                await extract_table(
                    conn, mysql_db, big_table, schema, send, batch_size=1000, stats=ExtractStats()
                )
                finished = True
        assert scope.cancelled_caught and not finished
        assert conn.broken and src.open_connections == 0
