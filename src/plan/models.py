"""Values that describe what a table's run reads: watermarks and windows. Pure data, JSON round-trip."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from src.config.models import Strategy

TS_FORMAT = "%Y-%m-%d %H:%M:%S.%f"


def format_ts(ts: datetime) -> str:
    """``ts`` as ``TS_FORMAT`` reads it back: the year in four digits (``strftime`` writes the year 1 as
    ``1``, which ``strptime`` cannot read; a watermark may be set there)."""
    return f"{ts.year:04d}-{ts:%m-%d %H:%M:%S.%f}"


@dataclass(frozen=True)
class Watermark:
    """A position in a table's cursor order. ``ts`` is naive with microseconds: UTC for TIMESTAMP
    columns (sessions are pinned to +00:00), the stored wall time for DATETIME columns. ``id`` is an
    integer cursor (BIGINT UNSIGNED included, so it may exceed 2**63)."""

    ts: datetime | None = None
    id: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"ts": format_ts(self.ts) if self.ts else None, "id": self.id}

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Watermark | None:
        if not data or (data.get("ts") is None and data.get("id") is None):
            return None
        ts = data.get("ts")
        return cls(ts=datetime.strptime(ts, TS_FORMAT) if ts else None, id=_int(data.get("id")))

    def __str__(self) -> str:
        parts = [
            f"ts={format_ts(self.ts)}" if self.ts else "",
            f"id={self.id}" if self.id is not None else "",
        ]
        return ", ".join(p for p in parts if p) or "beginning"


def _int(value: Any) -> int | None:
    return None if value is None else int(value)


@dataclass(frozen=True)
class Window:
    """What one extraction reads: rows after ``start`` (exclusive; None = from the beginning) up to
    ``end`` (inclusive; fixed from the source's own clock or MAX(id) when the run starts).

    - full_sync: everything (start and end None).
    - id_only: ``start.id < id <= end.id``, keyset pages ordered by id.
    - timestamp_only: ``start.ts < ts <= end.ts`` (pages ordered by ts and the single-column key when
      there is one, so ties across page boundaries are neither lost nor read twice).
    - hybrid: ``(ts, id) > (start.ts, start.id) AND ts <= end.ts``, keyset pages ordered by (ts, id).
    Pages order by the key's other columns after an id that is not the whole key; a table with no key
    that makes the order unique is read by one query (``src.source.keyset``).
    """

    strategy: Strategy
    ts_column: str | None = None
    id_column: str | None = None
    start: Watermark | None = None
    end: Watermark | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "strategy": self.strategy,
            "ts_column": self.ts_column,
            "id_column": self.id_column,
            **self.bounds(),
        }

    def bounds(self) -> dict[str, Any]:
        """``start`` and ``end`` as JSON (a table result's ``window``, the dry run's and the plan's)."""
        return {
            "start": self.start.to_dict() if self.start else None,
            "end": self.end.to_dict() if self.end else None,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Window:
        return cls(
            strategy=data["strategy"],
            ts_column=data.get("ts_column"),
            id_column=data.get("id_column"),
            start=Watermark.from_dict(data.get("start")),
            end=Watermark.from_dict(data.get("end")),
        )
