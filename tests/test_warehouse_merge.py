"""``load(req)``: merge / append / replace with the state row in the same transaction, the concurrency
guard and the target lock, on PostgreSQL and on Redshift-through-the-emulator (real services)."""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import replace
from decimal import Decimal
from typing import Any

import anyio
import asyncpg
import pytest

from src.common.errors import WarehouseError
from src.common.schema import TableSchema
from src.config.models import S3Conn
from src.plan.models import Watermark
from src.stage.models import StageResult
from src.warehouse.base import Clear, LoadRequest, LoadResult, Mode, StateRow, Warehouse
from src.warehouse.ddl import POSTGRES, staging_name
from src.warehouse.statements import LoadSpec, clear_step
from tests.conftest import PG_DATABASE, PG_HOST, PG_PORT, PG_USER
from tests.test_warehouse_load import arrow_table, col, pg, stage, target_conn, warehouse

pytestmark = pytest.mark.anyio
KINDS = ["postgres", "redshift"]
SCHEMA = TableSchema(
    (col("id", "int64"), col("ts", "timestamp"), col("v", "string", byte_length=20)), primary_key=("id",)
)
T0 = dt.datetime(2024, 5, 1, 12, 0, 0, 123456)
U64_MAX = 2**64 - 1


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def ts(seconds: int) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def request(
    result: StageResult,
    *,
    mode: Mode = "merge",
    expect: str | None = None,
    schema: TableSchema = SCHEMA,
    key: tuple[str, ...] = ("id",),
    order_by: tuple[str, ...] = ("ts", "id"),
    watermark: Watermark | None = None,
    target: str = "t",
    table: str = "db.t",
    run: str | None = None,
) -> LoadRequest:
    run = run or f"sync_{uuid.uuid4().hex[:12]}"
    row = StateRow(
        pipeline="p",
        table=table,
        target=f"x.{target}",
        strategy="hybrid" if mode == "merge" else ("id_only" if mode == "append" else "full_sync"),
        stage_id=run,
        loaded_by=run,
        watermark=watermark or Watermark(ts=ts(100), id=7),
        window_start=None,
        rows=result.rows,
        schema_hash=schema.schema_hash(),
        extracted_at=T0,
    )
    return LoadRequest(
        table=table,
        schema=schema,
        target_table=target,
        stage=result,
        execution_id=run,
        mode=mode,
        key=key if mode == "merge" else (),
        order_by=order_by,
        state=row,
        expect_stage=expect,
    )


def rows(*items: tuple[int, int, str]) -> list[dict[str, Any]]:
    return [{"id": i, "ts": ts(s), "v": v} for i, s, v in items]


def staged(s3: S3Conn, *files: list[dict[str, Any]], schema: TableSchema = SCHEMA) -> StageResult:
    return stage(s3, [arrow_table(schema, f) for f in files])


async def content(schema_name: str, table: str = "t") -> list[tuple[Any, ...]]:
    return [tuple(r) for r in await pg(f'SELECT * FROM "{schema_name}"."{table}" ORDER BY 1, 2, 3')]


async def state_rows(schema_name: str) -> list[tuple[Any, ...]]:
    return [
        tuple(r)
        for r in await pg(f'SELECT stage_id, row_count, seq FROM "{schema_name}".s3shift_state ORDER BY seq')
    ]


async def load_ok(wh: Warehouse, req: LoadRequest) -> LoadResult:
    return await wh.load(req)


# ---- modes -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
async def test_merge_keeps_the_last_version_per_key(kind: str, pg_schema: str, s3_conn: S3Conn) -> None:
    first = rows((1, 5, "a-old"), (2, 1, "b-1"), (1, 9, "a-new"), (3, 2, "c-tie-a"))
    second = rows((2, 3, "b-3"), (1, 7, "a-mid"), (3, 2, "c-tie-b"), (2, 2, "b-2"))
    async with warehouse(target_conn(kind, pg_schema), s3_conn) as wh:
        result = await wh.load(request(staged(s3_conn, first, second)))
    assert result == LoadResult(rows_loaded=3, target=f"{pg_schema}.t", rows_deleted=0)
    want = [(1, ts(9), "a-new"), (2, ts(3), "b-3"), (3, ts(2), "c-tie-b")]
    assert await content(pg_schema) == want


