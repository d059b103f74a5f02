"""Replace loads (``load`` with mode "replace") on PostgreSQL and on Redshift-through-the-emulator,
against the real services.

Data is staged to the moto S3 server by the test itself (Parquet written with pyarrow, manifest built
here), loaded, then compared value by value in PostgreSQL.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from decimal import Decimal
from functools import partial
from typing import Any

import anyio
import asyncpg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from src.common.errors import StageError, WarehouseError
from src.common.schema import Column, TableSchema
from src.common.secret import Secret
from src.config.models import S3Conn, TargetConn
from src.stage.manifest import build_manifest
from src.stage.models import StagedFile, StageResult
from src.warehouse.base import BatchOpener, LoadRequest, LoadResult, StateRow, Warehouse
from src.warehouse.ddl import postgres_type
from src.warehouse.factory import open_warehouse
from src.warehouse.postgres import copies_directly
from src.warehouse.state import Mode
from tests.conftest import PG_DATABASE, PG_HOST, PG_PORT, PG_USER, s3_client
from tests.redshift_emulator import RedshiftEmulator, emulator_connect

pytestmark = pytest.mark.anyio
ROLE = "arn:aws:iam::123456789012:role/s3shift-copy"
KINDS = ["postgres", "redshift"]


def emptied(kind: str, rows: int) -> int | None:
    """A replace's ``rows_deleted``: Redshift's DELETE counts them; PostgreSQL's TRUNCATE does not."""
    return None if kind == "postgres" else rows


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# ---- helpers: staging, reading back, PostgreSQL -----------------------------------------------------


def stage(
    s3: S3Conn, tables: Sequence[pa.Table], *, rows: int | None = None, lengths: Sequence[int] | None = None
) -> StageResult:
    """Write each table as one Parquet file under a run prefix, plus the manifest the writer writes
    (``lengths``: other content_lengths in it, as a corrupt one would have)."""
    client = s3_client(str(s3.endpoint_url))
    prefix = f"{s3.prefix}test/db.t/{uuid.uuid4().hex}/"
    files = []
    for i, table in enumerate(tables):
        buf = io.BytesIO()
        pq.write_table(table, buf, compression="zstd")
        key = f"{prefix}part-{i:05d}.parquet"
        client.put_object(Bucket=s3.bucket, Key=key, Body=buf.getvalue())
        files.append(StagedFile(key, f"s3://{s3.bucket}/{key}", len(buf.getvalue()), table.num_rows))
    manifest_key = f"{prefix}manifest.json"
    result = StageResult(
        prefix=prefix,
        files=tuple(files),
        manifest_key=manifest_key,
        manifest_url=f"s3://{s3.bucket}/{manifest_key}",
        rows=sum(f.rows for f in files) if rows is None else rows,
        bytes=sum(f.size_bytes for f in files),
    )
    doc = json.loads(build_manifest(result))
    for entry, n in zip(doc["entries"], lengths or [f.size_bytes for f in files], strict=True):
        entry["meta"]["content_length"] = n
    client.put_object(Bucket=s3.bucket, Key=manifest_key, Body=json.dumps(doc).encode())
    return result


def _read_object(client: Any, bucket: str, key: str) -> bytes:
    return bytes(client.get_object(Bucket=bucket, Key=key)["Body"].read())


def s3_batches(s3: S3Conn) -> BatchOpener:
    """What the engine binds for PostgreSQL: the stage's Parquet files read back from S3, batch by batch."""
    client = s3_client(str(s3.endpoint_url))

    async def open_batches(result: StageResult) -> AsyncIterator[pa.RecordBatch]:
        for f in result.files:
            data = await anyio.to_thread.run_sync(_read_object, client, s3.bucket, f.key)
            for batch in pq.ParquetFile(io.BytesIO(data)).iter_batches(batch_size=2):
                yield batch

    return open_batches


async def pg(sql: str, *args: Any) -> list[Any]:
    conn = await asyncpg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, database=PG_DATABASE)
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


