"""write_parquet -> manifest -> iter_staged_batches against the moto S3 server, value for value."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import tempfile
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from aiobotocore.awsrequest import AioAWSResponse

from src.common.errors import StageError
from src.config.models import S3Conn
from src.stage.manifest import parse_manifest, read_stage_result
from src.stage.models import StagedFile, StageResult
from src.stage.reader import iter_staged_batches
from src.stage.s3 import MIB, S3Stage
from tests.test_stage_support import (
    FailTimes,
    get_object,
    list_keys,
    open_uploads,
    random_binary_batch,
    stage_batches,
)

pytestmark = pytest.mark.anyio

UTC = dt.UTC
SCHEMA = pa.schema(
    [
        pa.field("id", pa.int64(), nullable=False),
        pa.field("i16", pa.int16()),
        pa.field("i32", pa.int32()),
        pa.field("u64", pa.decimal128(20, 0)),
        pa.field("money", pa.decimal128(38, 10)),
        pa.field("f32", pa.float32()),
        pa.field("f64", pa.float64()),
        pa.field("name", pa.string()),
        pa.field("blob", pa.binary()),
        pa.field("day", pa.date32()),
        pa.field("at", pa.timestamp("us")),
        pa.field("at_utc", pa.timestamp("us", tz="UTC")),
        pa.field("flag", pa.bool_()),
    ]
)
ROWS: list[dict[str, Any]] = [
    {
        "id": 1,
        "i16": -32768,
        "i32": 2147483647,
        "u64": Decimal("18446744073709551615"),
        "money": Decimal("9999999999999999999999999999.9999999999"),
        "f32": 1.5,
        "f64": -1e308,
        "name": "emoji 😀 ünïcödé 中文",
        "blob": b"\x00\xff\x00binary",
        "day": dt.date(1, 1, 1),
        "at": dt.datetime(9999, 12, 31, 23, 59, 59, 999999),
        "at_utc": dt.datetime(1970, 1, 1, 0, 0, 0, 1, tzinfo=UTC),
        "flag": True,
    },
    {
        "id": 2,
        "i16": 32767,
        "i32": -2147483648,
        "u64": Decimal("0"),
        "money": Decimal("-0.0000000001"),
        "f32": float("inf"),
        "f64": 2.2250738585072014e-308,
        "name": "",
        "blob": b"",
        "day": dt.date(9999, 12, 31),
        "at": dt.datetime(1000, 1, 1, 0, 0, 0, 123456),
        "at_utc": dt.datetime(2038, 1, 19, 3, 14, 8, 654321, tzinfo=UTC),
        "flag": False,
    },
    {"id": 3, **{f.name: None for f in list(SCHEMA)[1:]}},  # NULL in every nullable column
]


def _table() -> pa.Table:
    return pa.Table.from_pylist(ROWS, schema=SCHEMA)


def _int_batches(count: int, rows: int) -> list[pa.RecordBatch]:
    schema = pa.schema([pa.field("id", pa.int64(), nullable=False), pa.field("s", pa.string())])
    return [
        pa.record_batch(
            [pa.array(range(i * rows, (i + 1) * rows)), pa.array([f"row {n}" for n in range(rows)])],
            schema=schema,
        )
        for i in range(count)
    ]


async def _read_all(s3: S3Stage, files: tuple[StagedFile, ...], batch_rows: int = 65536) -> pa.Table | None:
    async with contextlib.aclosing(iter_staged_batches(s3, files, batch_rows=batch_rows)) as batches:
        read = [b async for b in batches]
    return pa.Table.from_batches(read) if read else None


async def test_round_trip_every_type_value_for_value(s3_conn: S3Conn) -> None:
    table = _table()
    async with S3Stage(s3_conn) as s3:
        prefix = s3.run_prefix("nightly", "shop.orders", "sync_20260101_000000_abcdef01")
        result = await stage_batches(s3, prefix, SCHEMA, table.to_batches(max_chunksize=2), schema_hash="h1")
        back = await _read_all(s3, result.files)
    assert back is not None
    assert back.schema.equals(SCHEMA, check_metadata=False)
    assert back.to_pylist() == ROWS
    assert back.equals(table)
    assert (result.rows, result.files_created, result.schema_hash) == (3, 1, "h1")
    assert result.manifest_url == f"s3://{s3_conn.bucket}/{prefix}manifest.json"


async def test_parquet_physical_types_are_redshift_safe(s3_conn: S3Conn) -> None:
    async with S3Stage(s3_conn) as s3:
        result = await stage_batches(s3, "staging/p/t/r/", SCHEMA, _table().to_batches())
    meta = pq.ParquetFile(pa.BufferReader(get_object(s3_conn, result.files[0].key))).metadata
    schema = meta.schema
    by_name = {schema.column(i).name: schema.column(i) for i in range(len(schema))}
    for name, utc in (("at", False), ("at_utc", True)):
        logical = json.loads(by_name[name].logical_type.to_json())
        assert by_name[name].physical_type == "INT64"
        assert (logical["Type"], logical["isAdjustedToUTC"], logical["timeUnit"]) == (
            "Timestamp",
            utc,
            "microseconds",
        )
    for name, precision, scale in (("u64", 20, 0), ("money", 38, 10)):
        logical = json.loads(by_name[name].logical_type.to_json())
        assert logical == {"Type": "Decimal", "precision": precision, "scale": scale}
        assert by_name[name].physical_type == "FIXED_LEN_BYTE_ARRAY"
    assert by_name["day"].logical_type.type == "DATE"
    chunk = meta.row_group(0).column(0)
    assert chunk.compression == "ZSTD"
    assert chunk.statistics.has_min_max and chunk.statistics.min == 1 and chunk.statistics.max == 3


async def test_files_roll_and_manifest_lists_exactly_them(s3_conn: S3Conn) -> None:
    batches = _int_batches(count=4, rows=70_000)  # each batch is one row group
    async with S3Stage(s3_conn) as s3:
        result = await stage_batches(s3, "staging/p/t/r1/", batches[0].schema, batches, file_size_bytes=1)
        back = await _read_all(s3, result.files, batch_rows=50_000)
        reread = await read_stage_result(s3, result.manifest_url)
    keys = [f"staging/p/t/r1/part-{i:05d}.parquet" for i in range(4)]
    assert [f.key for f in result.files] == keys and result.files_created == 4
    assert list_keys(s3_conn) == sorted([*keys, "staging/p/t/r1/manifest.json"])  # one object beside them
    entries = parse_manifest(get_object(s3_conn, result.manifest_key))
    sizes = [len(get_object(s3_conn, k)) for k in keys]
    assert entries == [(f"s3://{s3_conn.bucket}/{k}", n) for k, n in zip(keys, sizes, strict=True)]
    assert [f.rows for f in result.files] == [70_000] * 4 and result.bytes == sum(sizes)
    manifest = json.loads(get_object(s3_conn, result.manifest_key))
    assert set(manifest) == {"entries", "meta", "s3shift"}
    assert all(e["mandatory"] is True for e in manifest["entries"])
    assert [e["meta"]["record_count"] for e in manifest["entries"]] == [70_000] * 4
    assert manifest["meta"] == {"content_length": sum(sizes), "record_count": 280_000}
    assert back is not None and back.column("id").to_pylist() == list(range(280_000))
    assert reread == result


async def test_small_batches_share_a_file(s3_conn: S3Conn) -> None:
    batches = _int_batches(count=50, rows=100)
    async with S3Stage(s3_conn) as s3:
        result = await stage_batches(s3, "staging/p/t/r2/", batches[0].schema, batches)
    assert result.files_created == 1 and result.rows == 5000
    meta = pq.ParquetFile(pa.BufferReader(get_object(s3_conn, result.files[0].key))).metadata
    assert meta.num_row_groups == 1  # coalesced, not 50 tiny row groups


@pytest.mark.parametrize("empty_batches", [0, 2])
async def test_zero_rows_write_an_empty_manifest_only(s3_conn: S3Conn, empty_batches: int) -> None:
    flat = [pa.RecordBatch.from_pylist([], schema=SCHEMA)] * empty_batches
    async with S3Stage(s3_conn) as s3:
        result = await stage_batches(s3, "staging/p/t/empty/", SCHEMA, flat)
        reread = await read_stage_result(s3, result.manifest_url)
    assert (result.files_created, result.rows, result.bytes) == (0, 0, 0)
    manifest = json.loads(get_object(s3_conn, result.manifest_key))
    assert manifest["entries"] == [] and manifest["meta"] == {"content_length": 0, "record_count": 0}
    assert list_keys(s3_conn) == ["staging/p/t/empty/manifest.json"]
    assert reread == result


async def test_incompressible_data_goes_up_in_several_parts(s3_conn: S3Conn) -> None:
    schema = pa.schema([pa.field("id", pa.int64()), pa.field("payload", pa.binary())])
    batches = [random_binary_batch(schema, rows=40, value_bytes=100_000, seed=i) for i in range(4)]
    async with S3Stage(s3_conn) as s3:
        parts = FailTimes(500, "InternalError", times=0)
        s3.client.meta.events.register("before-send.s3.UploadPart", parts)
        result = await stage_batches(s3, "staging/p/t/big/", schema, batches)
        back = await _read_all(s3, result.files)
    assert result.files_created == 1 and result.bytes > 15 * MIB
    assert parts.calls == 4  # 16 MB of random bytes in 5 MiB parts
    assert back is not None and back.equals(pa.Table.from_batches(batches))


async def test_producer_failure_leaves_no_upload_and_no_file(s3_conn: S3Conn) -> None:
    schema = pa.schema([pa.field("id", pa.int64()), pa.field("payload", pa.binary())])
    batches = [random_binary_batch(schema, rows=40, value_bytes=100_000, seed=i) for i in range(6)]
    async with S3Stage(s3_conn) as s3:
        parts = FailTimes(500, "InternalError", times=0)
        s3.client.meta.events.register("before-send.s3.UploadPart", parts)
        with pytest.raises(BaseExceptionGroup) as info:
            await stage_batches(  # fail only once parts are really up
                s3, "staging/p/t/fail/", schema, batches, fail_after=5, fail_when=lambda: parts.calls >= 2
            )
    assert info.group_contains(RuntimeError, match="on purpose")
    assert open_uploads(s3_conn) == [] and list_keys(s3_conn) == []


async def test_failure_after_rolled_files_removes_them(s3_conn: S3Conn) -> None:
    batches = _int_batches(count=5, rows=70_000)
    async with S3Stage(s3_conn) as s3:
        with pytest.raises(BaseExceptionGroup):
            await stage_batches(  # fail only once two files are complete objects
                s3,
                "staging/p/t/f2/",
                batches[0].schema,
                batches,
                file_size_bytes=1,
                fail_after=4,
                fail_when=lambda: len(list_keys(s3_conn, "staging/p/t/f2/")) >= 2,
            )
    assert open_uploads(s3_conn) == [] and list_keys(s3_conn) == []


async def test_part_failure_surfaces_as_stage_error_naming_the_file(s3_conn: S3Conn) -> None:
    schema = pa.schema([pa.field("id", pa.int64()), pa.field("payload", pa.binary())])
    batches = [random_binary_batch(schema, rows=40, value_bytes=100_000, seed=i) for i in range(3)]
    async with S3Stage(s3_conn, max_attempts=2) as s3:
        s3.client.meta.events.register("before-send.s3.UploadPart", FailTimes(503, "SlowDown", times=None))
        with pytest.raises(BaseExceptionGroup) as info:
            await stage_batches(s3, "staging/p/t/f3/", schema, batches)
    assert info.group_contains(StageError, match=r"staging/p/t/f3/part-00000\.parquet.*SlowDown")
    assert open_uploads(s3_conn) == [] and list_keys(s3_conn) == []


async def test_cancellation_aborts_and_cleans_up(s3_conn: S3Conn) -> None:
    async def stuck(request: Any, **kwargs: Any) -> None:
        await anyio.sleep(30)

    schema = pa.schema([pa.field("id", pa.int64()), pa.field("payload", pa.binary())])
    batches = [random_binary_batch(schema, rows=40, value_bytes=100_000, seed=i) for i in range(3)]
    async with S3Stage(s3_conn) as s3:
        s3.client.meta.events.register("before-send.s3.UploadPart", stuck)
        with anyio.move_on_after(1.5) as scope:
            await stage_batches(s3, "staging/p/t/c/", schema, batches)
    assert scope.cancelled_caught
    assert open_uploads(s3_conn) == [] and list_keys(s3_conn) == []


async def test_schema_mismatch_is_a_stage_error(s3_conn: S3Conn) -> None:
    wrong = _table().slice(2, 1).cast(SCHEMA.set(10, pa.field("at", pa.timestamp("ns"))))
    async with S3Stage(s3_conn) as s3:
        with pytest.raises(BaseExceptionGroup) as info:
            await stage_batches(s3, "staging/p/t/s/", SCHEMA, [*_table().to_batches(), *wrong.to_batches()])
    assert info.group_contains(StageError, match="column 'at'.*timestamp\\[us\\].*timestamp\\[ns\\]")
    assert list_keys(s3_conn) == []


def _temp_files(root: Path) -> list[Path]:
    return list(root.glob("s3shift-read-*/*"))


def _entries(root: Path) -> list[Path]:
    return list(root.iterdir())


async def test_reader_cleans_temp_files_when_stopped_early(
    s3_conn: S3Conn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    batches = _int_batches(count=3, rows=70_000)
    async with S3Stage(s3_conn) as s3:
        result: StageResult = await stage_batches(s3, "staging/p/t/rd/", batches[0].schema, batches)
        async with contextlib.aclosing(iter_staged_batches(s3, result.files, batch_rows=1000)) as it:
            first = await anext(it)
            assert first.num_rows == 1000
            assert len(_temp_files(tmp_path)) == 1
    assert _temp_files(tmp_path) == [] and _entries(tmp_path) == []


async def test_reader_rejects_a_file_of_the_wrong_size(s3_conn: S3Conn) -> None:
    async with S3Stage(s3_conn) as s3:
        result = await stage_batches(s3, "staging/p/t/sz/", SCHEMA, _table().to_batches())
        staged = result.files[0]
        bad = StagedFile(key=staged.key, url=staged.url, size_bytes=staged.size_bytes + 1, rows=staged.rows)
        with pytest.raises(StageError, match="manifest says"):
            await _read_all(s3, (bad,))


class _Empty:
    async def read(self, *args: Any) -> bytes:
        return b""


async def test_size_mismatch_on_head_fails_a_multipart_file_before_any_manifest(s3_conn: S3Conn) -> None:
    async def short_head(request: Any, **kwargs: Any) -> Any:
        return AioAWSResponse(request.url, 200, {"Content-Length": "7"}, _Empty())  # S3 claims 7 bytes

    schema = pa.schema([pa.field("id", pa.int64()), pa.field("payload", pa.binary())])
    batches = [random_binary_batch(schema, rows=40, value_bytes=100_000, seed=i) for i in range(2)]
    async with S3Stage(s3_conn) as s3:
        s3.client.meta.events.register("before-send.s3.HeadObject", short_head)
        with pytest.raises(BaseExceptionGroup) as info:
            await stage_batches(s3, "staging/p/t/v/", schema, batches)
    assert info.group_contains(StageError, match=r"part-00000\.parquet is 7 bytes in S3 but \d+ were written")
    assert list_keys(s3_conn) == []


class _Calls:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, **kwargs: Any) -> None:
        self.calls += 1


def _echo(checksum: str | None) -> Any:
    """An after-call hook: PutObject's reply echoes ``checksum`` instead (None: echoes none)."""

    def hook(parsed: dict[str, Any], **kwargs: Any) -> None:
        parsed.pop("ChecksumCRC32", None)
        if checksum is not None:
            parsed["ChecksumCRC32"] = checksum

    return hook


