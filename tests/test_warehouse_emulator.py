"""The Redshift emulator enforces Redshift's COPY-Parquet rules, and the loader's error path copes.

Rules from research/reliability.md section 2.2; each one is shown rejecting (so the emulator is not a
rubber stamp) and, where relevant, the target left exactly as it was.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from decimal import Decimal
from typing import Any

import asyncpg
import pyarrow as pa
import pytest
from asyncpg.exceptions import InternalServerError

from src.common.errors import WarehouseError
from src.common.schema import TableSchema
from src.config.models import S3Conn
from src.warehouse.ddl import (
    REDSHIFT,
    DistSort,
    create_table_sql,
    redshift_copy_sql,
    redshift_literal,
    redshift_type,
)
from tests.conftest import PG_DATABASE, PG_HOST, PG_PORT, PG_USER, s3_client
from tests.redshift_emulator import RedshiftEmulator, redshift_unquote
from tests.redshift_sql import check_redshift_sql, rewrite, split_statements
from tests.test_warehouse_load import (
    ROLE,
    arrow_table,
    col,
    load,
    stage,
    target_conn,
    target_rows,
    warehouse,
)

pytestmark = pytest.mark.anyio
SCHEMA = TableSchema((col("id", "int64"), col("v", "decimal", precision=10, scale=2)), ("id",))


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def _load_bad(
    pg_schema: str, s3_conn: S3Conn, schema: TableSchema, bad: pa.Table, **kw: Any
) -> WarehouseError:
    """Load a good table, then ``bad``: return the error and check the target kept the good rows."""
    good = arrow_table(schema, [{c.name: "1" if c.logical == "string" else 1 for c in schema.columns}])
    async with warehouse(target_conn("redshift", pg_schema), s3_conn) as wh:
        await load(wh, schema, stage(s3_conn, [good]))
        before = await target_rows(pg_schema, "t", schema)
        with pytest.raises(WarehouseError) as err:
            await load(wh, schema, stage(s3_conn, [good, bad], **kw))
    assert await target_rows(pg_schema, "t", schema) == before
    assert err.value.sqlstate == "XX000" and not err.value.retryable
    return err.value


async def test_rejects_nanosecond_timestamps(pg_schema: str, s3_conn: S3Conn) -> None:
    schema = TableSchema((col("id", "int64"), col("ts", "timestamp")))
    bad = pa.table(
        {"id": pa.array([2], pa.int64()), "ts": pa.array([dt.datetime(2024, 1, 1)], pa.timestamp("ns"))}
    )
    assert "NANOS" in str(await _load_bad(pg_schema, s3_conn, schema, bad))


async def test_rejects_decimal_precision_mismatch(pg_schema: str, s3_conn: S3Conn) -> None:
    bad = pa.table({"id": pa.array([2], pa.int64()), "v": pa.array([Decimal("1.00")], pa.decimal128(12, 2))})
    err = await _load_bad(pg_schema, s3_conn, SCHEMA, bad)
    assert "incompatible Parquet schema" in str(err) and "numeric(10,2)" in str(err)


async def test_rejects_column_count_mismatch(pg_schema: str, s3_conn: S3Conn) -> None:
    bad = arrow_table(SCHEMA, [{"id": 2, "v": Decimal(1)}]).append_column("extra", pa.array([1]))
    assert "has 3 columns; the table has 2" in str(await _load_bad(pg_schema, s3_conn, SCHEMA, bad))


async def test_rejects_wrong_content_length(pg_schema: str, s3_conn: S3Conn) -> None:
    good = arrow_table(SCHEMA, [{"id": 1, "v": Decimal(1)}])
    sizes = [f.size_bytes for f in stage(s3_conn, [good, good]).files]  # same bytes as the run below
    err = await _load_bad(pg_schema, s3_conn, SCHEMA, good, lengths=[sizes[0], sizes[1] + 1])
    assert "content_length" in str(err)


async def test_rejects_invalid_utf8(pg_schema: str, s3_conn: S3Conn) -> None:
    schema = TableSchema((col("id", "int64"), col("s", "string", byte_length=10)))
    bad_strings = pa.array([b"ok\xff"], pa.binary()).view(pa.string())
    bad = pa.table({"id": pa.array([2], pa.int64()), "s": bad_strings})
    assert "invalid or unsupported UTF8" in str(await _load_bad(pg_schema, s3_conn, schema, bad))


async def test_columns_map_by_position_not_name(pg_schema: str, s3_conn: S3Conn) -> None:
    schema = TableSchema((col("a", "int64"), col("b", "int64")))
    swapped = pa.table({"b": pa.array([10], pa.int64()), "a": pa.array([20], pa.int64())})
    async with warehouse(target_conn("redshift", pg_schema), s3_conn) as wh:
        await load(wh, schema, stage(s3_conn, [swapped]))
    assert await target_rows(pg_schema, "t", schema) == [{"a": 10, "b": 20}]


async def test_manifest_url_with_quote_and_backslash(pg_schema: str, s3_conn: S3Conn) -> None:
    odd = replace(s3_conn, prefix="it's \\ odd/")
    async with warehouse(target_conn("redshift", pg_schema), s3_conn) as wh:
        result = stage(odd, [arrow_table(SCHEMA, [{"id": 1, "v": Decimal("2.50")}])])
        assert (await load(wh, SCHEMA, result)).rows_loaded == 1


# ---- direct COPYs through the emulator --------------------------------------------------------------


@pytest.fixture
async def emulator(s3_endpoint: str) -> AsyncIterator[RedshiftEmulator]:
    conn = await asyncpg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, database=PG_DATABASE)
    try:
        yield RedshiftEmulator(conn, s3_endpoint=s3_endpoint)
    finally:
        await conn.close()


def _manifest(s3_conn: S3Conn, entries: list[dict[str, Any]]) -> str:
    key = f"m/{uuid.uuid4().hex}.json"
    s3_client(str(s3_conn.endpoint_url)).put_object(
        Bucket=s3_conn.bucket, Key=key, Body=json.dumps({"entries": entries}).encode()
    )
    return f"s3://{s3_conn.bucket}/{key}"


async def _copy(emulator: RedshiftEmulator, ddl: str, url: str, options: str = "") -> None:
    await emulator.execute("CREATE TEMP TABLE IF NOT EXISTS stage_t " + ddl)
    await emulator.execute(redshift_copy_sql('"stage_t"', url, ROLE) + options)


async def test_empty_manifest_fails_like_redshift(emulator: RedshiftEmulator, s3_conn: S3Conn) -> None:
    with pytest.raises(InternalServerError, match="no entries"):
        await _copy(emulator, "(id BIGINT)", _manifest(s3_conn, []))


@pytest.mark.parametrize(
    "option", [" REGION 'us-east-1'", " COMPUPDATE OFF", " MAXERROR 10", " ACCEPTANYDATE"]
)
async def test_options_parquet_copy_rejects(emulator: RedshiftEmulator, s3_conn: S3Conn, option: str) -> None:
    good = stage(s3_conn, [pa.table({"id": pa.array([1], pa.int64())})])
    with pytest.raises(InternalServerError, match="not supported for PARQUET"):
        await _copy(emulator, "(id BIGINT)", good.manifest_url, option)


async def test_missing_file_and_non_mandatory_entry(emulator: RedshiftEmulator, s3_conn: S3Conn) -> None:
    missing = {"url": f"s3://{s3_conn.bucket}/nope.parquet", "mandatory": True, "meta": {"content_length": 1}}
    with pytest.raises(InternalServerError, match="does not exist"):
        await _copy(emulator, "(id BIGINT)", _manifest(s3_conn, [missing]))
    with pytest.raises(InternalServerError, match="not mandatory"):
        await _copy(emulator, "(id BIGINT)", _manifest(s3_conn, [{**missing, "mandatory": False}]))


@pytest.mark.parametrize(
    ("declared", "array"),
    [
        ("BIGINT", pa.array([Decimal(1)], pa.decimal128(20, 0))),  # FLBA decimal into BIGINT
        ("BIGINT", pa.array([1], pa.uint64())),  # unsigned 64-bit
        ("BIGINT", pa.array([1], pa.time64("us"))),  # TIME
        ("INTEGER", pa.array([1], pa.int64())),  # narrowing
        ("REAL", pa.array([1.0], pa.float64())),
        ("DECIMAL(20,2)", pa.array([Decimal(1)], pa.decimal128(20, 0))),  # scale differs
        ("VARBYTE(10)", pa.array([b"x"], pa.binary(1))),  # fixed-width binary
        ("SUPER", pa.array(['{"a": 1}'], pa.string())),  # would land as a string scalar
    ],
)
async def test_incompatible_types(
    emulator: RedshiftEmulator, s3_conn: S3Conn, declared: str, array: Any
) -> None:
    result = stage(s3_conn, [pa.table({"x": array})])
    with pytest.raises(InternalServerError, match="incompatible Parquet schema"):
        await _copy(emulator, f"(x {declared})", result.manifest_url)


async def test_compatible_widening_loads(emulator: RedshiftEmulator, s3_conn: S3Conn) -> None:
    table = pa.table(
        {"a": pa.array([-5], pa.int16()), "b": pa.array([7], pa.uint32()), "c": pa.array([1.5], pa.float32())}
    )
    await _copy(emulator, "(a BIGINT, b BIGINT, c DOUBLE PRECISION)", stage(s3_conn, [table]).manifest_url)
    assert [tuple(r) for r in await emulator.fetch("SELECT * FROM stage_t")] == [(-5, 7, 1.5)]


def test_rewrite_leaves_quoted_names_alone() -> None:
    ddl = create_table_sql(
        REDSHIFT,
        '"s"."t"',
        [("super", "SUPER"), ("VARBYTE", "VARBYTE(100)"), ("encode", "VARCHAR(10) ENCODE ZSTD")],
        distsort=DistSort(diststyle="KEY", distkey="super", sortkey=("encode", "VARBYTE")),
    )
    assert "DISTSTYLE KEY" in ddl and 'SORTKEY ("encode", "varbyte")' in ddl
    out = rewrite(ddl + " BACKUP NO")
    assert (
        re.sub(r"\s+\)", ")", out).strip()
        == 'CREATE TABLE "s"."t" ("super" jsonb, "varbyte" public."varbyte(100)", "encode" VARCHAR(10))'
    )
    assert rewrite("SELECT JSON_PARSE(\"json_parse\") FROM x WHERE y = 'SUPER'") == (
        "SELECT jsonb(\"json_parse\") FROM x WHERE y = 'SUPER'"
    )


@pytest.mark.parametrize("value", ["plain", "it's", "back\\slash", "\\'", "''\\\\", "ünï 😀"])
def test_loader_literals_read_back_under_redshift_rules(value: str) -> None:
    assert redshift_unquote(redshift_literal(value, what="x")) == value


@pytest.mark.parametrize(
    "sql",
    [
        "INSERT INTO t VALUES (1) ON CONFLICT DO NOTHING",
        "INSERT INTO t VALUES (1) RETURNING id",
        "SELECT * FROM t FOR UPDATE",
        'LOCK TABLE "s"."t" IN SHARE ROW EXCLUSIVE MODE',
        "SELECT pg_advisory_xact_lock(1)",
        "SELECT clock_timestamp()",
        "SET TRANSACTION ISOLATION LEVEL READ COMMITTED",
    ],
)
def test_postgres_only_syntax_is_refused(sql: str) -> None:
    with pytest.raises(asyncpg.PostgresSyntaxError, match="Redshift does not support"):
        check_redshift_sql(sql, in_transaction=False)


def test_truncate_only_outside_a_transaction_and_names_in_quotes_pass() -> None:
    check_redshift_sql('TRUNCATE "t"', in_transaction=False)
    with pytest.raises(asyncpg.PostgresSyntaxError, match="commits implicitly"):
        check_redshift_sql('TRUNCATE "t"', in_transaction=True)
    check_redshift_sql('SELECT "returning", \'ON CONFLICT\' FROM "clock_timestamp"', in_transaction=True)
    check_redshift_sql('LOCK "s"."t"', in_transaction=True)


async def test_a_message_of_several_statements_is_checked_one_by_one(emulator: RedshiftEmulator) -> None:
    """The loader sends BEGIN and its LOCKs as one message: a statement after a BEGIN of the same message
    is inside the transaction, and every transaction runs SERIALIZABLE, whatever BEGIN asks for."""
    assert split_statements("BEGIN; SELECT ';' ;; SELECT \"a;b\"") == ["BEGIN", "SELECT ';'", 'SELECT "a;b"']
    with pytest.raises(asyncpg.PostgresSyntaxError, match="commits implicitly"):
        await emulator.execute('BEGIN; TRUNCATE "t"')
    await emulator.execute("BEGIN ISOLATION LEVEL READ COMMITTED; SELECT 1")
    try:
        assert await emulator.fetchval("SHOW transaction_isolation") == "serializable"
    finally:
        await emulator.execute("ROLLBACK")
    assert not emulator.conn.is_in_transaction()


async def test_getdate_is_the_utc_wall_clock(emulator: RedshiftEmulator) -> None:
    assert rewrite("SELECT GETDATE()") == "SELECT (statement_timestamp() AT TIME ZONE 'UTC')"
    now = await emulator.fetchval("SELECT GETDATE()")
    assert abs(now - dt.datetime.now(dt.UTC).replace(tzinfo=None)) < dt.timedelta(minutes=1)


# ---- the COPY-Parquet rule, type by type ---------------------------------------------------------------

_DAY = dt.date(2024, 2, 29)
_TS = dt.datetime(2024, 2, 29, 23, 59, 59, 999999)
_UTC = dt.datetime(2024, 2, 29, 23, 59, 59, 999999, tzinfo=dt.UTC)
_BIG = Decimal("1234567890123456789012345678.0123456789")


@pytest.mark.parametrize(
    ("column", "good", "bad", "refusal"),
    [
        (col("x", "bool"), pa.array([True]), pa.array([1], pa.int8()), "incompatible"),
        (col("x", "int16"), pa.array([-5], pa.int16()), pa.array([1], pa.int32()), "incompatible"),
        (col("x", "int32"), pa.array([7], pa.int32()), pa.array([1], pa.int64()), "incompatible"),
        (col("x", "int64"), pa.array([2**63 - 1], pa.int64()), pa.array([1], pa.uint64()), "incompatible"),
        (
            col("x", "decimal", precision=10, scale=2),
            pa.array([Decimal("-12345678.90")], pa.decimal128(10, 2)),
            pa.array([Decimal("1.50")], pa.decimal128(11, 2)),
            "incompatible",
        ),
        (
            col("x", "decimal", precision=38, scale=10),
            pa.array([_BIG], pa.decimal128(38, 10)),
            pa.array([_BIG], pa.decimal256(38, 10)),
            "incompatible",
        ),
        (col("x", "float32"), pa.array([1.5], pa.float32()), pa.array([1.5], pa.float64()), "incompatible"),
        (col("x", "float64"), pa.array([0.1], pa.float64()), pa.array(["0.1"]), "incompatible"),
        (col("x", "string", byte_length=4), pa.array(["éé"]), pa.array(["ééé"]), "longer than the length"),
        (col("x", "json"), pa.array(['{"a": [1]}']), pa.array([1], pa.int64()), "incompatible"),
        (
            col("x", "binary", byte_length=3),
            pa.array([b"\x00\xff\x01"]),
            pa.array([b"abcd"]),
            r"varying\(3\)",
        ),
        (
            col("x", "date"),
            pa.array([_DAY], pa.date32()),
            pa.array([_TS], pa.timestamp("us")),
            "incompatible",
        ),
        (
            col("x", "timestamp"),
            pa.array([_TS], pa.timestamp("us")),
            pa.array([_TS], pa.timestamp("ns")),
            "NANOS",
        ),
        (
            col("x", "timestamptz"),
            pa.array([_UTC], pa.timestamp("us", tz="UTC")),
            pa.array([_UTC], pa.timestamp("ns", tz="UTC")),
            "NANOS",
        ),
        (col("x", "time"), pa.array([-1], pa.int64()), pa.array([1], pa.time64("us")), "incompatible"),
    ],
    ids=lambda v: v.logical if hasattr(v, "logical") else "",
)
async def test_copy_rule_for_every_logical_type(
    emulator: RedshiftEmulator, s3_conn: S3Conn, column: Any, good: Any, bad: Any, refusal: str
) -> None:
    """The staging type the loader declares takes the Parquet type the stage writes, exactly; any other
    Parquet type (or a value too long for the declared size) fails the COPY like Redshift."""
    assert column.arrow_type() == good.type or column.logical == "binary"  # binary: Arrow binary
    ddl = f"(x {redshift_type(column, staging=True)})"
    await _copy(emulator, ddl, stage(s3_conn, [pa.table({"x": good})]).manifest_url)
    assert [r[0] for r in await emulator.fetch("SELECT x FROM stage_t")] == good.to_pylist()
    with pytest.raises(InternalServerError, match=refusal):
        await _copy(emulator, ddl, stage(s3_conn, [pa.table({"x": bad})]).manifest_url)


@pytest.mark.parametrize(
    ("sql", "in_transaction", "refusal"),
    [
        ('ALTER TABLE "t" ALTER COLUMN "c" TYPE VARCHAR(10)', True, "inside a transaction block"),
        ('ALTER TABLE "t" ALTER COLUMN "c" TYPE DECIMAL(12,2)', False, "anything but a VARCHAR"),
        ('ALTER TABLE "t" ADD COLUMN "a" INTEGER, ADD COLUMN "b" INTEGER', True, "several actions"),
    ],
)
def test_alter_table_forms_redshift_refuses(sql: str, in_transaction: bool, refusal: str) -> None:
    with pytest.raises(asyncpg.PostgresSyntaxError, match=refusal):
        check_redshift_sql(sql, in_transaction=in_transaction)


def test_alter_table_forms_redshift_accepts() -> None:
    check_redshift_sql('ALTER TABLE "t" ADD COLUMN "a" DECIMAL(10,2) ENCODE AZ64', in_transaction=True)
    check_redshift_sql('ALTER TABLE "t" ALTER COLUMN "type" TYPE VARCHAR(10)', in_transaction=False)
    check_redshift_sql('ALTER TABLE "s"."x" RENAME TO "t"', in_transaction=True)


async def test_alter_type_of_a_key_column_is_refused(emulator: RedshiftEmulator) -> None:
    await emulator.execute('CREATE TEMP TABLE "kt" ("k" VARCHAR(4), PRIMARY KEY ("k"))')
    with pytest.raises(InternalServerError, match="it is a key"):
        await emulator.execute('ALTER TABLE "kt" ALTER COLUMN "k" TYPE VARCHAR(8)')


async def test_a_primary_key_is_dropped_and_added_as_redshift_allows(emulator: RedshiftEmulator) -> None:
    """Redshift takes DROP CONSTRAINT and ADD PRIMARY KEY in a transaction block, one action per ALTER
    TABLE, and refuses a primary key on a nullable column (PostgreSQL would make it NOT NULL)."""
    await emulator.execute(
        'CREATE TEMP TABLE "pk" ("a" INTEGER, "b" INTEGER, "c" INTEGER, PRIMARY KEY ("a", "b"))'
    )
    await emulator.execute("BEGIN")
    with pytest.raises(asyncpg.PostgresSyntaxError, match="several actions"):
        await emulator.execute('ALTER TABLE "pk" DROP CONSTRAINT "pk_pkey", ADD PRIMARY KEY ("a")')
    await emulator.execute("ROLLBACK")
    await emulator.execute(
        'BEGIN; ALTER TABLE "pk" DROP CONSTRAINT "pk_pkey"; ALTER TABLE "pk" ADD PRIMARY KEY ("a")'
    )
    await emulator.execute("COMMIT")
    await emulator.execute('ALTER TABLE "pk" DROP CONSTRAINT "pk_pkey"')
    with pytest.raises(InternalServerError, match="primary key to nullable column 'c'"):
        await emulator.execute('ALTER TABLE "pk" ADD CONSTRAINT "k2" PRIMARY KEY ("b", "c")')
    await emulator.execute('ALTER TABLE "pk" ADD CONSTRAINT "k2" PRIMARY KEY ("b", "a")')
