"""Schema evolution, renames, names Redshift refuses, DISTSTYLE/DISTKEY/SORTKEY/ENCODE, a wide table, an
empty stage and a table without a key: on PostgreSQL and on Redshift-through-the-emulator (real
PostgreSQL, Parquet staged to the moto S3 server by the test)."""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal
from typing import Any

import pytest

from src.common.errors import WarehouseError
from src.common.schema import TableSchema
from src.config.models import S3Conn
from src.stage.models import StagedFile, StageResult
from src.warehouse.base import LoadResult, Warehouse
from src.warehouse.ddl import POSTGRES, REDSHIFT, DistSort, check_identifiers
from src.warehouse.evolve import SqlType, castable, holds, parse_type
from src.warehouse.redshift import RedshiftWarehouse
from src.warehouse.state import Mode
from tests.redshift_emulator import RedshiftEmulator
from tests.test_warehouse_load import arrow_table, col, pg, replace_request, stage, target_conn, warehouse

pytestmark = pytest.mark.anyio
KINDS = ["postgres", "redshift"]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def run(
    wh: Warehouse,
    s3: S3Conn,
    schema: TableSchema,
    rows: list[dict[str, Any]],
    mode: Mode = "merge",
    **kw: Any,
) -> LoadResult:
    """Load ``rows`` into t, planned from its latest state; merge/append by the schema's primary key."""
    prior = await wh.read_state("test", "db.t")
    result = stage(s3, [arrow_table(schema, rows)]) if rows else replace(stage(s3, []), files=(), rows=0)
    req = replace_request(schema, result, expect=prior.stage_id if prior else None, **kw)
    key = schema.primary_key if mode == "merge" else ()
    return await wh.load(replace(req, mode=mode, key=key, order_by=schema.primary_key))


async def content(schema_name: str, table: str = "t") -> list[tuple[Any, ...]]:
    return [tuple(r) for r in await pg(f'SELECT * FROM "{schema_name}"."{table}" ORDER BY 1')]


async def types(schema_name: str, table: str = "t") -> dict[str, str]:
    rows = await pg(
        "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a "
        "WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped",
        f'"{schema_name}"."{table}"',
    )
    return {r[0]: r[1] for r in rows}


async def state(schema_name: str) -> list[tuple[Any, ...]]:
    return [
        tuple(r) for r in await pg(f'SELECT stage_id, seq FROM "{schema_name}".s3shift_state ORDER BY seq')
    ]


def text(kind: str, n: int) -> str:
    return "TEXT" if kind == "postgres" else f"VARCHAR({n})"


BASE = TableSchema((col("id", "int64"), col("v", "string", byte_length=8)), ("id",))


# ---- evolution ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
async def test_new_source_column_is_added_and_filled_from_then_on(
    kind: str, pg_schema: str, s3_conn: S3Conn
) -> None:
    wider = replace(BASE, columns=(*BASE.columns, col("note", "string", byte_length=40)))
    async with warehouse(target_conn(kind, pg_schema), s3_conn) as wh:
        first = await run(wh, s3_conn, BASE, [{"id": 1, "v": "a"}, {"id": 2, "v": "b"}])
        second = await run(
            wh, s3_conn, wider, [{"id": 2, "v": "b2", "note": "n2"}, {"id": 3, "v": "c", "note": "n3"}]
        )
        third = await run(wh, s3_conn, wider, [{"id": 4, "v": "d", "note": None}])
    assert first.schema_changes == () and third.schema_changes == ()
    assert second.schema_changes == (f"added column note {text(kind, 40)}",)
    assert await content(pg_schema) == [(1, "a", None), (2, "b2", "n2"), (3, "c", "n3"), (4, "d", None)]


@pytest.mark.parametrize("kind", KINDS)
async def test_wider_varchar_widens_the_target(kind: str, pg_schema: str, s3_conn: S3Conn) -> None:
    sessions: list[RedshiftEmulator] = []
    wide = TableSchema((col("id", "int64"), col("v", "string", byte_length=40)), ("id",))
    async with warehouse(target_conn(kind, pg_schema), s3_conn, sessions=sessions) as wh:
        await run(wh, s3_conn, BASE, [{"id": 1, "v": "12345678"}])
        result = await run(wh, s3_conn, wide, [{"id": 2, "v": "é" * 20}])
    assert await content(pg_schema) == [(1, "12345678"), (2, "é" * 20)]
    if kind == "redshift":  # the emulator refuses ALTER COLUMN TYPE inside a transaction: it ran before
        assert result.schema_changes == ("widened v to VARCHAR(40)",)
        assert (await types(pg_schema))["v"] == "character varying(40)"
        assert any('ALTER TABLE "' in s and "TYPE VARCHAR(40)" in s for e in sessions for s in e.statements)
    else:
        assert result.schema_changes == ()  # text holds any length


