"""Collects table results as they finish (from any task) and builds the run report."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from src.common.errors import S3ShiftError, describe, internal_error
from src.common.log import get_logger
from src.report.models import RunReport, TableFailure, TableResult, utc_now

log = get_logger("report")
INTERRUPTED = {"phase": "interrupted", "retryable": True}  # a table the run ended without: rerun it
INTERNAL = {"phase": "internal", "retryable": False}  # a bug in s3shift: rerunning repeats it


def failure(table: str, exc: BaseException, *, phase: str) -> TableFailure:
    """The failed result of a table ended by ``exc`` in ``phase``; every one carries ``phase`` and
    ``retryable``. Ours say whether a retry can help; a foreign ``OSError`` (a connection refused, reset
    or lost, a timeout) is retryable where it happened; any other exception escaped the error handling
    (a bug in s3shift): phase ``internal``, not retryable, and the message says so."""
    if isinstance(exc, S3ShiftError | OSError):
        retryable = exc.retryable if isinstance(exc, S3ShiftError) else True
        return TableFailure(table, describe(exc), utc_now(), extra={"phase": phase, "retryable": retryable})
    return TableFailure(table, internal_error(exc), utc_now(), extra=dict(INTERNAL))


@dataclass
class Aggregator:
    """Every table's result, recorded as it finishes (by any task of the run's event loop)."""

    execution_id: str
    start_time: datetime
    pipeline: str
    tables: Sequence[str]
    results: dict[str, TableResult] = field(default_factory=dict)

    def record(self, result: TableResult) -> None:
        if result.table in self.results:
            log.warning("duplicate result for %s ignored", result.table)
            return
        self.results[result.table] = result
        outcome = "ok" if not isinstance(result, TableFailure) else f"FAILED: {result.error_message}"
        log.info("%s %s", result.table, outcome)

    def report(
        self,
        *,
        missing_reason: str = "table was not processed (run interrupted)",
        missing_extra: Mapping[str, object] = INTERRUPTED,
    ) -> RunReport:
        """The final report. A requested table with no result is reported failed (``INTERRUPTED`` unless
        ``missing_extra`` says otherwise), never dropped."""
        now = utc_now()
        results = {
            t: self.results.get(t) or TableFailure(t, missing_reason, now, extra=dict(missing_extra))
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
