"""Smoke test against a REAL Redshift cluster; skipped unless the environment names one.

    S3SHIFT_REDSHIFT_DSN=postgresql://user:password@cluster.xxx.redshift.amazonaws.com:5439/dev
    S3SHIFT_REDSHIFT_IAM_ROLE=arn:aws:iam::123456789012:role/s3shift-copy
    S3SHIFT_REDSHIFT_S3_BUCKET=my-staging-bucket   (same region as the cluster)
    AWS credentials for writing to that bucket in the usual AWS_* variables.

Run: ``pytest -m redshift tests/test_redshift_live.py``. It creates and drops its own schema.
"""

from __future__ import annotations

import io
import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any
from urllib.parse import unquote, urlsplit

import anyio
import asyncpg
import boto3
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from src.common.secret import Secret
from src.config.models import TargetConn
from src.plan.models import Watermark
from src.stage.manifest import build_manifest
from src.stage.models import StagedFile, StageResult
from src.warehouse.factory import open_warehouse
from tests.test_warehouse_load import ALL_TYPES, ROWS, arrow_table, replace_request

ENV = {k: v for k, v in os.environ.items() if k.startswith(("S3SHIFT_REDSHIFT_", "AWS_"))}  # before fixtures
NEEDED = ("S3SHIFT_REDSHIFT_DSN", "S3SHIFT_REDSHIFT_IAM_ROLE", "S3SHIFT_REDSHIFT_S3_BUCKET")
pytestmark = [
    pytest.mark.redshift,
    pytest.mark.anyio,
    pytest.mark.skipif(not all(ENV.get(k) for k in NEEDED), reason="no Redshift cluster configured"),
]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _target(schema: str) -> TargetConn:
    dsn = urlsplit(ENV["S3SHIFT_REDSHIFT_DSN"])
    return TargetConn(
        name="live_redshift",
        type="redshift",
        host=dsn.hostname or "",
        port=dsn.port or 5439,
        username=unquote(dsn.username or ""),
        password=Secret(unquote(dsn.password or "")),
        database=dsn.path.lstrip("/") or "dev",
        schema=schema,
        iam_role=ENV["S3SHIFT_REDSHIFT_IAM_ROLE"],
        ssl=True,
    )


def _stage(s3: Any, bucket: str, table: pa.Table) -> StageResult:
    prefix = f"s3shift-smoke/{uuid.uuid4().hex}/"
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    key, data = f"{prefix}part-00000.parquet", buf.getvalue()
    s3.put_object(Bucket=bucket, Key=key, Body=data)
    url = f"s3://{bucket}/{key}"
    result = StageResult(
        prefix=prefix,
        files=(StagedFile(key, url, len(data), table.num_rows),),
        manifest_key=f"{prefix}manifest.json",
        manifest_url=f"s3://{bucket}/{prefix}manifest.json",
        rows=table.num_rows,
        bytes=len(data),
        schema_hash="smoke",
        meta={"execution_id": "smoke", "window": {"strategy": "full_sync"}},
    )
    # the writer's manifest, byte for byte: proves COPY takes UNLOAD VERBOSE's keys and our s3shift key
    s3.put_object(Bucket=bucket, Key=result.manifest_key, Body=build_manifest(result))
    return result


async def _no_batches(_: StageResult) -> AsyncIterator[pa.RecordBatch]:
    return
    yield  # pragma: no cover - Redshift reads S3 itself


async def test_replace_and_merge_on_real_redshift(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two replace loads, then a merge load with a watermark: the state SQL runs on the real cluster."""
    for key in (
        "AWS_CONFIG_FILE",
        "AWS_SHARED_CREDENTIALS_FILE",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
    ):
        monkeypatch.delenv(key, raising=False)
    for key, value in ENV.items():
        monkeypatch.setenv(key, value)
    s3, bucket = boto3.client("s3"), ENV["S3SHIFT_REDSHIFT_S3_BUCKET"]
    cfg = _target(f"s3shift_smoke_{uuid.uuid4().hex[:8]}")
    result = await anyio.to_thread.run_sync(_stage, s3, bucket, arrow_table(ALL_TYPES, ROWS))
    try:
        async with open_warehouse(cfg, batches=_no_batches) as wh:
            await wh.ping()
            first = replace_request(ALL_TYPES, result)
            assert (await wh.load(first)).rows_loaded == len(ROWS)
            second = replace_request(ALL_TYPES, result, expect=first.execution_id)
            again = await wh.load(second)
            mark = Watermark(ts=None, id=2**64 - 1)
            merge = replace(
                replace_request(ALL_TYPES, result, expect=second.execution_id),
                mode="merge",
                key=("id",),
                order_by=("id",),
            )
            merge = replace(merge, state=replace(merge.state, strategy="id_only", watermark=mark))
            merged = await wh.load(merge)
            state = await wh.read_state("test", "db.t")
        assert (again.rows_loaded, again.rows_deleted) == (len(ROWS), len(ROWS))
        assert (merged.rows_loaded, merged.rows_deleted) == (len(ROWS), len(ROWS))
        assert state is not None and state.stage_id == merge.execution_id and state.watermark == mark
        conn = await asyncpg.connect(ENV["S3SHIFT_REDSHIFT_DSN"], ssl="require")
        try:
            got = await conn.fetch(f'SELECT id, dec, u64, s, ts, tstz, tm FROM "{cfg.schema}".t ORDER BY id')
        finally:
            await conn.close()
        want = [(r["id"], r["dec"], r["u64"], r["s"], r["ts"], r["tstz"], r["tm"]) for r in ROWS]
        assert [tuple(r) for r in got] == want
    finally:
        conn = await asyncpg.connect(ENV["S3SHIFT_REDSHIFT_DSN"], ssl="require")
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{cfg.schema}" CASCADE')
        finally:
            await conn.close()