@pytest.mark.parametrize("kind", KINDS)
async def test_wider_decimal_widens_postgres_and_needs_a_rebuild_on_redshift(
    kind: str, pg_schema: str, s3_conn: S3Conn
) -> None:
    narrow = TableSchema((col("id", "int64"), col("amount", "decimal", precision=10, scale=2)), ("id",))
    wide = TableSchema((col("id", "int64"), col("amount", "decimal", precision=14, scale=2)), ("id",))
    big = Decimal("123456789012.34")
    async with warehouse(target_conn(kind, pg_schema), s3_conn) as wh:
        await run(wh, s3_conn, narrow, [{"id": 1, "amount": Decimal("12345678.90")}])
        if kind == "redshift":  # Redshift cannot ALTER a NUMERIC's precision
            before = (await content(pg_schema), await state(pg_schema))
            with pytest.raises(WarehouseError) as err:
                await run(wh, s3_conn, wide, [{"id": 2, "amount": big}])
            assert "'amount' changed from NUMERIC(10,2) to NUMERIC(14,2)" in err.value.message
            assert "set type_policies: {schema_change: rebuild} or migrate the column" in err.value.message
            assert (await content(pg_schema), await state(pg_schema)) == before
            result = await run(wh, s3_conn, wide, [{"id": 2, "amount": big}], schema_change="rebuild")
            assert result.schema_changes[0].startswith(f"rebuilt {pg_schema}.t (amount NUMERIC(10,2) -> ")
        else:
            result = await run(wh, s3_conn, wide, [{"id": 2, "amount": big}])
            assert result.schema_changes == ("widened amount to NUMERIC(14,2)",)
    assert (await types(pg_schema))["amount"] == "numeric(14,2)"
    assert await content(pg_schema) == [(1, Decimal("12345678.90")), (2, big)]


@pytest.mark.parametrize("kind", KINDS)
async def test_column_dropped_at_the_source_stays_null_for_new_rows(
    kind: str, pg_schema: str, s3_conn: S3Conn
) -> None:
    legacy = replace(BASE, columns=(*BASE.columns, col("legacy_flag", "bool")))
    async with warehouse(target_conn(kind, pg_schema), s3_conn) as wh:
        await run(wh, s3_conn, legacy, [{"id": 1, "v": "a", "legacy_flag": True}])
        result = await run(wh, s3_conn, BASE, [{"id": 2, "v": "b"}])
    assert result.schema_changes == ("source dropped legacy_flag (kept, NULL for new rows)",)
    assert await content(pg_schema) == [(1, "a", True), (2, "b", None)]


@pytest.mark.parametrize("kind", KINDS)
async def test_incompatible_change_fails_and_leaves_target_and_state(
    kind: str, pg_schema: str, s3_conn: S3Conn
) -> None:
    ints = TableSchema(
        (col("id", "int64"), col("code", "int32"), col("amount", "decimal", precision=10, scale=2))
    )
    ints = replace(ints, primary_key=("id",))
    texts = replace(ints, columns=(ints.columns[0], col("code", "string", byte_length=40), ints.columns[2]))
    rescaled = replace(ints, columns=(*ints.columns[:2], col("amount", "decimal", precision=10, scale=3)))
    async with warehouse(target_conn(kind, pg_schema), s3_conn) as wh:
        await run(wh, s3_conn, ints, [{"id": 1, "code": 7, "amount": Decimal("1.50")}])
        before = (await content(pg_schema), await state(pg_schema), await types(pg_schema))
        with pytest.raises(WarehouseError) as err:
            await run(wh, s3_conn, texts, [{"id": 2, "code": "x", "amount": None}])
        with pytest.raises(WarehouseError) as unsafe:
            await run(wh, s3_conn, rescaled, [{"id": 2, "code": 1, "amount": None}], schema_change="rebuild")
    assert (await content(pg_schema), await state(pg_schema), await types(pg_schema)) == before
    assert err.value.table == f"{pg_schema}.t" and err.value.column == "code" and not err.value.retryable
    assert f"{pg_schema}.t: column 'code' changed from INTEGER to {text(kind, 40)}" in err.value.message
    assert "set type_policies: {schema_change: rebuild} or migrate the column" in err.value.message
    assert unsafe.value.column == "amount" and "no lossless conversion exists for 'amount'" in str(
        unsafe.value
    )


