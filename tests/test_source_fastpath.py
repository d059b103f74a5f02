"""The connectorx fast path against the canonical asyncmy path: the same Arrow data, type by type, on the
real MariaDB — plus range planning on sparse and skewed keys, hand-over on zero dates and on connectorx
failures mid-range, the connection budget, and secrets kept out of its messages."""

from __future__ import annotations

import random
import struct
import time
from dataclasses import replace
from decimal import Decimal
from typing import Any

import anyio
import pyarrow as pa
import pytest

import src.source.fastpath as fastpath
import src.source.mysql
from src.common.errors import SourceError, first_error
from src.common.policy import TypePolicy
from src.common.schema import Column, TableSchema
from src.common.secret import Secret
from src.config.models import SourceConn
from src.plan.models import Watermark, Window
from src.source.extract import ExtractStats
from src.source.fastpath import FastRead, blocker, paged, to_planned
from src.source.introspect import describe_table
from src.source.mysql import MySQLSource
from src.source.ranges import KeyRange, split
from src.source.text import ReadRules
from src.source.window import estimate_rows, extract_window
from tests.conftest import mysql_connect, mysql_exec

pytestmark = pytest.mark.anyio

SHARED_DDL = """CREATE TABLE shared (
  id BIGINT PRIMARY KEY, ti TINYINT, tu TINYINT UNSIGNED, tb TINYINT(1), si SMALLINT, su SMALLINT UNSIGNED,
  mi MEDIUMINT, mu MEDIUMINT UNSIGNED, i INT, iu INT UNSIGNED, bi BIGINT, bu BIGINT UNSIGNED, yr YEAR,
  d1 DECIMAL(12,2), d2 DECIMAL(28,10), d3 DECIMAL(18,0), d4 DECIMAL(5,5), f FLOAT, db DOUBLE,
  c CHAR(5), vc VARCHAR(40), tx TEXT, e ENUM('a','bé'), st SET('x','y'), j JSON,
  bn BINARY(4), vb VARBINARY(16), bl BLOB, dt DATE, dtm DATETIME, dtm6 DATETIME(6), ts TIMESTAMP NULL,
  ts6 TIMESTAMP(6) NULL)"""
COLUMNS = 32  # besides id
TEXTS = ["", "a", "héllo wörld", "😀" * 10, "tab\there", "new\nline", "quote ' \" \\", "NUL\x00inside"]


def _double(rng: random.Random) -> float:
    while True:  # any finite double, from its bits (MariaDB stores no NaN/inf)
        value: float = struct.unpack("<d", rng.getrandbits(64).to_bytes(8, "little"))[0]
        if value == value and abs(value) != float("inf"):
            return value


def _float(rng: random.Random) -> float:
    while True:
        value: float = struct.unpack("<f", rng.getrandbits(32).to_bytes(4, "little"))[0]
        if value == value and abs(value) != float("inf"):
            return value


def _row(key: int, rng: random.Random) -> tuple[Any, ...]:
    if key % 7 == 0:
        return (key, *[None] * COLUMNS)
    text = rng.choice(TEXTS)
    return (
        key,
        rng.randint(-128, 127),
        rng.randint(0, 255),
        rng.randint(0, 1),
        rng.choice([-32768, 32767, rng.randint(-32768, 32767)]),
        rng.choice([0, 65535]),
        rng.randint(-8388608, 8388607),
        16777215,
        rng.choice([-(2**31), 2**31 - 1, 0]),
        2**32 - 1,
        rng.choice([-(2**63), 2**63 - 1, rng.randint(-(2**63), 2**63 - 1)]),
        rng.choice([0, 2**64 - 1, rng.randint(0, 2**64 - 1)]),
        rng.choice([1901, 2155, 2024]),
        Decimal(rng.randint(-(10**12) + 1, 10**12 - 1)) / 100,
        Decimal(rng.randint(-(10**28) + 1, 10**28 - 1)) / 10**10,
        Decimal(rng.choice([10**18 - 1, -(10**18) + 1, rng.randint(0, 10**18)])),
        Decimal(rng.randint(-99999, 99999)) / 10**5,
        _float(rng),
        _double(rng),
        text[:5],
        text,
        text * 3,
        rng.choice(["a", "bé"]),
        rng.choice(["", "x", "x,y"]),
        '{"k": [1, "😀"]}',
        bytes([0, 255, key % 256, 0]),
        rng.randbytes(rng.randint(0, 16)),
        rng.randbytes(rng.randint(0, 300)),
        rng.choice(["1000-01-01", "9999-12-31", "2024-02-29"]),
        rng.choice(["1000-01-01 00:00:00", "9999-12-31 23:59:59"]),
        rng.choice(["2024-02-29 12:34:56.123456", "1970-01-01 00:00:00.000001"]),
        rng.choice(["1970-01-01 00:00:01", "2038-01-19 03:14:07"]),
        rng.choice(["2038-01-19 03:14:07.999999", "2000-06-01 12:00:00.5"]),
    )


