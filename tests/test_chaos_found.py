"""Defects a randomized fault-injection soak of the CLI found (faults on MySQL, PostgreSQL and S3, signals,
killed sessions, held locks), each reproduced here through the real CLI against the real services."""

from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import replace
from pathlib import Path

from src.config.models import S3Conn, SourceConn, TargetConn
from tests.conftest import WIDE_PASSWORD, CutProxy, mysql_connect, mysql_exec, pg_tables_locked
from tests.e2e import CLI, PASSWORD_ENV, ROOT, check_contract, run_json, write_config


def test_a_table_that_cannot_open_its_mysql_connection_fails_in_phase_connect(
    tmp_path: Path, mysql_user: SourceConn, pg_target: TargetConn, s3_conn: S3Conn, mysql_db: str
) -> None:
    """The server refuses the connection a table asks for once the run has started (a stalled network, a
    connection limit): the table fails in phase ``connect``, not ``cleanup`` (the S3 clean-up of dead runs
    the table had just finished). Both targets are locked, so whichever table reads first holds the one
    MySQL connection the user may have while its load waits, and the other one is refused."""
    mysql_exec(mysql_db, *(f"CREATE TABLE {t} (id INT PRIMARY KEY, v INT)" for t in ("a", "b")))
    mysql_exec(mysql_db, "INSERT INTO a VALUES (1, 1)", "INSERT INTO b VALUES (1, 1)")
    cfg = write_config(tmp_path / "cfg", mysql_user, pg_target, s3_conn, processing={"processes": 1})
    args = ["--config-dir", str(cfg), "sync", "-p", "p", "-t", f"{mysql_db}.a", "-t", f"{mysql_db}.b"]
    env = {PASSWORD_ENV: WIDE_PASSWORD}
    doc, _ = run_json(*args, env=env)  # creates the targets
    assert doc["status"] == "success", doc
    conn = mysql_connect()
    with conn.cursor() as cur:
        # one new connection this hour: the run's first (the pool keeps it for one table); the run keeps
        # to a MAX_USER_CONNECTIONS it reads at its start, so that limit no longer refuses a table
        cur.execute("ALTER USER %s@'%%' WITH MAX_CONNECTIONS_PER_HOUR 1", (mysql_user.username,))
        cur.execute("FLUSH USER_RESOURCES")
    conn.close()
    schema = pg_target.schema
    with pg_tables_locked(f'"{schema}"."a"', f'"{schema}"."b"'):
        proc = subprocess.Popen(
            [*CLI, *args, "--json-output"],
            cwd=ROOT,
            env={**os.environ, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(4)
    out, _ = proc.communicate(timeout=120)
    doc = json.loads(out)
    check_contract(doc, [f"{mysql_db}.a", f"{mysql_db}.b"])
    failed = [r for r in doc["table_results"].values() if r["status"] == "failed"]
    assert len(failed) == 1, doc
    assert failed[0]["phase"] == "connect", failed[0]
    assert "max_connections_per_hour" in failed[0]["error_message"], failed[0]


def test_a_warehouse_that_accepts_but_never_answers_the_connection_says_it_timed_out(
    tmp_path: Path, source_conn: SourceConn, pg_target: TargetConn, s3_conn: S3Conn
) -> None:
    """A stalled PostgreSQL (the TCP connection opens, no answer comes) at the run's start: every table
    fails saying the connection timed out after ``connect_timeout``, not ``TimeoutError: no details``."""
    proxy = CutProxy(f"tcp://{pg_target.host}:{pg_target.port}")
    proxy.stall()
    try:
        target = replace(pg_target, host="127.0.0.1", port=proxy.port, connect_timeout=2)
        cfg = write_config(tmp_path / "cfg", source_conn, target, s3_conn)
        doc, proc = run_json("--config-dir", str(cfg), "sync", "-p", "p", "-t", "a.b")
    finally:
        proxy.release()
        proxy.cut()
    assert proc.returncode == 1
    check_contract(doc, ["a.b"])
    result = doc["table_results"]["a.b"]
    assert result["phase"] == "connect" and result["retryable"] is True, result
    assert "no details" not in result["error_message"], result
    assert "no answer within connect_timeout (2 s)" in result["error_message"], result


def test_a_worker_process_that_cannot_connect_logs_the_cause(
    tmp_path: Path, mysql_user: SourceConn, pg_target: TargetConn, s3_conn: S3Conn, mysql_db: str
) -> None:
    """A worker process whose MySQL connection is refused (here: the user may hold one connection, which
    the parent has) leaves the tables to the other processes and logs why in one line: the server's
    refusal, not ``ExceptionGroup: unhandled errors in a TaskGroup (1 sub-exception)``."""
    tables = ("a", "b", "c", "d")
    mysql_exec(mysql_db, *(f"CREATE TABLE {t} (id INT PRIMARY KEY, v INT)" for t in tables))
    cfg = write_config(tmp_path / "cfg", mysql_user, pg_target, s3_conn, processing={"processes": 2})
    conn = mysql_connect()
    with conn.cursor() as cur:
        # one connection at a time for two processes: each keeps to a share of at least one
        cur.execute("ALTER USER %s@'%%' WITH MAX_USER_CONNECTIONS 1", (mysql_user.username,))
    conn.close()
    args = ["--config-dir", str(cfg), "sync", "-p", "p", *(f"-t{mysql_db}.{t}" for t in tables)]
    doc, proc = run_json(*args, env={PASSWORD_ENV: WIDE_PASSWORD})
    check_contract(doc, [f"{mysql_db}.{t}" for t in tables])  # (the parent's tables may be refused too)
    line = next(x for x in proc.stderr.splitlines() if "could not connect" in x)
    assert "ExceptionGroup" not in line and "max_user_connections" in line, line
