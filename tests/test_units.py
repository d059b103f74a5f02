"""DESIGN.md section 9: `s3shift plan` emits JSON units, each run by `sync --unit` in a process of its own
(as on another machine), sharing only S3 and the warehouse. Real MariaDB, PostgreSQL and S3 (moto)."""

from __future__ import annotations

import itertools
import json
import random
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from src.config.models import S3Conn, SourceConn, TargetConn
from tests.conftest import mysql_exec, pg_fetch, pg_run, s3_client
from tests.e2e import CLI, as_redshift, assert_tables_equal, check_contract, run_cli, run_json, write_config
from tests.test_fastpath_e2e import ORDERS, fill

CUSTOMERS = """CREATE TABLE customers (id INT NOT NULL PRIMARY KEY, name VARCHAR(40) NOT NULL,
  updated_at DATETIME(6) NOT NULL)"""
TAGS = "CREATE TABLE tags (id INT NOT NULL PRIMARY KEY, label VARCHAR(20) NULL)"


def _setup(tmp: Path, source: SourceConn, target: TargetConn, s3: S3Conn, db: str) -> tuple[Path, list[str]]:
    mysql_exec(
        db,
        ORDERS,
        fill(1, 2000),
        "ANALYZE TABLE orders",
        CUSTOMERS,
        "INSERT INTO customers SELECT seq, CONCAT('c', seq), '2024-01-01' + INTERVAL seq MINUTE "
        "FROM seq_1_to_50",
        TAGS,
        "INSERT INTO tags VALUES (1, 'a'), (2, NULL), (3, 'ç')",
    )
    tables = {
        f"{db}.orders": {"cdc_strategy": "id_only", "cdc_id_column": "id"},
        f"{db}.customers": {"cdc_strategy": "hybrid", "cdc_timestamp_column": "updated_at"},
        f"{db}.tags": {"cdc_strategy": "full_sync"},
    }
    # small key ranges: the 2,000-row orders table is read in several ranges (one extract unit each)
    cfg = write_config(tmp / "config", source, target, s3, tables, processing={"range_rows": 300})
    return cfg, list(tables)


def _plan(cfg: Path, *tables: str, cli: tuple[str, ...] = CLI) -> dict[str, Any]:
    args = [a for t in tables for a in ("-t", t)]
    proc = run_cli("--config-dir", str(cfg), "plan", "-p", "p", *args, cli=cli)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc: dict[str, Any] = json.loads(proc.stdout)
    return doc


def _run(cfg: Path, unit: dict[str, Any], cli: tuple[str, ...] = CLI) -> tuple[dict[str, Any], int]:
    doc, proc = run_json("--config-dir", str(cfg), "sync", "--unit", json.dumps(unit), cli=cli)
    check_contract(doc, [unit["table"]])
    return doc, proc.returncode


def _result(doc: dict[str, Any]) -> dict[str, Any]:
    (result,) = doc["table_results"].values()
    return dict(result)


def _objects(s3: S3Conn) -> list[str]:
    listed = s3_client(str(s3.endpoint_url)).list_objects_v2(Bucket=s3.bucket)
    return sorted(o["Key"] for o in listed.get("Contents", []))


def _state_rows(schema: str) -> int:
    rows = pg_fetch(
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = $1 AND table_name = $2",
        schema,
        "s3shift_state",
    )
    return int(pg_fetch(f'SELECT count(*) FROM "{schema}".s3shift_state')[0][0]) if rows[0][0] else 0