def fill_shared(database: str, keys: list[int], zero_dates: tuple[int, ...] = ()) -> None:
    rng = random.Random(20261126)
    mysql_exec(database, SHARED_DDL)
    conn = mysql_connect(database)
    try:
        with conn.cursor() as cur:
            marks = ", ".join(["%s"] * (COLUMNS + 1))
            cur.executemany(f"INSERT INTO shared VALUES ({marks})", [_row(k, rng) for k in keys])
            cur.execute("SET SESSION sql_mode = 'ALLOW_INVALID_DATES'")
            for key in zero_dates:
                cur.execute(
                    "UPDATE shared SET dt = '0000-00-00', dtm = '2024-02-30 10:00:00',"
                    " ts = '0000-00-00 00:00:00' WHERE id = %s",
                    (key,),
                )
    finally:
        conn.close()


async def _collect(fill: Any) -> list[pa.RecordBatch]:
    send, receive = anyio.create_memory_object_stream[pa.RecordBatch](2)
    batches: list[pa.RecordBatch] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(fill, send)
        async with receive:
            batches.extend([b async for b in receive])
    return batches


async def read_both(
    cfg: SourceConn,
    table: str,
    *,
    range_rows: int = 40,
    workers: int = 2,
    policy: TypePolicy | None = None,
    max_text_bytes: int | None = None,
    where: str | None = None,
    window: Window | None = None,
) -> tuple[pa.Table, pa.Table, ExtractStats, ExtractStats]:
    """(canonical, fast, their stats): the whole table read both ways, sorted by id."""
    assert cfg.database
    policy = policy or TypePolicy()
    async with MySQLSource(cfg) as source, source.connection() as conn:
        schema = await describe_table(conn, cfg.database, table, policy=policy)
        slow_stats, fast_stats = ExtractStats(), ExtractStats()

        async def slow(send: Any) -> None:
            await extract_window(
                conn,
                cfg.database or "",
                table,
                schema,
                send,
                window=window or Window("full_sync"),
                batch_size=25,
                stats=slow_stats,
                policy=policy,
                max_text_bytes=max_text_bytes,
                where=where,
            )

        slow_batches = await _collect(slow)

        async def fast(send: Any) -> None:
            reader = FastRead(
                source=source,
                conn=conn,
                database=cfg.database or "",
                table=table,
                schema=schema,
                rules=ReadRules(f"{cfg.database}.{table}", policy, max_text_bytes),
                send=send,
                stats=fast_stats,
                batch_size=25,
                range_rows=range_rows,
                workers=workers,
                where=where,
                after=window.start.id if window and window.start else None,
                upto=window.end.id if window and window.end else None,
            )
            async with send:
                read = window or Window("full_sync")
                await reader.run(
                    await estimate_rows(conn, cfg.database or "", table, schema, read, where=where)
                )

        fast_batches = await _collect(fast)
    arrow = schema.arrow_schema()
    canonical = pa.Table.from_batches(slow_batches, schema=arrow).sort_by("id")
    quick = pa.Table.from_batches(fast_batches, schema=arrow).sort_by("id")
    return canonical, quick, slow_stats, fast_stats


