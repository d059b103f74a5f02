"""Run report values, shaped by spec/json-output-format.md."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

RunStatus = Literal["success", "partial_success", "failed"]


def utc_now() -> datetime:
    return datetime.now(UTC)


def iso(ts: datetime) -> str:
    """ISO 8601 in UTC with an explicit +00:00 offset and microseconds (naive values are UTC)."""
    aware = ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)
    return aware.isoformat(timespec="microseconds")


def new_execution_id(start: datetime) -> str:
    """``sync_YYYYMMDD_HHMMSS_<8 hex>``, the date and time being ``start`` in UTC."""
    return f"sync_{start.astimezone(UTC):%Y%m%d_%H%M%S}_{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True)
class TableSuccess:
    table: str
    rows_processed: int
    files_created: int
    duration_seconds: float
    completed_at: datetime
    extra: dict[str, Any] = field(default_factory=dict)  # added keys the spec leaves room for

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "status": "success",
            "rows_processed": self.rows_processed,
            "files_created": self.files_created,
            "duration_seconds": round(self.duration_seconds, 6),
            "completed_at": iso(self.completed_at),
        }
        out.update({k: v for k, v in self.extra.items() if k not in out})
        return out


@dataclass(frozen=True)
class TableFailure:
    table: str
    error_message: str
    failed_at: datetime
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. phase, retryable

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "status": "failed",
            "error_message": self.error_message,
            "failed_at": iso(self.failed_at),
        }
        out.update({k: v for k, v in self.extra.items() if k not in out})
        return out


TableResult = TableSuccess | TableFailure


@dataclass(frozen=True)
class RunReport:
    execution_id: str
    start_time: datetime
    pipeline: str
    tables_requested: tuple[str, ...]
    results: dict[str, TableResult]
    end_time: datetime
    error: str | None = None  # why the run as a whole could not start (a usage error; said on stderr, and
    # in each table's result): the run failed, even with no table to name

    @property
    def duration_seconds(self) -> float:
        return (self.end_time - self.start_time).total_seconds()

    @property
    def successes(self) -> list[TableSuccess]:
        return [r for r in self.results.values() if isinstance(r, TableSuccess)]

    @property
    def failures(self) -> list[TableFailure]:
        return [r for r in self.results.values() if isinstance(r, TableFailure)]

    @property
    def status(self) -> RunStatus:
        if self.error is not None:
            return "failed"
        if not self.failures:
            return "success"
        return "partial_success" if self.successes else "failed"

    @property
    def exit_code(self) -> int:
        return 0 if self.status == "success" else 1

    def summary(self) -> dict[str, int]:
        ok = self.successes
        return {
            "success_count": len(ok),
            "failure_count": len(self.failures),
            "total_rows_processed": sum(r.rows_processed for r in ok),
            "total_files_created": sum(r.files_created for r in ok),
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "execution_id": self.execution_id,
            "start_time": iso(self.start_time),
            "pipeline": self.pipeline,
            "tables_requested": list(self.tables_requested),
            "total_tables": len(self.tables_requested),
            "table_results": {t: self.results[t].to_dict() for t in self.tables_requested},
            "status": self.status,
            "end_time": iso(self.end_time),
            "duration_seconds": round(self.duration_seconds, 6),
            "summary": self.summary(),
        }
