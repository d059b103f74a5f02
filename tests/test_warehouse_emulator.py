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
from src.warehouse.ddl import REDSHIFT, DistSort, create_table_sql, redshift_copy_sql, redshift_literal
from tests.conftest import PG_DATABASE, PG_HOST, PG_PORT, PG_USER, s3_client
from tests.redshift_emulator import RedshiftEmulator, check_redshift_sql, redshift_unquote, rewrite
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
        == 'CREATE TABLE "s"."t" ("super" jsonb, "varbyte" bytea, "encode" VARCHAR(10))'
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


async def test_getdate_is_the_utc_wall_clock(emulator: RedshiftEmulator) -> None:
    assert rewrite("SELECT GETDATE()") == "SELECT (statement_timestamp() AT TIME ZONE 'UTC')"
    now = await emulator.fetchval("SELECT GETDATE()")
    assert abs(now - dt.datetime.now(dt.UTC).replace(tzinfo=None)) < dt.timedelta(minutes=1)