def test_units_run_anywhere_load_once_and_leave_later_rows_for_the_next_run(
    tmp_path: Path,
    source_conn: SourceConn,
    pg_target: TargetConn,
    s3_conn: S3Conn,
    mysql_db: str,
    pg_schema: str,
) -> None:
    cfg, (orders, customers, tags) = _setup(tmp_path, source_conn, pg_target, s3_conn, mysql_db)
    before = _objects(s3_conn)
    plan = _plan(cfg, orders, customers, tags)
    assert _objects(s3_conn) == before and _state_rows(pg_schema) == 0  # planning changes nothing
    assert pg_fetch("SELECT count(*) FROM information_schema.tables WHERE table_schema = $1", pg_schema) == [
        (0,)
    ]
    assert plan["status"] == "planned" and list(plan["tables"]) == [orders, customers, tags]
    units = {u["id"]: u for u in plan["units"]}
    extracts = [u for u in plan["units"] if u["kind"] == "extract"]
    (load,) = [u for u in plan["units"] if u["kind"] == "load"]
    assert len(extracts) >= 3 and all(u["table"] == orders for u in extracts)
    assert load["depends_on"] == [u["id"] for u in extracts] and plan["units"][-1] == load
    assert [units[f"{t}:sync"]["kind"] for t in (customers, tags)] == ["sync", "sync"]
    assert {u["plan_id"] for u in plan["units"]} == {plan["plan_id"]}
    assert plan["tables"][orders]["window"]["end"]["id"] == 6000  # fixed when planning: MAX(id)
    # key ranges of the window (start, 6000]: no gap, no overlap, in order
    bounds = [tuple(u["ranges"][0]) for u in extracts]
    assert bounds[0][0] is None and bounds[-1][1] == 6001  # no watermark yet: from the first key
    assert all(a[1] == b[0] for a, b in itertools.pairwise(bounds))

    # rows changed after the plan: left for the next run
    mysql_exec(
        mysql_db,
        fill(2001, 2100),
        # past the planned end (the source's clock minus lag_seconds, 5 s), not the next run's
        "INSERT INTO customers VALUES (51, 'late', UTC_TIMESTAMP(6) - INTERVAL 4 SECOND)",
        "UPDATE tags SET label = 'after' WHERE id = 1",
    )

    # the load before its extract units: refused, naming every one missing, nothing loaded, retryable
    doc, code = _run(cfg, load)
    assert code == 1 and _result(doc)["retryable"] is True, doc
    message = _result(doc)["error_message"]
    assert "not staged yet: " + ", ".join(u["id"] for u in extracts) in message, message
    assert _state_rows(pg_schema) == 0

    shuffled = extracts[:]
    random.Random(7).shuffle(shuffled)
    last = shuffled.pop()
    with ThreadPoolExecutor(3) as pool:  # separate processes, any order, some at once
        for doc, code in pool.map(lambda u: _run(cfg, u), shuffled):
            assert code == 0, doc
            assert _result(doc)["kind"] == "extract" and _result(doc)["extract"]["path"] == "connectorx", doc
    doc, code = _run(cfg, load)
    assert code == 1 and f"not staged yet: {last['id']};" in _result(doc)["error_message"], doc
    doc, code = _run(cfg, last)
    assert code == 0, doc
    # a rerun replaces its own files: what an earlier attempt left there (a killed one's part) goes
    prefix = f"staging/p/_plans/{plan['plan_id']}/{orders}/extract-0000/"
    s3_client(str(s3_conn.endpoint_url)).put_object(
        Bucket=s3_conn.bucket, Key=f"{prefix}part-00099.parquet", Body=b"x"
    )
    first = _result(_run(cfg, extracts[0])[0])
    assert first["manifest"] == f"s3://{s3_conn.bucket}/{prefix}manifest.json"
    assert len([k for k in _objects(s3_conn) if k.startswith(prefix)]) == first["files_created"] + 1
    assert f"{prefix}part-00099.parquet" not in _objects(s3_conn)

    doc, code = _run(cfg, load)
    assert code == 0, doc
    loaded = _result(doc)
    assert loaded["rows_processed"] == loaded["rows_loaded"] == 2000, loaded
    assert loaded["watermark"] == {"ts": None, "id": 6000}
    manifest = s3_client(str(s3_conn.endpoint_url)).get_object(
        Bucket=s3_conn.bucket, Key=loaded["load_manifest"].split("/", 3)[3]
    )
    assert json.loads(manifest["Body"].read())["meta"]["record_count"] == 2000  # each unit's files once
    for table in (customers, tags):
        doc, code = _run(cfg, units[f"{table}:sync"])
        assert code == 0, doc
    assert _result(doc)["rows_processed"] == 3  # tags: a full snapshot when its unit ran

    target = pg_fetch(f'SELECT count(*), max(id) FROM "{pg_schema}".orders')
    assert tuple(target[0]) == (2000, 6000)  # the planned rows exactly: not the 100 inserted since
    assert pg_fetch(f'SELECT count(*) FROM "{pg_schema}".customers') == [(50,)]
    states = _state_rows(pg_schema)

    # a load unit already committed: success, nothing loaded twice
    doc, code = _run(cfg, load)
    assert code == 0 and _result(doc)["already_loaded"] is True and _result(doc)["rows_processed"] == 0
    doc, code = _run(cfg, units[f"{customers}:sync"])  # not even read again
    assert code == 0 and _result(doc)["already_loaded"] is True and _result(doc)["rows_processed"] == 0, doc
    assert "manifest" not in _result(doc)
    assert _state_rows(pg_schema) == states
    assert tuple(pg_fetch(f'SELECT count(*) FROM "{pg_schema}".orders')[0]) == (2000,)

    # the next normal sync continues where the plan's load ended
    doc, proc = run_json("--config-dir", str(cfg), "sync", "-p", "p", "-t", orders, "-t", customers)
    assert proc.returncode == 0, doc
    assert doc["table_results"][orders]["rows_processed"] == 100
    assert doc["table_results"][customers]["rows_processed"] == 1
    for table in ("orders", "customers", "tags"):
        assert_tables_equal(
            mysql_db, table, pg_schema, table, "id", json_cols=("payload",), float32_cols=("f",)
        )