def target_conn(kind: str, schema: str, **kw: Any) -> TargetConn:
    extra = {"iam_role": ROLE} if kind == "redshift" else {}
    base = TargetConn(
        name=f"test_{kind}",
        type=kind,  # type: ignore[arg-type]
        host=PG_HOST,
        port=PG_PORT,
        username=PG_USER,
        database=PG_DATABASE,
        schema=schema,
        **extra,  # type: ignore[arg-type]
    )
    return replace(base, **kw)


@asynccontextmanager
async def warehouse(
    cfg: TargetConn, s3: S3Conn, *, sessions: list[RedshiftEmulator] | None = None, **kw: Any
) -> AsyncIterator[Warehouse]:
    batches = kw.pop("batches", None) or s3_batches(s3)
    connect = kw.pop("redshift_connect", None) or emulator_connect(str(s3.endpoint_url), sessions)
    async with open_warehouse(cfg, batches=batches, redshift_connect=connect, **kw) as wh:
        yield wh


def replace_request(
    schema: TableSchema, result: StageResult, target: str = "t", *, expect: str | None = None, **kw: Any
) -> LoadRequest:
    """A full-refresh request for ``db.<target>`` of pipeline "test", with its state row."""
    run = f"sync_{uuid.uuid4().hex}"
    row = StateRow(
        pipeline="test",
        table=f"db.{target}",
        target=target,
        strategy="full_sync",
        stage_id=run,
        loaded_by=run,
        watermark=None,
        window_start=None,
        rows=result.rows,
        schema_hash=schema.schema_hash(),
        extracted_at=None,
    )
    return LoadRequest(
        table=f"db.{target}",
        schema=schema,
        target_table=target,
        stage=result,
        execution_id=run,
        mode="replace",
        key=(),
        order_by=(),
        state=row,
        expect_stage=expect,
        **kw,
    )


async def load(
    wh: Warehouse,
    schema: TableSchema,
    result: StageResult,
    target: str = "t",
    *,
    fresh: bool = False,
    **kw: Any,
) -> LoadResult:
    """Replace ``target``'s rows, planned from its latest state (``fresh``: assume there is none)."""
    prior = None if fresh else await wh.read_state("test", f"db.{target}")
    expect = prior.stage_id if prior else None
    return await wh.load(replace_request(schema, result, target, expect=expect, **kw))


# ---- the every-type fixture ----------------------------------------------------------------------


def col(name: str, logical: Any, **kw: Any) -> Column:
    return Column(name=name, logical=logical, nullable=name != "id", source_type="test", **kw)


ALL_TYPES = TableSchema(
    columns=(
        col("id", "int64"),
        col("b", "bool"),
        col("i16", "int16"),
        col("i32", "int32"),
        col("dec", "decimal", precision=10, scale=2),
        col("u64", "decimal", precision=20, scale=0),
        col("dec38", "decimal", precision=38, scale=10),
        col("f32", "float32"),
        col("f64", "float64"),
        col("s", "string", byte_length=40),
        col("j", "json", byte_length=None),
        col("bin", "binary", byte_length=255),
        col("d", "date"),
        col("ts", "timestamp"),
        col("tstz", "timestamptz"),
        col("tm", "time"),
    ),
    primary_key=("id",),
)
UTC = dt.UTC
ROWS: list[dict[str, Any]] = [
    {
        "id": 1,
        "b": True,
        "i16": -32768,
        "i32": 2147483647,
        "dec": Decimal("99999999.99"),
        "u64": Decimal("18446744073709551615"),
        "dec38": Decimal("1234567890123456789012345678.0123456789"),
        "f32": 1.5,
        "f64": -2.25e300,
        "s": 'it\'s a \\ "quote" 😀 é\nline',
        "j": '{"a": [1, 2, {"b": null}]}',
        "bin": b"\x00\xff\x01'\\",
        "d": dt.date(9999, 12, 31),
        "ts": dt.datetime(9999, 12, 31, 23, 59, 59, 999999),
        "tstz": dt.datetime(2024, 2, 29, 12, 0, 0, 1, tzinfo=UTC),
        "tm": 838 * 3600 * 1_000_000 + 59_000_001,  # TIME '838:00:59.000001'
    },
    {
        "id": 2,
        "b": False,
        "i16": 32767,
        "i32": -2147483648,
        "dec": Decimal("-0.01"),
        "u64": Decimal("0"),
        "dec38": Decimal("-0.0000000001"),
        "f32": -0.0,
        "f64": 0.1,
        "s": "",
        "j": '"just a string"',
        "bin": b"",
        "d": dt.date(1, 1, 1),
        "ts": dt.datetime(1000, 1, 1),
        "tstz": dt.datetime(1970, 1, 1, tzinfo=UTC),
        "tm": -838 * 3600 * 1_000_000,
    },
    {"id": 3, **{c.name: None for c in ALL_TYPES.columns if c.name != "id"}},
    {
        "id": 9223372036854775807,
        "b": None,
        "i16": 0,
        "i32": 0,
        "dec": Decimal("0.00"),
        "u64": Decimal("1"),
        "dec38": Decimal("0E-10"),
        "f32": None,
        "f64": None,
        "s": "x" * 40,
        "j": "[]",
        "bin": bytes(range(255)),
        "d": dt.date(1970, 1, 1),
        "ts": dt.datetime(2000, 1, 1, 0, 0, 0, 1),
        "tstz": None,
        "tm": 0,
    },
]


