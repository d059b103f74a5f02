"""The run's batched catalog (``introspect.Catalog``) against the real MariaDB: one query per batch of
tables, the same schemas and errors as ``describe_table``, and never a description older than its limit."""

from __future__ import annotations

from datetime import timedelta

import pytest

from src.common.errors import ConfigError, SourceError
from src.common.policy import ColumnSelection
from src.config.models import SourceConn
from src.plan.models import Window
from src.source.introspect import Catalog, SourceClock, describe_table, server_now
from src.source.mysql import MySQLSource, SourceConnection
from src.source.window import estimate_rows
from tests.conftest import mysql_exec

FULL = Window(strategy="full_sync")

pytestmark = pytest.mark.anyio


async def _selects(conn: SourceConnection) -> int:
    return int((await conn.fetchall("SHOW SESSION STATUS LIKE 'Com_select'"))[0][1])


async def test_a_batch_of_tables_costs_one_query_and_matches_describe_table(
    source_conn: SourceConn, mysql_db: str
) -> None:
    names = [f"t{i}" for i in range(7)]
    mysql_exec(
        mysql_db,
        *[f"CREATE TABLE {n} (id INT PRIMARY KEY, v{i} VARCHAR(5), d DATE)" for i, n in enumerate(names)],
        "CREATE TABLE nokey (a INT NOT NULL, b INT NOT NULL)",
    )
    catalog = Catalog([(mysql_db, n) for n in [*names, "nokey", "missing"]], batch=4)
    async with MySQLSource(source_conn) as src, src.connection() as conn:
        before = await _selects(conn)
        got = [await describe_table(conn, mysql_db, n, catalog=catalog) for n in names[:4]]
        assert await _selects(conn) - before == 1  # t0..t3 in one query
        got += [await describe_table(conn, mysql_db, n, catalog=catalog) for n in names[4:]]
        assert await _selects(conn) - before == 2  # t4, t5, t6 and nokey in the next one
        key = await describe_table(conn, mysql_db, "nokey", primary_key=("b", "a"), catalog=catalog)
        with pytest.raises(SourceError, match=rf"table {mysql_db}\.missing not found"):
            await describe_table(conn, mysql_db, "missing", catalog=catalog)
        assert await _selects(conn) - before == 3
        assert got == [await describe_table(conn, mysql_db, n) for n in names]
        with pytest.raises(ConfigError, match="include_columns"):  # described again: read again
            await describe_table(
                conn, mysql_db, "t0", selection=ColumnSelection(include=("nope",)), catalog=catalog
            )
    assert key.primary_key == ("b", "a")


async def test_a_description_older_than_max_age_is_read_again(source_conn: SourceConn, mysql_db: str) -> None:
    mysql_exec(mysql_db, "CREATE TABLE a (id INT PRIMARY KEY)", "CREATE TABLE b (id INT PRIMARY KEY)")
    fresh = Catalog([(mysql_db, "a"), (mysql_db, "b")])
    stale = Catalog([(mysql_db, "a"), (mysql_db, "b")], max_age=0)
    async with MySQLSource(source_conn) as src, src.connection() as conn:
        for catalog in (fresh, stale):
            await describe_table(conn, mysql_db, "a", catalog=catalog)  # b comes along
        mysql_exec(mysql_db, "ALTER TABLE b ADD COLUMN added INT")
        assert (await describe_table(conn, mysql_db, "b", catalog=fresh)).names == ("id",)  # within its age
        assert (await describe_table(conn, mysql_db, "b", catalog=stale)).names == ("id", "added")


async def test_the_catalog_carries_table_rows_so_a_full_read_estimate_costs_no_query(
    source_conn: SourceConn, mysql_db: str
) -> None:
    mysql_exec(
        mysql_db,
        "CREATE TABLE big (id INT PRIMARY KEY, v INT)",
        "INSERT INTO big SELECT seq, seq FROM seq_1_to_5000",
        "CREATE TABLE small (id INT PRIMARY KEY)",
        "ANALYZE TABLE big, small",
    )
    catalog = Catalog([(mysql_db, "big"), (mysql_db, "small")])
    async with MySQLSource(source_conn) as src, src.connection() as conn:
        assert catalog.table_rows(mysql_db, "big") is None  # not described yet
        schema = await describe_table(conn, mysql_db, "big", catalog=catalog)
        direct = await estimate_rows(conn, mysql_db, "big", schema, FULL)
        before = await _selects(conn)
        assert await estimate_rows(conn, mysql_db, "big", schema, FULL, catalog=catalog) == direct > 4000
        assert await estimate_rows(conn, mysql_db, "small", schema, FULL, catalog=catalog) == 0
        assert await _selects(conn) == before  # both from the one catalog query


async def test_the_source_clock_reads_the_server_once_per_refresh(source_conn: SourceConn) -> None:
    clock, stale = SourceClock(), SourceClock(refresh=0)
    async with MySQLSource(source_conn) as src, src.connection() as conn:
        first = await clock.now(conn)
        before = await _selects(conn)
        later = [await clock.now(conn) for _ in range(5)]
        assert await _selects(conn) == before  # advanced by the local clock
        assert first <= later[0] <= later[-1] and later[-1] - first < timedelta(seconds=1)
        server = await server_now(conn)
        assert abs(await clock.now(conn) - server) < timedelta(seconds=1)
        before = await _selects(conn)
        await stale.now(conn)
        await stale.now(conn)
        assert await _selects(conn) - before == 2  # refresh 0: every call reads the server