def test_a_stale_plan_is_refused_and_bad_units_say_why(
    tmp_path: Path,
    source_conn: SourceConn,
    pg_target: TargetConn,
    s3_conn: S3Conn,
    mysql_db: str,
    pg_schema: str,
) -> None:
    cfg, (orders, customers, _) = _setup(tmp_path, source_conn, pg_target, s3_conn, mysql_db)
    plan = _plan(cfg, orders, customers)
    *extracts, load = [u for u in plan["units"] if u["table"] == orders]
    doc, proc = run_json("--config-dir", str(cfg), "sync", "-p", "p", "-t", orders)  # loads it meanwhile
    assert proc.returncode == 0, doc
    for unit in extracts:
        assert _run(cfg, unit)[1] == 0
    states = _state_rows(pg_schema)
    doc, code = _run(cfg, load)
    assert code == 1 and _result(doc)["retryable"] is False, doc
    message = _result(doc)["error_message"]
    assert (
        f"unit {load['id']} of plan {plan['plan_id']} is stale: {orders} was planned from no state" in message
    )
    assert "nothing was loaded — make a new plan" in message, message
    assert _state_rows(pg_schema) == states and pg_fetch(f'SELECT count(*) FROM "{pg_schema}".orders') == [
        (2000,)
    ]

    # a sync unit made stale is refused before it reads a row
    mysql_exec(mysql_db, fill(2001, 2100))
    plan = _plan(cfg, orders)
    (unit,) = plan["units"]  # 100 rows: one reader
    assert unit["kind"] == "sync" and unit["window"]["start"]["id"] == 6000
    mysql_exec(mysql_db, fill(2101, 2200))
    doc, proc = run_json("--config-dir", str(cfg), "sync", "-p", "p", "-t", orders)
    assert proc.returncode == 0 and doc["table_results"][orders]["rows_processed"] == 200, doc
    doc, code = _run(cfg, unit)
    assert code == 1 and "is stale" in _result(doc)["error_message"] and _result(doc)["phase"] == "state"
    assert not [k for k in _objects(s3_conn) if f"/_plans/{plan['plan_id']}/" in k]
    assert pg_fetch(f'SELECT count(*) FROM "{pg_schema}".orders') == [(2200,)]

    # a target dropped since the plan: the rows before its window went with it; not loaded into a new one
    mysql_exec(mysql_db, fill(2201, 2300))
    plan = _plan(cfg, orders)
    pg_run(lambda c: c.execute(f'DROP TABLE "{pg_schema}".orders'))
    doc, code = _run(cfg, plan["units"][0])
    assert (
        code == 1 and f"{pg_schema}.orders no longer holds the rows before" in _result(doc)["error_message"]
    )
    assert pg_fetch(
        "SELECT count(*) FROM pg_tables WHERE schemaname = $1 AND tablename = 'orders'", pg_schema
    ) == [(0,)]

    # a plan of a table whose strategy changed since
    tables = {orders: {"cdc_strategy": "full_sync"}}
    other = write_config(
        tmp_path / "other", source_conn, pg_target, s3_conn, tables, processing={"range_rows": 300}
    )
    doc, code = _run(other, unit)
    assert code == 1 and "cdc_strategy is full_sync now, not id_only" in _result(doc)["error_message"], doc

    # an extract unit of a table whose columns changed since the plan
    mysql_exec(mysql_db, "ALTER TABLE orders ADD COLUMN added INT NULL")
    doc, code = _run(cfg, extracts[0])
    assert code == 1 and f"the columns of {orders} (or the pipeline's column config) changed" in str(doc)

    # a table with a --backup-only stage waiting: planned after that stage is loaded
    doc, proc = run_json("--config-dir", str(cfg), "sync", "-p", "p", "-t", customers, "--backup-only")
    assert proc.returncode == 0, doc
    proc = run_cli("--config-dir", str(cfg), "plan", "-p", "p", "-t", customers, "-t", orders)
    doc = json.loads(proc.stdout)
    assert proc.returncode == 1 and doc["status"] == "failed" and doc["tables"][orders]["status"] == "planned"
    assert doc["tables"][customers]["status"] == "error" and {u["table"] for u in doc["units"]} == {orders}
    assert "waiting to be loaded" in doc["tables"][customers]["error_message"]
    assert f"sync --load-only -p p -t {customers}" in doc["tables"][customers]["error_message"]
    proc = run_cli("--config-dir", str(cfg), "plan", "-p", "nope", "-t", orders)
    doc = json.loads(proc.stdout)
    assert proc.returncode == 1 and doc["tables"][orders]["status"] == "error" and doc["units"] == []
    assert "nope" in doc["tables"][orders]["error_message"]

    # bad units: one line, the JSON all the same with --json-output (exit 1), exit 2 without
    for bad, words in (
        ("{not json", "--unit is not JSON"),
        (json.dumps({**unit, "kind": "merge"}), f"--unit ({unit['id']}) is not a unit of `s3shift plan`"),
        (json.dumps({**load, "depends_on": ["x.y:extract-0000"]}), f"is not an extract unit of {orders}"),
        ("@/nonexistent/unit.json", "--unit file /nonexistent/unit.json: cannot read it"),
    ):
        proc = run_cli("--config-dir", str(cfg), "sync", "--unit", bad)
        assert proc.returncode == 2 and words in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
        doc, proc = run_json("--config-dir", str(cfg), "sync", "--unit", bad)
        assert proc.returncode == 1 and doc["status"] == "failed" and words in proc.stderr, doc
    doc, proc = run_json("--config-dir", str(cfg), "sync", "-p", "other", "--unit", json.dumps(unit))
    assert proc.returncode == 1 and list(doc["table_results"]) == [orders], doc
    assert f"unit {unit['id']} belongs to pipeline 'p', not 'other' (-p)" in _result(doc)["error_message"]
    path = tmp_path / "unit.json"
    path.write_text(json.dumps({**unit, "pipeline": "nope"}))
    doc, proc = run_json("--config-dir", str(cfg), "sync", "--unit", f"@{path}")
    assert proc.returncode == 1 and _result(doc)["phase"] == "config", doc
    assert "nope" in _result(doc)["error_message"]