def arrow_table(schema: TableSchema, rows: list[dict[str, Any]]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=schema.arrow_schema())


def normalize(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) and value[:1] in '[{"' else value


async def target_rows(schema_name: str, table: str, schema: TableSchema) -> list[dict[str, Any]]:
    cols = ", ".join(f'"{c.name}"' for c in schema.columns)
    rows = await pg(f'SELECT {cols} FROM "{schema_name}"."{table}" ORDER BY 1')
    return [dict(r) for r in rows]


# ---- tests ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
async def test_every_logical_type_arrives_exactly(kind: str, pg_schema: str, s3_conn: S3Conn) -> None:
    table = arrow_table(ALL_TYPES, ROWS)
    result = stage(s3_conn, [table.slice(0, 2), table.slice(2)])
    async with warehouse(target_conn(kind, pg_schema), s3_conn) as wh:
        loaded = await load(wh, ALL_TYPES, result)
    assert loaded == LoadResult(rows_loaded=4, target=f"{pg_schema}.t", rows_deleted=emptied(kind, 0))
    got = await target_rows(pg_schema, "t", ALL_TYPES)
    assert len(got) == len(ROWS)
    for want_row, got_row in zip(ROWS, got, strict=True):
        for name, want in want_row.items():
            j = name == "j"
            assert (normalize(got_row[name]) if j else got_row[name]) == (normalize(want) if j else want), (
                name
            )
    types = dict(await pg(
        "SELECT column_name::text, data_type::text FROM information_schema.columns "
        "WHERE table_schema = $1 AND table_name = 't'", pg_schema,
    ))  # fmt: skip
    assert types["j"] == "jsonb" and types["tm"] == "bigint" and types["tstz"] == "timestamp with time zone"
    assert types["bin"] == "bytea" and types["dec"] == "numeric"


@pytest.mark.parametrize("kind", KINDS)
async def test_second_load_replaces_and_empty_load_empties(
    kind: str, pg_schema: str, s3_conn: S3Conn
) -> None:
    schema = TableSchema((col("id", "int64"), col("name", "string", byte_length=20)), ("id",))
    first = stage(s3_conn, [arrow_table(schema, [{"id": i, "name": f"n{i}"} for i in range(5)])])
    second = stage(s3_conn, [arrow_table(schema, [{"id": 7, "name": "seven"}, {"id": 8, "name": "eight"}])])
    empty = replace(stage(s3_conn, []), files=(), rows=0)
    async with warehouse(target_conn(kind, pg_schema), s3_conn) as wh:
        assert (await load(wh, schema, first)).rows_loaded == 5
        assert await load(wh, schema, second) == LoadResult(2, f"{pg_schema}.t", emptied(kind, 5))
        assert [tuple(r.values()) for r in await target_rows(pg_schema, "t", schema)] == [
            (7, "seven"),
            (8, "eight"),
        ]
        assert await load(wh, schema, empty) == LoadResult(0, f"{pg_schema}.t", emptied(kind, 2))
        assert await target_rows(pg_schema, "t", schema) == []
        assert (await load(wh, schema, empty)).rows_deleted == emptied(kind, 0)