def assert_same(canonical: pa.Table, quick: pa.Table) -> None:
    assert quick.schema.equals(canonical.schema)
    assert quick.num_rows == canonical.num_rows
    for name in canonical.column_names:  # column by column, so a failure names the column
        assert quick.column(name).equals(canonical.column(name)), name


async def test_every_shared_type_reads_identically(source_conn: SourceConn, mysql_db: str) -> None:
    fill_shared(mysql_db, list(range(1, 301)))
    canonical, quick, slow, fast = await read_both(source_conn, "shared")
    assert canonical.num_rows == 300
    assert_same(canonical, quick)
    assert fast.coercions == slow.coercions and fast.coercions["vc"] == {
        "nul_stripped": slow.coercions["vc"]["nul_stripped"]
    }
    assert fast.path["path"] == "connectorx" and fast.path["workers"] == 2 and fast.path["ranges"] >= 7
    assert "fallbacks" not in fast.path and "guarded_dates" not in fast.path  # dates read as stored


async def test_bit_and_decimals_wider_than_connectorx_reads_read_identically(
    source_conn: SourceConn, mysql_db: str
) -> None:
    """BIT as its number (``+ 0``) and a DECIMAL too wide for connectorx's own as its text: the same
    values as the canonical path's, edge values and NULLs included."""
    mysql_exec(
        mysql_db,
        "CREATE TABLE wide (id INT PRIMARY KEY, b1 BIT(1), b7 BIT(7), b63 BIT(63), b64 BIT(64), "
        "d20 DECIMAL(20,0), d30 DECIMAL(30,12), d38 DECIMAL(38,0), d38s DECIMAL(38,38), d21 DECIMAL(21,11))",
    )
    edges = [
        "(%d, b'0', b'0', 0, 0, 0, 0, 0, 0, 0)",
        "(%d, b'1', b'1111111', (1 << 63) - 1, ~0, 99999999999999999999, 999999999999999999.999999999999, "
        "99999999999999999999999999999999999999, 0.99999999999999999999999999999999999999, "
        "9999999999.99999999999)",
        "(%d, NULL, NULL, NULL, NULL, -99999999999999999999, -999999999999999999.999999999999, "
        "-99999999999999999999999999999999999999, -0.00000000000000000000000000000000000001, "
        "-0.00000000001)",
        "(%d, b'1', b'0000101', 1 << 40, 1 << 63, 12345678901234567890, -0.5, 1, 0.5, 1.5)",
    ]
    rows = ", ".join(edges[key % len(edges)] % key for key in range(1, 201))
    mysql_exec(mysql_db, f"INSERT INTO wide VALUES {rows}", "ANALYZE TABLE wide")
    canonical, quick, _, fast = await read_both(source_conn, "wide")
    assert canonical.num_rows == 200
    assert Decimal(2**64 - 1) in canonical.column("b64").to_pylist()  # the edges did arrive
    assert Decimal(10**38 - 1) in canonical.column("d38").to_pylist()
    assert_same(canonical, quick)
    assert fast.path["path"] == "connectorx" and "fallbacks" not in fast.path, fast.path


async def test_boolean_policy_and_long_text_policy_match(source_conn: SourceConn, mysql_db: str) -> None:
    fill_shared(mysql_db, list(range(1, 101)))
    policy = TypePolicy(tinyint1="boolean", long_text="truncate")
    canonical, quick, slow, fast = await read_both(source_conn, "shared", policy=policy, max_text_bytes=20)
    assert canonical.schema.field("tb").type == pa.bool_()
    assert_same(canonical, quick)
    assert fast.coercions == slow.coercions and "truncated_to_20_bytes" in str(fast.coercions)
    boolean = canonical.schema.field("tb")
    schema = TableSchema(
        (Column("id", "int64", False, "bigint"), Column("tb", "bool", True, "tinyint(1)")), ("id",)
    )
    raw = pa.record_batch([pa.array([1, 2], pa.int64()), pa.array([1, 2], pa.int8()), pa.array([0, 0])],
                          names=["id", "tb", "flag"])  # fmt: skip
    assert boolean.type == schema.arrow_schema().field("tb").type
    with pytest.raises(SourceError, match=r"column 'tb' .* now holds 2"):  # written since it was planned
        to_planned(raw, schema, ReadRules("db.t", policy))


