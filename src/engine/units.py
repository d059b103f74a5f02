"""Units of work for many machines (DESIGN.md section 9): ``s3shift plan`` fixes each table's window (and,
for a table the engine would read in key ranges, the ranges) and emits JSON units; ``sync --unit`` runs
one of them in any process on any host, sharing only S3 and the warehouse. Any scheduler (GNU parallel,
xargs, a Kubernetes Job array, Airflow) runs them: s3shift has no scheduler of its own.

A table is ONE ``sync`` unit (extract, stage, load), or ``extract`` units (one per key range) and one
``load`` unit that ``depends_on`` them. A plan's stages live under ``<pipeline prefix>_plans/<plan_id>/
<db.table>/<unit>/``, outside the table's run directories that syncs list and clean up. The stage's
execution id is the plan id (a ``sync_...`` id): the load commits it as the table's state row, so a rerun
of the load finds it committed and loads nothing, and ``expect_stage`` (the state the plan was made
from) refuses a plan that another load made stale. This module: the unit's JSON, and the plan.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final, Literal, get_args

from src.common import jsonio
from src.common.errors import ConfigError, S3ShiftError
from src.config.models import Strategy
from src.plan.models import Window
from src.source.ranges import KeyRange
from src.stage.pending import execution_time
from src.stage.s3 import S3Stage, path_segment

UNIT_FORMAT: Final = "s3shift.unit.v1"
PLANS_DIR: Final = "_plans/"
UnitKind = Literal["sync", "extract", "load"]


@dataclass(frozen=True)
class Unit:
    """One unit of a plan: what it reads (``window``, ``ranges``) and what the plan was made from."""

    plan_id: str  # the stage's execution id: a ``sync_YYYYMMDD_HHMMSS_<8 hex>`` made when planning
    pipeline: str
    table: str
    kind: UnitKind
    window: Window  # its end fixed when planning
    extracted_at: str  # the source's clock when planning (the stage's label, as a run's)
    expect_stage: str  # stage_id of the table's latest state when planning ("": none)
    schema_hash: str  # the table's planned columns: an extract of other columns is refused
    index: int = 0  # an extract unit's number among the table's
    ranges: tuple[KeyRange, ...] = ()  # an extract unit's key ranges; (): the whole window
    depends_on: tuple[str, ...] = ()  # a load unit's extract units

    @property
    def name(self) -> str:
        """The unit's name within its table (its stage directory): ``sync``, ``extract-0003``, ``load``."""
        return f"extract-{self.index:04d}" if self.kind == "extract" else self.kind

    @property
    def id(self) -> str:
        return f"{self.table}:{self.name}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": UNIT_FORMAT,
            "id": self.id,
            "kind": self.kind,
            "plan_id": self.plan_id,
            "pipeline": self.pipeline,
            "table": self.table,
            "depends_on": list(self.depends_on),
            "window": self.window.to_dict(),
            "ranges": [[r.low, r.high] for r in self.ranges],
            "extracted_at": self.extracted_at,
            "expect_stage": self.expect_stage,
            "schema_hash": self.schema_hash,
        }


def parse_unit(text: str) -> Unit:
    """The unit ``--unit`` names: its JSON, or ``@path`` of a file holding it. ConfigError (one line)
    when it cannot be read or is not a unit."""
    where = "--unit"
    if text.startswith("@"):
        where = f"--unit file {text[1:]}"
        try:
            text = Path(text[1:]).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{where}: cannot read it ({exc.__class__.__name__}: {exc})") from None
    try:
        doc = jsonio.loads(text)
    except ValueError as exc:
        raise ConfigError(f"{where} is not JSON ({exc}): pass one unit of `s3shift plan`, or @FILE") from None
    try:
        return _unit(doc)
    except (KeyError, TypeError, ValueError) as exc:
        what = doc.get("id") if isinstance(doc, dict) else None
        raise ConfigError(
            f"{where}{f' ({what})' if isinstance(what, str) else ''} is not a unit of `s3shift plan` "
            f"({UNIT_FORMAT}): {exc.__class__.__name__} {exc}; pass one element of the plan's units"
        ) from None


