"""Stages already in S3: the complete ones of a table in extraction order, and deleting one.

A stage is complete when its ``manifest.json`` exists (written last) and is valid (with, for a stage
written by v1, its ``_s3shift.json`` sidecar). Run "directories" are found with one delimited listing
of the table prefix; names starting with ``_`` (such as the ``_runs/`` liveness markers) are never
stages, and the same listing tells whether any marker of the table exists; one scan of the pipeline
prefix at a run's start (``scan_pipeline``: its uploads, its run markers, its table directories)
spares that listing to tables that have no directory yet. ``run_marker``, ``bury_dead_runs`` and
``clean_dead_runs`` (in ``runs``) are re-exported here: this module is the engine's one entry point.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

import anyio

from src.common.errors import StageError, first_error
from src.common.log import get_logger
from src.stage.manifest import LEGACY_SIDECAR_NAME, MANIFEST_NAME, stage_from_manifest
from src.stage.models import StageResult
from src.stage.multipart import error_code
from src.stage.runs import RUNS_DIR, RunMarker, bury_dead_runs, clean_dead_runs, read_run_markers, run_marker
from src.stage.s3 import OpenUpload, S3Stage

__all__ = [
    "PipelineScan",
    "TableRuns",
    "bury_dead_runs",
    "clean_dead_runs",
    "delete_stage",
    "delete_stage_later",
    "execution_time",
    "list_runs",
    "list_stages",
    "read_stages",
    "run_marker",
    "scan_pipeline",
]

SINCE_SLACK: Final = timedelta(hours=1)  # clocks of different hosts may disagree this much
READ_CONCURRENCY: Final = 8  # manifests read at once
_EXECUTION_ID: Final = re.compile(r"sync_(\d{8}_\d{6})_[0-9a-f]{8}")
_EPOCH: Final = datetime.min.replace(tzinfo=UTC)

log = get_logger("stage.pending")


def execution_time(execution_id: str) -> datetime | None:
    """The UTC start time in ``sync_YYYYMMDD_HHMMSS_<8 hex>``, or None for another shape."""
    match = _EXECUTION_ID.fullmatch(execution_id)
    if match is None:
        return None
    try:
        return datetime.strptime(match.group(1), "%Y%m%d_%H%M%S").replace(tzinfo=UTC)
    except ValueError:
        return None


@dataclass(frozen=True)
class TableRuns:
    """What one delimited listing of a table prefix shows."""

    ids: tuple[str, ...]  # run directories that may hold a stage (names of another shape included)
    markers: bool  # a ``_runs/`` directory exists: some run holds a liveness marker, or a killed one left it


async def list_stages(
    s3: S3Stage, pipeline: str, table: str, *, since: str | None = None
) -> list[StageResult]:
    """Every complete stage of the table, oldest extraction first (``meta["extracted_at"]``, then id).

    ``since`` is an execution id: runs whose id says they started more than an hour before it are
    skipped without reading anything. Directories of another shape than an execution id are kept.
    """
    runs = await list_runs(s3, pipeline, table, since=since)
    return await read_stages(s3, pipeline, table, runs.ids)


@dataclass(frozen=True)
class PipelineScan:
    """Listings at a run's start that spare each table work that cannot find anything: the pipeline's
    unfinished multipart uploads (listed FIRST, as ``clean_dead_runs`` requires), then the other runs'
    markers, then its table directories (a table without one has no stage and no marker)."""

    uploads: tuple[OpenUpload, ...]
    tables: frozenset[str]  # directory names under the pipeline prefix ("db.table")
    runs: tuple[tuple[str, RunMarker], ...] = ()  # (key, marker) of the other runs' markers

    @property
    def run_ids(self) -> frozenset[str]:
        return frozenset(marker.execution_id for _, marker in self.runs)


async def scan_pipeline(s3: S3Stage, pipeline: str, *, own_execution_id: str | None = None) -> PipelineScan:
    """The scan; the run markers are read only for a run that uploads (``own_execution_id``)."""
    prefix = s3.pipeline_prefix(pipeline)
    uploads = tuple(await s3.list_uploads(prefix))
    runs: list[tuple[str, RunMarker]] = []
    if own_execution_id is not None:
        runs = await read_run_markers(s3, pipeline, own_execution_id=own_execution_id)
    tables = frozenset(d[len(prefix) : -1] for d in await s3.list_dirs(prefix))
    return PipelineScan(uploads, tables - {RUNS_DIR.rstrip("/")}, tuple(runs))


async def list_runs(
    s3: S3Stage, pipeline: str, table: str, *, since: str | None = None, scan: PipelineScan | None = None
) -> TableRuns:
    """One listing of the table prefix: the run directories ``list_stages`` would read (``since`` as
    there), and whether any run marker exists. None of either, without a request, when ``scan`` (made
    earlier in this run) found no directory of the table."""
    table_prefix = s3.table_prefix(pipeline, table)
    if scan is not None and table_prefix[len(s3.pipeline_prefix(pipeline)) : -1] not in scan.tables:
        return TableRuns((), markers=False)
    floor = _floor(since)
    names = [d[len(table_prefix) : -1] for d in await s3.list_dirs(table_prefix)]
    ids = tuple(i for i in names if _is_candidate(i, floor))
    return TableRuns(ids, RUNS_DIR.rstrip("/") in names)


async def read_stages(s3: S3Stage, pipeline: str, table: str, ids: Sequence[str]) -> list[StageResult]:
    """The complete stages among the table's run directories ``ids``, oldest extraction first."""
    table_prefix = s3.table_prefix(pipeline, table)
    found: list[StageResult] = []
    limiter = anyio.CapacityLimiter(READ_CONCURRENCY)
    try:
        async with anyio.create_task_group() as tg:
            for execution_id in ids:
                tg.start_soon(_read_one, s3, f"{table_prefix}{execution_id}/", found, limiter)
    except BaseExceptionGroup as group:
        raise first_error(group) from None
    return sorted(found, key=_order)