@pytest.mark.parametrize("kind", KINDS)
async def test_rebuild_keeps_every_row(kind: str, pg_schema: str, s3_conn: S3Conn) -> None:
    ints = TableSchema((col("id", "int64"), col("code", "int32"), col("gone", "int16")), ("id",))
    texts = TableSchema(
        (col("id", "int64"), col("code", "string", byte_length=40), col("new", "date")), ("id",)
    )
    distsort = DistSort(diststyle="KEY", distkey="id", sortkey=("id",), encode=(("code", "zstd"),))
    async with warehouse(target_conn(kind, pg_schema), s3_conn) as wh:
        await run(wh, s3_conn, ints, [{"id": i, "code": -i * 1000, "gone": i} for i in range(1, 4)])
        result = await run(
            wh,
            s3_conn,
            texts,
            [{"id": 4, "code": "four", "new": None}],
            schema_change="rebuild",
            distsort=distsort,
        )
        again = await run(wh, s3_conn, texts, [{"id": 5, "code": "five", "new": None}])
    assert result.schema_changes == (
        f"rebuilt {pg_schema}.t (code INTEGER -> {text(kind, 40)}; added new)",
        "source dropped gone (kept, NULL for new rows)",
    )
    assert again.schema_changes == ("source dropped gone (kept, NULL for new rows)",)
    assert await content(pg_schema) == [
        (1, "-1000", None, 1),
        (2, "-2000", None, 2),
        (3, "-3000", None, 3),
        (4, "four", None, None),
        (5, "five", None, None),
    ]
    leftovers = await pg(
        "SELECT relname FROM pg_class WHERE relname LIKE 's3shift_rebuild_%' AND relkind = 'r'"
    )
    assert leftovers == []


@pytest.mark.parametrize("kind", KINDS)
async def test_replace_rebuilds_a_change_no_cast_could_keep(
    kind: str, pg_schema: str, s3_conn: S3Conn
) -> None:
    """A full_sync replaces every row, so its rebuild copies none and needs no lossless cast (TEXT -> BIGINT
    was refused, leaving the table stuck until migrated by hand); ``fail`` still refuses it."""
    texts = TableSchema(
        (col("id", "int64"), col("code", "string", byte_length=40), col("gone", "int16")), ("id",)
    )
    ints = TableSchema((col("id", "int64"), col("code", "int64")), ("id",))
    async with warehouse(target_conn(kind, pg_schema), s3_conn) as wh:
        await run(wh, s3_conn, texts, [{"id": 1, "code": "one", "gone": 1}], mode="replace")
        before = (await content(pg_schema), await state(pg_schema), await types(pg_schema))
        with pytest.raises(WarehouseError, match="cannot apply in place"):
            await run(wh, s3_conn, ints, [{"id": 2, "code": 2}], mode="replace")
        assert (await content(pg_schema), await state(pg_schema), await types(pg_schema)) == before
        result = await run(wh, s3_conn, ints, [{"id": 2, "code": 2}], mode="replace", schema_change="rebuild")
    assert result.schema_changes == (
        f"rebuilt {pg_schema}.t (code {text(kind, 40)} -> BIGINT)",
        "source dropped gone (kept, NULL for new rows)",
    )
    assert await content(pg_schema) == [(2, 2, None)]
    assert (await types(pg_schema))["code"] == "bigint" and len(await state(pg_schema)) == 2


@pytest.mark.parametrize("kind", KINDS)
async def test_append_to_a_table_without_a_key_with_a_new_column(
    kind: str, pg_schema: str, s3_conn: S3Conn
) -> None:
    keyless = replace(BASE, primary_key=())
    more = replace(keyless, columns=(*keyless.columns, col("n", "int32")))
    async with warehouse(target_conn(kind, pg_schema), s3_conn) as wh:
        await run(wh, s3_conn, keyless, [{"id": 1, "v": "a"}, {"id": 1, "v": "a"}], mode="append")
        result = await run(wh, s3_conn, more, [{"id": 1, "v": "a", "n": 5}], mode="append")
        empty = await run(wh, s3_conn, more, [], mode="append")
    assert result.rows_loaded == 1 and empty == LoadResult(0, f"{pg_schema}.t")
    assert sorted(await content(pg_schema), key=str) == [(1, "a", 5), (1, "a", None), (1, "a", None)]


