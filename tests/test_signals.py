"""SIGTERM/SIGINT/SIGHUP stop a real `sync` promptly while it reads a big table: on the asyncmy path, and
inside a connectorx read (a Rust call in a thread that cannot be cancelled: it is left behind in its daemon
thread). Within 2 s of the signal the process has exited 1 with the report on stdout, the table failed
``interrupted`` and retryable, the target untouched and no multipart upload left open."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
from dataclasses import replace
from pathlib import Path

import pytest

from src.config.models import S3Conn, SourceConn, TargetConn
from tests.conftest import ROOT, mysql_exec, mysql_rows, pg_fetch
from tests.e2e import CLI, check_contract, write_config
from tests.test_crash import Setup, open_uploads, start_sync, wait_until

ROWS = 8000
# every row costs the server a millisecond: a key range of 2,000 rows keeps connectorx's call busy 2 s
SLOW = "SLEEP(0.001) = 0"
BOUND = 2.0  # seconds from the signal to the exit


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP], ids=lambda s: s.name)
@pytest.mark.parametrize("path", ["connectorx", "asyncmy"])
def test_a_signal_during_a_big_read_ends_the_run_within_2_seconds(
    tmp_path: Path,
    source_conn: SourceConn,
    pg_target: TargetConn,
    s3_conn: S3Conn,
    mysql_db: str,
    pg_schema: str,
    path: str,
    signum: signal.Signals,
) -> None:
    mysql_exec(
        mysql_db,
        "CREATE TABLE big (id BIGINT PRIMARY KEY, v VARCHAR(64) NOT NULL, d DATETIME(6) NOT NULL)",
        "INSERT INTO big SELECT seq, SHA2(seq, 256), '2024-01-01' + INTERVAL seq SECOND "
        f"FROM seq_1_to_{ROWS}",
        "ANALYZE TABLE big",
    )
    table = f"{mysql_db}.big"
    processing = {"fast_path": path == "connectorx", "range_rows": 2000, "batch_size": 500}
    tables = {table: {"where": SLOW}}
    cfg = write_config(tmp_path / "cfg", source_conn, pg_target, s3_conn, tables, processing=processing)
    run = start_sync(Setup(cfg, table, CLI))
    command = "Execute" if path == "connectorx" else "Query"  # connectorx: prepared statements

    def reading() -> bool:
        query = (
            "SELECT COUNT(*) FROM information_schema.PROCESSLIST "
            "WHERE ID <> CONNECTION_ID() AND DB = %s AND INFO LIKE %s AND COMMAND = %s"
        )  # this test's database: another test's reads (pytest -n) are not this run's
        return bool(mysql_rows(mysql_db, query, (mysql_db, "%SLEEP(0.001)%", command))[0][0])

    wait_until(run, reading, f"the {path} read")
    time.sleep(0.3)  # well inside the read
    sent = time.monotonic()
    run.send_signal(signum)
    out, err = run.communicate(timeout=60)
    took = time.monotonic() - sent

    assert took < BOUND, f"{took:.2f} s from {signum.name} to the exit\n{err}"
    assert run.returncode == 1, err
    doc = json.loads(out)
    check_contract(doc, [table])
    result = doc["table_results"][table]
    assert (result["phase"], result["retryable"]) == ("interrupted", True), result
    assert signum.name in result["error_message"], result
    found = pg_fetch("SELECT tablename FROM pg_tables WHERE schemaname = $1", pg_schema)
    assert not found or pg_fetch(f'SELECT count(*) AS n FROM "{pg_schema}".big')[0]["n"] == 0
    assert open_uploads(s3_conn) == []


def test_a_hang_up_leaves_a_run_started_under_nohup_alone(
    tmp_path: Path, source_conn: SourceConn, pg_target: TargetConn, s3_conn: S3Conn, mysql_db: str
) -> None:
    """A run started with SIGHUP ignored (``nohup``) was asked to outlive its session: a hang-up during
    its read neither stops nor kills it."""
    rows = 1000
    mysql_exec(
        mysql_db,
        "CREATE TABLE t (id BIGINT PRIMARY KEY, v VARCHAR(64) NOT NULL)",
        f"INSERT INTO t SELECT seq, SHA2(seq, 256) FROM seq_1_to_{rows}",
    )
    table = f"{mysql_db}.t"
    processing = {"fast_path": False, "batch_size": 100}
    cfg = write_config(
        tmp_path / "cfg", source_conn, pg_target, s3_conn, {table: {"where": SLOW}}, processing=processing
    )
    run = subprocess.Popen(
        [*CLI, "--config-dir", str(cfg), "sync", "-p", "p", "-t", table, "--json-output"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN),  # what nohup does
    )
    query = "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID <> CONNECTION_ID() AND INFO LIKE %s"
    wait_until(run, lambda: bool(mysql_rows(mysql_db, query, ("%SLEEP(0.001)%",))[0][0]), "the read")
    run.send_signal(signal.SIGHUP)
    out, err = run.communicate(timeout=60)

    assert run.returncode == 0, err
    doc = json.loads(out)
    assert doc["table_results"][table]["rows_processed"] == rows, doc
    assert pg_fetch(f'SELECT count(*) AS n FROM "{pg_target.schema}".t')[0]["n"] == rows


def _catches_sigterm(pid: int) -> bool:
    status = Path(f"/proc/{pid}/status").read_text()
    caught = int(next(line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:")), 16)
    return bool(caught & (1 << (signal.SIGTERM - 1)))


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP], ids=lambda s: s.name)
def test_a_signal_while_the_cli_starts_still_gives_the_report(
    tmp_path: Path,
    source_conn: SourceConn,
    pg_target: TargetConn,
    s3_conn: S3Conn,
    mysql_db: str,
    signum: signal.Signals,
) -> None:
    """The CLI's imports take a second or more: a SIGTERM then killed it with nothing on stdout (SIGINT:
    a traceback). From the moment its package loads it holds the signal, and the run ends at its start."""
    table = f"{mysql_db}.t"
    mysql_exec(mysql_db, "CREATE TABLE t (id INT PRIMARY KEY)")
    cfg = write_config(tmp_path / "cfg", source_conn, pg_target, s3_conn)
    run = start_sync(Setup(cfg, table, CLI))
    deadline = time.monotonic() + 0.3  # the interpreter itself starts in 0.05 s
    while time.monotonic() < deadline and not _catches_sigterm(run.pid):
        time.sleep(0.005)
    sent = time.monotonic()
    run.send_signal(signum)
    out, err = run.communicate(timeout=60)
    took = time.monotonic() - sent

    assert run.returncode == 1, err
    doc = json.loads(out)
    check_contract(doc, [table])
    result = doc["table_results"][table]
    assert (result["phase"], result["retryable"]) == ("interrupted", True), result
    assert signum.name in result["error_message"], result
    assert took < BOUND, f"{took:.2f} s from {signum.name} to the exit"


def test_a_signal_while_connecting_ends_the_run_at_once(
    tmp_path: Path, source_conn: SourceConn, pg_target: TargetConn, s3_conn: S3Conn, mysql_db: str
) -> None:
    """A MySQL server that accepts the connection and never greets: the run waits for it up to
    connect_timeout (10 s). A signal then cancelled nothing until the wait was over (8.8 s measured),
    and the tables were reported as a connect failure instead of interrupted."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        source = replace(source_conn, port=int(silent.getsockname()[1]))
        cfg = write_config(tmp_path / "cfg", source, pg_target, s3_conn)
        table = f"{mysql_db}.t"
        run = start_sync(Setup(cfg, table, CLI))
        silent.settimeout(30)
        greeted, _ = silent.accept()  # the run is connecting: its handshake never comes
        with greeted:
            time.sleep(0.2)
            sent = time.monotonic()
            run.send_signal(signal.SIGTERM)
            out, err = run.communicate(timeout=60)
            took = time.monotonic() - sent
    assert run.returncode == 1, err
    doc = json.loads(out)
    check_contract(doc, [table])
    result = doc["table_results"][table]
    assert (result["phase"], result["retryable"]) == ("interrupted", True), result
    assert took < BOUND, f"{took:.2f} s from SIGTERM to the exit"


def test_only_the_cli_process_holds_the_signals(tmp_path: Path) -> None:
    """A process that only calls the CLI's functions (this test, through click's runner) keeps its own
    handlers: a SIGTERM to a test run must still end it."""
    from click.testing import CliRunner

    import src.cli
    from src.cli.main import cli

    result = CliRunner().invoke(cli, ["--config-dir", str(tmp_path), "sync", "-t", "a.b", "--json-output"])
    assert result.exit_code == 1 and json.loads(result.stdout)["status"] == "failed"
    assert signal.getsignal(signal.SIGTERM) is not src.cli._hold
    launched = src.cli._launched_as_cli
    assert launched(["/v/bin/python", "-X", "importtime", "-m", "src.cli.main", "sync"])
    assert launched(["/v/bin/python", "/v/bin/s3shift", "sync"])
    assert not launched(["/v/bin/python", "-m", "pytest", "tests"])