def _floor(since: str | None) -> datetime | None:
    if since is None:
        return None
    at = execution_time(since)
    if at is None:
        raise StageError(
            f"since={since!r} is not an execution id like sync_YYYYMMDD_HHMMSS_0123abcd", retryable=False
        )
    return at - SINCE_SLACK


def _is_candidate(execution_id: str, floor: datetime | None) -> bool:
    if not execution_id or execution_id.startswith(("_", ".")):
        return False
    at = execution_time(execution_id)
    return floor is None or at is None or at >= floor


async def _read_one(
    s3: S3Stage, run_prefix: str, found: list[StageResult], limiter: anyio.CapacityLimiter
) -> None:
    async with limiter:
        key = f"{run_prefix}{MANIFEST_NAME}"
        manifest = await s3.get_optional(key)
        if manifest is None:
            log.debug("%s has no manifest: not staged (a running, failed or killed run)", s3.url(run_prefix))
            return
        try:
            found.append(await stage_from_manifest(s3, key, manifest))
        except StageError as exc:
            if exc.retryable or error_code(exc.__cause__) not in (None, "NoSuchKey", "404"):
                raise
            log.warning("skipping the stage %s, it cannot be loaded: %s", s3.url(run_prefix), exc.message)


def _order(stage: StageResult) -> tuple[datetime, str]:
    execution_id = stage.execution_id
    at = _parse_time(stage.meta.get("extracted_at")) or execution_time(execution_id) or _EPOCH
    return at, execution_id


def _parse_time(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        at = datetime.fromisoformat(value)
    except ValueError:
        return None
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


async def delete_stage(s3: S3Stage, stage: StageResult) -> None:
    """Delete a stage: its manifest FIRST (so it is never seen half deleted), then its files, with the
    sidecar a v1 stage has (absent from later ones: S3 deletes an absent key without error)."""
    keys = _stage_keys(s3, stage)
    await s3.delete_keys([stage.manifest_key])
    await s3.delete_keys(keys)
    log.info("deleted the stage %s (%d files)", s3.url(stage.prefix), len(stage.files))


async def delete_stage_later(s3: S3Stage, stage: StageResult) -> None:
    """Queue a stage no run can load any more (``engine.pending.unloadable``) for deletion with the run's
    other deletes (``S3Stage.delete_later``), its manifest first: left behind, it was read and reported
    as skipped by every later run of the table."""
    keys = _stage_keys(s3, stage)
    for key in (stage.manifest_key, *keys):
        await s3.delete_later(key)
    log.info("deleting the stage %s, which no run can load any more", s3.url(stage.prefix))


def _stage_keys(s3: S3Stage, stage: StageResult) -> list[str]:
    """The keys of a stage but its manifest, all under its own prefix (else StageError: never delete
    what a manifest names elsewhere)."""
    keys = [f.key for f in stage.files] + [f"{stage.prefix}{LEGACY_SIDECAR_NAME}"]
    outside = [k for k in [stage.manifest_key, *keys] if not k.startswith(stage.prefix) or k == stage.prefix]
    if not stage.prefix.strip("/") or outside:
        raise StageError(
            f"refusing to delete the stage {s3.url(stage.prefix)}: {outside[:1]} lies outside it",
            key=stage.manifest_key,
            retryable=False,
        )
    return keys
