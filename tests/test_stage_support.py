"""Helpers for the stage tests: feeding write_parquet, listing the moto bucket, S3 fault hooks."""

from __future__ import annotations

import json
import os
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import anyio
import pyarrow as pa
from aiobotocore.awsrequest import AioAWSResponse

from src.config.models import S3Conn
from src.stage.models import StageResult
from src.stage.s3 import S3Stage
from src.stage.writer import write_parquet
from tests.conftest import s3_client

Hook = Callable[..., Awaitable[Any]]


async def stage_batches(
    s3: S3Stage,
    prefix: str,
    schema: pa.Schema,
    batches: Sequence[pa.RecordBatch],
    *,
    file_size_bytes: int = 256 * 1024 * 1024,
    fail_after: int | None = None,
    fail_when: Callable[[], bool] = lambda: True,
    schema_hash: str | None = None,
    meta: Mapping[str, Any] | None = None,
) -> StageResult:
    """Run a producer task and write_parquet side by side over a bounded stream, as the engine does."""
    send, receive = anyio.create_memory_object_stream[pa.RecordBatch](2)
    result: list[StageResult] = []

    async def produce() -> None:
        async with send:
            for index, batch in enumerate(batches):
                if fail_after is not None and index == fail_after:
                    while not fail_when():  # noqa: ASYNC110 - a test-side predicate, polled
                        await anyio.sleep(0.01)
                    raise RuntimeError("producer failed on purpose")
                await send.send(batch)

    async def consume() -> None:
        async with receive:
            result.append(
                await write_parquet(
                    s3,
                    prefix=prefix,
                    schema=schema,
                    receive=receive,
                    file_size_bytes=file_size_bytes,
                    schema_hash=schema_hash,
                    meta=meta,
                )
            )

    async with anyio.create_task_group() as tg:
        tg.start_soon(produce)
        tg.start_soon(consume)
    return result[0]


def list_keys(cfg: S3Conn, prefix: str = "") -> list[str]:
    resp = s3_client(str(cfg.endpoint_url)).list_objects_v2(Bucket=cfg.bucket, Prefix=prefix)
    return sorted(o["Key"] for o in resp.get("Contents", []))


def open_uploads(cfg: S3Conn, prefix: str = "") -> list[str]:
    resp = s3_client(str(cfg.endpoint_url)).list_multipart_uploads(Bucket=cfg.bucket, Prefix=prefix)
    return [u["Key"] for u in resp.get("Uploads", [])]


def get_object(cfg: S3Conn, key: str) -> bytes:
    body: bytes = s3_client(str(cfg.endpoint_url)).get_object(Bucket=cfg.bucket, Key=key)["Body"].read()
    return body


def rewrite_as_v1(cfg: S3Conn, manifest_key: str, *, sidecar: bool = True) -> None:
    """Turn the stage whose manifest is at ``manifest_key`` into one written by s3shift v1: a manifest
    with only COPY's keys and the ``_s3shift.json`` sidecar beside it (the bytes v1 wrote, field by
    field); ``sidecar=False`` leaves the sidecar out, as a v1 stage that lost it."""
    client = s3_client(str(cfg.endpoint_url))
    doc = json.loads(get_object(cfg, manifest_key))
    prefix, bucket_prefix = manifest_key[: -len("manifest.json")], f"s3://{cfg.bucket}/"
    entries = [
        {"url": e["url"], "mandatory": True, "meta": {"content_length": e["meta"]["content_length"]}}
        for e in doc["entries"]
    ]
    files = [
        {
            "key": e["url"][len(bucket_prefix) :],
            "url": e["url"],
            "size_bytes": e["meta"]["content_length"],
            "rows": e["meta"]["record_count"],
        }
        for e in doc["entries"]
    ]
    v1 = {
        "format": "s3shift.stage.v1",
        "prefix": prefix,
        "schema_hash": doc["s3shift"]["schema_hash"],
        "rows": doc["meta"]["record_count"],
        "bytes": doc["meta"]["content_length"],
        "files": files,
        "meta": doc["s3shift"]["meta"],
    }
    if sidecar:
        client.put_object(Bucket=cfg.bucket, Key=f"{prefix}_s3shift.json", Body=json.dumps(v1).encode())
    client.put_object(Bucket=cfg.bucket, Key=manifest_key, Body=json.dumps({"entries": entries}).encode())


class _Raw:
    def __init__(self, body: bytes) -> None:
        self._body = body

    async def read(self, *args: Any) -> bytes:
        return self._body


def error_response(url: str, status: int, code: str) -> AioAWSResponse:
    """A synthetic S3 error reply, as aiobotocore's before-send hooks may return instead of sending."""
    body = (
        f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
        f"<Message>injected by the test</Message></Error>"
    ).encode()
    return AioAWSResponse(url, status, {"Content-Type": "application/xml"}, _Raw(body))


class FailTimes:
    """A before-send hook answering the first ``times`` calls with an S3 error (forever if None)."""

    def __init__(self, status: int, code: str, times: int | None = 1) -> None:
        self.status = status
        self.code = code
        self.times = times
        self.calls = 0

    async def __call__(self, request: Any, **kwargs: Any) -> AioAWSResponse | None:
        self.calls += 1
        if self.times is None or self.calls <= self.times:
            return error_response(request.url, self.status, self.code)
        return None


def random_binary_batch(schema: pa.Schema, rows: int, value_bytes: int, seed: int) -> pa.RecordBatch:
    """Incompressible data: ``rows`` random binary values of ``value_bytes`` each, plus an id column."""
    values = pa.array([os.urandom(value_bytes) for _ in range(rows)], pa.binary())
    ids = pa.array(range(seed * rows, (seed + 1) * rows), pa.int64())
    return pa.record_batch([ids, values], schema=schema)
