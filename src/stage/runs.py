"""Liveness markers of running syncs, and cleanup after runs that were killed (reliability.md 1.8).

A run writes ONE marker, ``<pipeline prefix>_runs/<execution_id>.json`` (host, pid, the pid's start
time, boot id, start time, and the tables it may write under), before it uploads anything, and deletes
it when it ends (``run_marker``). A SIGKILL leaves the marker behind, with maybe unfinished multipart
uploads (invisible, billed) and partial files under its tables; so does a run that could not finish
its own cleanup (S3 unreachable), on purpose: it is then cleaned up as a killed run. A later run of
the pipeline reads the markers once at its start and judges them: on this host a run is dead when its
pid is gone, a zombie, or now belongs to another process (pid reuse: another start time); on another
host (or after a reboot) when it started more than ``foreign_after_seconds`` ago. For a dead run,
under each table it named (every table directory when its marker cannot be read), its uploads are
aborted and its files deleted unless it wrote a manifest (then it is a pending stage, kept for
loading); its marker goes last, so a cleanup that is itself interrupted is simply redone
(``bury_dead_runs``).

Markers of one table, ``<table prefix>_runs/<execution_id>.json`` (written by earlier versions, one per
table), are judged the same way when that table is cleaned (``clean_dead_runs``), which also aborts
old uploads that belong to no marker at all.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import AsyncIterator, Collection, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

import anyio

from src.common import jsonio
from src.common.errors import StageError
from src.common.log import get_logger
from src.stage.manifest import MANIFEST_NAME
from src.stage.multipart import CLEANUP_TIMEOUT, error_code
from src.stage.s3 import OpenUpload, S3Stage, path_segment

RUNS_DIR: Final = "_runs/"
MARKER_FORMAT: Final = "s3shift.run.v1"
DEFAULT_FOREIGN_AFTER: Final = 6 * 3600.0
_UNKNOWN_HOST: Final = "?"  # a marker that cannot be read is judged by its age, like a foreign one

log = get_logger("stage.runs")


@dataclass(frozen=True)
class RunMarker:
    """What tells whether a run is still alive."""

    execution_id: str
    host: str
    pid: int
    pid_start: int | None  # /proc/<pid>/stat field 22 (clock ticks after boot), None where unknown
    boot_id: str | None  # /proc/sys/kernel/random/boot_id: pids and start times are per boot
    started_at: datetime
    tables: tuple[str, ...] = ()  # a run's marker: the tables it may write under (one table's marker: ())

    @classmethod
    def current(cls, execution_id: str, tables: Sequence[str] = ()) -> RunMarker:
        pid = os.getpid()
        stat = _proc_stat(pid)
        host, boot, now = socket.gethostname(), _boot_id(), datetime.now(UTC)
        return cls(execution_id, host, pid, stat[1] if stat else None, boot, now, tuple(tables))

    def to_bytes(self) -> bytes:
        doc = {"format": MARKER_FORMAT, **asdict(self), "started_at": self.started_at.isoformat()}
        if not self.tables:
            del doc["tables"]
        return jsonio.dumps_bytes(doc)

    @classmethod
    def from_bytes(cls, data: bytes) -> RunMarker:
        """ValueError when ``data`` is not a marker."""
        try:
            doc: dict[str, Any] = jsonio.loads(data)
            if doc.pop("format") != MARKER_FORMAT:
                raise ValueError("unknown format")
            started = datetime.fromisoformat(doc.pop("started_at"))
            tables = tuple(doc.pop("tables", ()))
            marker = cls(
                **doc, started_at=started if started.tzinfo else started.replace(tzinfo=UTC), tables=tables
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"not a run marker: {exc}") from exc
        if not isinstance(marker.pid, int) or marker.pid <= 0 or not isinstance(marker.host, str):
            raise ValueError(f"not a run marker: pid {marker.pid!r}, host {marker.host!r}")
        if not all(isinstance(t, str) and t.strip(".") and "/" not in t for t in tables):
            raise ValueError(f"not a run marker: tables {list(tables)!r}")
        return marker

    def is_dead(self, now: datetime, foreign_after_seconds: float) -> bool:
        if self.host == socket.gethostname() and self.boot_id == _boot_id():
            return not _alive(self.pid, self.pid_start)
        return (now - self.started_at).total_seconds() > foreign_after_seconds


def marker_key(s3: S3Stage, pipeline: str, table: str, execution_id: str) -> str:
    """Where one table's marker lives (earlier versions wrote one per table)."""
    s3.run_prefix(pipeline, table, execution_id)  # validates the id
    return f"{s3.table_prefix(pipeline, table)}{RUNS_DIR}{execution_id.strip('/')}.json"


