"""Named, bounded limiters for every shared resource of a run."""

from __future__ import annotations

import os
from dataclasses import dataclass

import anyio

from src.config.models import Pipeline


@dataclass(frozen=True)
class Limits:
    tables: anyio.CapacityLimiter  # tables in flight (processing.max_parallel_tables)
    mysql: anyio.CapacityLimiter  # MySQL connections (never above the source's max_connections)
    cpu: anyio.CapacityLimiter  # worker threads doing Arrow conversion and Parquet encode/decode
    s3_parts: anyio.CapacityLimiter  # S3 multipart parts in flight
    loads: anyio.CapacityLimiter  # concurrent warehouse loads (WLM slots)

    @classmethod
    def for_pipeline(cls, pipeline: Pipeline) -> Limits:
        """Must be called inside the event loop."""
        return cls(
            tables=anyio.CapacityLimiter(pipeline.processing.max_parallel_tables),
            mysql=anyio.CapacityLimiter(pipeline.source.max_connections),
            cpu=anyio.CapacityLimiter(max(2, os.cpu_count() or 2)),
            s3_parts=anyio.CapacityLimiter(pipeline.s3.max_concurrency),
            loads=anyio.CapacityLimiter(pipeline.target.max_connections),
        )
