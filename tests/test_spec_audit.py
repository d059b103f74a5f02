"""Black-box checks of the JSON output contract (spec/json-output-format.md and the README's JSON
section) through the real CLI, for cases the other CLI tests do not reach."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from dataclasses import replace
from pathlib import Path

from src.config.models import S3Conn, SourceConn, TargetConn
from tests.conftest import ROOT, CutProxy, mysql_exec, pg_fetch, pg_tables_locked
from tests.e2e import CLI, check_contract, run_json, write_config
from tests.test_crash import wait_until


def test_sigterm_ends_a_watermark_set_waiting_for_a_lock(
    tmp_path: Path,
    source_conn: SourceConn,
    pg_target: TargetConn,
    s3_conn: S3Conn,
    mysql_db: str,
    pg_schema: str,
) -> None:
    """A `watermark set` waiting for a lock on the state table (up to the target's lock_timeout, 300 s by
    default) ends at SIGTERM: one JSON document naming the signal, exit 1, the watermark unchanged.
    (SIGTERM was held and never acted on: the command went on waiting, then set the watermark, exit 0.)"""
    mysql_exec(mysql_db, "CREATE TABLE t (id INT PRIMARY KEY)")
    table = f"{mysql_db}.t"
    tables = {table: {"cdc_strategy": "id_only"}}
    cfg = write_config(tmp_path / "cfg", source_conn, pg_target, s3_conn, tables)
    mark = ("--config-dir", str(cfg), "watermark")
    first, _ = run_json(*mark, "set", "-p", "p", "-t", table, "--id", "1")
    assert first["status"] == "success", first

    with pg_tables_locked(f'"{pg_schema}"."s3shift_state"'):
        run = subprocess.Popen(
            [*CLI, *mark, "set", "-p", "p", "-t", table, "--id", "2", "--json-output"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            waiting = (
                "SELECT count(*) AS n FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE $1"
            )
            state = f"%{pg_schema}%s3shift_state%"  # this test's state table, not another test's (pytest -n)
            wait_until(run, lambda: pg_fetch(waiting, state)[0]["n"] > 0, "the lock wait")
            run.send_signal(signal.SIGTERM)
            out, err = run.communicate(timeout=10)
        finally:
            run.kill()

    assert run.returncode == 1, (out, err)
    doc = json.loads(out)  # exactly one JSON document
    assert doc["status"] == "failed" and "SIGTERM" in doc["error_message"], doc
    after, _ = run_json(*mark, "get", "-p", "p", "-t", table)
    assert after["watermark"] == {"ts": None, "id": 1}, after


def test_sigterm_ends_a_dry_run_waiting_for_mysql(
    tmp_path: Path, source_conn: SourceConn, pg_target: TargetConn, s3_conn: S3Conn, mysql_db: str
) -> None:
    """A `--dry-run` connecting to a MySQL that never answers (connect_timeout 10 s) ends at SIGTERM
    within 2 s: one JSON plan, every table an error naming the signal, exit 1. (SIGTERM was held and
    ignored: the plan came after the 10 s connect timeout.)"""
    mysql_exec(mysql_db, "CREATE TABLE t (id INT PRIMARY KEY)")
    table = f"{mysql_db}.t"
    proxy = CutProxy(f"http://{source_conn.host}:{source_conn.port}")
    proxy.stall()  # the TCP connection is accepted; MySQL's greeting never arrives
    try:
        stalled = replace(source_conn, port=proxy.port)
        cfg = write_config(tmp_path / "cfg", stalled, pg_target, s3_conn)
        run = subprocess.Popen(
            [*CLI, "--config-dir", str(cfg), "sync", "-p", "p", "-t", table, "--dry-run", "--json-output"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            wait_until(run, lambda: bool(proxy._open), "the MySQL connection")
            time.sleep(0.3)
            sent = time.monotonic()
            run.send_signal(signal.SIGTERM)
            out, err = run.communicate(timeout=30)
            took = time.monotonic() - sent
        finally:
            run.kill()
    finally:
        proxy.cut()
    assert took < 2, f"{took:.2f} s from SIGTERM to the exit\n{err}"
    assert run.returncode == 1, (out, err)
    doc = json.loads(out)  # exactly one JSON document
    assert doc["dry_run"] is True and list(doc["tables"]) == [table], doc
    assert doc["tables"][table]["status"] == "error" and "SIGTERM" in doc["tables"][table]["error_message"]


def test_a_config_dir_that_is_a_file_is_a_failed_run_with_its_json(tmp_path: Path) -> None:
    """`--config-dir` naming a file is bad config like a missing directory (or the same file given as
    $S3SHIFT_CONFIG_DIR): the JSON report, every table failed `config`, exit 1. (click refused it: a
    usage error, exit 2, nothing on stdout.)"""
    a_file = tmp_path / "connections.yml"
    a_file.write_text("connections: {}\n")
    tables = ["db.a", "db.b"]
    doc, proc = run_json("--config-dir", str(a_file), "sync", "-p", "p", "-t", tables[0], "-t", tables[1])
    assert proc.returncode == 1, proc.stderr
    check_contract(doc, tables)
    for result in doc["table_results"].values():
        assert result["phase"] == "config" and str(a_file) in result["error_message"], result


def test_a_warehouse_that_never_answers_is_named_with_its_connect_timeout(
    tmp_path: Path, source_conn: SourceConn, pg_target: TargetConn, s3_conn: S3Conn
) -> None:
    """A PostgreSQL that accepts the connection and never answers fails every table `connect`, retryable,
    with a message saying what happened. (It said "TimeoutError: no details".)"""
    proxy = CutProxy(f"http://{pg_target.host}:{pg_target.port}")
    proxy.stall()
    try:
        stalled = replace(pg_target, port=proxy.port, connect_timeout=1.5)
        cfg = write_config(tmp_path / "cfg", source_conn, stalled, s3_conn)
        tables = ["db.a", "db.b"]
        doc, proc = run_json("--config-dir", str(cfg), "sync", "-p", "p", "-t", tables[0], "-t", tables[1])
    finally:
        proxy.cut()
    assert proc.returncode == 1, proc.stderr
    check_contract(doc, tables)
    for result in doc["table_results"].values():
        assert (result["phase"], result["retryable"]) == ("connect", True), result
        assert "failed: no answer within connect_timeout (1.5 s)" in result["error_message"], result


def test_names_that_are_not_utf8_still_give_the_json_and_fail_alone(
    tmp_path: Path, source_conn: SourceConn, pg_target: TargetConn, s3_conn: S3Conn, mysql_db: str
) -> None:
    """A `-t`, `-p` or `--config-dir` holding a byte that is not UTF-8 (a Latin-1 script, say): stdout
    still carries the one JSON document, the byte written as `\\xff`, exit 1; a bad table name fails
    alone, at planning. (orjson refused the name: a traceback and nothing on stdout; the table's name
    also failed the state query of every other table.)"""
    mysql_exec(mysql_db, "CREATE TABLE ok (id INT PRIMARY KEY)", "INSERT INTO ok VALUES (1)")
    cfg = write_config(tmp_path / "cfg", source_conn, pg_target, s3_conn)
    bad, good = f"{mysql_db}.caf\udcff", f"{mysql_db}.ok"
    doc, proc = run_json("--config-dir", str(cfg), "sync", "-p", "p", "-t", bad, "-t", good)
    shown = f"{mysql_db}.caf\\xff"
    check_contract(doc, [shown, good])
    assert proc.returncode == 1, proc.stderr
    failed = doc["table_results"][shown]
    assert failed["phase"] == "plan" and f"table '{shown}' is not UTF-8 text" in failed["error_message"]
    assert doc["table_results"][good]["rows_processed"] == 1

    doc, proc = run_json("--config-dir", str(cfg), "sync", "-p", "p\udcff", "-t", good)
    assert proc.returncode == 1 and doc["pipeline"] == "p\\xff", proc.stderr
    doc, proc = run_json("--config-dir", str(tmp_path / "no\udcff"), "sync", "-p", "p", "-t", good)
    assert proc.returncode == 1 and "no\\xff not found" in doc["table_results"][good]["error_message"]
    doc, proc = run_json("--config-dir", str(cfg), "watermark", "get", "-p", "p", "-t", bad)
    assert proc.returncode == 1 and doc["table"] == shown and "not UTF-8 text" in doc["error_message"]
