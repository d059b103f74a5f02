"""Worker processes: a run of many tables uses every core, not one event loop's.

One event loop is one core. With hundreds of small tables its per-table work (S3 requests, the
warehouse's statements, Arrow conversion and Parquet) is the run's bottleneck while the other cores
idle: on W4 (200 tables of 1,000 rows, 2 cores) the loop was busy ~93% of the run, the machine ~70%.

So the CLI forks ``processing.processes - 1`` workers BEFORE its event loop starts (``fork_workers``):
no loop, connection or thread exists yet, so the fork is safe, and it costs no imports. The parent then
runs the run as in one process - config, plans, the run marker, the S3 scan, every table's state - and
sends what it read to the workers (``Job``). The tables are handed out one at a time, in the request's
order, to whichever process has a free table slot (``Dispenser``); the parent runs tables too. Each
process opens its own pools with its share of every limit (``share``), so a run never has more MySQL
connections, warehouse loads, tables in flight or S3 parts than configured. Results go to the parent's
aggregator; the parent alone writes the report and removes the run marker.

Failures:
- SIGTERM/SIGINT/SIGHUP to the parent: it hands out no more tables and forwards SIGTERM to every worker,
  whose tables roll back exactly as in one process; it then collects their results (``drain``, bounded
  by ``DRAIN_TIMEOUT``). Workers ignore SIGINT and SIGHUP: a terminal's Ctrl-C or hang-up (sent to the
  whole process group) reaches them once, through the parent.
- the parent dies, even by SIGKILL: the kernel sends each worker SIGTERM (``PR_SET_PDEATHSIG``).
- a worker dies: each table it had not reported is failed, saying so (its open transaction died with
  its connection, so the warehouse rolled it back); the other processes run the rest.
- a worker's cleanup fails (S3 unreachable: an upload it could not abort), or it died with tables in
  flight: the parent keeps the run marker (``Workers.unclean``), so the next run cleans up after it.

Messages are length-prefixed pickles over a UNIX socketpair, between two processes of one program.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import os
import pickle
import signal
import socket
import struct
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import anyio
from anyio.abc import SocketStream, UNIXSocketStream
from anyio.streams.buffered import BufferedByteReceiveStream

from src.common.errors import describe, leaves
from src.common.log import get_logger
from src.config.models import Pipeline
from src.engine.context import RunMode
from src.plan.planner import TablePlan
from src.report.models import TableFailure, TableResult, utc_now
from src.stage.pending import PipelineScan
from src.warehouse.state import StateRow

log = get_logger("engine.workers")
AUTO_MIN_TABLES: Final = 8  # below this a worker's own connections cost more than it saves
AUTO_MAX_PROCESSES: Final = 4
DRAIN_TIMEOUT: Final = 60.0  # after a signal: how long the parent waits for the workers' rollbacks
JOIN_GRACE: Final = 2.0  # how long the first tables wait for a worker that is still connecting
REAP_TIMEOUT: Final = 5.0  # a worker whose socket closed has ended or is about to
LANDED_TIMEOUT: Final = 15.0  # seconds the parent may spend asking what a dead worker's table committed
_HEADER: Final = struct.Struct("!I")
_PR_SET_PDEATHSIG: Final = 1
_NEXT: Final = "next"
_DONE: Final = "done"
_UNCLEAN: Final = "unclean"


def process_count(pipeline: Pipeline, tables: int) -> int:
    """How many processes run ``tables`` tables: ``processing.processes`` (0: one per core, up to
    ``AUTO_MAX_PROCESSES``, from ``AUTO_MIN_TABLES`` tables on), never more than the tables, and never so
    many that a process would get no share of a limit."""
    wanted = pipeline.processing.processes
    if wanted == 0:
        wanted = 1 if tables < AUTO_MIN_TABLES else min(os.cpu_count() or 1, AUTO_MAX_PROCESSES)
    bounds = (
        tables,
        pipeline.processing.max_parallel_tables,
        pipeline.source.max_connections,
        pipeline.target.max_connections,
        pipeline.s3.max_concurrency,
    )
    return max(1, min(wanted, *bounds))


@dataclass(frozen=True)
class Job:
    """What a worker needs to run tables of the parent's run: what the parent read at the run's start."""

    execution_id: str
    pipeline: Pipeline
    plans: tuple[TablePlan, ...]
    mode: RunMode
    scan: PipelineScan | None
    states: Mapping[str, StateRow]
    index: int  # this process's index (the parent is 0)
    processes: int


class Channel:
    """One end of the socketpair: whole messages, sent and received by tasks of one event loop."""

    def __init__(self, stream: SocketStream) -> None:
        self._stream = stream
        self._receive = BufferedByteReceiveStream(stream)
        self._sending = anyio.Lock()

    @classmethod
    async def open(cls, sock: socket.socket) -> Channel:
        return cls(await UNIXSocketStream.from_socket(sock))

    async def send(self, message: object) -> None:
        """Send one message whole: shielded, so a cancellation never leaves half of one on the socket."""
        data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        with anyio.CancelScope(shield=True):
            async with self._sending:
                try:
                    await self._stream.send(_HEADER.pack(len(data)) + data)
                except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
                    raise EOFError(str(exc)) from exc

    async def receive(self) -> Any:
        """The next message; EOFError once the other end is closed. Cancel-safe: a message received in
        part stays buffered for the next call."""
        try:
            size = _HEADER.unpack(await self._receive.receive_exactly(_HEADER.size))[0]
            return pickle.loads(await self._receive.receive_exactly(size))
        except (anyio.EndOfStream, anyio.IncompleteRead, anyio.BrokenResourceError, OSError) as exc:
            raise EOFError(str(exc)) from exc


# ---- the parent's side --------------------------------------------------------------------------------


@dataclass
class Worker:
    pid: int
    index: int
    sock: socket.socket
    channel: Channel | None = None
    taken: set[int] = field(default_factory=set)  # tables handed out and not reported yet
    unclean: int = 0  # cleanups it could not finish (``S3Stage.unclean``), or tables it died with


@dataclass
class Workers:
    """The processes the parent forked (the parent is process 0 of ``processes``)."""

    procs: list[Worker]

    @property
    def processes(self) -> int:
        return len(self.procs) + 1

    @property
    def unclean(self) -> int:
        """Cleanups the workers could not finish (S3 unreachable), and tables of workers that died."""
        return sum(w.unclean for w in self.procs)

    def terminate(self) -> None:
        """SIGTERM to every worker: each cancels its tables (rolled back) and reports them."""
        for w in self.procs:
            with contextlib.suppress(ProcessLookupError):
                os.kill(w.pid, signal.SIGTERM)

    def dismiss(self) -> None:
        """The run is over (or ends before its tables start): the workers' sockets close; they exit."""
        for w in self.procs:
            w.sock.close()

    async def reap(self) -> None:
        """Wait (bounded) for every worker to end: none outlives the run, and their resource use counts
        in the parent's (wait4). A worker that will not end is left to its SIGTERM at the parent's exit."""
        with anyio.move_on_after(REAP_TIMEOUT, shield=True):
            for w in self.procs:
                with contextlib.suppress(ChildProcessError):
                    await anyio.to_thread.run_sync(os.waitpid, w.pid, 0, abandon_on_cancel=True)