def run_marker_key(s3: S3Stage, pipeline: str, execution_id: str) -> str:
    """Where a run's marker lives: ``<pipeline prefix>_runs/<execution_id>.json``."""
    return f"{s3.pipeline_prefix(pipeline)}{RUNS_DIR}{path_segment('execution_id', execution_id)}.json"


def run_marker(
    s3: S3Stage, pipeline: str, execution_id: str, tables: Sequence[str]
) -> contextlib.AbstractAsyncContextManager[None]:
    """Mark this run alive on the pipeline while inside, naming the ``tables`` ("db.table") it may write
    under; enter it before any upload. On exit the marker is queued for deletion (``S3Stage.delete_later``:
    at the latest when the client closes), unless a cleanup of the run failed (``S3Stage.left_behind``,
    counted in ``unclean``): then it stays, and the next run, finding it dead, cleans up after it."""
    marker = RunMarker.current(execution_id, tables)
    return _run_marker(s3, run_marker_key(s3, pipeline, execution_id), marker)


@contextlib.asynccontextmanager
async def _run_marker(s3: S3Stage, key: str, marker: RunMarker) -> AsyncIterator[None]:
    await s3.put_bytes(key, marker.to_bytes(), "application/json")
    try:
        yield
    finally:
        if s3.unclean:
            log.warning(
                "kept the run marker %s: %d cleanup(s) failed, so the next run of the pipeline cleans up "
                "after this one (aborts its uploads, removes its partial files)",
                s3.url(key),
                s3.unclean,
            )
        else:
            await _remove_marker(s3, key)


async def _remove_marker(s3: S3Stage, key: str) -> None:
    with anyio.move_on_after(CLEANUP_TIMEOUT, shield=True) as scope:
        try:
            await s3.delete_later(key)
        except StageError as exc:
            log.warning("could not remove the run marker %s: %s", s3.url(key), exc.message)
    if scope.cancelled_caught:
        log.warning("timed out removing the run marker %s; the next run will", s3.url(key))


async def clean_dead_runs(
    s3: S3Stage,
    pipeline: str,
    table: str,
    *,
    own_execution_id: str,
    foreign_after_seconds: float = DEFAULT_FOREIGN_AFTER,
    uploads: Sequence[OpenUpload] | None = None,
    markers: bool = True,
    runs: Collection[str] = (),
) -> int:
    """Clean up after dead runs of the table that marked it alone; return how many multipart uploads
    were aborted.

    Live runs are never touched. Unfinished uploads under the table that belong to no marker (of the
    table, or ``runs``: the execution ids of the pipeline's run markers, read after ``uploads`` were
    listed) are aborted once older than ``foreign_after_seconds``. A run must hold its marker before it
    starts any upload under the table.

    ``uploads``: unfinished uploads listed before this call (``pending.scan_pipeline``, once per run);
    only those under the table count; None lists the table's now. ``markers=False``: a listing of the table
    prefix made after ``uploads`` showed no ``_runs/`` directory, so there is no marker to read.
    """
    table_prefix = s3.table_prefix(pipeline, table)
    now = datetime.now(UTC)
    # uploads first: a run marks itself before it uploads, so every upload listed here that belongs
    # to a running run has its marker in the listing that follows
    if uploads is None:
        uploads = await s3.list_uploads(table_prefix)
    uploads = [u for u in uploads if u.key.startswith(table_prefix)]
    if not uploads and not markers:
        return 0
    found = await _read_markers(s3, table_prefix) if markers else []
    aborted = 0
    for key, marker in found:
        if marker.execution_id != own_execution_id and marker.is_dead(now, foreign_after_seconds):
            run_prefix = s3.run_prefix(pipeline, table, marker.execution_id)
            aborted += await _bury(s3, table, run_prefix, marker, await s3.list_uploads(run_prefix))
            await s3.delete_keys([key])
    known = {m.execution_id for _, m in found} | {own_execution_id, *runs}
    cutoff = now - timedelta(seconds=foreign_after_seconds)
    for upload in uploads:
        run = upload.key[len(table_prefix) :].split("/", 1)[0]
        if run not in known and upload.initiated <= cutoff:
            aborted += await _abort(s3, upload)
    return aborted


async def read_run_markers(
    s3: S3Stage, pipeline: str, *, own_execution_id: str
) -> list[tuple[str, RunMarker]]:
    """The (key, marker) of every run marker of the pipeline but our own (not read)."""
    return await _read_markers(s3, s3.pipeline_prefix(pipeline), skip=own_execution_id)


