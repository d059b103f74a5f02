"""Worker processes (``processing.processes``, src/engine/workers.py): a run's tables shared by forked
processes, through the real CLI. Every table is synced exactly as by one process; each process stays
within its share of the limits; a SIGTERM to the run rolls back and reports every table; a worker that
dies fails only the tables it had not reported; a parent that dies takes its workers with it."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

from src.common.secret import Secret
from src.config.models import Processing, S3Conn, SourceConn, TargetConn
from src.engine.limits import share
from src.engine.workers import AUTO_MIN_TABLES, Dispenser, process_count, worker_failure
from tests.conftest import ROOT, mysql_exec, pg_fetch, pg_tables_locked, s3_client
from tests.e2e import CLI, as_redshift, assert_tables_equal, failures, run_json, write_config

TABLES = 10


@pytest.fixture(params=["postgres", "redshift"])
def setup(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    source_conn: SourceConn,
    pg_target: TargetConn,
    s3_conn: S3Conn,
    s3_endpoint: str,
    mysql_db: str,
) -> tuple[Path, tuple[str, ...], list[str]]:
    for i in range(TABLES):
        mysql_exec(
            mysql_db,
            f"CREATE TABLE t{i} (id INT PRIMARY KEY, v VARCHAR(40), d DECIMAL(12,3))",
            f"INSERT INTO t{i} SELECT seq, CONCAT('row ', seq), seq / 7 FROM seq_1_to_{100 * (i + 1)}",
        )
    target, cli = pg_target, tuple(CLI)
    if request.param == "redshift":
        target, cli = as_redshift(pg_target, s3_endpoint)
    processing = {"max_parallel_tables": 4, "batch_size": 1000, "processes": 2}
    cfg = write_config(tmp_path / "cfg", source_conn, target, s3_conn, processing=processing)
    return cfg, cli, [f"{mysql_db}.t{i}" for i in range(TABLES)]


def start(cfg: Path, cli: tuple[str, ...], tables: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*cli, "--config-dir", str(cfg), "sync", "-p", "p", "-t", ",".join(tables), "--json-output"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, as a job's under a shell
    )


def children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except FileNotFoundError:
        return []


def alive(pid: int) -> bool:
    """Running (a zombie left to a container's init that does not reap is not running)."""
    try:
        return "\nState:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def lock_waiters(schema: str) -> int:
    """Sessions of the run waiting for our lock on their target (each holds a table slot)."""
    query = "SELECT count(*) AS n FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query ILIKE $1"
    return int(pg_fetch(query, f"%{schema}%")[0]["n"])


def contents(schema: str) -> list[Any]:
    return [pg_fetch(f'SELECT count(*) AS n, sum(d) AS s FROM "{schema}"."t{i}"')[0] for i in range(TABLES)]


def check_all_equal(db: str, schema: str) -> None:
    for i in range(TABLES):
        assert assert_tables_equal(db, f"t{i}", schema, f"t{i}", "id") == 100 * (i + 1)


@contextmanager
def blocked_run(
    setup: tuple[Path, tuple[str, ...], list[str]], mysql_db: str, pg_schema: str, label: str
) -> Iterator[tuple[subprocess.Popen[str], list[Any]]]:
    """After a first sync, a changed source and a run whose four table slots (two per process) all wait
    on our lock of their targets; the lock goes when the block ends. Yields the run and the targets'
    contents before it."""
    cfg, cli, tables = setup
    first = run_json("--config-dir", str(cfg), "sync", "-p", "p", "-t", ",".join(tables), cli=cli)
    assert first[1].returncode == 0, failures(first[0])
    mysql_exec(mysql_db, *(f"UPDATE t{i} SET v = '{label}'" for i in range(TABLES)))
    before = contents(pg_schema)
    # every target locked: the loads wait inside their transactions, holding their table slots
    with pg_tables_locked(*(f'"{pg_schema}"."t{i}"' for i in range(TABLES))):
        proc = start(cfg, cli, tables)
        wait_for(lambda: lock_waiters(pg_schema) >= 4, "both processes' table slots to wait on the lock")
        yield proc, before


def test_processes_share_the_tables_and_sync_each_exactly(
    setup: tuple[Path, tuple[str, ...], list[str]], mysql_db: str, pg_schema: str
) -> None:
    cfg, cli, tables = setup
    sync = ("--config-dir", str(cfg), "sync", "-p", "p", "-t", ",".join(tables))
    plan, _ = run_json(*sync, "--dry-run", cli=cli)
    assert plan["processes"] == 2  # processing.processes, as the run below forks
    doc, proc = run_json("--config-dir", str(cfg), "sync", "-p", "p", "-t", ",".join(tables), cli=cli)
    assert proc.returncode == 0 and doc["status"] == "success", doc
    assert sorted(doc["table_results"]) == sorted(tables)
    assert doc["summary"]["total_rows_processed"] == sum(100 * (i + 1) for i in range(TABLES))
    ran = [line for line in proc.stderr.splitlines() if "worker process 1 ran" in line]
    assert ran and int(ran[0].split(" ran ")[1].split()[0]) >= 1, proc.stderr  # the worker took a share
    check_all_equal(mysql_db, pg_schema)
    states = pg_fetch(f'SELECT DISTINCT loaded_by FROM "{pg_schema}".s3shift_state')
    assert [r["loaded_by"] for r in states] == [doc["execution_id"]]  # one run, whichever process loaded

    mysql_exec(mysql_db, "UPDATE t3 SET v = 'again' WHERE id % 2 = 0", "DELETE FROM t7 WHERE id > 50")
    doc, proc = run_json("--config-dir", str(cfg), "sync", "-p", "p", "-t", ",".join(tables), cli=cli)
    assert proc.returncode == 0, failures(doc)
    assert assert_tables_equal(mysql_db, "t3", pg_schema, "t3", "id") == 400
    assert assert_tables_equal(mysql_db, "t7", pg_schema, "t7", "id") == 50


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP], ids=lambda s: s.name)
def test_sigterm_rolls_back_every_process_and_reports_every_table(
    setup: tuple[Path, tuple[str, ...], list[str]],
    mysql_db: str,
    pg_schema: str,
    s3_conn: S3Conn,
    signum: signal.Signals,
) -> None:
    """SIGTERM to the run's process; SIGHUP to its whole process group, as a shell whose terminal or ssh
    session hung up sends it to its jobs (the workers get it too, and leave it to the parent)."""
    cfg, cli, tables = setup
    with blocked_run(setup, mysql_db, pg_schema, "terminated") as (proc, before):
        workers = children(proc.pid)
        assert workers, "no worker process was forked"
        if signum == signal.SIGHUP:
            os.killpg(proc.pid, signum)
        else:
            proc.send_signal(signum)
        out, _ = proc.communicate(timeout=90)
    doc = json.loads(out)
    assert proc.returncode == 1 and doc["status"] == "failed", doc
    assert sorted(doc["table_results"]) == sorted(tables)
    for result in doc["table_results"].values():
        assert result["status"] == "failed" and signum.name in result["error_message"], result
        assert result["retryable"] is True, result
    wait_for(lambda: not any(alive(p) for p in workers), "the workers to end", timeout=30)
    assert contents(pg_schema) == before  # every process's transaction rolled back
    assert lock_waiters(pg_schema) == 0
    uploads = s3_client(s3_conn.endpoint_url or "").list_multipart_uploads(Bucket=s3_conn.bucket)
    assert not uploads.get("Uploads")
    doc, done = run_json("--config-dir", str(cfg), "sync", "-p", "p", "-t", ",".join(tables), cli=cli)
    assert done.returncode == 0, doc
    check_all_equal(mysql_db, pg_schema)