@pytest.mark.parametrize("kind", KINDS)
async def test_empty_stage_creates_the_table_and_writes_state(
    kind: str, pg_schema: str, s3_conn: S3Conn
) -> None:
    async with warehouse(target_conn(kind, pg_schema), s3_conn) as wh:
        assert await run(wh, s3_conn, BASE, []) == LoadResult(0, f"{pg_schema}.t")
        wider = replace(BASE, columns=(*BASE.columns, col("x", "int64")))
        assert (await run(wh, s3_conn, wider, [])).schema_changes == ("added column x BIGINT",)
    assert await content(pg_schema) == [] and len(await state(pg_schema)) == 2


# ---- names ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
async def test_rename_map(kind: str, pg_schema: str, s3_conn: S3Conn) -> None:
    schema = TableSchema((col("ID", "int64"), col("xmin", "int32"), col("v", "int32")), ("ID",))
    rename = (("xmin", "x_min"), ("ID", "pk"), ("not_there", "ignored"))
    async with warehouse(target_conn(kind, pg_schema), s3_conn) as wh:
        await run(wh, s3_conn, schema, [{"ID": 1, "xmin": 2, "v": 3}], rename=rename)
        await run(
            wh, s3_conn, schema, [{"ID": 1, "xmin": 5, "v": 6}, {"ID": 7, "xmin": 8, "v": 9}], rename=rename
        )
        with pytest.raises(
            WarehouseError, match=r"'xmin' is a system column name.*rename_columns: \{'xmin': "
        ):
            await run(wh, s3_conn, schema, [{"ID": 1, "xmin": 2, "v": 3}])
    assert list(await types(pg_schema)) == ["pk", "x_min", "v"]
    assert await content(pg_schema) == [(1, 5, 6), (7, 8, 9)]


@pytest.mark.parametrize("kind", KINDS)
async def test_case_fold_collisions(kind: str, pg_schema: str, s3_conn: S3Conn) -> None:
    schema = TableSchema((col("Id", "int64"), col("id", "int64")), ("Id",))
    rows = [{"Id": 1, "id": 2}]
    async with warehouse(target_conn(kind, pg_schema), s3_conn) as wh:
        if kind == "postgres":  # PostgreSQL keeps case: both columns are fine
            await run(wh, s3_conn, schema, rows)
            assert list(await types(pg_schema)) == ["Id", "id"]
            return
        with pytest.raises(WarehouseError) as err:
            await run(wh, s3_conn, schema, rows)
        assert "'id' collides with 'Id' once redshift folds names to lowercase" in err.value.message
        assert "rename_columns: {'id': NEW_NAME}" in err.value.message and err.value.column == "id"
        await run(wh, s3_conn, schema, rows, rename=(("Id", "id_upper"),))
    assert await content(pg_schema) == [(1, 2)]


async def test_names_over_127_bytes_are_refused_on_redshift(pg_schema: str, s3_conn: S3Conn) -> None:
    long_name = "é" * 64  # 64 characters, 128 bytes
    schema = TableSchema((col("id", "int64"), col(long_name, "int32")))
    async with warehouse(target_conn("redshift", pg_schema), s3_conn) as wh:
        with pytest.raises(WarehouseError, match=r"is longer than 127 bytes.*rename_columns"):
            await run(wh, s3_conn, schema, [{"id": 1, long_name: 1}], mode="append")


# ---- physical design ------------------------------------------------------------------------------------


def _render(distsort: DistSort | None, schema: TableSchema = BASE) -> list[str]:
    wh = RedshiftWarehouse(target_conn("redshift", "s"))
    result = replace(stage_stub(), rows=0)
    return wh.render_load(replace_request(schema, result, distsort=distsort))


def stage_stub() -> StageResult:
    f = StagedFile("k/part-0.parquet", "s3://b/k/part-0.parquet", 10, 0)
    return StageResult(
        prefix="k/", files=(f,), manifest_key="k/m.json", manifest_url="s3://b/k/m.json", rows=0, bytes=10
    )