@pytest.mark.parametrize("warehouse", ["postgres", "redshift"])
def test_planned_key_ranges_are_read_exactly_by_asyncmy_when_connectorx_may_not(
    tmp_path: Path,
    source_conn: SourceConn,
    pg_target: TargetConn,
    s3_conn: S3Conn,
    s3_endpoint: str,
    mysql_db: str,
    pg_schema: str,
    warehouse: str,
) -> None:
    """A full_sync table's ranges (the first open below, the last open above) on a host whose config
    turns the fast path off: each extract unit reads its ranges with asyncmy, nothing lost or doubled;
    on Redshift (the emulation harness) the load unit COPYs the plan's one manifest of every unit's files."""
    target, cli = as_redshift(pg_target, s3_endpoint) if warehouse == "redshift" else (pg_target, CLI)
    mysql_exec(mysql_db, ORDERS, fill(1, 1500), "ANALYZE TABLE orders")
    table = f"{mysql_db}.orders"
    tables = {table: {"cdc_strategy": "full_sync"}}
    cfg = write_config(
        tmp_path / "config", source_conn, target, s3_conn, tables, processing={"range_rows": 300}
    )
    if warehouse == "redshift":  # a load the warehouse would refuse: refused by the plan, before any unit
        bad = {table: {"cdc_strategy": "full_sync", "diststyle": "KEY"}}
        other = write_config(tmp_path / "bad", source_conn, target, s3_conn, bad)
        proc = run_cli("--config-dir", str(other), "plan", "-p", "p", "-t", table, cli=cli)
        doc = json.loads(proc.stdout)
        assert proc.returncode == 1 and doc["units"] == [], doc
        assert "diststyle KEY without a distkey" in doc["tables"][table]["error_message"], doc
    plan = _plan(cfg, table, cli=cli)
    *extracts, load = plan["units"]
    assert len(extracts) >= 3 and extracts[0]["ranges"][0][0] is None and extracts[-1]["ranges"][0][1] is None
    processing = {"range_rows": 300, "fast_path": False}
    write_config(tmp_path / "config", source_conn, target, s3_conn, tables, processing=processing)
    mysql_exec(mysql_db, fill(1501, 1600))  # after the plan, above every key: the last range reads them
    for unit in reversed(extracts):
        doc, code = _run(cfg, unit, cli)
        assert code == 0, doc
        assert _result(doc)["extract"] == {"path": "asyncmy", "reason": "processing.fast_path is off"}
    doc, code = _run(cfg, load, cli)
    assert code == 0 and _result(doc)["rows_processed"] == 1600, doc
    assert (
        assert_tables_equal(
            mysql_db, "orders", pg_schema, "orders", "id", json_cols=("payload",), float32_cols=("f",)
        )
        == 1600
    )