def test_a_dead_worker_fails_only_its_tables(
    setup: tuple[Path, tuple[str, ...], list[str]], mysql_db: str, pg_schema: str
) -> None:
    cfg, cli, tables = setup
    with blocked_run(setup, mysql_db, pg_schema, "after the kill") as (proc, before):
        (worker,) = children(proc.pid)
        os.kill(worker, signal.SIGKILL)  # its sessions wait on until the lock goes, then find it gone
        wait_for(lambda: not alive(worker), "the worker to die")
    out, _ = proc.communicate(timeout=120)
    doc = json.loads(out)
    assert proc.returncode == 1, doc
    failed = {t: r for t, r in doc["table_results"].items() if r["status"] == "failed"}
    assert len(failed) == 2, doc  # the two tables the worker held; the others ran on in the parent
    for result in failed.values():
        assert "worker process 1" in result["error_message"] and "SIGKILL" in result["error_message"], result
        assert result["retryable"] is True
    after = contents(pg_schema)
    for i, table in enumerate(tables):
        if table in failed:
            assert after[i] == before[i]  # rolled back with the worker's connection
        else:
            assert assert_tables_equal(mysql_db, f"t{i}", pg_schema, f"t{i}", "id") == 100 * (i + 1)
    doc, done = run_json("--config-dir", str(cfg), "sync", "-p", "p", "-t", ",".join(tables), cli=cli)
    assert done.returncode == 0, doc
    check_all_equal(mysql_db, pg_schema)