def test_distsort_and_encode_are_rendered() -> None:
    ds = DistSort(diststyle="KEY", distkey="id", sortkey=("v", "id"), encode=(("v", "zstd"), ("id", "AZ64")))
    create = next(s for s in _render(ds) if s.startswith('CREATE TABLE IF NOT EXISTS "s"."t"'))
    assert create.endswith('DISTSTYLE KEY DISTKEY ("id") SORTKEY ("v", "id")')
    assert '"id" BIGINT ENCODE AZ64' in create and '"v" VARCHAR(8) ENCODE ZSTD' in create
    staging = next(s for s in _render(ds) if s.startswith("CREATE TEMP TABLE"))
    assert "ENCODE" not in staging and "DISTKEY" not in staging
    assert "ENCODE" not in next(
        s for s in _render(None) if s.startswith('CREATE TABLE IF NOT EXISTS "s"."t"')
    )


@pytest.mark.parametrize(
    ("distsort", "match"),
    [
        (DistSort(distkey="nope"), "distkey column 'nope' is not a column of s.t"),
        (DistSort(sortkey=("id", "Nope")), "sortkey column 'Nope'"),
        (DistSort(encode=(("v", "GZIP"),)), r"unknown ENCODE for s.t \(v: GZIP\)"),
        (DistSort(encode=(("w", "ZSTD"),)), "encode column 'w'"),
        (DistSort(diststyle="EVEN", distkey="id"), "DISTKEY needs diststyle KEY"),
    ],
)
def test_distsort_validation(distsort: DistSort, match: str) -> None:
    with pytest.raises(WarehouseError, match=match):
        _render(distsort)


async def test_distsort_load_through_the_emulator(pg_schema: str, s3_conn: S3Conn) -> None:
    sessions: list[RedshiftEmulator] = []
    ds = DistSort(diststyle="KEY", distkey="id", sortkey=("id",), encode=(("v", "LZO"),))
    wider = replace(BASE, columns=(*BASE.columns, col("b", "binary", byte_length=4)))
    async with warehouse(target_conn("redshift", pg_schema), s3_conn, sessions=sessions) as wh:
        await run(wh, s3_conn, BASE, [{"id": 1, "v": "a"}], distsort=ds)
        ds2 = replace(ds, encode=(*ds.encode, ("b", "ZSTD")))
        await run(wh, s3_conn, wider, [{"id": 2, "v": "b", "b": b"\x00\x01"}], distsort=ds2)
    sql = [s for e in sessions for s in e.statements]
    assert any("DISTSTYLE KEY" in s and "ENCODE LZO" in s for s in sql)
    assert any(s.endswith('ADD COLUMN "b" VARBYTE(4) ENCODE ZSTD') for s in sql)
    assert (await types(pg_schema))["b"] == '"varbyte(4)"'  # the emulator keeps VARBYTE's length
    assert await content(pg_schema) == [(1, "a", None), (2, "b", b"\x00\x01")]


# ---- scale ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
async def test_wide_table_of_1000_columns(kind: str, pg_schema: str, s3_conn: S3Conn) -> None:
    names = ["id", *(f"c{i:04d}" for i in range(999))]
    schema = TableSchema(tuple(col(n, "int32") for n in names), ("id",))
    rows = [{n: r * 1000 + i for i, n in enumerate(names)} for r in range(3)]
    async with warehouse(target_conn(kind, pg_schema), s3_conn) as wh:
        assert (await run(wh, s3_conn, schema, rows, mode="replace")).rows_loaded == 3
    got = await content(pg_schema)
    assert len(got) == 3 and [list(r) for r in got] == [list(r.values()) for r in rows]


# ---- the type comparison --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b", "a_holds_b"),
    [
        ("bigint", "integer", True),
        ("integer", "bigint", False),
        ("numeric(14,2)", "DECIMAL(10,2)", True),
        ("numeric(10,3)", "numeric(10,2)", False),  # fewer whole digits
        ("numeric(20,0)", "bigint", True),
        ("numeric(18,0)", "bigint", False),
        ("bigint", "numeric(18,0)", True),
        ("character varying(40)", "VARCHAR(8)", True),
        ("VARCHAR(8)", "character varying(40)", False),
        ("text", "character varying(40)", True),
        ('"varbyte(4)"', "VARBYTE(8)", False),
        ("double precision", "integer", True),
        ("timestamp without time zone", "date", True),
        ("timestamp with time zone", "TIMESTAMPTZ", True),
        ("super", "jsonb", True),
        ("integer", "text", False),
    ],
)
def test_holds(a: str, b: str, a_holds_b: bool) -> None:
    assert holds(parse_type(a), parse_type(b)) is a_holds_b