async def _prior(kind: str, pg_schema: str, s3_conn: S3Conn, wh: Warehouse, schema: TableSchema) -> list[Any]:
    await load(
        wh, schema, stage(s3_conn, [arrow_table(schema, [{"id": 1, "name": "ab"}, {"id": 2, "name": "é"}])])
    )
    return await target_rows(pg_schema, "t", schema)


@pytest.mark.parametrize("kind", KINDS)
async def test_row_count_mismatch_rolls_back(kind: str, pg_schema: str, s3_conn: S3Conn) -> None:
    schema = TableSchema((col("id", "int64"), col("name", "string", byte_length=4)), ("id",))
    async with warehouse(target_conn(kind, pg_schema), s3_conn) as wh:
        before = await _prior(kind, pg_schema, s3_conn, wh, schema)
        lying = stage(s3_conn, [arrow_table(schema, [{"id": 5, "name": "x"}])], rows=2)
        with pytest.raises(WarehouseError, match=r"loaded 1 rows into .* promised 2") as err:
            await load(wh, schema, lying)
        assert err.value.table == f"{pg_schema}.t" and not err.value.retryable
        zero_but_rows = replace(lying, files=(), rows=3)
        with pytest.raises(WarehouseError, match="promised 3"):
            await load(wh, schema, zero_but_rows)
    assert await target_rows(pg_schema, "t", schema) == before


@pytest.mark.parametrize("kind", KINDS)
async def test_insert_failing_after_the_target_was_emptied_rolls_back(
    kind: str, pg_schema: str, s3_conn: S3Conn
) -> None:
    """PostgreSQL empties the target with TRUNCATE, Redshift with DELETE: either is undone when the
    INSERT after it fails (here: a key staged twice), and the state does not move."""
    schema = TableSchema((col("id", "int64"), col("name", "string", byte_length=4)), ("id",))
    async with warehouse(target_conn(kind, pg_schema), s3_conn) as wh:
        before = await _prior(kind, pg_schema, s3_conn, wh, schema)
        state = await wh.read_state("test", "db.t")
        twice = stage(s3_conn, [arrow_table(schema, [{"id": 9, "name": "a"}, {"id": 9, "name": "b"}])])
        with pytest.raises(WarehouseError):
            await load(wh, schema, twice)
        assert await wh.read_state("test", "db.t") == state
        assert await load(wh, schema, stage(s3_conn, [arrow_table(schema, [{"id": 3, "name": "c"}])])) == (
            LoadResult(1, f"{pg_schema}.t", emptied(kind, 2))
        )
    assert len(before) == 2 and [r["id"] for r in await target_rows(pg_schema, "t", schema)] == [3]


async def test_varchar_too_long_in_bytes_fails_copy_and_rolls_back(pg_schema: str, s3_conn: S3Conn) -> None:
    schema = TableSchema((col("id", "int64"), col("name", "string", byte_length=4)), ("id",))
    async with warehouse(target_conn("redshift", pg_schema), s3_conn) as wh:
        before = await _prior("redshift", pg_schema, s3_conn, wh, schema)
        # 3 characters fit VARCHAR(4) in PostgreSQL, but they are 6 bytes: Redshift's COPY fails.
        too_long = stage(s3_conn, [arrow_table(schema, [{"id": 5, "name": "ééé"}])])
        with pytest.raises(WarehouseError, match="longer than the length defined") as err:
            await load(wh, schema, too_long)
    assert err.value.sqlstate == "XX000" and not err.value.retryable
    assert await target_rows(pg_schema, "t", schema) == before