async def bury_dead_runs(
    s3: S3Stage,
    pipeline: str,
    markers: Sequence[tuple[str, RunMarker]],
    *,
    own_execution_id: str,
    foreign_after_seconds: float = DEFAULT_FOREIGN_AFTER,
) -> int:
    """Clean up after the dead runs among the pipeline's run ``markers`` (``read_run_markers``); return
    how many multipart uploads were aborted. Live runs are never touched."""
    now = datetime.now(UTC)
    dead = [
        (key, m)
        for key, m in markers
        if m.execution_id != own_execution_id and m.is_dead(now, foreign_after_seconds)
    ]
    if not dead:
        return 0
    pipeline_prefix = s3.pipeline_prefix(pipeline)
    # listed now, not taken from the run's start: a run judged dead may have started one since
    uploads = await s3.list_uploads(pipeline_prefix)
    every_table: list[str] | None = None
    aborted = 0
    for key, marker in dead:
        tables: Sequence[str] = marker.tables
        if not tables:  # unreadable: look under every table
            if every_table is None:
                every_table = [d[len(pipeline_prefix) : -1] for d in await s3.list_dirs(pipeline_prefix)]
            tables = [t for t in every_table if t != RUNS_DIR.rstrip("/")]
        for table in tables:
            run_prefix = s3.run_prefix(pipeline, table, marker.execution_id)
            aborted += await _bury(
                s3, table, run_prefix, marker, [u for u in uploads if u.key.startswith(run_prefix)]
            )
        await s3.delete_keys([key])
    return aborted


async def _read_markers(s3: S3Stage, prefix: str, *, skip: str | None = None) -> list[tuple[str, RunMarker]]:
    """The markers in ``<prefix>_runs/`` (but ``skip``'s)."""
    found = []
    for key, modified in await s3.list_objects(f"{prefix}{RUNS_DIR}"):
        name = key[len(prefix) + len(RUNS_DIR) :]
        execution_id = name.removesuffix(".json")
        if "/" in name or not name.endswith(".json") or execution_id.strip(".") == "" or execution_id == skip:
            continue
        data = await s3.get_optional(key)
        if data is not None:  # else its run just ended
            found.append((key, _marker(s3, key, execution_id, data, modified)))
    return found


def _marker(s3: S3Stage, key: str, execution_id: str, data: bytes, modified: datetime) -> RunMarker:
    try:
        marker = RunMarker.from_bytes(data)
    except ValueError as exc:
        log.warning("unreadable run marker %s (%s): judged by its age", s3.url(key), exc)
        return RunMarker(execution_id, _UNKNOWN_HOST, 1, None, None, modified)
    if marker.execution_id != execution_id:  # the key names the run prefix that gets cleaned
        marker = RunMarker(execution_id, _UNKNOWN_HOST, 1, None, None, modified)
    return marker


async def _bury(
    s3: S3Stage, table: str, run_prefix: str, marker: RunMarker, uploads: Sequence[OpenUpload]
) -> int:
    """Abort the dead run's ``uploads`` (under ``run_prefix``, its directory of ``table``), drop its files
    there unless staged; return aborts. Its marker is the caller's to delete, last."""
    aborted = 0
    for upload in uploads:
        aborted += await _abort(s3, upload)
    keys = [key for key, _ in await s3.list_objects(run_prefix)]
    if f"{run_prefix}{MANIFEST_NAME}" in keys:
        log.info(
            "run %s died after staging %s: its stage %s stays, pending (the next load of the table loads it)",
            marker.execution_id,
            table,
            s3.url(run_prefix),
        )
    elif keys:
        deleted = await s3.delete_keys(keys)
        log.info(
            "run %s died (%s pid %d): removed %d partial file(s) of %s from %s",
            marker.execution_id,
            marker.host,
            marker.pid,
            deleted,
            table,
            s3.url(run_prefix),
        )
    return aborted


async def _abort(s3: S3Stage, upload: OpenUpload) -> int:
    try:
        await s3.abort_upload(upload)
    except StageError as exc:
        if error_code(exc.__cause__) != "NoSuchUpload":
            raise
        return 0  # another run's cleanup was first
    return 1


def _alive(pid: int, pid_start: int | None) -> bool:
    if not Path("/proc/self/stat").exists():
        return _pid_exists(pid)
    stat = _proc_stat(pid)
    if stat is None or stat[0] == "Z":  # gone, or a zombie waiting to be reaped
        return False
    return pid_start is None or stat[1] == pid_start


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, start time in clock ticks) from /proc/<pid>/stat, or None when unavailable."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
        fields = text[text.rindex(")") + 2 :].split()  # the command name may hold spaces and ')'
        return fields[0], int(fields[19])  # fields 3 and 22 of proc(5)
    except (OSError, ValueError, IndexError):
        return None


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip() or None
    except OSError:
        return None