def test_castable_for_rebuild() -> None:
    assert castable(SqlType("int", 64), SqlType("varchar", 20))
    assert not castable(SqlType("int", 64), SqlType("varchar", 19))
    assert castable(SqlType("decimal", 10, 2), SqlType("varchar", None))
    assert not castable(SqlType("varchar", 10), SqlType("int", 64))
    assert not castable(SqlType("decimal", 10, 3), SqlType("decimal", 10, 2))
    assert parse_type("geometry") == SqlType("other:geometry")


def test_system_column_names_per_warehouse() -> None:
    oid = TableSchema((col("oid", "int64"), col("XMIN", "int32")))
    check_identifiers(POSTGRES, "s", "t", oid)  # PostgreSQL 12+ has no oid column; "XMIN" is not xmin
    with pytest.raises(WarehouseError, match=r"'oid' is a system column.*'XMIN' is a system column"):
        check_identifiers(REDSHIFT, "s", "t", oid)


async def target_key(schema_name: str, table: str = "t") -> set[str]:
    rows = await pg(
        "SELECT a.attname::text FROM pg_constraint k JOIN pg_attribute a ON a.attrelid = k.conrelid "
        "AND a.attnum = ANY(k.conkey) WHERE k.conrelid = to_regclass($1) AND k.contype = 'p'",
        f'"{schema_name}"."{table}"',
    )
    return {r[0] for r in rows}


async def test_a_primary_key_changed_at_the_source_rekeys_a_redshift_target(
    pg_schema: str, s3_conn: S3Conn
) -> None:
    """Redshift kept the key the target was created with: its planner trusts keys (never enforced), so
    a key narrowed or widened at the source left a false one. Now the old key goes, and the new one is
    declared where it is true: a column of it NOT NULL in the target (Redshift refuses a key on a
    nullable column and cannot make one NOT NULL) and the rows unique under it; otherwise none is."""
    pair = TableSchema(
        (col("id", "int64"), col("x", "int64"), col("v", "string", byte_length=8)), primary_key=("id", "x")
    )
    by_id = replace(pair, primary_key=("id",))
    by_v = replace(pair, primary_key=("id", "v"))
    rows = [{"id": 1, "x": 1, "v": "a"}, {"id": 2, "x": 1, "v": "b"}]
    cfg = target_conn("redshift", pg_schema)
    async with warehouse(cfg, s3_conn) as wh:
        await run(wh, s3_conn, pair, rows)
        assert await target_key(pg_schema) == {"id", "x"}
        result = await run(wh, s3_conn, by_id, [{"id": 3, "x": 1, "v": "c"}])  # narrowed, rows unique
        assert result.schema_changes == ("primary key (id, x) -> (id): the source's key changed",)
        assert await target_key(pg_schema) == {"id"}
        result = await run(wh, s3_conn, by_v, [{"id": 3, "x": 2, "v": "d"}])  # widened by a nullable v
    assert result.schema_changes == (
        "primary key (id) -> (none): the source's key changed to (id, v), which the target cannot declare "
        "(v nullable in the target); Redshift's planner trusts a declared key, so none is kept — drop the "
        "target and rerun to have it created with the new key",
    )
    assert await target_key(pg_schema) == set()
    assert await content(pg_schema) == [(1, 1, "a"), (2, 1, "b"), (3, 1, "c"), (3, 2, "d")]


@pytest.mark.parametrize("mode", ["merge", "replace"])
async def test_a_redshift_key_the_rows_do_not_fit_is_declared_only_after_a_replace(
    mode: Mode, pg_schema: str, s3_conn: S3Conn
) -> None:
    """A merge keeps the target's rows: duplicates under the new key leave the target without one (Redshift
    would accept the false key unchecked); a replace empties it, so the new key holds."""
    pair = TableSchema((col("id", "int64"), col("x", "int64")), primary_key=("id", "x"))
    async with warehouse(target_conn("redshift", pg_schema), s3_conn) as wh:
        await run(wh, s3_conn, pair, [{"id": 1, "x": 1}, {"id": 1, "x": 2}])
        by_id = replace(pair, primary_key=("id",))
        result = await run(wh, s3_conn, by_id, [{"id": 2, "x": 1}], mode=mode)
    if mode == "replace":
        assert result.schema_changes == ("primary key (id, x) -> (id): the source's key changed",)
        assert await target_key(pg_schema) == {"id"} and await content(pg_schema) == [(2, 1)]
    else:
        assert "which the target cannot declare (its rows not unique under it)" in result.schema_changes[0]
        assert await target_key(pg_schema) == set() and len(await content(pg_schema)) == 3
