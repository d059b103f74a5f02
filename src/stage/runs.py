"""Liveness markers of running syncs, and cleanup after runs that were killed (reliability.md 1.8).

A run writes ``<table prefix>_runs/<execution_id>.json`` (host, pid, the pid's start time, boot id,
start time) before it works on a table, and deletes it after: batched with the run's other markers
(``S3Stage.delete_later``), by the end of the run at the latest, since a marker that outlives its
table's work still truthfully says the run is alive. A SIGKILL leaves markers behind, with maybe an
unfinished multipart upload (invisible, billed) and partial files. A later run finds such markers and
judges them: on this host a run is dead when its pid is gone, a zombie, or now belongs to another
process (pid reuse: another start time); on another host (or after a reboot) when it started more
than ``foreign_after_seconds`` ago. A dead run's uploads are aborted, its files deleted unless it
wrote a manifest (then it is a pending stage, kept for loading), and its marker removed last, so a
cleanup that is itself interrupted is simply redone.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import AsyncIterator, Sequence
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
from src.stage.s3 import OpenUpload, S3Stage

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

    @classmethod
    def current(cls, execution_id: str) -> RunMarker:
        pid = os.getpid()
        stat = _proc_stat(pid)
        return cls(
            execution_id, socket.gethostname(), pid, stat[1] if stat else None, _boot_id(), datetime.now(UTC)
        )

    def to_bytes(self) -> bytes:
        doc = {"format": MARKER_FORMAT, **asdict(self), "started_at": self.started_at.isoformat()}
        return jsonio.dumps_bytes(doc)

    @classmethod
    def from_bytes(cls, data: bytes) -> RunMarker:
        """ValueError when ``data`` is not a marker."""
        try:
            doc: dict[str, Any] = jsonio.loads(data)
            if doc.pop("format") != MARKER_FORMAT:
                raise ValueError("unknown format")
            started = datetime.fromisoformat(doc.pop("started_at"))
            marker = cls(**doc, started_at=started if started.tzinfo else started.replace(tzinfo=UTC))
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"not a run marker: {exc}") from exc
        if not isinstance(marker.pid, int) or marker.pid <= 0 or not isinstance(marker.host, str):
            raise ValueError(f"not a run marker: pid {marker.pid!r}, host {marker.host!r}")
        return marker

    def is_dead(self, now: datetime, foreign_after_seconds: float) -> bool:
        if self.host == socket.gethostname() and self.boot_id == _boot_id():
            return not _alive(self.pid, self.pid_start)
        return (now - self.started_at).total_seconds() > foreign_after_seconds


def marker_key(s3: S3Stage, pipeline: str, table: str, execution_id: str) -> str:
    s3.run_prefix(pipeline, table, execution_id)  # validates the id
    return f"{s3.table_prefix(pipeline, table)}{RUNS_DIR}{execution_id.strip('/')}.json"


def run_marker(
    s3: S3Stage, pipeline: str, table: str, execution_id: str
) -> contextlib.AbstractAsyncContextManager[None]:
    """Mark this run alive on the table while inside; on any exit the marker is queued for deletion
    (``S3Stage.delete_later``: it goes with the run's others, at the latest when the client closes)."""
    return _run_marker(s3, marker_key(s3, pipeline, table, execution_id), execution_id)


@contextlib.asynccontextmanager
async def _run_marker(s3: S3Stage, key: str, execution_id: str) -> AsyncIterator[None]:
    await s3.put_bytes(key, RunMarker.current(execution_id).to_bytes(), "application/json")
    try:
        yield
    finally:
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
) -> int:
    """Clean up after dead runs of the table; return how many multipart uploads were aborted.

    Live runs are never touched. Unfinished uploads under the table that belong to no marker are
    aborted once older than ``foreign_after_seconds``. A run must hold its ``run_marker`` before it
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
            aborted += await _bury(s3, s3.run_prefix(pipeline, table, marker.execution_id), key, marker)
    known = {m.execution_id for _, m in found} | {own_execution_id}
    cutoff = now - timedelta(seconds=foreign_after_seconds)
    for upload in uploads:
        run = upload.key[len(table_prefix) :].split("/", 1)[0]
        if run not in known and upload.initiated <= cutoff:
            aborted += await _abort(s3, upload)
    return aborted


async def _read_markers(s3: S3Stage, table_prefix: str) -> list[tuple[str, RunMarker]]:
    found = []
    for key, modified in await s3.list_objects(f"{table_prefix}{RUNS_DIR}"):
        name = key[len(table_prefix) + len(RUNS_DIR) :]
        execution_id = name.removesuffix(".json")
        if "/" in name or not name.endswith(".json") or execution_id.strip(".") == "":
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


async def _bury(s3: S3Stage, run_prefix: str, key: str, marker: RunMarker) -> int:
    """Abort the dead run's uploads, drop its files unless staged, then its marker; return aborts."""
    aborted = 0
    for upload in await s3.list_uploads(run_prefix):
        aborted += await _abort(s3, upload)
    if await s3.exists(f"{run_prefix}{MANIFEST_NAME}"):
        log.info("run %s died after staging: its stage stays, pending", marker.execution_id)
    else:
        deleted = await s3.delete_prefix(run_prefix)
        log.info(
            "run %s died (%s pid %d): removed %d partial files",
            marker.execution_id,
            marker.host,
            marker.pid,
            deleted,
        )
    await s3.delete_keys([key])
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
