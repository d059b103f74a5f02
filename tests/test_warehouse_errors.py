"""Error classification from real PostgreSQL errors, DDL rules, and a backend killed mid-load."""

from __future__ import annotations

import dataclasses
import logging
import uuid
from collections.abc import AsyncIterator

import anyio
import asyncpg
import pyarrow as pa
import pytest

from src.common.errors import WarehouseError
from src.common.schema import Column, TableSchema
from src.config.models import S3Conn, TargetConn
from src.stage.models import StageResult
from src.warehouse.ddl import (
    POSTGRES,
    REDSHIFT,
    check_iam_role,
    check_identifiers,
    redshift_literal,
    redshift_type,
    staging_name,
)
from src.warehouse.errors import classify
from src.warehouse.state import Mode
from tests.conftest import PG_DATABASE, PG_HOST, PG_PORT, PG_USER
from tests.test_warehouse_load import (
    arrow_table,
    col,
    load,
    pg,
    replace_request,
    s3_batches,
    stage,
    target_conn,
    target_rows,
    warehouse,
)

CFG = TargetConn(name="wh", type="postgres", host="db.example", port=5432, username="u", database="dw")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def _raise(sql: str) -> BaseException:
    conn = await asyncpg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, database=PG_DATABASE)
    try:
        await conn.execute(sql)
    except asyncpg.PostgresError as exc:
        error: BaseException = exc
        return error
    finally:
        await conn.close()
    raise AssertionError(f"{sql!r} did not fail")


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("sql", "state", "retryable"),
    [
        ("SELEC 1", "42601", False),
        ("SELECT * FROM no_such_table_s3shift", "42P01", False),
        ("DO $$BEGIN RAISE EXCEPTION 'x' USING ERRCODE = '40001'; END$$", "40001", True),
        ("DO $$BEGIN RAISE EXCEPTION 'x' USING ERRCODE = '40P01'; END$$", "40P01", True),
        ("DO $$BEGIN RAISE EXCEPTION 'x' USING ERRCODE = '55P03'; END$$", "55P03", True),
        ("DO $$BEGIN RAISE EXCEPTION 'x' USING ERRCODE = '42501'; END$$", "42501", False),
        ("SET statement_timeout = 50; SELECT pg_sleep(1)", "57014", True),
    ],
)
async def test_classify_real_postgres_errors(sql: str, state: str, retryable: bool) -> None:
    err = classify(await _raise(sql), cfg=CFG, action="loading", table="s.t")
    assert (err.sqlstate, err.retryable, err.table) == (state, retryable, "s.t")
    assert "loading s.t on target 'wh' (db.example:5432/dw) failed:" in str(err) and state in str(err)


@pytest.mark.anyio
async def test_a_privilege_the_user_lacks_says_what_to_grant() -> None:
    sql = "DO $$BEGIN RAISE EXCEPTION 'permission denied for table b' USING ERRCODE = '42501'; END$$"
    err = classify(await _raise(sql), cfg=CFG, action="replace load of", table="s.b")
    assert str(err).endswith(
        "permission denied for table b — grant the target's username the privilege named (or make it the "
        "owner of the schema and table), then rerun"
    ), err


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("ddl", "value", "expect"),
    [
        ("a int NOT NULL", "NULL", 'null value in column "a" of relation'),
        ("a int CHECK (a > 0)", "-1", 'violates check constraint "rows_a_check"'),
    ],
)
async def test_a_violation_does_not_print_the_row(ddl: str, value: str, expect: str) -> None:
    """PostgreSQL's DETAIL 'Failing row contains (...)' carries every value of the row: it went into the
    error message, so into the report, CI logs and S3 (and made the one line as long as the row)."""
    sql = f"CREATE TEMP TABLE rows ({ddl}, b text); INSERT INTO rows VALUES ({value}, 'card 4111')"
    err = classify(await _raise(sql), cfg=CFG, action="loading", table="s.t")
    assert expect in str(err) and not err.retryable, err
    assert "4111" not in str(err) and "Failing row" not in str(err), err


