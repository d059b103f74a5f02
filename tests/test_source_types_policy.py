"""Type policies on the source side against the real MariaDB, both drivers: each policy both ways with its
counts, GEOMETRY as EWKB, DECIMAL(65,30) as exact text, TINYINT(1) as an opt-in BOOLEAN, column selection,
the row filter, a 1,000-column table and an empty one."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

import anyio
import pyarrow as pa
import pytest

from src.common.errors import ConfigError, SourceError, UnsupportedTypeError
from src.common.policy import ColumnSelection, TypePolicy
from src.common.schema import TableSchema
from src.config.models import Driver, SourceConn
from src.plan.models import Watermark, Window
from src.source.convert import mysql_geometry_to_ewkb
from src.source.extract import ExtractStats, extract_table
from src.source.introspect import describe_table, describe_tables, read_grants
from src.source.mysql import MySQLSource, SourceConnection
from src.source.text import has_nul
from src.source.window import estimate_rows, extract_window, window_sql
from tests.conftest import mysql_exec, mysql_rows

DEFAULTS = TypePolicy()
ALL = ColumnSelection()


@pytest.fixture(params=["asyncmy", "aiomysql"])
def cfg(request: pytest.FixtureRequest, source_conn: SourceConn) -> SourceConn:
    driver: Driver = request.param
    return replace(source_conn, driver=driver)


async def read(
    cfg: SourceConn,
    table: str,
    *,
    policy: TypePolicy = DEFAULTS,
    selection: ColumnSelection = ALL,
    window: Window | None = None,
    batch_size: int = 1000,
    **kw: Any,
) -> tuple[list[dict[str, Any]], ExtractStats, TableSchema]:
    """Describe ``table`` with ``policy``/``selection`` and read it (whole, or ``window``) into rows."""
    assert cfg.database
    db = cfg.database
    stats = ExtractStats()
    batches: list[pa.RecordBatch] = []
    send, receive = anyio.create_memory_object_stream[pa.RecordBatch](1)
    async with MySQLSource(cfg) as src, src.connection() as conn:
        schema = await describe_table(conn, db, table, policy=policy, selection=selection)
        common: dict[str, Any] = {"batch_size": batch_size, "stats": stats, "policy": policy, **kw}
        async with anyio.create_task_group() as tg:
            if window is None:
                tg.start_soon(lambda: extract_table(conn, db, table, schema, send, **common))
            else:
                tg.start_soon(lambda: extract_window(conn, db, table, schema, send, window=window, **common))
            async with receive:
                batches.extend([b async for b in receive])
    assert all(b.schema == schema.arrow_schema() for b in batches)
    return pa.Table.from_batches(batches, schema.arrow_schema()).to_pylist(), stats, schema


async def read_fails(cfg: SourceConn, table: str, **kw: Any) -> SourceError:
    """The one SourceError a read raises (through the task group)."""
    with pytest.RaisesGroup(pytest.RaisesExc(SourceError)) as err:
        await read(cfg, table, **kw)
    (exc,) = err.value.exceptions
    assert isinstance(exc, SourceError)
    return exc


# ---- zero dates -----------------------------------------------------------------------------------------


@pytest.fixture
def dates(mysql_db: str) -> str:
    mysql_exec(
        mysql_db,
        "CREATE TABLE d (id INT PRIMARY KEY, day DATE NOT NULL, at DATETIME(6))",
        "SET SESSION sql_mode=''",
        "INSERT INTO d VALUES (1, '2024-01-02', '2024-01-02 03:04:05.000006'), (2, '0000-00-00', NULL),"
        " (3, '2024-02-30', '2024-00-15 10:00:00'), (4, '9999-12-31', '0000-00-00 00:00:00')",
    )
    return "d"


@pytest.mark.anyio
async def test_zero_dates_null_by_default_and_counted(cfg: SourceConn, dates: str) -> None:
    rows, stats, schema = await read(cfg, dates)
    assert [r["day"] for r in rows] == [date(2024, 1, 2), None, None, date(9999, 12, 31)]
    assert [r["at"] for r in rows] == [datetime(2024, 1, 2, 3, 4, 5, 6), None, None, None]
    assert stats.coercions == {"day": {"zero_date_to_null": 2}, "at": {"zero_date_to_null": 2}}
    assert schema.column("day").nullable  # NOT NULL at the source, nullable in staging


@pytest.mark.anyio
async def test_zero_dates_fail_names_the_column_and_value(cfg: SourceConn, dates: str, mysql_db: str) -> None:
    exc = await read_fails(cfg, dates, policy=TypePolicy(zero_date="fail"))
    assert (exc.table, exc.column, exc.retryable) == (f"{mysql_db}.d", "day", False)
    assert f"column 'day' of {mysql_db}.d holds the invalid date '0000-00-00'" in str(exc)
    assert "zero_date: null" in str(exc)


# ---- invalid UTF-8, NUL ------------------------------------------------------------------------------------


@pytest.fixture
def binary_enum(mysql_db: str) -> str:
    mysql_exec(
        mysql_db,
        "CREATE TABLE be (id INT PRIMARY KEY, e ENUM(x'ff', x'c3a9', 'ok') CHARACTER SET binary,"
        " s SET(x'fe', 'z') CHARACTER SET binary, v VARCHAR(10))",
        "INSERT INTO be VALUES (1, 1, 3, 'a'), (2, 2, 2, 'b'), (3, 3, NULL, NULL), (4, NULL, 1, 'c')",
    )
    return "be"


@pytest.mark.anyio
async def test_invalid_utf8_fails_by_default(cfg: SourceConn, binary_enum: str, mysql_db: str) -> None:
    exc = await read_fails(cfg, binary_enum)
    assert (exc.table, exc.column, exc.retryable) == (f"{mysql_db}.be", "e", False)
    assert "holds bytes that are not UTF-8 (hex ff)" in str(exc) and "invalid_utf8: replace" in str(exc)


@pytest.mark.anyio
async def test_invalid_utf8_replaced_and_counted(cfg: SourceConn, binary_enum: str) -> None:
    rows, stats, schema = await read(cfg, binary_enum, policy=TypePolicy(invalid_utf8="replace"))
    assert [r["e"] for r in rows] == ["\ufffd", "é", "ok", None]
    assert [r["s"] for r in rows] == ["\ufffd,z", "z", None, "\ufffd"]
    assert stats.coercions == {"e": {"invalid_utf8_replaced": 1}, "s": {"invalid_utf8_replaced": 2}}
    assert schema.column("e").byte_length == 2 * 3 and schema.column("s").byte_length == 3 * 3


@pytest.fixture
def nul_table(mysql_db: str) -> str:
    mysql_exec(
        mysql_db,
        "CREATE TABLE nul (id INT PRIMARY KEY, t TEXT, j JSON, b VARBINARY(8))",
        "INSERT INTO nul VALUES (1, 'a\\0b\\0', '\"x\"', x'00'), (2, 'clean', '[1]', NULL),"
        " (3, '\\0', NULL, x'0000')",
        # JSON holds U+0000 as the escape \u0000 (jsonb refuses it); an escaped backslash is not one
        r"""INSERT INTO nul VALUES (4, NULL, '{"k": "a\\u0000b", "e": "\\\\u0000"}', NULL),"""
        r""" (5, NULL, '["\\u0000\\u00001"]', NULL)""",
    )
    return "nul"


def test_has_nul_looks_only_at_the_array_s_own_values() -> None:
    array = pa.array(["a\x00", None, "b", "", "c"])
    assert has_nul(array) and has_nul(array.slice(0, 1))
    assert not has_nul(array.slice(1)) and not has_nul(array.slice(2, 2)) and not has_nul(array.slice(5))
    assert not has_nul(pa.array([None, None], pa.string())) and not has_nul(pa.array([], pa.string()))


@pytest.mark.anyio
async def test_nul_stripped_by_default_and_counted(cfg: SourceConn, nul_table: str) -> None:
    rows, stats, _ = await read(cfg, nul_table)
    assert [r["t"] for r in rows] == ["ab", "clean", "", None, None]
    assert [r["b"] for r in rows] == [b"\x00", None, b"\x00\x00", None, None]  # bytes are never touched
    assert [None if r["j"] is None else json.loads(r["j"]) for r in rows] == [
        "x",
        [1],
        None,
        {"k": "ab", "e": "\\u0000"},
        ["1"],
    ]
    assert stats.coercions == {"t": {"nul_stripped": 2}, "j": {"nul_stripped": 2}}


@pytest.mark.anyio
async def test_nul_fail(cfg: SourceConn, nul_table: str, mysql_db: str) -> None:
    exc = await read_fails(cfg, nul_table, policy=TypePolicy(nul_bytes="fail"))
    assert (exc.table, exc.column) == (f"{mysql_db}.nul", "t")
    assert "2 value(s) with a NUL character" in str(exc) and "nul_bytes: strip" in str(exc)


# ---- long text ---------------------------------------------------------------------------------------------


@pytest.fixture
def long_text(mysql_db: str) -> str:
    mysql_exec(
        mysql_db,
        "CREATE TABLE lt (id INT PRIMARY KEY, t TEXT, short VARCHAR(2), j JSON)",
        # 9 ASCII bytes + a 4-byte emoji = 13 bytes; the limit below (11) falls inside the emoji
        "INSERT INTO lt VALUES (1, '123456789😀', '😀😀', '[]'), (2, '1234567890', 'ab', NULL),"
        " (3, '12345678901😀', NULL, NULL), (4, NULL, NULL, NULL)",
    )
    return "lt"


@pytest.mark.anyio
async def test_long_text_fails_by_default(cfg: SourceConn, long_text: str, mysql_db: str) -> None:
    exc = await read_fails(cfg, long_text, max_text_bytes=11)
    assert (exc.table, exc.column, exc.retryable) == (f"{mysql_db}.lt", "t", False)
    assert "holds a value of 13 bytes, over the target's limit of 11 bytes" in str(exc)
    assert "type_policies.long_text is fail" in str(exc) and "long_text: truncate" in str(exc)


@pytest.mark.anyio
async def test_long_text_truncated_at_a_character_boundary(cfg: SourceConn, long_text: str) -> None:
    rows, stats, _ = await read(cfg, long_text, policy=TypePolicy(long_text="truncate"), max_text_bytes=11)
    assert [r["t"] for r in rows] == ["123456789", "1234567890", "12345678901", None]
    assert [r["short"] for r in rows] == ["😀😀", "ab", None, None]  # 8 bytes: never measured
    assert stats.coercions == {"t": {"truncated_to_11_bytes": 2}}
    unlimited, stats, _ = await read(cfg, long_text)  # PostgreSQL: no limit
    assert unlimited[2]["t"] == "12345678901😀" and stats.coercions == {}


@pytest.mark.anyio
async def test_long_json_is_never_truncated(cfg: SourceConn, mysql_db: str) -> None:
    mysql_exec(
        mysql_db, "CREATE TABLE lj (id INT PRIMARY KEY, j JSON)", "INSERT INTO lj VALUES (1, '[1,2,3,4,5]')"
    )
    exc = await read_fails(cfg, "lj", policy=TypePolicy(long_text="truncate"), max_text_bytes=4)
    assert exc.column == "j" and "JSON cannot be truncated" in str(exc)


# ---- DECIMAL(p>38) -----------------------------------------------------------------------------------------

BIG = "99999999999999999999999999999999999.999999999999999999999999999999"
DECIMALS = [f"-{BIG}", BIG, "0.000000000000000000000000000001", "0", "-1.5", None]


@pytest.mark.anyio
async def test_decimal_over_38_digits_fails_or_is_exact_text(cfg: SourceConn, mysql_db: str) -> None:
    values = ", ".join(f"({i}, {'NULL' if v is None else repr(v)})" for i, v in enumerate(DECIMALS))
    mysql_exec(
        mysql_db,
        "CREATE TABLE dec65 (id INT PRIMARY KEY, x DECIMAL(65,30))",
        f"INSERT INTO dec65 VALUES {values}",
    )
    async with MySQLSource(cfg) as src, src.connection() as conn:
        with pytest.raises(UnsupportedTypeError, match=r"type_policies: \{decimal_overflow: text\}") as err:
            await describe_table(conn, mysql_db, "dec65")
    assert (err.value.table, err.value.column) == (f"{mysql_db}.dec65", "x")
    rows, stats, schema = await read(cfg, "dec65", policy=TypePolicy(decimal_overflow="text"))
    server_text = [r[0] for r in mysql_rows(mysql_db, "SELECT CAST(x AS CHAR) FROM dec65 ORDER BY id")]
    assert [r["x"] for r in rows] == server_text
    assert server_text[:3] == [f"-{BIG}", BIG, "0.000000000000000000000000000001"]
    assert server_text[3] == "0." + "0" * 30 and server_text[4] == "-1.5" + "0" * 29
    assert (schema.column("x").logical, schema.column("x").byte_length) == ("string", 67)
    assert stats.coercions == {}


# ---- TINYINT(1) --------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_tinyint1_is_smallint_unless_opted_in_and_checked(cfg: SourceConn, mysql_db: str) -> None:
    mysql_exec(
        mysql_db,
        "CREATE TABLE flags (id INT PRIMARY KEY, f TINYINT(1), g TINYINT(1) NOT NULL, n TINYINT(4))",
        "INSERT INTO flags VALUES (1, 0, 1, 7), (2, 1, 0, -3), (3, NULL, 1, NULL)",
    )
    boolean = TypePolicy(tinyint1="boolean")
    rows, _, schema = await read(cfg, "flags", policy=boolean)
    assert [(r["f"], r["g"], r["n"]) for r in rows] == [
        (False, True, 7),
        (True, False, -3),
        (None, True, None),
    ]
    assert [schema.column(c).logical for c in ("f", "g", "n")] == ["bool", "bool", "int16"]
    assert [r["f"] for r in (await read(cfg, "flags"))[0]] == [0, 1, None]  # default: SMALLINT
    mysql_exec(mysql_db, "INSERT INTO flags VALUES (4, 1, 2, 0)")
    async with MySQLSource(cfg) as src, src.connection() as conn:
        with pytest.raises(UnsupportedTypeError) as err:
            await describe_table(conn, mysql_db, "flags", policy=boolean)
        found = await describe_tables(conn, mysql_db, ["flags"], policy=boolean)
    assert (err.value.column, err.value.retryable) == ("g", False)
    assert "holds 2 (only 0, 1 and NULL are booleans)" in str(err.value) and "tinyint1: smallint" in str(
        err.value
    )
    assert isinstance(found["flags"], UnsupportedTypeError)
    assert [r["g"] for r in (await read(cfg, "flags"))[0]] == [1, 0, 1, 2]  # 2 survives by default


@pytest.mark.anyio
async def test_tinyint1_value_written_after_planning_fails_the_read(cfg: SourceConn, mysql_db: str) -> None:
    mysql_exec(mysql_db, "CREATE TABLE fl (id INT PRIMARY KEY, f TINYINT(1))", "INSERT INTO fl VALUES (1, 1)")
    boolean = TypePolicy(tinyint1="boolean")
    async with MySQLSource(cfg) as src, src.connection() as conn:
        schema = await describe_table(conn, mysql_db, "fl", policy=boolean)
        mysql_exec(mysql_db, "INSERT INTO fl VALUES (2, -1)")
        send, receive = anyio.create_memory_object_stream[pa.RecordBatch](5)
        with pytest.raises(SourceError, match=r"column 'f' .* now holds -1") as err:
            async with receive:
                await extract_table(
                    conn, mysql_db, "fl", schema, send, batch_size=10, stats=ExtractStats(), policy=boolean
                )
    assert err.value.column == "f"


# ---- GEOMETRY ----------------------------------------------------------------------------------------------

POINT_4326 = "0101000020E6100000000000000000F03F0000000000000040"  # PostGIS: SRID=4326;POINT(1 2)
POINT_0 = "0101000000000000000000F03F0000000000000040"  # POINT(1 2), no SRID


def test_ewkb_from_mysql_internal_geometry() -> None:
    internal = bytes.fromhex("E6100000" + POINT_0)
    assert mysql_geometry_to_ewkb(internal).hex().upper() == POINT_4326
    assert mysql_geometry_to_ewkb(bytes.fromhex("00000000" + POINT_0)).hex().upper() == POINT_0
    big_endian = bytes.fromhex("E6100000" + "00" + "00000001" + "3FF0000000000000" + "4000000000000000")
    assert (
        mysql_geometry_to_ewkb(big_endian).hex().upper()
        == "0020000001000010E6" + "3FF00000000000004000000000000000"
    )
    with pytest.raises(ValueError, match="not a MySQL geometry value"):
        mysql_geometry_to_ewkb(b"\x00\x00")


@pytest.mark.anyio
async def test_geometry_is_ewkb_with_its_srid(cfg: SourceConn, mysql_db: str) -> None:
    polygon = "POLYGON((0 0,10 0,10 10,0 10,0 0),(2 2,3 2,3 3,2 2))"
    mysql_exec(
        mysql_db,
        "CREATE TABLE geo (id INT PRIMARY KEY, g GEOMETRY, p POINT, pl POLYGON NOT NULL)",
        f"INSERT INTO geo VALUES (1, ST_GeomFromText('POINT(1 2)', 4326), ST_GeomFromText('POINT(1 2)'),"
        f" ST_GeomFromText('{polygon}', 3857)),"
        f" (2, ST_GeomFromText('GEOMETRYCOLLECTION(POINT(1 1),LINESTRING(0 0,1 1))', 4326), NULL,"
        f" ST_GeomFromText('{polygon}'))",
    )
    rows, stats, schema = await read(cfg, "geo")
    assert [schema.column(c).logical for c in ("g", "p", "pl")] == ["binary"] * 3
    assert rows[0]["g"].hex().upper() == POINT_4326 and rows[0]["p"].hex().upper() == POINT_0
    wkb = {r[0]: (r[1], r[2]) for r in mysql_rows(mysql_db, "SELECT id, ST_AsWKB(pl), ST_SRID(pl) FROM geo")}
    assert wkb[1][1] == 3857 and wkb[2][1] == 0
    expected_3857 = wkb[1][0][:1] + bytes.fromhex("03000020") + (3857).to_bytes(4, "little") + wkb[1][0][5:]
    assert rows[0]["pl"] == expected_3857 and rows[1]["pl"] == wkb[2][0]
    collection = mysql_rows(mysql_db, "SELECT ST_AsWKB(g) FROM geo WHERE id = 2")[0][0]
    assert rows[1]["g"] == collection[:1] + bytes.fromhex("07000020E6100000") + collection[5:]
    assert rows[1]["p"] is None and stats.coercions == {}


# ---- column selection ------------------------------------------------------------------------------------


@pytest.fixture
def selectable(mysql_db: str) -> str:
    mysql_exec(
        mysql_db,
        "CREATE TABLE sel (a INT NOT NULL, b VARCHAR(5), huge DECIMAL(65,30), c DATE, k INT NOT NULL,"
        " PRIMARY KEY (k, a))",
        "INSERT INTO sel VALUES (1, 'x', 1.5, '2024-01-01', 10), (2, 'y', NULL, NULL, 20)",
    )
    return "sel"


@pytest.mark.anyio
async def test_exclude_keeps_order_and_skips_an_uncarriable_column(cfg: SourceConn, selectable: str) -> None:
    rows, _, schema = await read(cfg, selectable, selection=ColumnSelection(exclude=("huge",)))
    assert schema.names == ("a", "b", "c", "k") and schema.primary_key == ("k", "a")
    assert rows == [
        {"a": 1, "b": "x", "c": date(2024, 1, 1), "k": 10},
        {"a": 2, "b": "y", "c": None, "k": 20},
    ]
    rows, _, schema = await read(cfg, selectable, selection=ColumnSelection(include=("k", "b", "a")))
    assert schema.names == ("a", "b", "k") and rows[1] == {"a": 2, "b": "y", "k": 20}


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("selection", "key", "names"),
    [
        (ColumnSelection(include=("a", "k", "nope")), "include_columns", "'nope'"),
        (ColumnSelection(exclude=("zz", "huge")), "exclude_columns", "'zz'"),
        (ColumnSelection(rename=(("gone", "x"),)), "rename_columns", "'gone'"),
    ],
)
async def test_unknown_selected_names_are_config_errors(
    source_conn: SourceConn, selectable: str, mysql_db: str, selection: ColumnSelection, key: str, names: str
) -> None:
    async with MySQLSource(source_conn) as src, src.connection() as conn:
        with pytest.raises(ConfigError) as err:
            await describe_table(conn, mysql_db, selectable, selection=selection)
    assert (err.value.key, err.value.table) == (key, f"{mysql_db}.sel")
    assert f"{key} of {mysql_db}.sel names {names}, which the table does not have" in str(err.value)
    assert "(columns: a, b, huge, c, k)" in str(err.value)


@pytest.mark.anyio
async def test_leaving_out_a_key_column_is_a_config_error(
    source_conn: SourceConn, selectable: str, mysql_db: str
) -> None:
    async with MySQLSource(source_conn) as src, src.connection() as conn:
        with pytest.raises(ConfigError, match=r"exclude_columns of .* leaves out key column\(s\) 'a'") as err:
            await describe_table(conn, mysql_db, selectable, selection=ColumnSelection(exclude=("a", "huge")))
        assert (err.value.key, err.value.column) == ("exclude_columns", "a")
        with pytest.raises(ConfigError, match=r"include_columns of .* leaves out key column\(s\) 'k'"):
            await describe_table(conn, mysql_db, selectable, selection=ColumnSelection(include=("a", "b")))
        schema = await describe_table(
            conn, mysql_db, selectable, primary_key=("b",), selection=ColumnSelection(include=("b", "c"))
        )
    assert schema.names == ("b", "c") and schema.primary_key == ("b",)


# ---- row filter ------------------------------------------------------------------------------------------


@pytest.fixture
def filtered(mysql_db: str) -> str:
    mysql_exec(
        mysql_db,
        "CREATE TABLE wf (id INT PRIMARY KEY, ts DATETIME(6) NOT NULL, tag VARCHAR(10) NOT NULL, KEY (ts))",
        "INSERT INTO wf SELECT seq, '2024-01-01' + INTERVAL (seq DIV 3) SECOND,"
        " IF(seq % 2, 'a%odd', 'even') FROM seq_1_to_40",
    )
    return "wf"


FILTER = "tag LIKE 'a\\%%' OR id = 2 -- odd rows and row 2"


@pytest.mark.anyio
@pytest.mark.parametrize("strategy", ["full_sync", "hybrid", "id_only", "timestamp_only"])
async def test_row_filter_is_anded_into_every_query(cfg: SourceConn, filtered: str, strategy: str) -> None:
    window = Window(
        strategy,  # type: ignore[arg-type]
        ts_column=None if strategy in ("full_sync", "id_only") else "ts",
        id_column="id" if strategy in ("hybrid", "id_only") else None,
        start=Watermark(ts=datetime(2023, 1, 1), id=0) if strategy != "full_sync" else None,
        end=Watermark(ts=datetime(2024, 1, 1, 0, 0, 11), id=35) if strategy != "full_sync" else None,
    )
    rows, stats, _ = await read(cfg, filtered, window=window, batch_size=4, where=FILTER)
    last = 40 if strategy == "full_sync" else 35
    expected = [i for i in range(1, last + 1) if i % 2 or i == 2]
    assert sorted(r["id"] for r in rows) == expected and stats.rows == len(expected)


@pytest.mark.anyio
async def test_row_filter_in_plans(cfg: SourceConn, filtered: str, mysql_db: str) -> None:
    window = Window("hybrid", ts_column="ts", id_column="id", end=Watermark(ts=datetime(2030, 1, 1)))
    async with MySQLSource(cfg) as src, src.connection() as conn:
        schema = await describe_table(conn, mysql_db, filtered)
        assert await estimate_rows(conn, mysql_db, filtered, schema, window, where="id <= 10") <= 10
        full = Window("full_sync")
        assert await estimate_rows(conn, mysql_db, filtered, schema, full, where="id <= 10") <= 10
    sql = window_sql(mysql_db, filtered, schema, window, batch_size=5, where="tag LIKE 'a%'")
    assert "AND (\ntag LIKE 'a%%'\n) ORDER BY" in sql
    assert window_sql(mysql_db, filtered, schema, full, batch_size=5, where="x = '%'").endswith(
        "WHERE (\nx = '%'\n)"
    )


# ---- wide and empty tables ----------------------------------------------------------------------------

WIDE_TYPES = [
    "INT",
    "VARCHAR(8)",
    "DATETIME(6)",
    "DECIMAL(12,2)",
    "BIGINT UNSIGNED",
    "TEXT",
    "DOUBLE",
    "DATE",
]


def wide_value(i: int, row: int) -> Any:
    kind = WIDE_TYPES[i % len(WIDE_TYPES)]
    return {
        "INT": -row * 100_000 - i,
        "VARCHAR(8)": f"é{row}_{i}"[:8],
        "DATETIME(6)": datetime(2024, 1, 1) + timedelta(seconds=i, microseconds=row),
        "DECIMAL(12,2)": Decimal(f"{i}.{row:02d}"),
        "BIGINT UNSIGNED": Decimal(2**64 - 1 - i - row),
        "TEXT": "t" * (i % 7) + "😀",
        "DOUBLE": i / 7 + row,
        "DATE": date(2000, 1, 1) + timedelta(days=i + row),
    }[kind]


@pytest.mark.anyio
async def test_a_1000_column_table_in_one_catalog_round(cfg: SourceConn, mysql_db: str) -> None:
    names = [f"c{i:03d}" for i in range(999)]
    columns = ", ".join(f"{n} {WIDE_TYPES[i % len(WIDE_TYPES)]}" for i, n in enumerate(names))
    mysql_exec(
        mysql_db, "SET SESSION innodb_strict_mode=0", f"CREATE TABLE wide (id INT PRIMARY KEY, {columns})"
    )
    placeholders = ", ".join(["%s"] * 1000)
    for row in range(1, 6):
        values = [row, *(wide_value(i, row) for i in range(999))]
        mysql_rows(mysql_db, f"INSERT INTO wide VALUES ({placeholders})", values)
    mysql_exec(mysql_db, "INSERT INTO wide (id) VALUES (6)")
    async with MySQLSource(cfg) as src, src.connection() as conn:
        grants = await read_grants(conn)  # once per run, whatever the number of tables
        before = await _selects(conn)
        found = await describe_tables(conn, mysql_db, ["wide"], grants=grants)
        assert await _selects(conn) - before == 4  # one catalog round: columns, keys, rows, checks
    schema = found["wide"]
    assert isinstance(schema, TableSchema) and len(schema.columns) == 1000
    rows, stats, _ = await read(cfg, "wide", batch_size=4)
    for row in range(1, 6):
        assert rows[row - 1] == {"id": row, **{n: wide_value(i, row) for i, n in enumerate(names)}}, row
    assert rows[5] == {"id": 6, **dict.fromkeys(names)}
    assert (stats.rows, stats.batches, stats.coercions) == (6, 2, {})


async def _selects(conn: SourceConnection) -> int:
    return int((await conn.fetchall("SHOW SESSION STATUS LIKE 'Com_select'"))[0][1])


@pytest.mark.anyio
async def test_an_empty_table_sends_nothing_under_every_policy(cfg: SourceConn, mysql_db: str) -> None:
    mysql_exec(
        mysql_db,
        "CREATE TABLE empty (id INT PRIMARY KEY, f TINYINT(1), x DECIMAL(65,30), g POINT, t TEXT, d DATE)",
    )
    strict = TypePolicy("fail", "text", "boolean", "fail", "fail", "fail")
    rows, stats, schema = await read(cfg, "empty", policy=strict, max_text_bytes=10)
    assert rows == [] and (stats.rows, stats.batches, stats.coercions) == (0, 0, {})
    assert [c.logical for c in schema.columns] == ["int32", "bool", "string", "binary", "string", "date"]


@pytest.mark.anyio
async def test_double_with_decimals_arrives_as_stored(cfg: SourceConn, mysql_db: str) -> None:
    """DOUBLE(M,D) (``price DOUBLE(10,2)``, deprecated but common) stores a double the text protocol
    prints with D decimals only: 1.8900000000000001 arrived as 1.89, a different double, while connectorx
    (big tables) read the stored one, so the two paths disagreed. Both drivers now give the stored value."""
    mysql_exec(
        mysql_db,
        "CREATE TABLE dd (id INT PRIMARY KEY, d DOUBLE(10,2), u DOUBLE(12,3) UNSIGNED, p DOUBLE)",
        "INSERT INTO dd SELECT seq, seq / 9, seq / 7, seq / 9 FROM seq_1_to_200",
        "INSERT INTO dd VALUES (201, NULL, 999999999.999, -1e308)",
    )
    # the stored double with every digit: `+ 0e0` is a DOUBLE without the column's D
    exact = [tuple(r) for r in mysql_rows(mysql_db, "SELECT id, d + 0e0, u + 0e0, p FROM dd ORDER BY id")]
    printed = [tuple(r) for r in mysql_rows(mysql_db, "SELECT id, d, u, p FROM dd ORDER BY id")]
    assert printed != exact  # what a plain SELECT of the column gives
    rows, _, _ = await read(cfg, "dd")
    assert sorted((r["id"], r["d"], r["u"], r["p"]) for r in rows) == exact