@pytest.mark.parametrize("kind", KINDS)
async def test_merge_ties_do_not_depend_on_file_order(kind: str, pg_schema: str, s3_conn: S3Conn) -> None:
    a, b = rows((1, 1, "x"), (2, 1, "m")), rows((1, 1, "y"), (2, 1, "k"))
    async with warehouse(target_conn(kind, pg_schema), s3_conn) as wh:
        await wh.load(request(staged(s3_conn, a, b), target="ab", table="db.ab"))
        await wh.load(request(staged(s3_conn, b, a), target="ba", table="db.ba"))
    assert (
        await content(pg_schema, "ab") == await content(pg_schema, "ba") == [(1, ts(1), "y"), (2, ts(1), "m")]
    )


@pytest.mark.parametrize("kind", KINDS)
async def test_merge_updates_inserts_and_leaves_the_rest(kind: str, pg_schema: str, s3_conn: S3Conn) -> None:
    async with warehouse(target_conn(kind, pg_schema), s3_conn) as wh:
        first = request(staged(s3_conn, rows((1, 1, "one"), (2, 1, "two"), (3, 1, "three"))))
        await wh.load(first)
        second = request(
            staged(s3_conn, rows((2, 5, "two!"), (4, 5, "four"), (2, 4, "two?"))), expect=first.execution_id
        )
        assert await wh.load(second) == LoadResult(rows_loaded=2, target=f"{pg_schema}.t", rows_deleted=1)
    assert await content(pg_schema) == [
        (1, ts(1), "one"),
        (2, ts(5), "two!"),
        (3, ts(1), "three"),
        (4, ts(5), "four"),
    ]
    assert [r[:2] for r in await state_rows(pg_schema)] == [(first.execution_id, 3), (second.execution_id, 3)]


@pytest.mark.parametrize("kind", KINDS)
async def test_append_adds_exactly_once(kind: str, pg_schema: str, s3_conn: S3Conn) -> None:
    schema = replace(SCHEMA, primary_key=())
    async with warehouse(target_conn(kind, pg_schema), s3_conn) as wh:
        one = request(
            staged(s3_conn, rows((1, 1, "a"), (1, 1, "a")), schema=schema), mode="append", schema=schema
        )
        assert (await wh.load(one)).rows_loaded == 2
        two = request(
            staged(s3_conn, rows((2, 2, "b")), schema=schema),
            mode="append",
            schema=schema,
            expect=one.execution_id,
        )
        assert await wh.load(two) == LoadResult(rows_loaded=1, target=f"{pg_schema}.t", rows_deleted=0)
        with pytest.raises(WarehouseError, match=r"another run loaded db\.t meanwhile") as err:
            await wh.load(replace(two, execution_id="sync_again"))  # a rerun of the same window, same plan
        assert err.value.retryable
    assert await content(pg_schema) == [(1, ts(1), "a"), (1, ts(1), "a"), (2, ts(2), "b")]


CURSORS = TableSchema(
    (
        col("id", "decimal", precision=20, scale=0),
        col("ts", "timestamptz"),
        col("d", "date"),
        col("v", "string", byte_length=20),
    )
)