@pytest.mark.parametrize("kind", KINDS)
async def test_odd_identifiers(kind: str, s3_conn: S3Conn) -> None:
    schema_name = f'S3s {uuid.uuid4().hex[:6]} "odd"'
    names = ["select", "Mixed Case", 'quo"te', "order", "ünï"]
    schema = TableSchema(tuple(col(n, "int32") for n in names), primary_key=("select",))
    result = stage(s3_conn, [arrow_table(schema, [dict.fromkeys(names, 1), dict.fromkeys(names, 2)])])
    target = 'My "Odd" Table'
    try:
        async with warehouse(target_conn(kind, schema_name), s3_conn) as wh:
            assert (await load(wh, schema, result, target=target)).rows_loaded == 2
            assert (await load(wh, schema, result, target=target)).rows_deleted == emptied(kind, 2)
        fold = str.lower if kind == "redshift" else str  # Redshift folds ASCII letters, even quoted
        quoted = ", ".join('"' + fold(n).replace('"', '""') + '"' for n in names)
        rows = await pg(f'SELECT {quoted} FROM "{fold(schema_name).replace(chr(34), 2 * chr(34))}".'
                        f'"{fold(target).replace(chr(34), 2 * chr(34))}" ORDER BY 1')  # fmt: skip
        assert [tuple(r) for r in rows] == [(1,) * 5, (2,) * 5]
    finally:
        for name in {schema_name, schema_name.lower()}:
            await pg(f'DROP SCHEMA IF EXISTS "{name.replace(chr(34), 2 * chr(34))}" CASCADE')


@pytest.mark.parametrize("kind", KINDS)
async def test_identifier_problems_are_named(kind: str, pg_schema: str, s3_conn: S3Conn) -> None:
    async with warehouse(target_conn(kind, pg_schema), s3_conn) as wh:
        with pytest.raises(WarehouseError, match="system column"):
            await load(wh, TableSchema((col("xmin", "int32"),)), stage(s3_conn, []))
        with pytest.raises(WarehouseError, match="control character"):
            await load(wh, TableSchema((col("a\nb", "int32"),)), stage(s3_conn, []))
        if kind == "redshift":
            with pytest.raises(WarehouseError, match=r"'id' collides with 'Id' once redshift folds"):
                await load(wh, TableSchema((col("Id", "int32"), col("id", "int32"))), stage(s3_conn, []))


@pytest.mark.parametrize("kind", KINDS)
async def test_unreachable_target_names_it_without_the_password(kind: str, s3_conn: S3Conn) -> None:
    password = f"pw-{uuid.uuid4().hex}"
    cfg = target_conn(kind, "x", port=1, password=Secret(password), connect_timeout=2.0)
    async with warehouse(cfg, s3_conn) as wh:
        with pytest.raises(WarehouseError) as err:
            await wh.ping()
        assert f"'test_{kind}' ({PG_HOST}:1/{PG_DATABASE})" in str(err.value) and err.value.retryable
        with pytest.raises(WarehouseError) as load_err:
            await load(wh, TableSchema((col("id", "int64"),)), stage(s3_conn, []))
    for e in (err.value, load_err.value):
        assert password not in str(e) and password not in repr(e.args)
    assert load_err.value.retryable


@pytest.mark.parametrize("kind", KINDS)
async def test_ping_reachable(kind: str, pg_schema: str, s3_conn: S3Conn) -> None:
    async with warehouse(target_conn(kind, pg_schema), s3_conn) as wh:
        await wh.ping()


async def test_redshift_without_iam_role(pg_schema: str, s3_conn: S3Conn) -> None:
    async with warehouse(target_conn("redshift", pg_schema, iam_role=None), s3_conn) as wh:
        with pytest.raises(WarehouseError, match=r"'test_redshift'.*without iam_role") as err:
            await load(wh, TableSchema((col("id", "int64"),)), stage(s3_conn, []))
    assert err.value.key == "iam_role"


