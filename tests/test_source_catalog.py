"""The run's batched catalog (``introspect.Catalog``) against the real MariaDB: one query per batch of
tables, the same schemas and errors as ``describe_table``, and never a description older than its limit."""

from __future__ import annotations

import pytest

from src.common.errors import ConfigError, SourceError
from src.common.policy import ColumnSelection
from src.config.models import SourceConn
from src.source.introspect import Catalog, describe_table
from src.source.mysql import MySQLSource, SourceConnection
from tests.conftest import mysql_exec

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