def test_an_id_only_plan_of_keys_up_to_2_pow_64_minus_1_is_json_and_reads_every_key(
    tmp_path: Path,
    source_conn: SourceConn,
    pg_target: TargetConn,
    s3_conn: S3Conn,
    mysql_db: str,
    pg_schema: str,
) -> None:
    """An id_only window up to BIGINT UNSIGNED's largest key: its last range was ``[x, 2^64)``, a bound
    no JSON integer of orjson carries, so `plan` crashed with a traceback and printed no plan."""
    mysql_exec(
        mysql_db,
        "CREATE TABLE big (id BIGINT UNSIGNED NOT NULL PRIMARY KEY, v INT NOT NULL)",
        "INSERT INTO big SELECT 18446744073709551615 - seq * 1000, seq FROM seq_0_to_1199",
        "INSERT INTO big VALUES (5, -1), (9223372036854775807, -2), (9223372036854775808, -3)",
        "ANALYZE TABLE big",
    )
    table = f"{mysql_db}.big"
    tables = {table: {"cdc_strategy": "id_only", "cdc_id_column": "id"}}
    cfg = write_config(
        tmp_path / "config", source_conn, pg_target, s3_conn, tables, processing={"range_rows": 300}
    )
    plan = _plan(cfg, table)
    *extracts, load = plan["units"]
    assert plan["tables"][table]["window"]["end"]["id"] == 2**64 - 1
    assert len(extracts) >= 2 and extracts[-1]["ranges"][0][1] is None  # no key lies above 2^64-1
    for unit in extracts:
        assert _run(cfg, unit)[1] == 0
    doc, code = _run(cfg, load)
    assert code == 0 and _result(doc)["rows_loaded"] == 1203, doc
    assert _result(doc)["watermark"] == {"ts": None, "id": 2**64 - 1}
    assert assert_tables_equal(mysql_db, "big", pg_schema, "big", "id") == 1203
    doc, proc = run_json("--config-dir", str(cfg), "sync", "-p", "p", "-t", table)
    assert proc.returncode == 0 and doc["table_results"][table]["rows_processed"] == 0, doc