async def test_zero_and_invalid_dates_are_read_as_null_through_the_guard(
    source_conn: SourceConn, mysql_db: str
) -> None:
    """connectorx panics on the first zero date; from then on dates are read through the guard, which
    makes such a date NULL, counted as the canonical path counts it (``zero_date: null``): no range is
    handed over."""
    fill_shared(mysql_db, list(range(1, 201)), zero_dates=(3, 150))
    canonical, quick, slow, fast = await read_both(source_conn, "shared")
    assert_same(canonical, quick)
    assert slow.coercions["dt"] == {"zero_date_to_null": 2} and fast.coercions == slow.coercions
    assert "fallbacks" not in fast.path, fast.path
    assert fast.path["guarded_dates"] is True  # connectorx panicked on one: guarded reads from then on


async def test_a_year_zero_date_is_handed_over_without_a_panic(
    source_conn: SourceConn, mysql_db: str
) -> None:
    """connectorx reads '0000-01-01' (no panic) but Python has no year 0: the canonical path makes it NULL
    and counts it, so the fast path hands such a batch over; the table stays on unguarded reads."""
    mysql_exec(
        mysql_db,
        "CREATE TABLE y (id BIGINT PRIMARY KEY, d DATE NULL, t DATETIME(6) NOT NULL)",
        "INSERT INTO y SELECT seq, IF(seq % 4 = 0, NULL, '0001-01-01' + INTERVAL seq DAY),"
        " '0001-01-01 00:00:00' + INTERVAL seq SECOND FROM seq_1_to_200",
        "UPDATE y SET d = '0000-01-01' WHERE id = 30",
        "UPDATE y SET t = '0000-12-31 23:59:59.999999' WHERE id = 170",
    )
    canonical, quick, slow, fast = await read_both(source_conn, "y", range_rows=30)
    assert canonical.num_rows == 200 and canonical.column("d")[29].as_py() is None
    assert_same(canonical, quick)
    assert fast.coercions == slow.coercions == {"d": {"zero_date_to_null": 1}, "t": {"zero_date_to_null": 1}}
    assert fast.path["fallbacks"] == ["a zero or invalid date"] * 2 and "guarded_dates" not in fast.path


async def test_sparse_and_skewed_keys(source_conn: SourceConn, mysql_db: str) -> None:
    keys = [*range(1, 400), *range(10**12, 10**12 + 300), 2**62, 2**63 - 1]
    fill_shared(mysql_db, keys)
    mysql_exec(mysql_db, "ANALYZE TABLE shared")
    canonical, quick, _, fast = await read_both(source_conn, "shared", range_rows=50)
    assert_same(canonical, quick)
    assert canonical.num_rows == len(keys)
    assert fast.path["ranges"] <= 16  # from the row estimate, not from the key span


async def test_row_filter_applies_to_every_range(source_conn: SourceConn, mysql_db: str) -> None:
    fill_shared(mysql_db, list(range(1, 301)))
    canonical, quick, _, _ = await read_both(source_conn, "shared", where="id % 3 = 0 -- a comment")
    assert canonical.num_rows == 100
    assert_same(canonical, quick)


