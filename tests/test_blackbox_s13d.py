"""Black-box checks through the public CLI, session 13 (audit d): operational faults as CI jobs and nightly
cron users meet them (overlapping runs, stages no run can load any more, a report that cannot be
written), and the CLI's JSON contract around them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from dataclasses import replace
from pathlib import Path

import asyncpg
import pytest

from src.config.models import S3Conn, SourceConn, TargetConn
from tests.conftest import (
    MYSQL_HOST,
    MYSQL_PORT,
    PG_HOST,
    PG_PORT,
    ROOT,
    CutProxy,
    mysql_exec,
    pg_fetch,
    s3_client,
)
from tests.e2e import CLI, check_contract, run_json, write_config


def _manifests(s3: S3Conn, table: str) -> list[str]:
    client = s3_client(s3.endpoint_url or "")
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=s3.bucket).get("Contents", [])]
    return sorted(k for k in keys if f"/{table}/" in k and k.endswith("/manifest.json"))


def test_a_stage_no_run_can_load_is_reported_once_then_deleted(
    tmp_path: Path,
    source_conn: SourceConn,
    pg_target: TargetConn,
    s3_conn: S3Conn,
    mysql_db: str,
    pg_schema: str,
) -> None:
    """A staged window that no longer continues the chain (here: staged by --backup-only, then the
    watermark was set past it; also what the loser of two overlapping cron runs leaves) can never be
    loaded. It was kept, read back and reported in ``stages_skipped`` by EVERY later run of the table, for
    ever (one more per overlap, every night: a per-run report that grew cumulative, an S3 read per stage
    per run). Now the run that skips it reports it once and deletes it."""
    mysql_exec(
        mysql_db,
        "CREATE TABLE t (id INT PRIMARY KEY, v VARCHAR(10))",
        "INSERT INTO t VALUES (1, 'a'), (2, 'b')",
    )
    table = f"{mysql_db}.t"
    tables = {table: {"cdc_strategy": "id_only"}}
    cfg = write_config(tmp_path / "cfg", source_conn, pg_target, s3_conn, tables)
    base = ("--config-dir", str(cfg))
    doc, _ = run_json(*base, "sync", "-p", "p", "-t", table, "--backup-only")
    stale = doc["execution_id"]
    assert doc["status"] == "success", doc
    assert len(_manifests(s3_conn, table)) == 1
    doc, proc = run_json(*base, "watermark", "set", "-p", "p", "-t", table, "--id", "1")
    assert proc.returncode == 0, doc
    mysql_exec(mysql_db, "INSERT INTO t VALUES (3, 'c')")

    doc, proc = run_json(*base, "sync", "-p", "p", "-t", table)
    check_contract(doc, [table])
    result = doc["table_results"][table]
    assert proc.returncode == 0 and result["rows_processed"] == 2, doc  # ids 2 and 3, after the set
    assert [s["execution_id"] for s in result["stages_skipped"]] == [stale], result
    assert [k for k in _manifests(s3_conn, table) if stale in k] == [], "the dead stage is still in S3"

    doc, proc = run_json(*base, "sync", "-p", "p", "-t", table)
    check_contract(doc, [table])
    assert proc.returncode == 0 and "stages_skipped" not in doc["table_results"][table], doc
    assert [tuple(r) for r in pg_fetch(f'SELECT id, v FROM "{pg_schema}".t ORDER BY id')] == [
        (2, "b"),
        (3, "c"),
    ]


def test_a_superseded_snapshot_stays_until_a_load_commits(
    tmp_path: Path,
    source_conn: SourceConn,
    pg_target: TargetConn,
    s3_conn: S3Conn,
    mysql_db: str,
    pg_schema: str,
) -> None:
    """Two --backup-only full snapshots: the second supersedes the first, but a --backup-only run commits
    nothing, and a live --load-only may be loading the first (it would commit): it stays. The --load-only
    that loads the newest reports the first skipped and deletes it; the next reports nothing skipped."""
    mysql_exec(
        mysql_db, "CREATE TABLE f (id INT PRIMARY KEY, v VARCHAR(10))", "INSERT INTO f VALUES (1, 'a')"
    )
    table = f"{mysql_db}.f"
    cfg = write_config(tmp_path / "cfg", source_conn, pg_target, s3_conn, {table: {}})
    base = ("--config-dir", str(cfg), "sync", "-p", "p", "-t", table)
    first = run_json(*base, "--backup-only")[0]["execution_id"]
    mysql_exec(mysql_db, "INSERT INTO f VALUES (2, 'b')")
    doc, _ = run_json(*base, "--backup-only")
    assert [s["execution_id"] for s in doc["table_results"][table]["stages_skipped"]] == [first], doc
    assert len(_manifests(s3_conn, table)) == 2  # both kept: nothing committed yet

    doc, proc = run_json(*base, "--load-only")
    check_contract(doc, [table])
    result = doc["table_results"][table]
    assert proc.returncode == 0 and len(result["stages_loaded"]) == 1, result
    assert result["stages_loaded"] != [first], result
    assert [s["execution_id"] for s in result["stages_skipped"]] == [first], result
    assert [k for k in _manifests(s3_conn, table) if first in k] == []
    doc, proc = run_json(*base, "--load-only")
    assert proc.returncode == 0 and "stages_skipped" not in doc["table_results"][table], doc
    assert pg_fetch(f'SELECT count(*) FROM "{pg_schema}".f')[0][0] == 2


@pytest.mark.parametrize(
    "args", [("sync", "-p", "nope", "-t", "db.t", "--json-output"), ("sync", "-p", "nope", "-t", "db.t")]
)
def test_a_stdout_that_refuses_the_report_is_one_line_not_a_traceback(
    tmp_path: Path, args: tuple[str, ...]
) -> None:
    """stdout redirected to a full disk (a CI job writing the report to a file): the write failed with a
    Python traceback on stderr (exit 1). Now one line saying so, exit 1."""
    with open("/dev/full", "w") as full:
        proc = subprocess.run(
            [*CLI, "--config-dir", str(tmp_path), *args],
            cwd=ROOT,
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            check=False,
        )
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if "could not write the output to stdout" in line]
    assert len(lines) == 1 and "No space left on device" in lines[0], proc.stderr


COMMIT = b"Q\x00\x00\x00\x0bCOMMIT\x00"  # the simple-query message of a bare COMMIT


def test_a_worker_killed_after_its_commit_does_not_say_rolled_back(
    tmp_path: Path,
    source_conn: SourceConn,
    pg_target: TargetConn,
    s3_conn: S3Conn,
    mysql_db: str,
    pg_schema: str,
) -> None:
    """A worker process killed (OOM killer, kill -9) after its load's COMMIT reached the warehouse but
    before it reported the table: the load committed (the target holds the new rows, the watermark moved),
    yet the table's failure said 'a load it had not committed was rolled back by the warehouse', so the
    operator took target and watermark for unchanged. The parent now asks the state log and says so."""
    for name in ("a", "b"):
        mysql_exec(
            mysql_db,
            f"CREATE TABLE {name} (id INT PRIMARY KEY, v VARCHAR(10))",
            f"INSERT INTO {name} SELECT seq, 'x' FROM seq_1_to_50",
        )
    proxy = CutProxy(f"http://{PG_HOST}:{PG_PORT}")
    try:
        target = replace(pg_target, host="127.0.0.1", port=proxy.port)
        processing = {"max_parallel_tables": 2, "processes": 2}
        cfg = write_config(tmp_path / "cfg", source_conn, target, s3_conn, processing=processing)
        for _ in range(2):  # both loads commit at the server; neither process hears it yet
            proxy.hold_answer_to(COMMIT)
        tables = [f"{mysql_db}.a", f"{mysql_db}.b"]
        proc = subprocess.Popen(
            [*CLI, "--config-dir", str(cfg), "sync", "-p", "p", "-t", ",".join(tables), "--json-output"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        state = f'SELECT count(*) FROM "{pg_schema}".s3shift_state'
        deadline = time.monotonic() + 60
        while _count_or_zero(state) < 2:  # a state row is visible only once its COMMIT went through
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.02)
        (worker,) = [int(p) for p in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()]
        os.kill(worker, signal.SIGKILL)
        proxy.release()
        out, _ = proc.communicate(timeout=120)
    finally:
        proxy.cut()
    doc = json.loads(out)
    check_contract(doc, tables)
    (lost,) = [r for r in doc["table_results"].values() if r["status"] == "failed"]
    assert lost["phase"] == "worker" and "SIGKILL" in lost["error_message"], lost
    assert "rolled back by the warehouse" not in lost["error_message"], lost
    assert "committed first" in lost["error_message"], lost
    for name in ("a", "b"):  # both loads did commit
        assert pg_fetch(f'SELECT count(*) FROM "{pg_schema}"."{name}"')[0][0] == 50


def _count_or_zero(sql: str) -> int:
    try:
        return int(pg_fetch(sql)[0][0])
    except asyncpg.UndefinedTableError:
        return 0


def test_the_loser_of_two_overlapping_runs_leaves_no_stage_reported_again(
    tmp_path: Path,
    source_conn: SourceConn,
    pg_target: TargetConn,
    s3_conn: S3Conn,
    mysql_db: str,
    pg_schema: str,
) -> None:
    """Cron overlap: two runs of an id_only table plan the same window from the same state; the one that
    read the source first... reads it second (its MySQL answer was slow), so the other commits first and
    this one's load is refused ("another run loaded ... meanwhile"). Its stage, extracted after the
    committed one, never continues the chain; later runs that found no new rows (they commit nothing)
    reported it skipped every time, for ever. Now the first of them reports it once and deletes it."""
    mysql_exec(
        mysql_db, "CREATE TABLE o (id INT PRIMARY KEY, v VARCHAR(10))", "INSERT INTO o VALUES (1, 'a')"
    )
    table = f"{mysql_db}.o"
    tables = {table: {"cdc_strategy": "id_only"}}
    cfg = write_config(tmp_path / "cfg", source_conn, pg_target, s3_conn, tables)
    proxy = CutProxy(f"http://{MYSQL_HOST}:{MYSQL_PORT}")
    try:
        slow = replace(source_conn, host="127.0.0.1", port=proxy.port)
        slow_cfg = write_config(tmp_path / "slow", slow, pg_target, s3_conn, tables)
        proxy.hold_answer_to(b"SELECT MAX(`id`)")  # after it listed S3: nothing staged yet
        late = subprocess.Popen(
            [*CLI, "--config-dir", str(slow_cfg), "sync", "-p", "p", "-t", table, "--json-output"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert proxy.triggered.wait(60), "the slow run never asked for MAX(id)"
        first, proc = run_json("--config-dir", str(cfg), "sync", "-p", "p", "-t", table)
        assert proc.returncode == 0, first
        proxy.release()
        loser = json.loads(late.communicate(timeout=120)[0])
    finally:
        proxy.cut()
    refused = loser["table_results"][table]
    assert refused["status"] == "failed" and "meanwhile" in refused["error_message"], refused
    assert [k for k in _manifests(s3_conn, table) if loser["execution_id"] in k], "no stage of the loser"
    base = ("--config-dir", str(cfg), "sync", "-p", "p", "-t", table)
    doc, proc = run_json(*base)  # nothing new: no load commits; the loser's stage is reported, deleted
    check_contract(doc, [table])
    result = doc["table_results"][table]
    assert proc.returncode == 0 and result["rows_processed"] == 0, result
    assert [s["execution_id"] for s in result["stages_skipped"]] == [loser["execution_id"]], result
    for _ in range(2):  # and never reported again
        doc, proc = run_json(*base)
        check_contract(doc, [table])
        assert proc.returncode == 0 and "stages_skipped" not in doc["table_results"][table], doc
    assert [k for k in _manifests(s3_conn, table) if loser["execution_id"] in k] == []
    assert pg_fetch(f'SELECT count(*) FROM "{pg_schema}".o')[0][0] == 1
