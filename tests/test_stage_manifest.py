"""The manifest (Redshift COPY format, shaped as UNLOAD MANIFEST VERBOSE, plus the engine's ``s3shift`` key),
and rebuilding a StageResult from S3 (for --load-only), from v1 stages (with their sidecar) too."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from src.common.errors import StageError
from src.config.models import S3Conn
from src.stage.manifest import build_manifest, parse_manifest, read_stage_result
from src.stage.models import StagedFile, StageResult
from src.stage.s3 import S3Stage
from tests.test_stage_support import get_object, rewrite_as_v1

FILES = (
    StagedFile(
        key="p/t/r/part-00000.parquet", url="s3://b/p/t/r/part-00000.parquet", size_bytes=1234, rows=10
    ),
    StagedFile(key="p/t/r/part-00001.parquet", url="s3://b/p/t/r/part-00001.parquet", size_bytes=99, rows=1),
)


STAGE = StageResult(
    prefix="p/t/r/",
    files=FILES,
    manifest_key="p/t/r/manifest.json",
    manifest_url="s3://b/p/t/r/manifest.json",
    rows=11,
    bytes=1333,
    schema_hash="abc",
    meta={"window": {"strategy": "full_sync"}, "naïve": ["🙂", 1.5, None]},
)


def test_manifest_is_shaped_as_unload_manifest_verbose() -> None:
    """COPY reads ``entries`` (url, mandatory, meta.content_length); the rest is what UNLOAD's MANIFEST
    VERBOSE writes (entry record_count, totals in meta) and one key of ours."""
    doc = json.loads(build_manifest(STAGE))
    assert doc == {
        "entries": [
            {
                "url": "s3://b/p/t/r/part-00000.parquet",
                "mandatory": True,
                "meta": {"content_length": 1234, "record_count": 10},
            },
            {
                "url": "s3://b/p/t/r/part-00001.parquet",
                "mandatory": True,
                "meta": {"content_length": 99, "record_count": 1},
            },
        ],
        "meta": {"content_length": 1333, "record_count": 11},
        "s3shift": {"format": "s3shift.stage.v2", "schema_hash": "abc", "meta": dict(STAGE.meta)},
    }
    assert parse_manifest(build_manifest(STAGE)) == [(f.url, f.size_bytes) for f in FILES]
    empty = json.loads(build_manifest(replace(STAGE, files=(), rows=0, bytes=0, meta={})))
    assert empty["entries"] == [] and empty["meta"] == {"content_length": 0, "record_count": 0}


@pytest.mark.parametrize(
    "data",
    [
        b"not json",
        b"{}",
        b'{"entries": [{"url": "s3://b/k"}]}',  # no content_length: Parquet COPY would refuse it
        b'{"entries": [{"url": "/local/k", "meta": {"content_length": 1}}]}',
        b'{"entries": [{"url": "s3://b/k", "meta": {"content_length": "12"}}]}',
        b'{"entries": [{"url": "s3://b/k", "meta": {"content_length": -1}}]}',
    ],
)
def test_parse_rejects_what_copy_would_not_load(data: bytes) -> None:
    with pytest.raises(StageError, match="not a valid COPY manifest"):
        parse_manifest(data)


def _result(s3: S3Stage, prefix: str) -> StageResult:
    files = tuple(
        StagedFile(
            key=f"{prefix}part-{i:05d}.parquet",
            url=s3.url(f"{prefix}part-{i:05d}.parquet"),
            size_bytes=3,
            rows=i,
        )
        for i in range(2)
    )
    return StageResult(
        prefix=prefix,
        files=files,
        manifest_key=f"{prefix}manifest.json",
        manifest_url=s3.url(f"{prefix}manifest.json"),
        rows=1,
        bytes=6,
        schema_hash="abc",
    )


@pytest.mark.anyio
async def test_read_stage_result_round_trip_and_checks(s3_conn: S3Conn) -> None:
    async with S3Stage(s3_conn) as s3:
        result = _result(s3, "staging/p/t/r/")
        await s3.put_bytes(result.manifest_key, build_manifest(result))
        assert await read_stage_result(s3, result.manifest_url) == result

        with pytest.raises(StageError, match=r"not a manifest\.json in bucket"):
            await read_stage_result(s3, f"s3://other-bucket/{result.manifest_key}")
        with pytest.raises(StageError, match=r"not a manifest\.json"):
            await read_stage_result(s3, s3.url("staging/p/t/r/part-00000.parquet"))

        doc = json.loads(build_manifest(result))
        bad: list[tuple[dict[str, object], str]] = [
            ({**doc, "meta": {"content_length": 6, "record_count": 2}}, "disagree with its entries"),
            ({**doc, "s3shift": {**doc["s3shift"], "format": "v9"}}, "not of the s3shift.stage.v2 format"),
            ({**doc, "s3shift": {**doc["s3shift"], "meta": [1]}}, "needs a meta object"),
            ({**doc, "entries": [{**doc["entries"][0], "meta": {"content_length": 3}}]}, "no record_count"),
            ({**doc, "entries": [{**doc["entries"][0], "url": "s3://elsewhere/k"}]}, "not in bucket"),
        ]
        for broken, message in bad:
            await s3.put_bytes(result.manifest_key, json.dumps(broken).encode())
            with pytest.raises(StageError, match=message) as caught:
                await read_stage_result(s3, result.manifest_url)
            assert "bad s3shift manifest" in caught.value.message and not caught.value.retryable


@pytest.mark.anyio
async def test_a_v1_stage_is_read_from_its_sidecar(s3_conn: S3Conn) -> None:
    """Stages written before the manifest carried the engine's data: only their sidecar has it."""
    async with S3Stage(s3_conn) as s3:
        result = _result(s3, "staging/p/t/v1/")
        await s3.put_bytes(result.manifest_key, build_manifest(result))
        rewrite_as_v1(s3_conn, result.manifest_key)
        assert set(json.loads(get_object(s3_conn, result.manifest_key))) == {"entries"}
        assert await read_stage_result(s3, result.manifest_url) == result

        v1_manifest = get_object(s3_conn, result.manifest_key)
        one_entry = {"entries": json.loads(v1_manifest)["entries"][:1]}
        await s3.put_bytes(result.manifest_key, json.dumps(one_entry).encode())
        with pytest.raises(StageError, match="disagree"):
            await read_stage_result(s3, result.manifest_url)

        await s3.put_bytes(result.manifest_key, v1_manifest)
        await s3.put_bytes(f"{result.prefix}_s3shift.json", b'{"format": "v0"}')
        with pytest.raises(StageError, match=r"bad _s3shift\.json"):
            await read_stage_result(s3, result.manifest_url)

        await s3.delete_keys([f"{result.prefix}_s3shift.json"])
        with pytest.raises(StageError, match="NoSuchKey"):
            await read_stage_result(s3, result.manifest_url)