async def test_a_failing_range_is_read_by_the_canonical_path(
    source_conn: SourceConn, mysql_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    fill_shared(mysql_db, list(range(1, 301)))
    calls = {"n": 0}
    real_fetch = fastpath._fetch

    def flaky(url: str, sql: str, setup: str) -> pa.Table:
        calls["n"] += 1
        if calls["n"] % 2 == 0:  # every other range loses its connection
            raise RuntimeError("Lost connection to MySQL server during query")
        return real_fetch(url, sql, setup)

    monkeypatch.setattr(fastpath, "_fetch", flaky)
    canonical, quick, slow, fast = await read_both(source_conn, "shared")
    assert_same(canonical, quick)  # nothing read twice, nothing skipped
    assert fast.coercions == slow.coercions
    assert fast.path["fallbacks"] and all("Lost connection" in f for f in fast.path["fallbacks"])


async def read_shared_fast(
    planner: SourceConn,
    source: MySQLSource,
    database: str,
    stats: ExtractStats,
    *,
    range_rows: int,
    workers: int,
) -> list[pa.RecordBatch]:
    """The 120 rows of ``shared`` through the fast path alone: ranges planned on a connection of
    ``planner``, read by connectorx from ``source``."""
    async with MySQLSource(planner) as own, own.connection() as conn:
        schema = await describe_table(conn, database, "shared")

        async def fast(send: Any) -> None:
            reader = FastRead(
                source=source,
                conn=conn,
                database=database,
                table="shared",
                schema=schema,
                rules=ReadRules(f"{database}.shared"),
                send=send,
                stats=stats,
                batch_size=50,
                range_rows=range_rows,
                workers=workers,
            )
            async with send:
                await reader.run(120)

        return await _collect(fast)


async def test_a_refused_connection_falls_back_without_showing_the_password(
    source_conn: SourceConn, mysql_db: str
) -> None:
    fill_shared(mysql_db, list(range(1, 121)))
    secret = "s3cr3t/p@ss:word"
    cfg = replace(source_conn, username="s3shift_nobody", password=Secret(secret), connect_timeout=1.0)
    stats = ExtractStats()
    async with MySQLSource(cfg) as bad:  # connectorx logs in as a user that does not exist
        batches = await read_shared_fast(source_conn, bad, mysql_db, stats, range_rows=40, workers=2)
    assert sum(b.num_rows for b in batches) == 120
    assert stats.path["path"] == "asyncmy", stats.path
    reasons = stats.path["reason"]
    assert reasons == "connectorx could not connect within connect_timeout (1 s)"
    assert (
        "s3cr3t" not in reasons
        and "p%40ss" not in reasons
        and "mysql://" not in reasons.replace("mysql://…", "")
    )


async def test_no_free_connection_reads_canonically(source_conn: SourceConn, mysql_db: str) -> None:
    fill_shared(mysql_db, list(range(1, 61)))
    canonical, _, _, _ = await read_both(source_conn, "shared")
    cfg = replace(source_conn, max_connections=1)  # the table's own connection takes the whole budget
    async with MySQLSource(cfg) as source, source.connection() as conn:
        schema = await describe_table(conn, mysql_db, "shared")
        stats = ExtractStats()

        async def fast(send: Any) -> None:
            reader = FastRead(
                source, conn, mysql_db, "shared", schema, ReadRules("x"), send, stats, 25, 10, 2
            )
            async with send:
                await reader.run(60)

        batches = await _collect(fast)
    assert_same(canonical, pa.Table.from_batches(batches, schema=schema.arrow_schema()).sort_by("id"))
    reason = "no free connection in the source's budget for connectorx"
    assert stats.path == {"path": "asyncmy", "reason": reason}


async def test_reserve_closes_idle_connections_to_stay_within_the_budget(source_conn: SourceConn) -> None:
    cfg = replace(source_conn, max_connections=3)
    async with MySQLSource(cfg) as source:
        async with source.connection(), source.connection(), source.connection():
            pass
        assert source.open_connections == 3  # idle in the pool
        async with source.connection():
            async with source.reserve(5) as taken:
                assert taken == 2
                assert source.open_connections == 1
            async with source.reserve(1) as taken:
                assert taken == 1


async def test_blockers_name_the_column(source_conn: SourceConn, mysql_db: str) -> None:
    mysql_exec(
        mysql_db,
        "CREATE TABLE t_time (id INT PRIMARY KEY, tm TIME)",
        "CREATE TABLE t_geo (id INT PRIMARY KEY, g POINT)",
        "CREATE TABLE t_pair (a INT, b INT, PRIMARY KEY (a, b))",
        "CREATE TABLE t_text_pair (k VARCHAR(10), b INT, PRIMARY KEY (k, b))",
        "CREATE TABLE t_enum_key (k ENUM('z', 'a'), b INT, PRIMARY KEY (k, b))",
        "CREATE TABLE t_text_key (k VARCHAR(10) PRIMARY KEY)",
        "CREATE TABLE t_none (a INT)",
        "CREATE TABLE t_day_key (d DATE NOT NULL, n INT NOT NULL, PRIMARY KEY (d, n))",
        "CREATE TABLE t_ok (id INT UNSIGNED PRIMARY KEY, d DECIMAL(18,0), e DECIMAL(28,10), "
        "f DECIMAL(38,12), b BIT(3))",
    )
    expected = {
        "t_time": "column 'tm': time",
        "t_geo": "column 'g': point",
        "t_enum_key": "the primary key's column 'k' (enum('z','a')) cannot bound a page",
        "t_none": "the table has no primary key (or a nullable configured one) to read in key order",
        "t_day_key": "the primary key's column 'd' (date) may hold a zero date",  # read as NULL: no bound
    }
    async with MySQLSource(source_conn) as source, source.connection() as conn:
        for table, reason in expected.items():
            schema: TableSchema = await describe_table(conn, mysql_db, table)
            assert reason in (blocker(schema) or ""), table
        assert blocker(await describe_table(conn, mysql_db, "t_ok")) is None
        assert blocker(await describe_table(conn, mysql_db, "t_pair")) is None  # split on a
        for table in ("t_text_key", "t_text_pair"):  # keyset pages
            schema = await describe_table(conn, mysql_db, table)
            assert blocker(schema) is None and paged(schema), table


def test_split_plans_spans_from_the_row_estimate() -> None:
    assert split(1, 2_000_000, 2_000_000, 250_000, 2) == [
        KeyRange(None, 250_001),
        *[KeyRange(1 + i * 250_000, 1 + (i + 1) * 250_000) for i in range(1, 7)],
        KeyRange(1_750_001, None),
    ]
    assert split(5, 5, 1, 10, 2) == [KeyRange(None, None)]
    assert len(split(0, 2**63 - 1, 1_000, 250_000, 2)) == 1  # sparse: as many spans as the rows need
    assert len(split(0, 10, 10**9, 1, 2)) == 11  # never more spans than keys
    part = KeyRange(None, 100)
    assert part.halves(0, 1000) == (KeyRange(None, 50), KeyRange(50, 100))
    assert KeyRange(7, 8).halves(0, 10) is None
    assert part.after(41) == KeyRange(42, 100)
    assert KeyRange(None, None).condition("id") == "`id` IS NOT NULL"


@pytest.mark.parametrize("start", [None, 57])
async def test_an_id_only_window_reads_exactly_its_keys(
    source_conn: SourceConn, mysql_db: str, start: int | None
) -> None:
    fill_shared(mysql_db, list(range(1, 301)))
    window = Window(
        "id_only", id_column="id", start=Watermark(id=start) if start else None, end=Watermark(id=251)
    )
    canonical, quick, _, fast = await read_both(source_conn, "shared", window=window, range_rows=30)
    assert canonical.column("id").to_pylist() == list(range((start or 0) + 1, 252))
    assert_same(canonical, quick)
    assert fast.path["path"] == "connectorx" and fast.path["ranges"] >= 6


async def test_a_bigint_unsigned_key_splits_into_ranges(source_conn: SourceConn, mysql_db: str) -> None:
    mysql_exec(
        mysql_db,
        "CREATE TABLE u (id BIGINT UNSIGNED PRIMARY KEY, v VARCHAR(10), d DATE)",
        "INSERT INTO u SELECT seq, CONCAT('v', seq), '2024-01-01' + INTERVAL seq DAY FROM seq_1_to_200",
        "INSERT INTO u VALUES (18446744073709551615, 'max', '2024-02-29'), (2 << 62, 'mid', NULL)",
    )
    mysql_exec(mysql_db, "SET SESSION sql_mode = ''", "UPDATE u SET d = '0000-00-00' WHERE id = 150")
    canonical, quick, slow, fast = await read_both(source_conn, "u", range_rows=30)
    assert canonical.num_rows == 202 and canonical.schema.field("id").type == pa.decimal128(20, 0)
    assert_same(canonical, quick)
    assert fast.coercions == slow.coercions == {"d": {"zero_date_to_null": 1}}
    assert fast.path["path"] == "connectorx" and fast.path["ranges"] >= 6


def test_without_connectorx_every_table_takes_the_canonical_path(monkeypatch: pytest.MonkeyPatch) -> None:
    schema = TableSchema((Column("id", "int64", False, "bigint"),), ("id",))
    assert blocker(schema) is None
    monkeypatch.setattr(fastpath, "connectorx", None)  # as on a platform without its wheels
    assert blocker(schema) == "connectorx is not installed on this platform"


async def test_a_hung_range_is_handed_over_after_read_timeout(
    source_conn: SourceConn, mysql_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    fill_shared(mysql_db, list(range(1, 121)))
    real_fetch = fastpath._fetch
    calls = {"n": 0}

    def hangs_once(url: str, sql: str, setup: str) -> pa.Table:
        calls["n"] += 1
        if calls["n"] == 1:  # the server stops answering this connection (connectorx has no timeout)
            time.sleep(5)
        return real_fetch(url, sql, setup)

    monkeypatch.setattr(fastpath, "_fetch", hangs_once)
    started = time.monotonic()
    canonical, quick, _, fast = await read_both(replace(source_conn, read_timeout=1.0), "shared")
    assert time.monotonic() - started < 4.5  # the hung read was left behind, not waited for
    assert_same(canonical, quick)
    assert fast.path["fallbacks"] == ["TimeoutError: "]


async def test_a_lock_wait_fails_the_read_instead_of_waiting_again(
    source_conn: SourceConn, mysql_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A range whose read timed out on another session's lock (connectorx: MySQL error 1205) is not
    handed to the canonical path, which would wait as long again on the same lock: the table fails,
    retryable, saying why."""
    fill_shared(mysql_db, list(range(1, 121)))
    monkeypatch.setattr(src.source.mysql, "LOCK_WAIT_TIMEOUT_S", 1)  # session_sql: connectorx's too
    real_fetch = fastpath._fetch
    holder = mysql_connect(mysql_db)

    def behind_a_lock(url: str, sql: str, setup: str) -> pa.Table:
        with holder.cursor() as cur:  # planned: now a DDL or LOCK TABLES of another session holds it
            cur.execute("LOCK TABLES shared WRITE")
        return real_fetch(url, sql, setup)

    monkeypatch.setattr(fastpath, "_fetch", behind_a_lock)
    try:
        stats = ExtractStats()
        started = time.monotonic()
        async with MySQLSource(source_conn) as source:
            with pytest.raises(BaseExceptionGroup) as caught:
                await read_shared_fast(source_conn, source, mysql_db, stats, range_rows=200, workers=1)
        assert time.monotonic() - started < 10  # the canonical path never waited its 60 s
        failure = first_error(caught.value)
        assert isinstance(failure, SourceError) and failure.retryable and not stats.path.get("fallbacks")
        message = str(failure)
        assert "(1205) Lock wait timeout exceeded" in message and "another session holds a lock" in message
    finally:
        holder.close()


async def test_an_id_only_window_over_negative_keys_stops_at_its_end(
    source_conn: SourceConn, mysql_db: str
) -> None:
    fill_shared(mysql_db, list(range(-150, 151)))
    window = Window("id_only", id_column="id", start=Watermark(id=-120), end=Watermark(id=-1))
    canonical, quick, _, fast = await read_both(source_conn, "shared", window=window, range_rows=20)
    assert quick.column("id").to_pylist() == list(range(-119, 0))
    assert_same(canonical, quick)
    assert fast.path["ranges"] >= 6


async def test_a_bad_date_is_told_from_a_null_one_column_by_column(
    source_conn: SourceConn, mysql_db: str
) -> None:
    """The fast path marks bad dates by a NULL the source does not have (the NULL mask holds only the
    nullable date columns): a NOT NULL column's zero date, and a nullable one's invalid date next to a
    NULL in another date column, are both counted (each in its column); plain NULLs are not."""
    mysql_exec(
        mysql_db,
        "CREATE TABLE m (id BIGINT PRIMARY KEY, d DATE NOT NULL, n DATETIME(6) NULL, t TIMESTAMP(6) NULL)",
        "INSERT INTO m SELECT seq, '2024-01-01' + INTERVAL seq DAY, IF(seq % 3 = 0, NULL, "
        "'2024-01-01 10:00:00.5' + INTERVAL seq HOUR), IF(seq % 5 = 0, NULL, '2024-06-01') FROM seq_1_to_240",
    )
    mysql_exec(
        mysql_db,
        "SET SESSION sql_mode = 'ALLOW_INVALID_DATES'",
        "UPDATE m SET d = '0000-00-00' WHERE id = 39",  # NOT NULL column; n is NULL on this row
        "UPDATE m SET n = '2024-02-30 01:00:00', t = NULL WHERE id = 200",  # invalid next to a NULL
        "UPDATE m SET n = NULL, t = NULL WHERE id = 100",  # NULLs only: no hand-over
    )
    canonical, quick, slow, fast = await read_both(source_conn, "m", range_rows=30)
    assert canonical.num_rows == 240
    assert_same(canonical, quick)
    assert fast.coercions == slow.coercions == {"d": {"zero_date_to_null": 1}, "n": {"zero_date_to_null": 1}}
    assert "fallbacks" not in fast.path, fast.path


async def test_a_login_refused_mid_run_hands_every_range_left_to_asyncmy_at_once(
    mysql_user: SourceConn, mysql_db: str
) -> None:
    """The user's password changes after the run's probe found that connectorx logs in: connectorx then
    retries each login for 30 s before it reports the refusal, and every range paid that wait (6 ranges on
    2 workers: 91 s). The first refusal now sends every range left, and every later table of the run, to
    asyncmy on connections already open; the ranges waiting on the same refusal are given up."""
    fill_shared(mysql_db, list(range(1, 121)))
    canonical, _, _, _ = await read_both(mysql_user, "shared")
    async with MySQLSource(mysql_user) as source, source.connection() as conn:
        assert await fastpath.connectorx_refused(source, mysql_db) is None  # the run's probe logged in
        mysql_exec(None, f"ALTER USER '{mysql_user.username}'@'%' IDENTIFIED BY 'changed meanwhile'")
        schema = await describe_table(conn, mysql_db, "shared")
        stats, later = ExtractStats(), ExtractStats()

        def fast(into: ExtractStats) -> Any:
            async def read(send: Any) -> None:
                reader = FastRead(
                    source, conn, mysql_db, "shared", schema, ReadRules("x"), send, into, 50, 20, 2
                )
                async with send:
                    await reader.run(120)

            return read

        start = time.monotonic()
        batches = await _collect(fast(stats))
        took = time.monotonic() - start
        start = time.monotonic()
        again = await _collect(fast(later))  # a later table of the run: asyncmy from the start
        took_later = time.monotonic() - start
    for read in (batches, again):
        assert_same(canonical, pa.Table.from_batches(read, schema=schema.arrow_schema()).sort_by("id"))
    assert took < 45, f"{took:.1f} s for 6 ranges"  # connectorx's own 30 s for the first refusal
    assert took_later < 5 and later.path["path"] == "asyncmy", later.path
    assert later.path["reason"].startswith("connectorx login refused: "), later.path
    refusal = stats.path["fallbacks"][0]
    assert refusal.startswith("connectorx login refused: ") and "ERROR 1045" in refusal, stats.path
    assert later.path == {"path": "asyncmy", "reason": source.connectorx_error}, later.path
    assert "Access denied" in later.path["reason"]
    assert all("Access denied" in f or "refused" in f for f in stats.path["fallbacks"]), stats.path