async def test_a_small_file_is_one_put_verified_by_its_echoed_checksum(s3_conn: S3Conn) -> None:
    heads, uploads = _Calls(), _Calls()
    async with S3Stage(s3_conn) as s3:
        s3.client.meta.events.register("before-call.s3.HeadObject", heads)
        s3.client.meta.events.register("before-call.s3.CreateMultipartUpload", uploads)
        result = await stage_batches(s3, "staging/p/t/one/", SCHEMA, _table().to_batches())
        back = await _read_all(s3, result.files)
    assert (heads.calls, uploads.calls) == (0, 0)
    assert back is not None and back.equals(_table())


async def test_a_wrong_echoed_checksum_fails_before_any_manifest(s3_conn: S3Conn) -> None:
    async with S3Stage(s3_conn) as s3:
        s3.client.meta.events.register("after-call.s3.PutObject", _echo("AAAAAA=="))
        with pytest.raises(BaseExceptionGroup) as info:
            await stage_batches(s3, "staging/p/t/crc/", SCHEMA, _table().to_batches())
    assert info.group_contains(StageError, match=r"part-00000\.parquet with checksum AAAAAA==, not the ")
    assert list_keys(s3_conn) == []


async def test_a_store_echoing_no_checksum_gets_a_head(s3_conn: S3Conn) -> None:
    heads = _Calls()
    async with S3Stage(s3_conn) as s3:
        s3.client.meta.events.register("after-call.s3.PutObject", _echo(None))
        s3.client.meta.events.register("before-call.s3.HeadObject", heads)
        result = await stage_batches(s3, "staging/p/t/nocrc/", SCHEMA, _table().to_batches())
    assert heads.calls == 1 and result.files_created == 1


