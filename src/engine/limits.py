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
    index: int = 0  # this process among the run's ``processes``
    processes: int = 1

    def share_of(self, total: int) -> int:
        """This process's part of a run-wide limit of ``total`` (``share``)."""
        return share(total, self.index, self.processes)

    @classmethod
    def for_pipeline(cls, pipeline: Pipeline, *, index: int = 0, processes: int = 1) -> Limits:
        """The limits of process ``index`` of the run's ``processes`` (``src.engine.workers``): its share
        of each, so that the run's processes together never exceed the configured ones. Must be called
        inside the event loop."""

        def part(total: int) -> anyio.CapacityLimiter:
            return anyio.CapacityLimiter(share(total, index, processes))

        return cls(
            tables=part(pipeline.processing.max_parallel_tables),
            mysql=part(pipeline.source.max_connections),
            cpu=anyio.CapacityLimiter(max(2, (os.cpu_count() or 2) // processes)),
            s3_parts=part(pipeline.s3.max_concurrency),
            loads=part(pipeline.target.max_connections),
            index=index,
            processes=processes,
        )


def share(total: int, index: int, processes: int) -> int:
    """Process ``index``'s part of a limit of ``total`` split over ``processes``: the parts add up to
    ``total`` (``process_count`` never makes more processes than any limit has)."""
    return max(1, total // processes + (1 if index < total % processes else 0))
