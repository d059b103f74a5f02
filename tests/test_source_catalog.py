"""The run's batched catalog (``introspect.Catalog``) against the real MariaDB: one query per batch of
tables, the same schemas and errors as ``describe_table``, and never a description older than its limit."""

from __future__ import annotations

from datetime import timedelta

import pytest

from src.common.errors import ConfigError, SourceError
from src.common.policy import ColumnSelection
from src.common.schema import TableSchema
from src.config.models import SourceConn
from src.plan.models import Window
from src.source.introspect import (
    Catalog,
    SourceClock,
    describe_table,
    describe_tables,
    read_grants,
    server_now,
)
from src.source.mysql import MySQLSource, SourceConnection
from src.source.window import estimate_rows
from tests.conftest import mysql_exec

FULL = Window(strategy="full_sync")

pytestmark = pytest.mark.anyio


ROUND = 4  # queries per catalog round on MariaDB: columns, primary keys, table rows, column checks
GRANTS = 2  # queries per run: the account (CURRENT_USER()), its own SELECT grants (``read_grants``)


async def _selects(conn: SourceConnection) -> int:
    return await _status(conn, "Com_select")


async def _status(conn: SourceConnection, name: str) -> int:
    return int((await conn.fetchall("SHOW SESSION STATUS LIKE %s", (name,)))[0][1])


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
        assert await _selects(conn) - before == GRANTS + ROUND  # t0..t3 in one round
        got += [await describe_table(conn, mysql_db, n, catalog=catalog) for n in names[4:]]
        assert await _selects(conn) - before == GRANTS + 2 * ROUND  # t4, t5, t6 and nokey in the next one
        key = await describe_table(conn, mysql_db, "nokey", primary_key=("b", "a"), catalog=catalog)
        with pytest.raises(SourceError, match=rf"table {mysql_db}\.missing not found"):
            await describe_table(conn, mysql_db, "missing", catalog=catalog)
        # no column found: the round stops there, and one query asks whether it is a view MySQL cannot resolve
        assert await _selects(conn) - before == GRANTS + 2 * ROUND + 2
        assert got == [await describe_table(conn, mysql_db, n) for n in names]
        with pytest.raises(ConfigError, match="include_columns"):  # described again: read again
            await describe_table(
                conn, mysql_db, "t0", selection=ColumnSelection(include=("nope",)), catalog=catalog
            )
    assert key.primary_key == ("b", "a")


async def test_a_catalog_round_reads_only_the_named_tables(source_conn: SourceConn, mysql_db: str) -> None:
    """MariaDB fills a joined information_schema table whole (every table of the server): the catalog's
    cost must follow the tables it describes, not the tables the server has. Measured by the rows MariaDB
    writes into its information_schema temporary tables."""
    mysql_exec(
        mysql_db, *[f"CREATE TABLE t{i} (id INT PRIMARY KEY, a INT, b TEXT, c DATE)" for i in range(60)]
    )
    async with MySQLSource(source_conn) as src, src.connection() as conn:
        grants = await read_grants(conn)  # once per run, whatever the number of tables
        before = await _status(conn, "Handler_tmp_write")
        found = await describe_tables(conn, mysql_db, ["t0", "t1"], grants=grants)
        written = await _status(conn, "Handler_tmp_write") - before
    assert [len(schema.columns) for schema in found.values() if isinstance(schema, TableSchema)] == [4, 4]
    assert written <= 4 * 8, f"{written} rows written to describe 8 columns"  # 2 tables of a 60-table schema


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
        assert await _selects(conn) == before  # both from the one catalog round


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