@pytest.mark.parametrize("keep", [True, False])
async def test_the_runs_own_small_files_are_read_back_from_memory(s3_conn: S3Conn, keep: bool) -> None:
    gets = _Calls()
    async with S3Stage(s3_conn, keep_written=keep) as s3:
        s3.client.meta.events.register("before-call.s3.GetObject", gets)
        result = await stage_batches(s3, "staging/p/t/mem/", SCHEMA, _table().to_batches())
        (staged,) = result.files
        back = await _read_all(s3, result.files)
        assert back is not None and back.equals(_table())
        assert gets.calls == (0 if keep else 1)
        assert s3.take_written(staged.key) is None  # used once: a later read goes to S3
        again = await _read_all(s3, result.files)
        assert again is not None and again.equals(_table())
    assert gets.calls == (1 if keep else 2)


def test_files_kept_in_memory_are_bounded(s3_conn: S3Conn) -> None:
    s3 = S3Stage(s3_conn, keep_written=True)
    s3.remember("a", b"a" * (20 * MIB))
    s3.remember("b", b"b" * (20 * MIB))  # over 32 MB together: the oldest goes
    s3.remember("c", b"c" * (33 * MIB))  # too big to keep at all
    assert (s3.take_written("a"), s3.take_written("c")) == (None, None)
    assert s3.take_written("b") == b"b" * (20 * MIB)
    off = S3Stage(s3_conn)
    off.remember("a", b"a")
    assert off.take_written("a") is None