def test_a_load_refuses_extract_units_edited_by_hand(
    tmp_path: Path,
    source_conn: SourceConn,
    pg_target: TargetConn,
    s3_conn: S3Conn,
    mysql_db: str,
    pg_schema: str,
) -> None:
    """The load commits the plan's window end as the watermark: an extract unit whose window or key range
    was edited (a gap, an overlap, a later end) made it skip rows for good or fail on a duplicate key. The
    load checks every staged unit against its window and that their ranges cover it once; a unit reading
    a timestamp window checks that its end is not ahead of the source's clock."""
    cfg, (orders, customers, _) = _setup(tmp_path, source_conn, pg_target, s3_conn, mysql_db)
    plan = _plan(cfg, orders, customers)
    *extracts, load = [u for u in plan["units"] if u["table"] == orders]
    first, second = extracts[0], extracts[1]
    # a timestamp window's end moved past the source's clock: rows written later before it would be lost
    (sync,) = [u for u in plan["units"] if u["table"] == customers]
    late = {**sync["window"]["end"], "ts": "2099-01-01 00:00:00.000000"}
    doc, code = _run(cfg, {**sync, "window": {**sync["window"], "end": late}})
    assert code == 1 and "its window ends at 2099-01-01 00:00:00.000000, after the source's clock" in str(doc)
    assert _state_rows(pg_schema) == 0 and not [k for k in _objects(s3_conn) if "/sync/" in k]
    assert _run(cfg, sync)[1] == 0
    (low, mid), (_, high) = first["ranges"][0], second["ranges"][0]
    edits = (
        ({**first, "window": {**first["window"], "end": {"ts": None, "id": 999999}}}, "window (after"),
        ({**second, "ranges": [[low, high]]}, "do not cover"),  # overlaps the first
        ({**second, "ranges": [[mid + 3, high]]}, "do not cover"),  # a gap
    )
    for edited, words in edits:
        for unit in extracts:
            assert _run(cfg, edited if unit["id"] == edited["id"] else unit)[1] == 0
        doc, code = _run(cfg, load)
        assert code == 1 and words in _result(doc)["error_message"], doc
        assert _result(doc)["retryable"] is False and "rerun" in _result(doc)["error_message"]
        assert _state_rows(pg_schema) == 1  # the customers sync unit's only
    mysql_exec(mysql_db, fill(2001, 2100))  # after the plan: the next run's
    for unit in (first, second):  # run again as planned
        assert _run(cfg, unit)[1] == 0
    doc, code = _run(cfg, load)
    assert code == 0 and _result(doc)["rows_loaded"] == 2000, doc
    doc, proc = run_json("--config-dir", str(cfg), "sync", "-p", "p", "-t", orders)
    assert proc.returncode == 0 and doc["table_results"][orders]["rows_processed"] == 100, doc
    assert_tables_equal(
        mysql_db, "orders", pg_schema, "orders", "id", json_cols=("payload",), float32_cols=("f",)
    )


def test_a_first_timestamp_window_is_planned_in_key_ranges_that_read_only_its_rows(
    tmp_path: Path,
    source_conn: SourceConn,
    pg_target: TargetConn,
    s3_conn: S3Conn,
    mysql_db: str,
    pg_schema: str,
) -> None:
    """A timestamp_only table's first window, read by key ranges as a sync would: each extract unit keeps
    to the planned window (no NULL cursor, nothing stamped after its end), whether connectorx or (on a host
    with the fast path off) asyncmy reads its ranges; the load commits the window's end."""
    mysql_exec(
        mysql_db,
        ORDERS,
        fill(1, 1500),
        "UPDATE orders SET updated_at = NULL WHERE id % 7 = 0",
        "ANALYZE TABLE orders",
    )
    table = f"{mysql_db}.orders"
    tables = {table: {"cdc_strategy": "timestamp_only", "cdc_timestamp_column": "updated_at"}}
    cfg = write_config(
        tmp_path / "config", source_conn, pg_target, s3_conn, tables, processing={"range_rows": 300}
    )
    plan = _plan(cfg, table)
    *extracts, load = plan["units"]
    assert len(extracts) >= 3 and load["kind"] == "load", plan
    end = plan["tables"][table]["window"]["end"]["ts"]
    mysql_exec(  # after the plan: past its window (lag_seconds 5), in every key range
        mysql_db,
        "UPDATE orders SET updated_at = UTC_TIMESTAMP(6), note = 'late' WHERE id % 5 = 0",
        "CREATE VIEW expected AS SELECT * FROM orders WHERE updated_at <= "
        f"'{end}' AND (note IS NULL OR note <> 'late')",
    )
    for unit in extracts[::2]:
        doc, code = _run(cfg, unit)
        assert code == 0 and _result(doc)["extract"]["path"] == "connectorx", doc
    write_config(
        tmp_path / "config",
        source_conn,
        pg_target,
        s3_conn,
        tables,
        processing={"range_rows": 300, "fast_path": False},
    )
    for unit in extracts[1::2]:
        doc, code = _run(cfg, unit)
        assert code == 0 and _result(doc)["extract"]["path"] == "asyncmy", doc
    doc, code = _run(cfg, load)
    assert code == 0, doc
    assert _result(doc)["watermark"]["ts"] == end
    expected = assert_tables_equal(
        mysql_db, "expected", pg_schema, "orders", "id", json_cols=("payload",), float32_cols=("f",)
    )
    assert (
        expected == _result(doc)["rows_processed"] == len([i for i in range(3, 4501, 3) if i % 5 and i % 7])
    )


