"""The pending-stage chain (pure): which staged runs a load takes, in what order, and which it skips."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from src.engine.pending import format_ts, select
from src.plan.models import Watermark, Window
from src.stage.models import StageResult
from src.warehouse.base import StateRow

T = [datetime(2024, 1, d) for d in range(1, 9)]


def stage(
    eid: str,
    start: Watermark | None,
    end: Watermark | None,
    at: datetime,
    strategy: str = "hybrid",
    **meta: Any,
) -> StageResult:
    win = Window(strategy, "updated_at", "id", start, end)  # type: ignore[arg-type]
    full = {
        "execution_id": eid,
        "extracted_at": format_ts(at),
        "window": win.to_dict(),
        "schema": {},
        "target_table": "t",
        "mode": "merge",
        "key": ["id"],
        "order_by": ["updated_at", "id"],
        **meta,
    }
    return StageResult(
        prefix=f"p/{eid}/",
        files=(),
        manifest_key="m",
        manifest_url=f"s3://b/p/{eid}/m",
        rows=1,
        bytes=1,
        meta=full,
    )


def state(stage_id: str, mark: Watermark | None, at: datetime | None) -> StateRow:
    return StateRow("p", "db.t", "s.t", "hybrid", stage_id, stage_id, mark, None, 1, "", at)


def ids(stages: tuple[StageResult, ...]) -> list[str]:
    return [s.meta["execution_id"] for s in stages]


def test_chain_continues_from_the_committed_watermark() -> None:
    w1, w2, w3 = (Watermark(ts=t) for t in T[1:4])
    stages = [stage("a", None, w1, T[1]), stage("b", w1, w2, T[2]), stage("c", w2, w3, T[3])]
    chain = select(stages, state("a", w1, T[1]), committed={"a"})
    assert ids(chain.load) == ["b", "c"] and chain.skipped == () and chain.position == w3


def test_a_window_that_does_not_continue_the_chain_is_skipped() -> None:
    w1, w2 = Watermark(ts=T[1]), Watermark(ts=T[2])
    # "b" was planned from the beginning too, but "a" committed first: loading "b" would double rows
    stages = [stage("a", None, w1, T[1]), stage("b", None, w2, T[2])]
    chain = select(stages, state("a", w1, T[1]), committed={"a"})
    assert chain.load == () and ids(chain.skipped) == ["b"] and chain.position == w1


def test_newest_full_snapshot_supersedes_older_stages() -> None:
    stages = [stage("a", None, None, T[1], "full_sync"), stage("b", None, None, T[2], "full_sync")]
    chain = select(stages, None, committed=set())
    assert ids(chain.load) == ["b"] and ids(chain.skipped) == ["a"]


def test_stages_without_load_metadata_are_ignored() -> None:
    legacy = StageResult(
        prefix="p/x/", files=(), manifest_key="m", manifest_url="s3://b/p/x/m", rows=1, bytes=1, meta={}
    )
    chain = select([legacy, stage("a", None, Watermark(ts=T[1]), T[1])], None, committed=set())
    assert ids(chain.load) == ["a"]


def test_reset_restarts_the_chain_from_the_beginning() -> None:
    w1 = Watermark(ts=T[1])
    chain = select([stage("b", None, w1, T[3])], state("", None, None), committed={"a"})
    assert ids(chain.load) == ["b"]