async def test_redshift_sql_is_what_redshift_accepts(pg_schema: str, s3_conn: S3Conn) -> None:
    sessions: list[RedshiftEmulator] = []
    schema = TableSchema((col("id", "int64"), col("j", "json")), ("id",))
    result = stage(s3_conn, [arrow_table(schema, [{"id": 1, "j": '{"k": 1}'}])])
    async with warehouse(
        target_conn("redshift", pg_schema, region="eu-west-1"), s3_conn, sessions=sessions
    ) as wh:
        await load(wh, schema, result)
    sql = [s for session in sessions for s in session.statements]
    copy = next(s for s in sql if s.startswith("COPY"))
    assert copy.endswith("FORMAT AS PARQUET MANIFEST STATUPDATE OFF") and "REGION" not in copy
    assert "COMPUPDATE" not in copy and f"IAM_ROLE '{ROLE}'" in copy
    assert not any("TRUNCATE" in s.upper() for s in sql)
    assert any('JSON_PARSE("j")' in s for s in sql) and any("SUPER" in s for s in sql)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("limit", [1, 2])
async def test_concurrent_loads_bounded_by_limiter(
    kind: str, limit: int, pg_schema: str, s3_conn: S3Conn
) -> None:
    active, peak = 0, 0
    inner_batches = s3_batches(s3_conn)
    inner_connect = emulator_connect(str(s3_conn.endpoint_url))

    @asynccontextmanager
    async def track() -> AsyncIterator[None]:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        try:
            await anyio.sleep(0.2)
            yield
        finally:
            active -= 1

    async def batches(result: StageResult) -> AsyncIterator[pa.RecordBatch]:
        async with track():
            async for b in inner_batches(result):
                yield b

    @asynccontextmanager
    async def connect(cfg: TargetConn) -> AsyncIterator[RedshiftEmulator]:
        async with track(), inner_connect(cfg) as ex:
            yield ex

    schema = TableSchema((col("id", "int64"),))
    cfg = target_conn(kind, pg_schema, max_connections=4)
    limiter = anyio.CapacityLimiter(limit)
    async with warehouse(cfg, s3_conn, batches=batches, redshift_connect=connect, load_limiter=limiter) as wh:
        await load(
            wh, schema, stage(s3_conn, [arrow_table(schema, [{"id": 0}])]), target="t0"
        )  # creates schema
        peak = 0
        async with anyio.create_task_group() as tg:
            for i in range(1, 5):
                result = stage(s3_conn, [arrow_table(schema, [{"id": i}])])
                tg.start_soon(partial(load, wh, schema, result, f"t{i}", fresh=True))
    assert peak == limit


@pytest.mark.parametrize("kind", KINDS)
async def test_timestamps_do_not_depend_on_the_session_time_zone(
    kind: str, pg_schema: str, s3_conn: S3Conn
) -> None:
    role = f"s3s_tz_{uuid.uuid4().hex[:8]}"
    await pg(f"CREATE ROLE {role} LOGIN SUPERUSER")
    await pg(f"ALTER ROLE {role} SET timezone = 'America/St_Johns'")  # UTC-03:30 / -02:30
    schema = TableSchema((col("id", "int64"), col("ts", "timestamp"), col("tstz", "timestamptz")))
    when = dt.datetime(2024, 7, 1, 12, 0, 0, 5)
    rows = [{"id": 1, "ts": when, "tstz": when.replace(tzinfo=UTC)}]
    try:
        async with warehouse(target_conn(kind, pg_schema, username=role), s3_conn) as wh:
            await load(wh, schema, stage(s3_conn, [arrow_table(schema, rows)]))
        assert await target_rows(pg_schema, "t", schema) == rows
    finally:
        await pg(f"DROP OWNED BY {role} CASCADE")
        await pg(f"DROP ROLE {role}")


@pytest.mark.parametrize("kind", KINDS)
async def test_decimal_wider_than_38(kind: str, pg_schema: str, s3_conn: S3Conn) -> None:
    schema = TableSchema((col("id", "int64"), col("big", "decimal", precision=65, scale=5)))
    big = Decimal("-" + "9" * 60 + ".12345")
    rows: list[dict[str, Any]] = [{"id": 1, "big": big}, {"id": 2, "big": None}]
    async with warehouse(target_conn(kind, pg_schema), s3_conn) as wh:
        if kind == "redshift":
            with pytest.raises(WarehouseError, match=r"DECIMAL\(65,5\).*up to 38") as err:
                await load(wh, schema, stage(s3_conn, [arrow_table(schema, rows)]))
            assert err.value.table == f"{pg_schema}.t"
            return
        await load(wh, schema, stage(s3_conn, [arrow_table(schema, rows)]))
    assert await target_rows(pg_schema, "t", schema) == rows