def test_a_sync_unit_whose_window_holds_no_row_leaves_nothing_in_s3(
    tmp_path: Path,
    source_conn: SourceConn,
    pg_target: TargetConn,
    s3_conn: S3Conn,
    mysql_db: str,
    pg_schema: str,
) -> None:
    """A window found empty once read: a normal sync removes its stage (nothing new in S3 but the run's
    report), and so does a sync unit now; it left an empty manifest under the plan's directory."""
    mysql_exec(
        mysql_db,
        CUSTOMERS,
        "INSERT INTO customers SELECT seq, CONCAT('c', seq), '2024-01-01' + INTERVAL seq MINUTE"
        " FROM seq_1_to_5",
    )
    table = f"{mysql_db}.customers"
    tables = {table: {"cdc_strategy": "hybrid", "cdc_timestamp_column": "updated_at", "lag_seconds": 0}}
    cfg = write_config(tmp_path / "config", source_conn, pg_target, s3_conn, tables)
    doc, proc = run_json("--config-dir", str(cfg), "sync", "-p", "p", "-t", table)
    assert proc.returncode == 0 and doc["table_results"][table]["rows_processed"] == 5, doc

    def staged() -> list[str]:
        return [k for k in _objects(s3_conn) if "/_reports/" not in k]

    before, states = staged(), _state_rows(pg_schema)
    doc, proc = run_json("--config-dir", str(cfg), "sync", "-p", "p", "-t", table)  # the normal sync
    assert proc.returncode == 0 and doc["table_results"][table]["rows_processed"] == 0, doc
    assert "manifest" not in doc["table_results"][table] and staged() == before
    plan = _plan(cfg, table)
    (unit,) = plan["units"]
    assert unit["kind"] == "sync" and plan["tables"][table]["window"]["empty"] is False, plan
    doc, code = _run(cfg, unit)
    result = _result(doc)
    assert code == 0 and result["rows_processed"] == 0 and result["files_created"] == 0, doc
    assert staged() == before, [k for k in staged() if k not in before]
    assert "manifest" not in result and result["rows_loaded"] == 0
    assert _state_rows(pg_schema) == states


def test_an_extract_unit_of_a_table_whose_key_has_no_integer_first_column_is_refused(
    tmp_path: Path, source_conn: SourceConn, pg_target: TargetConn, s3_conn: S3Conn, mysql_db: str
) -> None:
    """Such a table is planned as one sync unit (its key cannot be split); an extract unit of key ranges
    made of it by hand is refused before it reads a row, not read as the whole table."""
    mysql_exec(
        mysql_db,
        "CREATE TABLE codes (code VARCHAR(8) PRIMARY KEY, n INT)",
        "INSERT INTO codes VALUES ('a', 1)",
    )
    table = f"{mysql_db}.codes"
    cfg = write_config(
        tmp_path / "config", source_conn, pg_target, s3_conn, {table: {"cdc_strategy": "full_sync"}}
    )
    (unit,) = _plan(cfg, table)["units"]
    assert unit["kind"] == "sync"
    edited = {**unit, "kind": "extract", "id": f"{table}:extract-0000", "ranges": [[None, None]]}
    doc, code = _run(cfg, edited)
    assert code == 1, doc
    assert "has no integer first column to split" in _result(doc)["error_message"], doc
    assert not [k for k in _objects(s3_conn) if "/_plans/" in k and k.endswith(".parquet")]
