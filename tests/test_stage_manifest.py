"""The Redshift COPY manifest, its sidecar, and rebuilding a StageResult from S3 (for --load-only)."""

from __future__ import annotations

import json

import pytest

from src.common.errors import StageError
from src.config.models import S3Conn
from src.stage.manifest import build_manifest, build_sidecar, parse_manifest, read_stage_result
from src.stage.models import StagedFile, StageResult
from src.stage.s3 import S3Stage

FILES = (
    StagedFile(
        key="p/t/r/part-00000.parquet", url="s3://b/p/t/r/part-00000.parquet", size_bytes=1234, rows=10
    ),
    StagedFile(key="p/t/r/part-00001.parquet", url="s3://b/p/t/r/part-00001.parquet", size_bytes=99, rows=1),
)


def test_manifest_is_exactly_redshift_format() -> None:
    doc = json.loads(build_manifest(FILES))
    assert doc == {
        "entries": [
            {"url": "s3://b/p/t/r/part-00000.parquet", "mandatory": True, "meta": {"content_length": 1234}},
            {"url": "s3://b/p/t/r/part-00001.parquet", "mandatory": True, "meta": {"content_length": 99}},
        ]
    }
    assert parse_manifest(build_manifest(FILES)) == [(f.url, f.size_bytes) for f in FILES]
    assert json.loads(build_manifest(())) == {"entries": []}


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
        await s3.put_bytes(f"{result.prefix}_s3shift.json", build_sidecar(result))
        await s3.put_bytes(result.manifest_key, build_manifest(result.files))
        assert await read_stage_result(s3, result.manifest_url) == result

        with pytest.raises(StageError, match=r"not a manifest\.json in bucket"):
            await read_stage_result(s3, f"s3://other-bucket/{result.manifest_key}")
        with pytest.raises(StageError, match=r"not a manifest\.json"):
            await read_stage_result(s3, s3.url("staging/p/t/r/part-00000.parquet"))

        await s3.put_bytes(result.manifest_key, build_manifest(result.files[:1]))
        with pytest.raises(StageError, match="disagree"):
            await read_stage_result(s3, result.manifest_url)

        await s3.put_bytes(f"{result.prefix}_s3shift.json", b'{"format": "v0"}')
        with pytest.raises(StageError, match=r"bad _s3shift\.json"):
            await read_stage_result(s3, result.manifest_url)

        missing = _result(s3, "staging/p/t/none/")
        await s3.put_bytes(missing.manifest_key, build_manifest(missing.files))
        with pytest.raises(StageError, match="NoSuchKey"):
            await read_stage_result(s3, missing.manifest_url)