def cursor_row(i: int, s: int | None, v: str) -> dict[str, Any]:
    at = None if s is None else ts(s).replace(tzinfo=dt.UTC)
    return {"id": Decimal(i), "ts": at, "d": None if at is None else at.date() + dt.timedelta(days=s), "v": v}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    ("order_by", "after", "left"),
    [
        (("ts", "id"), Watermark(ts=ts(2), id=5), ["a", "b", "null"]),
        (("ts", "id"), Watermark(ts=ts(1)), ["a", "null"]),
        (("ts", "id"), None, ["null"]),
        (
            ("d",),
            Watermark(ts=dt.datetime.combine(T0.date() + dt.timedelta(days=2), dt.time())),
            ["a", "b", "c", "null"],
        ),
        (("id",), Watermark(id=5), ["a", "b"]),
    ],
    ids=["hybrid", "hybrid_no_id", "from_the_start", "date", "unsigned_id"],
)
async def test_an_append_clears_the_rows_its_window_may_hold(
    kind: str,
    pg_schema: str,
    s3_conn: S3Conn,
    order_by: tuple[str, ...],
    after: Watermark | None,
    left: list[str],
) -> None:
    """A table without a key appends each window; a window read again after ``watermark set``/``reset`` (or
    the first after a full snapshot) was appended a second time beside the rows loaded before. Such an
    append first deletes the target's rows after the window's start, in the cursor's own type and order
    (NULL cursors, never read by a window, stay)."""
    loaded = [
        cursor_row(1, 1, "a"),
        cursor_row(5, 2, "b"),
        cursor_row(6, 2, "c"),
        cursor_row(U64_MAX - 1, 3, "d"),
        cursor_row(9, None, "null"),
    ]
    async with warehouse(target_conn(kind, pg_schema), s3_conn) as wh:
        first = request(
            staged(s3_conn, loaded, schema=CURSORS), mode="append", schema=CURSORS, order_by=order_by
        )
        await wh.load(first)
        again = request(
            staged(s3_conn, [cursor_row(7, 4, "new")], schema=CURSORS),
            mode="append",
            schema=CURSORS,
            order_by=order_by,
            expect=first.execution_id,
        )
        result = await wh.load(replace(again, clear=Clear(after)))
    assert result.rows_loaded == 1 and result.rows_deleted == 5 - len(left)
    got = await pg(f'SELECT v FROM "{pg_schema}".t')
    assert sorted(r[0] for r in got) == sorted([*left, "new"])


@pytest.mark.parametrize("kind", KINDS)
async def test_replace_and_empty_replace(kind: str, pg_schema: str, s3_conn: S3Conn) -> None:
    async with warehouse(target_conn(kind, pg_schema), s3_conn) as wh:
        one = request(staged(s3_conn, rows((1, 1, "a"), (2, 1, "b"))), mode="replace")
        await wh.load(one)
        two = request(staged(s3_conn, rows((3, 1, "c"))), mode="replace", expect=one.execution_id)
        counted = kind != "postgres"  # PostgreSQL empties with TRUNCATE, which does not count the rows
        assert await wh.load(two) == LoadResult(1, f"{pg_schema}.t", rows_deleted=2 if counted else None)
        assert await content(pg_schema) == [(3, ts(1), "c")]
        empty = request(
            replace(stage(s3_conn, []), files=(), rows=0), mode="replace", expect=two.execution_id
        )
        assert await wh.load(empty) == LoadResult(0, f"{pg_schema}.t", rows_deleted=1 if counted else None)
        state = await wh.read_state("p", "db.t")
    assert await content(pg_schema) == []
    assert state is not None and state.stage_id == empty.execution_id and state.rows == 0


@pytest.mark.parametrize("kind", KINDS)
async def test_merge_of_an_empty_stage_only_writes_state(kind: str, pg_schema: str, s3_conn: S3Conn) -> None:
    async with warehouse(target_conn(kind, pg_schema), s3_conn) as wh:
        one = request(staged(s3_conn, rows((1, 1, "a"))))
        await wh.load(one)
        empty = request(replace(stage(s3_conn, []), files=(), rows=0), expect=one.execution_id)
        assert await wh.load(empty) == LoadResult(0, f"{pg_schema}.t", 0)
        assert (await wh.read_state("p", "db.t")).stage_id == empty.execution_id  # type: ignore[union-attr]
    assert await content(pg_schema) == [(1, ts(1), "a")]


@pytest.mark.parametrize("kind", KINDS)
async def test_unsigned_bigint_max_as_key_and_watermark(kind: str, pg_schema: str, s3_conn: S3Conn) -> None:
    schema = TableSchema((col("id", "decimal", precision=20, scale=0), col("v", "int32")), ("id",))
    big = Decimal(U64_MAX)
    mark = Watermark(ts=None, id=U64_MAX)
    async with warehouse(target_conn(kind, pg_schema), s3_conn) as wh:
        one = staged(s3_conn, [{"id": big, "v": 1}, {"id": Decimal(1), "v": 1}], schema=schema)
        first = request(one, schema=schema, order_by=("id",), watermark=mark)
        await wh.load(first)
        two = staged(s3_conn, [{"id": big, "v": 2}, {"id": big - 1, "v": 3}], schema=schema)
        await wh.load(
            request(two, schema=schema, order_by=("id",), watermark=mark, expect=first.execution_id)
        )
        state = await wh.read_state("p", "db.t")
    assert [tuple(r) for r in await pg(f'SELECT * FROM "{pg_schema}".t ORDER BY 1')] == [
        (Decimal(1), 1),
        (big - 1, 3),
        (big, 2),
    ]
    assert state is not None and state.watermark == mark