def test_classify_network_and_client_errors() -> None:
    assert classify(ConnectionRefusedError(111, "refused"), cfg=CFG, action="x").retryable
    assert classify(TimeoutError(), cfg=CFG, action="x").retryable
    assert not classify(asyncpg.InterfaceError("misuse"), cfg=CFG, action="x").retryable
    ours = WarehouseError("already ours", retryable=True)
    assert classify(ours, cfg=CFG, action="x") is ours
    assert str(classify(ours, cfg=CFG, action="x", table="s.t")) == "s.t: already ours"


def test_redshift_types() -> None:
    def c(logical: str, **kw: int | None) -> Column:
        return Column("c", logical, True, "t", **kw)  # type: ignore[arg-type]

    assert redshift_type(c("string", byte_length=400)) == "VARCHAR(400)"
    assert redshift_type(c("string", byte_length=None)) == "VARCHAR(65535)"
    assert redshift_type(c("string", byte_length=4 * 65535)) == "VARCHAR(65535)"
    assert redshift_type(c("json")) == "SUPER" and redshift_type(c("json"), staging=True) == "VARCHAR(65535)"
    assert redshift_type(c("binary", byte_length=None)) == "VARBYTE(16777216)"
    assert redshift_type(c("decimal", precision=20, scale=0)) == "DECIMAL(20,0)"
    assert redshift_type(c("time")) == "BIGINT" and redshift_type(c("timestamptz")) == "TIMESTAMPTZ"
    with pytest.raises(WarehouseError, match="up to 38"):
        redshift_type(c("decimal", precision=39, scale=0))


def test_literals_and_roles() -> None:
    assert redshift_literal("s3://b/it's\\x", what="url") == "'s3://b/it''s\\\\x'"
    with pytest.raises(WarehouseError, match="control character"):
        redshift_literal("s3://b/a\nb", what="url")
    check_iam_role("arn:aws:iam::123456789012:role/a,arn:aws:iam::123456789012:role/b")
    for bad in ("arn:aws:iam::123:role/x", "arn:aws:iam::123456789012:role/x' --", ""):
        with pytest.raises(WarehouseError, match="iam_role"):
            check_iam_role(bad)


def test_identifier_limits_and_staging_names() -> None:
    long_name = TableSchema((Column("x" * 64, "int32", True, "t"),))
    with pytest.raises(WarehouseError, match="longer than 63 bytes"):
        check_identifiers(POSTGRES, "s", "t", long_name)
    check_identifiers(REDSHIFT, "s", "t", long_name)  # Redshift allows 127 bytes
    a, b = staging_name("run1", "s", "t"), staging_name("run2", "s", "t")
    assert a != b and a == staging_name("run1", "s", "t") and a.startswith("s3shift_stage_")


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["replace", "append"])  # COPY into the target; into a staging table
async def test_backend_killed_mid_copy_is_retryable_and_target_untouched(
    mode: Mode, pg_schema: str, s3_conn: S3Conn
) -> None:
    schema = TableSchema((col("id", "int64"),))
    inner = s3_batches(s3_conn)
    copying = f'COPY "{pg_schema}"."t"%'  # append: this run's staging table, set below (pytest -n)

    async def killing(result: StageResult) -> AsyncIterator[pa.RecordBatch]:
        async for batch in inner(result):
            yield batch
            await pg(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE $1 "
                "AND pid <> pg_backend_pid()",
                copying,
            )
            await anyio.sleep(0.5)

    cfg = target_conn("postgres", pg_schema)
    async with warehouse(cfg, s3_conn) as wh:
        await load(wh, schema, stage(s3_conn, [arrow_table(schema, [{"id": 1}])]))
    many = stage(s3_conn, [arrow_table(schema, [{"id": i} for i in range(10)])])
    async with warehouse(cfg, s3_conn, batches=killing) as wh:
        state = await wh.read_state("test", "db.t")
        req = dataclasses.replace(
            replace_request(schema, many, expect=state.stage_id if state else None), mode=mode
        )
        if mode == "append":
            run = f"{req.execution_id}\x1f{req.stage.manifest_url}"  # as build_spec names it
            copying = f"COPY %{staging_name(run, pg_schema, 't')}%"
        with pytest.raises(WarehouseError) as err:
            await wh.load(req)
        assert err.value.retryable and err.value.sqlstate is not None, err.value
        assert await wh.read_state("test", "db.t") == state
        assert [r["id"] for r in await target_rows(pg_schema, "t", schema)] == [1]
        assert (await load(wh, schema, stage(s3_conn, []))).rows_loaded == 0  # the pool still works
    assert await target_rows(pg_schema, "t", schema) == []


