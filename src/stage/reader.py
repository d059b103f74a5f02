"""Read staged Parquet back as record batches, one file at a time, with bounded memory.

Each file is streamed from S3 into a private temp file (it holds raw data: mode 0600 in a 0700
directory), decoded batch by batch (never across row groups) in worker threads, and deleted as soon as
it has been read. A small file this run staged itself, which S3 confirmed by its checksum, is read from
memory instead (``S3Stage.remember``).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncGenerator, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import anyio
import pyarrow as pa
import pyarrow.parquet as pq

from src.common.errors import StageError
from src.stage.models import StagedFile
from src.stage.s3 import S3Stage


async def iter_staged_batches(
    s3: S3Stage,
    files: Sequence[StagedFile],
    *,
    batch_rows: int = 65536,
    cpu_limiter: anyio.CapacityLimiter | None = None,
) -> AsyncGenerator[pa.RecordBatch, None]:
    """Yield every row of ``files`` in order as record batches of at most ``batch_rows`` rows.

    An async generator: wrap it in ``contextlib.aclosing`` so temp files go when you stop early.
    """
    workdir = Path(tempfile.mkdtemp(prefix="s3shift-read-"))
    try:
        for index, staged in enumerate(files):
            path = workdir / f"{index:05d}.parquet"
            try:
                parquet = await _open(s3, staged, path, cpu_limiter)
                try:
                    batches = _row_group_batches(parquet, batch_rows)
                    while (batch := await _run(next, staged, cpu_limiter, batches, None)) is not None:
                        yield batch
                finally:
                    parquet.close()
            finally:
                path.unlink(missing_ok=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _row_group_batches(parquet: pq.ParquetFile, batch_rows: int) -> Iterator[pa.RecordBatch]:
    """The file's batches one row group at a time: ``iter_batches`` over the whole file fills each batch
    across row groups, so a file of big values (row groups of a few rows, bounded in bytes by the writer)
    would be decoded whole into one batch."""
    for group in range(parquet.num_row_groups):
        yield from parquet.iter_batches(batch_size=batch_rows, row_groups=[group])


async def _open(s3: S3Stage, staged: StagedFile, path: Path, limiter: anyio.CapacityLimiter | None) -> Any:
    written = s3.take_written(staged.key)  # a small file this run staged: no GET, no temp file
    if written is not None and len(written) == staged.size_bytes:
        return await _run(pq.ParquetFile, staged, limiter, pa.BufferReader(written))
    size = await s3.download_to(staged.key, path)
    if size != staged.size_bytes:
        raise StageError(
            f"{staged.url} is {size} bytes, the manifest says {staged.size_bytes}; re-extract",
            key=staged.key,
        )
    return await _run(pq.ParquetFile, staged, limiter, path)


async def _run(
    fn: Callable[..., Any], staged: StagedFile, limiter: anyio.CapacityLimiter | None, *args: object
) -> Any:
    try:
        return await anyio.to_thread.run_sync(fn, *args, limiter=limiter)
    except (pa.ArrowException, OSError) as exc:
        raise StageError(f"cannot read staged Parquet {staged.url}: {exc}", key=staged.key) from exc