def test_workers_end_with_a_killed_parent(
    setup: tuple[Path, tuple[str, ...], list[str]], mysql_db: str, pg_schema: str
) -> None:
    cfg, cli, tables = setup
    with blocked_run(setup, mysql_db, pg_schema, "orphaned") as (proc, before):
        workers = children(proc.pid)
        os.kill(proc.pid, signal.SIGKILL)
        _, err = proc.communicate(timeout=30)  # the workers write to the same stderr
        wait_for(lambda: not any(alive(p) for p in workers), "the orphaned workers to end", timeout=30)
        assert " failed: " not in err, err  # a parent gone is no failure of the worker
        # the workers cancelled their waits (the parent's sessions wait on until the lock goes)
        wait_for(lambda: lock_waiters(pg_schema) <= 2, "the workers' sessions to end", timeout=120)
    wait_for(lambda: lock_waiters(pg_schema) == 0, "every session to end", timeout=120)
    assert contents(pg_schema) == before
    doc, done = run_json("--config-dir", str(cfg), "sync", "-p", "p", "-t", ",".join(tables), cli=cli)
    assert done.returncode == 0, doc
    check_all_equal(mysql_db, pg_schema)


_SIGNALLED = """
import anyio
from src.engine.run import watching_signals

async def main() -> None:
    interrupted: list[str] = []
    async with watching_signals(interrupted) as cancel_on_signal:
        with cancel_on_signal:
            print("ready", flush=True)
            await anyio.sleep(60)
        with anyio.CancelScope(shield=True):  # as a rollback is
            await anyio.sleep(1)
    print("cleaned up after", interrupted, flush=True)

anyio.run(main)
"""