@pytest.mark.anyio
async def test_a_copy_whose_backend_is_killed_takes_no_more_data(
    pg_schema: str, s3_conn: S3Conn, caplog: pytest.LogCaptureFixture
) -> None:
    """asyncpg's COPY took its source to the end after the connection was lost: a streamed full load read
    the whole table into a dead socket, and asyncio logged 'socket.send() raised exception.' on stderr for
    every chunk (33 lines for 1M rows). It stops within the chunks already encoded."""
    schema = TableSchema((col("id", "int64"), col("pad", "string")))
    inner = s3_batches(s3_conn)
    after_kill: list[int] = []

    async def killing(result: StageResult) -> AsyncIterator[pa.RecordBatch]:
        async for batch in inner(result):
            yield batch
        await pg(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE $1 "
            "AND pid <> pg_backend_pid()",
            f'COPY "{pg_schema}"."t"%',
        )
        await anyio.sleep(0.5)  # the termination reaches the connection
        for i in range(200):
            after_kill.append(i)
            yield pa.record_batch(
                [pa.array([i] * 2000, pa.int64()), pa.array(["x" * 100] * 2000)], ["id", "pad"]
            )

    loop_log = logging.getLogger("asyncio")  # a CLI test of this session may have stopped its propagation
    loop_log.addHandler(caplog.handler)
    cfg = target_conn("postgres", pg_schema)
    async with warehouse(cfg, s3_conn) as wh:
        await load(wh, schema, stage(s3_conn, [arrow_table(schema, [{"id": 1, "pad": "a"}])]))
    one = stage(s3_conn, [arrow_table(schema, [{"id": 2, "pad": "b"}])])
    async with warehouse(cfg, s3_conn, batches=killing) as wh:
        state = await wh.read_state("test", "db.t")
        with pytest.raises(WarehouseError) as err:
            await wh.load(replace_request(schema, one, expect=state.stage_id if state else None))
        assert err.value.retryable and "terminating connection" in str(err.value), err.value
        assert len(after_kill) < 10, len(after_kill)  # the chunks encoded ahead, not the 200
        assert await wh.read_state("test", "db.t") == state
        assert [r["id"] for r in await target_rows(pg_schema, "t", schema)] == [1]
    loop_log.removeHandler(caplog.handler)
    assert not [r for r in caplog.records if "socket.send() raised" in r.getMessage()]


@pytest.mark.anyio
async def test_a_roles_statement_timeout_does_not_cancel_a_long_load(pg_schema: str, s3_conn: S3Conn) -> None:
    """A role's ``statement_timeout`` (set for its OLTP queries) cancelled a COPY that outlived it, which a
    streamed load's does as long as the table is read: the table failed on every retry (57014)."""
    role = f"s3s_st_{uuid.uuid4().hex[:8]}"
    await pg(f"CREATE ROLE {role} LOGIN SUPERUSER")
    await pg(f"ALTER ROLE {role} SET statement_timeout = '500ms'")
    await pg(f"ALTER ROLE {role} SET idle_in_transaction_session_timeout = '500ms'")
    schema = TableSchema((col("id", "int64"),))
    inner = s3_batches(s3_conn)

    async def slow(result: StageResult) -> AsyncIterator[pa.RecordBatch]:
        async for batch in inner(result):
            await anyio.sleep(1)  # the COPY runs past the role's limit
            yield batch

    rows = stage(s3_conn, [arrow_table(schema, [{"id": 1}]), arrow_table(schema, [{"id": 2}])])
    try:
        async with warehouse(target_conn("postgres", pg_schema, username=role), s3_conn, batches=slow) as wh:
            assert (await load(wh, schema, rows)).rows_loaded == 2
    finally:
        await pg(f"DROP OWNED BY {role} CASCADE")
        await pg(f"DROP ROLE {role}")