# ---- PostgreSQL: a replace COPYs straight into the emptied target -------------------------------------


JSON_EDGES = [
    '{"a": 1, "a": 2}',
    '{"é": "\\u00e9\\ud83d\\ude00", "n": 1e400, "x": [1.50, -0, 1E-7]}',
    "null",
    "  true ",
]


async def heap_fetches(schema_name: str, table: str) -> int:
    """Heap pages an index-only scan of the table's key had to visit: 0 when every page is all-visible,
    as COPY FREEZE leaves them (rows written by INSERT are not, until a VACUUM)."""
    conn = await asyncpg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, database=PG_DATABASE)
    try:
        await conn.execute("SET enable_seqscan = off; SET enable_bitmapscan = off")
        plan = await conn.fetch(
            f'EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF) SELECT id FROM "{schema_name}"."{table}"'
        )
    finally:
        await conn.close()
    lines = [str(r[0]) for r in plan]
    return sum(int(line.split("Heap Fetches:")[1]) for line in lines if "Heap Fetches:" in line)


async def pg_rows(schema_name: str, table: str) -> list[tuple[Any, ...]]:
    """Every row as PostgreSQL stores it (jsonb as its canonical text)."""
    return [tuple(r) for r in await pg(f'SELECT *, j::text FROM "{schema_name}"."{table}" ORDER BY id')]


async def test_replace_copies_into_the_target_exactly_what_staging_would(
    pg_schema: str, s3_conn: S3Conn
) -> None:
    """The direct COPY (binary jsonb, timestamptz, numeric(p,s) straight into the target) stores the same
    values as the staged path, which a partitioned target takes (COPY FREEZE refuses one)."""
    edges = [{"id": 100 + i, "j": j} for i, j in enumerate(JSON_EDGES)]
    table = arrow_table(ALL_TYPES, [*ROWS, *edges])
    types = ", ".join(f'"{c.name}" {postgres_type(c)}' for c in ALL_TYPES.columns)
    await pg(f'CREATE SCHEMA "{pg_schema}"')
    await pg(f'CREATE TABLE "{pg_schema}".staged ({types}, PRIMARY KEY (id)) PARTITION BY RANGE (id)')
    await pg(f'CREATE TABLE "{pg_schema}".staged_all PARTITION OF "{pg_schema}".staged DEFAULT')
    async with warehouse(target_conn("postgres", pg_schema), s3_conn) as wh:
        for target in ("direct", "staged"):
            result = stage(s3_conn, [table.slice(0, 3), table.slice(3)])
            loaded = await load(wh, ALL_TYPES, result, target=target)
            assert (loaded.rows_loaded, loaded.rows_deleted) == (len(table), None)
    assert await pg_rows(pg_schema, "direct") == await pg_rows(pg_schema, "staged")
    assert await heap_fetches(pg_schema, "direct") == 0 < await heap_fetches(pg_schema, "staged")
    jsonb = {
        r["id"]: r["j"]
        for r in await pg(f'SELECT id, j::text AS j FROM "{pg_schema}".direct WHERE id >= 100')
    }
    assert jsonb[100] == '{"a": 2}' and jsonb[102] == "null" and jsonb[103] == "true"


async def test_replace_stages_a_column_the_target_keeps_wider(pg_schema: str, s3_conn: S3Conn) -> None:
    """A target column wider than the source's is kept: its binary form differs, so the rows go through
    a staging table and a cast (and a json column with it), and still arrive exactly."""
    schema = TableSchema((col("id", "int64"), col("n", "int32"), col("j", "json")), ("id",))
    await pg(f'CREATE SCHEMA "{pg_schema}"')
    await pg(f'CREATE TABLE "{pg_schema}".t (id bigint PRIMARY KEY, n bigint, j jsonb)')
    rows = [{"id": 1, "n": -(2**31), "j": '{"k": [1]}'}, {"id": 2, "n": None, "j": None}]
    async with warehouse(target_conn("postgres", pg_schema), s3_conn) as wh:
        loaded = await load(wh, schema, stage(s3_conn, [arrow_table(schema, rows)]))
    assert loaded.rows_loaded == 2 and loaded.schema_changes == (
        "kept n as BIGINT (holds the source's INTEGER)",
    )
    assert [(r["id"], r["n"], normalize(r["j"])) for r in await target_rows(pg_schema, "t", schema)] == [
        (1, -(2**31), {"k": [1]}),
        (2, None, None),
    ]
    assert await heap_fetches(pg_schema, "t") == 2