def test_a_later_signal_never_cuts_the_cleanup_short() -> None:
    """The first SIGTERM cancels the run; later ones (a worker gets one per thread of a parent that dies:
    the kernel hands it from thread to thread) are logged and ignored until the cleanup is done, instead
    of the default death half-way through a rollback, its session left waiting on a lock."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _SIGNALLED],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    for signum in (signal.SIGTERM, signal.SIGTERM, signal.SIGINT):
        proc.send_signal(signum)
        time.sleep(0.2)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert out == "cleaned up after ['SIGTERM']\n"
    assert "SIGTERM received: cancelling the run" in err
    assert (
        "SIGTERM received: the run is already ending" in err
        and "SIGINT received: the run is already ending" in err
    )


def test_process_count_and_shares(source_conn: SourceConn, pg_target: TargetConn, s3_conn: S3Conn) -> None:
    from src.config.models import Pipeline, TableConfig

    def pipeline(processes: int, tables: int = 4, connections: int = 8) -> Pipeline:
        from dataclasses import replace

        return Pipeline(
            name="p",
            source=replace(source_conn, max_connections=connections),
            target=pg_target,
            s3=s3_conn,
            processing=Processing(max_parallel_tables=tables, processes=processes),
            tables={},
            defaults=TableConfig(name=""),
        )

    cores = os.cpu_count() or 1
    assert process_count(pipeline(0), AUTO_MIN_TABLES - 1) == 1  # few tables: one process
    assert process_count(pipeline(0), 500) == max(1, min(cores, 4, pg_target.max_connections))
    assert process_count(pipeline(3), 2) == 2  # never more processes than tables
    assert process_count(pipeline(8, tables=3), 100) == 3  # every process gets a table slot
    assert process_count(pipeline(8, connections=2), 100) == 2  # ... and a MySQL connection
    for total in range(1, 12):
        for processes in range(1, total + 1):
            assert sum(share(total, i, processes) for i in range(processes)) == total


def test_a_pickled_secret_is_scrubbed_in_the_process_that_unpickles_it() -> None:
    data = pickle.dumps(Secret("pickled-password-0x5ec"))
    code = (
        "import pickle, sys; from src.common.secret import scrub; "
        "s = pickle.loads(sys.stdin.buffer.read()); print(scrub('pw=pickled-password-0x5ec'))"
    )
    out = subprocess.run([sys.executable, "-c", code], input=data, capture_output=True, cwd=ROOT, check=True)
    assert out.stdout.decode().strip() == "pw=***"


def test_processes_key_is_validated(
    tmp_path: Path, source_conn: SourceConn, pg_target: TargetConn, s3_conn: S3Conn
) -> None:
    cfg = write_config(tmp_path / "cfg", source_conn, pg_target, s3_conn, processing={"processes": -1})
    doc, proc = run_json("--config-dir", str(cfg), "sync", "-p", "p", "-t", "db.t")
    assert proc.returncode == 1
    message = doc["table_results"]["db.t"]["error_message"]
    assert "pipeline.processing.processes" in message and "Traceback" not in proc.stderr


def test_dispenser_hands_out_tables_in_turn() -> None:
    async def main() -> None:
        d = Dispenser(6, [2, 2])
        d._joined.add(1)  # the worker has asked before
        assert await d.take(0) == 0
        with anyio.move_on_after(0.2) as waited:  # the parent's 2nd slot waits for the worker's 1st
            await d.take(0)
        assert waited.cancelled_caught
        assert await d.take(1) == 1
        assert await d.take(0) == 2  # now even
        assert await d.take(1) == 3
        # both full: a table's end frees its process, which takes next
        d.finished(1)
        assert await d.take(1) == 4
        # a full process never holds back one with a free slot
        d.finished(0)
        d.finished(0)
        assert await d.take(0) == 5
        assert await d.take(0) is None  # none left

        late = Dispenser(3, [2, 1])  # a worker that never asks holds back only for the grace period
        late._grace_until = time.monotonic() + 0.3
        assert await late.take(0) == 0
        started = time.monotonic()
        with anyio.fail_after(2):
            assert await late.take(0) == 1  # 1 in flight against the worker's 0: waits out the grace
        assert time.monotonic() - started >= 0.25

        gone = Dispenser(4, [2, 2])
        gone._joined.add(1)
        assert await gone.take(0) == 0
        gone.leave(1)  # a dead worker: the parent takes the rest
        assert await gone.take(0) == 1
        stopped = Dispenser(4, [1])
        stopped.stop()
        assert await stopped.take(0) is None

    anyio.run(main)


def test_a_worker_whose_parent_is_gone_logs_no_failure() -> None:
    """The parent's end reaches a worker as EOFError, raised in one of its tasks as often as not, which a
    task group wraps: the worker logged 'failed: ExceptionGroup: unhandled errors in a TaskGroup (1
    sub-exception)' after every SIGKILL of its parent. Real failures are named, each of them."""
    assert worker_failure(EOFError("closed")) is None
    assert (
        worker_failure(BaseExceptionGroup("tg", [EOFError(), ExceptionGroup("inner", [EOFError()])])) is None
    )
    mixed = ExceptionGroup("unhandled errors in a TaskGroup", [EOFError(), ValueError("bad page")])
    assert worker_failure(mixed) == "ValueError: bad page"
    assert worker_failure(RuntimeError("boom")) == "RuntimeError: boom"