def _unit(doc: Any) -> Unit:
    if not isinstance(doc, dict) or doc.get("format") != UNIT_FORMAT:
        raise ValueError(f'no "format": "{UNIT_FORMAT}"')
    kind = doc["kind"]
    if kind not in get_args(UnitKind):
        raise ValueError(f"kind {kind!r}")
    table, name = _text(doc, "table"), _text(doc, "id").rpartition(":")[2]
    index = int(name.removeprefix("extract-")) if kind == "extract" else 0
    unit = Unit(
        plan_id=_text(doc, "plan_id"),
        pipeline=_text(doc, "pipeline"),
        table=table,
        kind=kind,
        window=Window.from_dict(doc["window"]),
        extracted_at=_text(doc, "extracted_at"),
        expect_stage=str(doc["expect_stage"]),
        schema_hash=_text(doc, "schema_hash"),
        index=index,
        ranges=tuple(KeyRange(_bound(low), _bound(high)) for low, high in doc["ranges"]),
        depends_on=tuple(str(d) for d in doc["depends_on"]),
    )
    _check_shape(unit)
    if execution_time(unit.plan_id) is None:
        raise ValueError(f"plan_id {unit.plan_id!r} is not like sync_YYYYMMDD_HHMMSS_0123abcd")
    if unit.id != doc["id"]:
        raise ValueError(f"id {doc['id']!r} does not name table {table!r} and kind {kind!r}")
    return unit


def _check_shape(unit: Unit) -> None:
    """What ``table_units`` makes: a load depends on extract units of its table, only it depends on any,
    an extract reads key ranges, and the window is of a strategy."""
    if unit.window.strategy not in get_args(Strategy):
        raise ValueError(f"window strategy {unit.window.strategy!r}")
    if (unit.kind == "load") != bool(unit.depends_on):
        raise ValueError("a load unit, and only it, depends on extract units")
    if (unit.kind == "extract") != bool(unit.ranges):
        raise ValueError("an extract unit, and only it, reads key ranges")
    for ident in unit.depends_on:
        table, _, name = ident.rpartition(":")
        if table != unit.table or not name.removeprefix("extract-").isdigit():
            raise ValueError(f"depends_on {ident!r} is not an extract unit of {unit.table}")


def _text(doc: dict[str, Any], key: str) -> str:
    value = doc[key]
    if not isinstance(value, str) or not value:
        raise ValueError(f"{key} must be a non-empty string")
    return value


def _bound(value: Any) -> int | None:
    if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
        raise ValueError(f"range bound {value!r} is not an integer or null")
    return value


def table_units(base: Unit, ranges: Sequence[KeyRange]) -> list[Unit]:
    """The table's units: one ``sync`` unit, or with two ranges or more one ``extract`` unit per range
    and the ``load`` unit of them all."""
    if len(ranges) < 2:
        return [base]
    extracts = [replace(base, kind="extract", index=i, ranges=(r,)) for i, r in enumerate(ranges)]
    load = replace(base, kind="load", depends_on=tuple(u.id for u in extracts))
    return [*extracts, load]


def plan_prefix(s3: S3Stage, unit: Unit) -> str:
    """``<pipeline prefix>_plans/<plan_id>/<db.table>/``: the plan's stages of the table, and the
    manifest of the load (``manifest.json``)."""
    plan_id = path_segment("execution_id", unit.plan_id)
    return f"{s3.pipeline_prefix(unit.pipeline)}{PLANS_DIR}{plan_id}/{path_segment('table', unit.table)}/"


def unit_prefix(s3: S3Stage, unit: Unit, name: str | None = None) -> str:
    """Where the unit (or the one of its table called ``name``) stages its files and manifest."""
    return f"{plan_prefix(s3, unit)}{name or unit.name}/"


def stale_plan(unit: Unit, why: str) -> S3ShiftError:
    """The plan no longer fits the table (``why``): it was loaded since, or its config changed."""
    return S3ShiftError(
        f"unit {unit.id} of plan {unit.plan_id} is stale: {why}; nothing was loaded — make a new plan "
        f"(s3shift plan -p {unit.pipeline} -t {unit.table}) and run its units",
        table=unit.table,
        retryable=False,
    )


def moved_since(unit: Unit, current: str, loaded_by: str) -> str:
    """Why the table's latest state (stage ``current``) is not the one the plan was made from."""
    seen = f"stage {current} loaded by {loaded_by}" if current else "no state (a watermark reset)"
    planned = f"stage {unit.expect_stage}" if unit.expect_stage else "no state"
    return f"{unit.table} was planned from {planned} but its latest state is now {seen}"