# ---- atomicity and the guard --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
async def test_failures_after_copy_leave_neither_data_nor_state(
    kind: str, pg_schema: str, s3_conn: S3Conn
) -> None:
    async with warehouse(target_conn(kind, pg_schema), s3_conn) as wh:
        first = request(staged(s3_conn, rows((1, 1, "a"))))
        await wh.load(first)
        before = (await content(pg_schema), await state_rows(pg_schema))
        stale = request(staged(s3_conn, rows((1, 2, "b"), (5, 2, "e"))), expect="sync_someone_else")
        with pytest.raises(WarehouseError, match=r"another run loaded db\.t meanwhile") as err:
            await wh.load(stale)
        assert err.value.retryable and err.value.table == f"{pg_schema}.t"
        lying = request(replace(staged(s3_conn, rows((1, 2, "b"))), rows=2), expect=first.execution_id)
        with pytest.raises(WarehouseError, match="promised 2") as err2:
            await wh.load(lying)
        assert not err2.value.retryable
        missing_key = request(staged(s3_conn, rows((1, 2, "b"))), key=("nope",), expect=first.execution_id)
        with pytest.raises(WarehouseError, match="key column 'nope'"):
            await wh.load(missing_key)
        names = [
            staging_name(f"{r.execution_id}\x1f{r.stage.manifest_url}", pg_schema, "t")
            for r in (stale, lying)
        ]
        # while the pool (and its sessions) is still open: no staging table of a failed load is left
        assert await pg("SELECT relname FROM pg_class WHERE relname = ANY($1::text[])", names) == []
    assert (await content(pg_schema), await state_rows(pg_schema)) == before


@pytest.mark.parametrize("kind", KINDS)
async def test_a_failing_statement_in_the_transaction_rolls_back_data_and_state(
    kind: str, pg_schema: str, s3_conn: S3Conn
) -> None:
    """The INSERT into the target fails (NULL into a NOT NULL column added by hand): the DELETE before
    it and the state row after it must both be gone."""
    async with warehouse(target_conn(kind, pg_schema), s3_conn) as wh:
        first = request(staged(s3_conn, rows((1, 1, "a"), (2, 1, "b"))))
        await wh.load(first)
        await pg(f'ALTER TABLE "{pg_schema}".t ALTER COLUMN v SET NOT NULL')
        bad = request(staged(s3_conn, [{"id": 1, "ts": ts(2), "v": None}]), expect=first.execution_id)
        with pytest.raises(WarehouseError, match="NotNullViolation"):
            await wh.load(bad)
        state = await wh.read_state("p", "db.t")
    assert await content(pg_schema) == [(1, ts(1), "a"), (2, ts(1), "b")]
    assert state is not None and state.stage_id == first.execution_id


async def _wait_for_waiters(table: str, n: int) -> None:
    query = "SELECT count(*) FROM pg_locks WHERE relation = to_regclass($1) AND NOT granted"
    with anyio.fail_after(20):
        for _ in iter(int, 1):
            if (await pg(query, table))[0][0] >= n:
                return
            await anyio.sleep(0.05)


