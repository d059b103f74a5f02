"""Collects table results as they finish (from any task) and builds the run report."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from src.common.log import get_logger
from src.report.models import RunReport, TableFailure, TableResult, utc_now

log = get_logger("report")


@dataclass
class Aggregator:
    """Tables send results into ``sender()`` clones; ``run()`` consumes them until every sender is closed."""

    execution_id: str
    start_time: datetime
    pipeline: str
    tables: Sequence[str]
    results: dict[str, TableResult] = field(default_factory=dict)

    def __post_init__(self) -> None:
        send, receive = anyio.create_memory_object_stream[TableResult](max_buffer_size=len(self.tables) or 1)
        self._send: MemoryObjectSendStream[TableResult] = send
        self._receive: MemoryObjectReceiveStream[TableResult] = receive

    def sender(self) -> MemoryObjectSendStream[TableResult]:
        return self._send.clone()

    def close_origin(self) -> None:
        """Close the original send handle once every clone has been handed out."""
        self._send.close()

    async def run(self) -> None:
        async with self._receive:
            async for result in self._receive:
                self.record(result)

    def record(self, result: TableResult) -> None:
        if result.table in self.results:
            log.warning("duplicate result for %s ignored", result.table)
            return
        self.results[result.table] = result
        outcome = "ok" if not isinstance(result, TableFailure) else f"FAILED: {result.error_message}"
        log.info("%s %s", result.table, outcome)

    def report(self, *, missing_reason: str = "table was not processed (run interrupted)") -> RunReport:
        """The final report. A requested table with no result is reported failed, never dropped."""
        now = utc_now()
        results = {
            t: self.results.get(t) or TableFailure(table=t, error_message=missing_reason, failed_at=now)
            for t in self.tables
        }
        return RunReport(
            execution_id=self.execution_id,
            start_time=self.start_time,
            pipeline=self.pipeline,
            tables_requested=tuple(self.tables),
            results=results,
            end_time=now,
        )