class Dispenser:
    """Hands out the run's tables in order, to the processes in turn: a process with a free table slot
    gets the next table once no other process with a free slot has fewer tables in flight. So two big
    tables go to two processes (two cores) rather than to the first two slots that ask, which would be
    the parent's; a full process never holds the others back, and a worker that has not asked yet does
    so for ``JOIN_GRACE`` seconds at most (it is still connecting)."""

    def __init__(self, count: int, slots: Sequence[int]) -> None:
        self._next, self._count = 0, count
        self._slots = dict(enumerate(slots))  # table slots of each live process
        self._inflight = dict.fromkeys(self._slots, 0)
        self._joined = {0}  # processes that have asked (the parent asks first)
        self._grace_until = time.monotonic() + JOIN_GRACE
        self._changed = anyio.Event()
        self.stopped = False

    async def take(self, process: int) -> int | None:
        """The next table for ``process`` (which has a free slot), when its turn comes; None: no more."""
        self._joined.add(process)
        while not self.stopped and self._next < self._count:
            grace = self._grace_until - time.monotonic()
            free = [
                n
                for p, n in self._inflight.items()
                if n < self._slots[p] and (p in self._joined or grace > 0)
            ]
            if self._inflight[process] <= min(free, default=0):
                self._inflight[process] += 1
                self._next += 1
                self._notify()
                return self._next - 1
            with anyio.move_on_after(grace if grace > 0 else math.inf):
                await self._changed.wait()
        return None

    def finished(self, process: int) -> None:
        """A table of ``process`` ended (its result is in)."""
        self._inflight[process] -= 1
        self._notify()

    def leave(self, process: int) -> None:
        """``process`` takes no more tables (it ended)."""
        self._slots.pop(process, None)
        self._inflight.pop(process, None)
        self._notify()

    def stop(self) -> None:
        self.stopped = True
        self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()