@pytest.mark.parametrize("kind", KINDS)
async def test_concurrent_loads_of_one_table_take_turns_and_one_wins(
    kind: str, pg_schema: str, s3_conn: S3Conn
) -> None:
    """Four runs planned from the same state load at once, queued behind a lock held here: exactly one
    commits, the others find its state row under the lock and change nothing. The target has no primary
    key, so a second merge getting through would show as duplicates."""
    await pg(f'CREATE SCHEMA "{pg_schema}"')
    await pg(f'CREATE TABLE "{pg_schema}".t (id bigint, ts timestamp, v text)')
    reqs = [request(staged(s3_conn, rows((1, i, f"v{i}"), (2, i, f"w{i}")))) for i in range(4)]
    outcomes: list[LoadResult | WarehouseError] = []
    qualified = f'"{pg_schema}".t'
    async with warehouse(target_conn(kind, pg_schema, max_connections=8), s3_conn) as wh:
        await wh.write_state(replace(reqs[0].state, stage_id="", strategy="manual"))  # state table exists

        async def one(req: LoadRequest) -> None:
            try:
                outcomes.append(await wh.load(req))
            except WarehouseError as exc:
                outcomes.append(exc)

        holder = await asyncpg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, database=PG_DATABASE)
        try:
            async with anyio.create_task_group() as tg:
                tx = holder.transaction()
                await tx.start()
                await holder.execute(f"LOCK TABLE {qualified} IN ACCESS EXCLUSIVE MODE")
                for req in reqs:
                    tg.start_soon(one, req)
                await _wait_for_waiters(qualified, len(reqs))
                await tx.commit()
        finally:
            await holder.close()
    winners = [o for o in outcomes if isinstance(o, LoadResult)]
    losers = [o for o in outcomes if isinstance(o, WarehouseError)]
    assert len(winners) == 1 and len(losers) == 3
    assert all(e.retryable and "another run loaded" in e.message for e in losers)
    got = await content(pg_schema)
    assert len(got) == 2 and len({r[0] for r in got}) == 2
    assert len(await state_rows(pg_schema)) == 2  # the manual row and the winner's


@pytest.mark.parametrize("kind", KINDS)
async def test_concurrent_loads_of_different_tables_all_commit(
    kind: str, pg_schema: str, s3_conn: S3Conn
) -> None:
    """Loads of different tables share the state table: none may fail for it (Redshift's serializable
    isolation would abort one that read and wrote it beside another; the emulator runs SERIALIZABLE)."""
    reqs = [request(staged(s3_conn, rows((i, i, "x"))), target=f"t{i}", table=f"db.t{i}") for i in range(5)]
    async with warehouse(target_conn(kind, pg_schema, max_connections=8), s3_conn) as wh:
        await wh.write_state(replace(reqs[0].state, table="db.other", stage_id=""))  # state table exists
        async with anyio.create_task_group() as tg:
            for req in reqs:
                tg.start_soon(load_ok, wh, req)
        states = [await wh.read_state("p", f"db.t{i}") for i in range(5)]
    assert [s.stage_id if s else None for s in states] == [r.execution_id for r in reqs]
    for i in range(5):
        assert await content(pg_schema, f"t{i}") == [(i, ts(i), "x")]


def test_clear_step_text_and_values() -> None:
    """The DELETE text and its values, each bound once by number (``$n``), in the cursor's own types."""
    schema = replace(CURSORS, columns=(*CURSORS.columns, col('n"x', "int64")))
    files = StageResult("p/", (), "k", "s3://b/k", 0, 0)

    def spec(order_by: tuple[str, ...], after: Watermark | None, mode: Mode = "append") -> LoadSpec:
        return LoadSpec(
            POSTGRES,
            "s",
            "t",
            schema,
            files,
            "stg",
            (),
            (),
            (),
            mode=mode,
            order_by=order_by,
            clear=Clear(after),
        )

    at = ts(2).replace(tzinfo=dt.UTC)
    assert clear_step(spec(("ts", 'n"x', "id"), Watermark(ts=ts(2), id=5))) == (
        'DELETE FROM "s"."t" WHERE ("ts" > $1 OR ("ts" = $1 AND '
        '("n""x" > $2 OR ("n""x" = $2 AND "id" > $3))))',
        [at, 5, Decimal(5)],
    )
    assert clear_step(spec(("ts", "id"), Watermark(ts=ts(2)))) == (
        'DELETE FROM "s"."t" WHERE "ts" > $1',
        [at],
    )
    assert clear_step(spec(("d",), Watermark(id=3))) == ('DELETE FROM "s"."t" WHERE "d" IS NOT NULL', [])
    assert clear_step(spec(("ts",), None)) == ('DELETE FROM "s"."t" WHERE "ts" IS NOT NULL', [])
    assert clear_step(spec(("ts",), None, mode="merge")) is None