@pytest.mark.anyio
async def test_backend_killed_before_a_streamed_load_finishes_is_retryable(
    pg_schema: str, s3_conn: S3Conn
) -> None:
    """asyncpg detaches a pooled connection that closes, so the streamed load's next statement (its state
    row) raised 'released back to the pool', reported as a client misuse no retry could help."""
    schema = TableSchema((col("id", "int64"),))
    cfg = target_conn("postgres", pg_schema)
    async with warehouse(cfg, s3_conn) as wh:
        await load(wh, schema, stage(s3_conn, [arrow_table(schema, [{"id": 1}])]))
        state = await wh.read_state("test", "db.t")
        many = stage(s3_conn, [arrow_table(schema, [{"id": i} for i in range(10)])])
        streamed = wh.stream_replace(replace_request(schema, many, expect=state.stage_id if state else None))
        assert streamed is not None
        with pytest.raises(WarehouseError) as err:
            async with streamed as open_load:
                await open_load.copy(s3_batches(s3_conn)(many))
                await pg(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE $1 "
                    "AND pid <> pg_backend_pid()",
                    f'COPY "{pg_schema}"."t"%',
                )
                await anyio.sleep(0.5)  # the termination reaches the connection, which the pool detaches
                await open_load.finish(many)
        assert err.value.retryable, err.value
        assert str(err.value).startswith(
            f"lost the connection to target '{cfg.name}' ({cfg.host}:{cfg.port}/"
        )
        assert await wh.read_state("test", "db.t") == state
        assert [r["id"] for r in await target_rows(pg_schema, "t", schema)] == [1]
        assert (await load(wh, schema, stage(s3_conn, []))).rows_loaded == 0  # the pool still works


@pytest.mark.anyio
async def test_a_lock_held_elsewhere_fails_the_load_after_lock_timeout(
    pg_schema: str, s3_conn: S3Conn
) -> None:
    """An idle transaction holding the target (a BI tool, a forgotten psql) made a load wait for as long as
    it lived, silently: now the load gives up after the target's ``lock_timeout``, retryable, naming the
    cause, with the target and its state as they were."""
    schema = TableSchema((col("id", "int64"),))
    cfg = dataclasses.replace(target_conn("postgres", pg_schema), lock_timeout=1)
    async with warehouse(cfg, s3_conn) as wh:
        await load(wh, schema, stage(s3_conn, [arrow_table(schema, [{"id": 1}])]))
        state = await wh.read_state("test", "db.t")
        holder = await asyncpg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, database=PG_DATABASE)
        try:
            async with holder.transaction():
                await holder.execute(f'LOCK TABLE "{pg_schema}"."t" IN ACCESS EXCLUSIVE MODE')
                with anyio.fail_after(30), pytest.raises(WarehouseError) as err:
                    await load(wh, schema, stage(s3_conn, [arrow_table(schema, [{"id": 2}])]))
        finally:
            await holder.close()
        assert (err.value.sqlstate, err.value.retryable) == ("55P03", True), err.value
        assert "another session holds a lock on the table" in str(err.value) and "lock_timeout" in str(
            err.value
        )
        assert await wh.read_state("test", "db.t") == state
    assert [r["id"] for r in await target_rows(pg_schema, "t", schema)] == [1]
