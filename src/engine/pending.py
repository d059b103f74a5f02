"""Which staged runs of a table are loaded, and in what order (pure).

Windows form a chain: each incremental window starts exactly where the committed watermark (or the
previous pending window) ends, so every row range is loaded once. A staged window that does not
continue the chain (another run committed first, or the watermark was set/reset since) is skipped and
reported, never loaded: that is what keeps append-only tables from doubling. The newest full snapshot
supersedes every staged run before it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from src.common.log import get_logger
from src.plan.models import TS_FORMAT, Watermark, Window
from src.stage.models import StageResult
from src.warehouse.base import StateRow

log = get_logger("engine.pending")


@dataclass(frozen=True)
class Chain:
    load: tuple[StageResult, ...]  # in order
    skipped: tuple[StageResult, ...]
    position: Watermark | None  # where the next extraction starts


def stage_id(stage: StageResult) -> str:
    return str(stage.meta.get("execution_id", ""))


def stage_window(stage: StageResult) -> Window:
    return Window.from_dict(stage.meta["window"])


def extracted_at(stage: StageResult) -> datetime:
    return parse_ts(stage.meta["extracted_at"])


def parse_ts(text: str) -> datetime:
    return datetime.strptime(text, TS_FORMAT)


REQUIRED_META = (
    "execution_id",
    "extracted_at",
    "window",
    "schema",
    "target_table",
    "mode",
    "key",
    "order_by",
)


def loadable(stage: StageResult) -> bool:
    """A stage whose meta carries everything a load needs (stages of older versions do not)."""
    return all(key in stage.meta for key in REQUIRED_META)


def select(stages: list[StageResult], state: StateRow | None, committed: set[str]) -> Chain:
    """``stages``: complete stages in extraction order; ``state``: the latest committed state row.
    Stages without the metadata a load needs are ignored (logged), never loaded."""
    for stage in stages:
        if not loadable(stage):
            log.warning("ignoring staged run %s: its meta lacks what a load needs", stage.manifest_url)
    stages = [s for s in stages if loadable(s)]
    fresh = [s for s in stages if stage_id(s) not in committed and _newer(s, state)]
    stale = [s for s in stages if stage_id(s) not in committed and not _newer(s, state)]
    fulls = [i for i, s in enumerate(fresh) if stage_window(s).strategy == "full_sync"]
    if fulls:
        stale += fresh[: fulls[-1]]
        fresh = fresh[fulls[-1] :]
    position = state.watermark if state else None
    load: list[StageResult] = []
    for stage in fresh:
        win = stage_window(stage)
        if win.strategy == "full_sync":
            load.append(stage)
            position = None
        elif win.start == position:
            load.append(stage)
            position = win.end
        else:
            stale.append(stage)
    return Chain(tuple(load), tuple(stale), position)


def for_target(state: StateRow | None, target: str, fold: Callable[[str], str] = str) -> StateRow | None:
    """``state`` as the position of the table's load into ``target`` ("schema.table"). A state committed
    for another target (``target_name`` or the connection's schema changed since) holds no position for
    this one, which has none of the rows before it: it is read from the beginning, as after a reset
    (merged, or with no key replacing what the target holds). The guard still expects ``state``. Names
    are compared as the warehouse spells them (``fold``: Redshift's ``Dialect.fold``): on Redshift
    ``s.Orders`` and ``s.orders`` are one table."""
    if state is None or fold(state.target) == fold(target) or state.strategy == "full_sync":
        return state
    log.warning(
        "%s: its watermark was committed for %s, not %s: reading it from the beginning",
        state.table,
        state.target,
        target,
    )
    return replace(state, strategy="reset", watermark=None, window_start=None)


INCREMENTAL = ("id_only", "timestamp_only", "hybrid")


def relies_on_target(state: StateRow | None) -> bool:
    """Whether ``state`` is a position its target's rows stand for: an incremental load committed there
    (not a ``watermark set``, which may be a start point for a target filled another way)."""
    return state is not None and state.strategy in INCREMENTAL and state.watermark is not None


def target_gone(state: StateRow, target: str) -> StateRow:
    """``state`` when its target no longer exists (dropped since, say to rebuild it): the rows before the
    position went with it, so the table is read from the beginning, as after a reset."""
    log.warning(
        "%s: its target %s no longer exists, though its watermark was committed there: reading the table "
        "from the beginning",
        state.table,
        target,
    )
    return replace(state, strategy="reset", watermark=None, window_start=None)


def unloadable(
    skipped: tuple[StageResult, ...], state: StateRow | None, *, loaded: bool
) -> tuple[StageResult, ...]:
    """The ``skipped`` stages no run can load any more, to be deleted. An incremental window that does not
    continue the chain never will (only a new state row moves the position, and every later one is newer
    than the stage); a stage extracted before the latest ``state`` neither. A full snapshot extracted after
    ``state`` and superseded by a newer one stays while this run committed nothing (``--backup-only``): a
    live run may be loading it, and would commit. Once this run committed a load, every one goes."""
    if loaded:
        return skipped
    return tuple(s for s in skipped if not _newer(s, state) or stage_window(s).strategy != "full_sync")


def _newer(stage: StageResult, state: StateRow | None) -> bool:
    """Whether ``stage`` was extracted after the latest state: after the extraction it committed, or
    after a ``watermark set``/``reset`` (which extracts nothing) was written. A stage staged before a set
    is stale even when its window starts where the set put the watermark: the set said to read from
    there again (say, after the stage could not be loaded); skipping it only means reading it again."""
    since = state.extracted_at or state.committed_at if state else None
    return since is None or extracted_at(stage) > since


def describe_stage(stage: StageResult) -> dict[str, Any]:
    win = stage_window(stage)
    return {
        "execution_id": stage_id(stage),
        "rows": stage.rows,
        "window": {"start": _wm(win.start), "end": _wm(win.end)},
        "manifest": stage.manifest_url,
    }


def _wm(mark: Watermark | None) -> dict[str, Any] | None:
    return mark.to_dict() if mark else None