@pytest.mark.parametrize("mode", ["replace", "append"])
async def test_a_failing_read_aborts_the_copy(mode: Mode, pg_schema: str, s3_conn: S3Conn) -> None:
    """The batches are read and encoded in a task of their own: its failure reaches the COPY, which
    aborts (it must not end the COPY as if the data were complete); target and state are untouched. The
    read's error is raised as it is (the stage's, with its own ``retryable``), not as the warehouse's."""
    schema = TableSchema((col("id", "int64"),), ("id",))
    inner = s3_batches(s3_conn)

    async def failing(result: StageResult) -> AsyncIterator[pa.RecordBatch]:
        async for batch in inner(result):
            yield batch
            raise StageError("the staged file went away", key="part-00000.parquet")

    cfg = target_conn("postgres", pg_schema)
    async with warehouse(cfg, s3_conn) as wh:
        await load(wh, schema, stage(s3_conn, [arrow_table(schema, [{"id": 1}])]))
        state = await wh.read_state("test", "db.t")
    many = stage(s3_conn, [arrow_table(schema, [{"id": i} for i in range(10, 20)])])
    async with warehouse(cfg, s3_conn, batches=failing) as wh:
        req = replace_request(schema, many, expect=state.stage_id if state else None)
        with pytest.raises(StageError, match="the staged file went away") as raised:
            await wh.load(replace(req, mode=mode))
        assert not isinstance(raised.value, WarehouseError)
        assert await wh.read_state("test", "db.t") == state
    assert [r["id"] for r in await target_rows(pg_schema, "t", schema)] == [1]


@pytest.mark.parametrize(
    ("types", "kind", "direct"),
    [
        ({"id": "bigint", "d": "numeric(12,2)", "ts": "timestamp with time zone", "j": "jsonb"}, "r", True),
        (
            {
                "id": "bigint",
                "d": "numeric(12,2)",
                "ts": "timestamp with time zone",
                "j": "jsonb",
                "x": "text",
            },
            "r",
            True,
        ),
        ({"id": "bigint", "d": "numeric(12,2)", "ts": "timestamp with time zone", "j": "jsonb"}, "p", False),
        ({"id": "bigint", "d": "numeric(14,2)", "ts": "timestamp with time zone", "j": "jsonb"}, "r", False),
        (
            {"id": "bigint", "d": "numeric(12,2)", "ts": "timestamp without time zone", "j": "jsonb"},
            "r",
            False,
        ),
        (
            {"id": "numeric(20,0)", "d": "numeric(12,2)", "ts": "timestamp with time zone", "j": "jsonb"},
            "r",
            False,
        ),
        ({"id": "bigint", "d": "numeric(12,2)", "ts": "timestamp with time zone", "j": "text"}, "r", False),
        ({"id": "bigint", "d": "numeric(12,2)", "ts": "timestamp with time zone"}, "r", False),
    ],
)
def test_copies_directly_only_into_exactly_the_binary_types(
    types: dict[str, str], kind: str, direct: bool
) -> None:
    schema = TableSchema(
        (
            col("id", "int64"),
            col("d", "decimal", precision=12, scale=2),
            col("ts", "timestamptz"),
            col("j", "json"),
        )
    )
    assert copies_directly(schema, list(types.items()), kind) is direct
    wide = TableSchema((col("id", "int64"), col("d", "decimal", precision=50, scale=2)))
    assert not copies_directly(wide, [("id", "bigint"), ("d", "numeric(50,2)")], "r")  # staged as text