def fork_workers(count: int, serve: Callable[[Channel, int], Awaitable[None]]) -> Workers | None:
    """Fork ``count`` workers, each running ``serve(channel, index)`` in its own event loop and then
    ending its process: it never returns here. Call before any event loop, thread or connection exists
    (pyarrow's jemalloc background thread is the one thread then; jemalloc has its own fork handlers)."""
    if count < 1 or not hasattr(os, "fork"):
        return None
    for stream in (sys.stdout, sys.stderr):
        stream.flush()  # so that nothing buffered is written twice
    parent, procs = os.getpid(), list[Worker]()
    for index in range(1, count + 1):
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            pid = os.fork()
        except OSError as exc:  # out of processes or memory: the run goes on with those it has
            ours.close()
            theirs.close()
            log.warning(
                "could not start worker process %d (%s): %d process(es) run the tables", index, exc, index
            )
            break
        if pid == 0:
            ours.close()
            for w in procs:
                w.sock.close()
            _worker_main(theirs, parent, index, serve)
        theirs.close()
        procs.append(Worker(pid, index, ours))
    return Workers(procs) if procs else None


# A table's latest state row when the run (this execution id) loaded it, else None: what a worker that
# died before reporting the table committed of it.
Landed = Callable[[str], Awaitable[StateRow | None]]


async def serve_worker(
    worker: Worker,
    job: Job,
    dispenser: Dispenser,
    record: Callable[[TableResult], None],
    landed: Landed,
) -> None:
    """The parent's side of one worker: send its job, answer its requests for tables, record its results;
    when it ends without reporting a table it had taken, that table fails (saying what of it committed:
    ``landed``)."""
    try:
        worker.channel = await Channel.open(worker.sock)
        await worker.channel.send(job)
        await _answer(worker, dispenser, record)
    except EOFError:
        dispenser.leave(worker.index)
        await _lost(worker, job.plans, record, landed)


async def drain(workers: Workers, dispenser: Dispenser, record: Callable[[TableResult], None]) -> None:
    """After a signal (shielded, bounded): the results the workers still send (a table that finished
    meanwhile) until each has ended, its cancelled tables rolled back; those are left to the report's
    "interrupted" failure, as the parent's own are."""
    dispenser.stop()

    async def one(worker: Worker) -> None:
        if worker.channel is None:
            return
        with contextlib.suppress(EOFError):  # it ended: the tables it cancelled are the run's interrupted
            await _answer(worker, dispenser, record)

    with anyio.move_on_after(DRAIN_TIMEOUT, shield=True):
        async with anyio.create_task_group() as tg:
            for worker in workers.procs:
                tg.start_soon(one, worker)


async def _answer(worker: Worker, dispenser: Dispenser, record: Callable[[TableResult], None]) -> None:
    channel = worker.channel
    assert channel is not None
    while True:
        message = await channel.receive()
        if message[0] == _NEXT:
            index = await dispenser.take(worker.index)
            if index is not None:
                worker.taken.add(index)
            await channel.send(index)
        elif message[0] == _DONE:
            worker.taken.discard(message[1])
            dispenser.finished(worker.index)
            record(message[2])
        elif message[0] == _UNCLEAN:
            worker.unclean += message[1]


async def _lost(
    worker: Worker, plans: Sequence[TablePlan], record: Callable[[TableResult], None], landed: Landed
) -> None:
    if not worker.taken:
        return
    worker.unclean += len(worker.taken)  # uploads it had open may be left: the next run aborts them
    status = "ended"
    with anyio.move_on_after(REAP_TIMEOUT, shield=True):
        _, code = await anyio.to_thread.run_sync(os.waitpid, worker.pid, 0)
        status = f"ended ({_exit_status(code)})"
    for index in sorted(worker.taken):
        table = plans[index].table
        outcome = await _outcome(table, landed)
        record(
            TableFailure(
                table=table,
                error_message=f"worker process {worker.index} (pid {worker.pid}) {status} before reporting "
                f"this table: {outcome}",
                failed_at=utc_now(),
                extra={"phase": "worker", "retryable": True},
            )
        )
    worker.taken.clear()


async def _outcome(table: str, landed: Landed) -> str:
    """What became of the loads of ``table`` a dead worker ran: its COMMIT may have gone through just
    before it died (the state log says so; a load it had not committed was rolled back with its
    connection)."""
    try:
        with anyio.fail_after(LANDED_TIMEOUT, shield=True):
            row = await landed(table)
    except Exception as exc:
        return (
            f"whether a load of it committed could not be checked ({_one_line(exc)}) — see "
            "s3shift watermark get, then re-run the table (a load that committed is not applied twice)"
        )
    if row is None:
        return "a load it had not committed was rolled back by the warehouse; re-run the table"
    where = f"watermark now {row.watermark}" if row.watermark else "a full snapshot"
    return (
        f"its load of stage {row.stage_id} committed first ({where}): the target holds it; a later load "
        "of this run, if any, was rolled back — re-run the table (nothing is loaded twice)"
    )


def _exit_status(code: int) -> str:
    if os.WIFSIGNALED(code):
        return f"killed by {signal.Signals(os.WTERMSIG(code)).name}"
    return f"exit code {os.waitstatus_to_exitcode(code)}"


# ---- a worker's side ----------------------------------------------------------------------------------


class Asker:
    """A worker's requests to the parent: the next table to run, and each table's result."""

    def __init__(self, channel: Channel) -> None:
        self._channel = channel
        self._asking = anyio.Lock()
        self.delivered = 0

    async def next_table(self) -> int | None:
        async with self._asking:  # one question at a time: the answer is the next message
            await self._channel.send((_NEXT,))
            answer: int | None = await self._channel.receive()
            return answer

    async def done(self, index: int, result: TableResult) -> None:
        await self._channel.send((_DONE, index, result))
        self.delivered += 1

    async def unclean(self, count: int) -> None:
        """Before the worker ends: ``count`` cleanups of its own failed (``S3Stage.unclean``)."""
        await self._channel.send((_UNCLEAN, count))


def _worker_main(
    sock: socket.socket, parent: int, index: int, serve: Callable[[Channel, int], Awaitable[None]]
) -> None:
    code = 0
    try:
        for signum in (signal.SIGINT, signal.SIGHUP):  # a Ctrl-C or a hang-up reaches them through the parent
            signal.signal(signum, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not held as the parent's (``src.cli``)
        _die_with_parent()
        if os.getppid() != parent:  # the parent died before the line above took effect
            os._exit(1)

        async def main() -> None:
            await serve(await Channel.open(sock), index)

        anyio.run(main)
    except BaseException as exc:  # a worker never unwinds into the CLI's code
        failure = worker_failure(exc)
        if failure is not None:
            code = 1
            log.error("worker process %d failed: %s", index, failure)
    finally:
        sys.stderr.flush()
        os._exit(code)


def worker_failure(exc: BaseException) -> str | None:
    """How a worker's end is logged: None when its parent is gone (the socket closed: ``EOFError``, alone
    or raised in tasks of a task group, which wraps it), else one line naming each error (a task group's
    own message, 'unhandled errors in a TaskGroup', names none)."""
    if isinstance(exc, BaseExceptionGroup):
        rest = exc.split(EOFError)[1]
        return None if rest is None else "; ".join(map(_one_line, leaves(rest)))
    return None if isinstance(exc, EOFError) else _one_line(exc)


def _one_line(exc: BaseException) -> str:
    return describe(exc) if isinstance(exc, Exception) else type(exc).__name__


def _die_with_parent() -> None:
    """SIGTERM when the parent dies, however it dies (Linux; elsewhere the closed socket ends the run)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass
