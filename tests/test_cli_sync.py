"""End to end through the public CLI: MySQL -> S3 (moto server) -> PostgreSQL, and the JSON contract."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from src.config.models import S3Conn, SourceConn, TargetConn
from tests.conftest import _free_port, mysql_exec, pg_fetch, s3_client
from tests.e2e import (
    PASSWORD_ENV,
    as_redshift,
    assert_tables_equal,
    check_contract,
    failures,
    run_cli,
    run_json,
    write_config,
)

ORDERS = """CREATE TABLE orders (
  id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
  customer_id INT UNSIGNED NOT NULL,
  status ENUM('new','paid','shipped','') NOT NULL,
  amount DECIMAL(12,2) NOT NULL,
  big DECIMAL(38,10) NULL,
  ubig BIGINT UNSIGNED NULL,
  qty SMALLINT NULL,
  flag TINYINT(1) NULL,
  ratio DOUBLE NULL,
  f FLOAT NULL,
  note TEXT NULL,
  code CHAR(3) NULL,
  tags SET('a','b','c') NULL,
  payload JSON NULL,
  raw VARBINARY(16) NULL,
  created_at DATETIME(6) NOT NULL,
  updated_at TIMESTAMP(6) NULL,
  shipped_on DATE NULL
) CHARACTER SET utf8mb4"""

ROWS = [
    "(1, 7, 'new', 12.34, 1234567890123456789012345678.0123456789, 18446744073709551615, -32768, 2, 1.5e300,"
    " 3.25, 'héllo 😀 wörld', 'abc', 'a,c', '{\"k\": [1, 2, {\"z\": null}]}', X'00FF10',"
    " '1000-01-01 00:00:00.000000', '2024-03-10 02:30:00.123456', '2024-02-29')",
    "(2, 4294967295, '', -0.01, -0.0000000001, 0, 32767, -1, -0.0, -1.5, '', '   ', '', '[]', X'',"
    " '9999-12-31 23:59:59.999999', '2038-01-19 03:14:07.999999', '9999-12-31')",
    "(3, 0, 'paid', 0.00, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,"
    " '2024-01-01 00:00:00.000001', NULL, NULL)",
]


def make_orders(db: str, extra_rows: int = 0) -> None:
    stmts = [ORDERS, "INSERT INTO orders VALUES " + ", ".join(ROWS)]
    if extra_rows:
        stmts.append(
            "INSERT INTO orders (customer_id, status, amount, note, created_at, updated_at) "
            "SELECT seq % 1000, ELT(1 + seq % 3, 'new', 'paid', 'shipped'), seq / 100, CONCAT('note ', seq), "
            "'2024-01-01' + INTERVAL seq SECOND, '2024-06-01' + INTERVAL seq MICROSECOND "
            f"FROM seq_1_to_{extra_rows}"
        )
    mysql_exec(db, *stmts)


def make_customers(db: str) -> None:
    mysql_exec(
        db,
        "CREATE TABLE customers (id INT PRIMARY KEY, name VARCHAR(50) NOT NULL, born DATE, "
        "`select` VARCHAR(10), `Mixed Case` INT) CHARACTER SET utf8mb4",
        "INSERT INTO customers VALUES (1, 'Zoë', '1990-05-01', 'x', 1), (2, '李雷', NULL, NULL, NULL), "
        "(3, 'O''Brien \"q\"', '2000-01-01', 'from', -5)",
    )


@pytest.fixture
def cfg(tmp_path: Path, source_conn: SourceConn, pg_target: TargetConn, s3_conn: S3Conn) -> Path:
    return write_config(
        tmp_path / "config",
        source_conn,
        pg_target,
        s3_conn,
        {
            f"{source_conn.database}.customers": {
                "cdc_strategy": "full_sync",
                "target_name": "dim_customers",
            }
        },
    )


def test_full_sync_two_tables_value_by_value(
    cfg: Path, mysql_db: str, pg_schema: str, s3_conn: S3Conn
) -> None:
    make_orders(mysql_db, extra_rows=5000)
    make_customers(mysql_db)
    tables = [f"{mysql_db}.orders", f"{mysql_db}.customers"]
    doc, proc = run_json("--config-dir", str(cfg), "sync", "-p", "p", "-t", tables[0], "-t", tables[1])
    assert proc.returncode == 0, doc
    check_contract(doc, tables)
    assert doc["status"] == "success"
    orders = doc["table_results"][tables[0]]
    assert orders["rows_processed"] == 5003 and orders["files_created"] >= 1
    assert (
        assert_tables_equal(
            mysql_db, "orders", pg_schema, "orders", "id", json_cols=("payload",), float32_cols=("f",)
        )
        == 5003
    )
    assert assert_tables_equal(mysql_db, "customers", pg_schema, "dim_customers", "id") == 3
    # the staged files are where DESIGN.md section 5 says, with a manifest
    keys = [
        o["Key"]
        for o in s3_client(s3_conn.endpoint_url or "").list_objects_v2(Bucket=s3_conn.bucket)["Contents"]
    ]
    prefix = f"staging/p/{mysql_db}.orders/{doc['execution_id']}/"
    assert f"{prefix}manifest.json" in keys and f"{prefix}part-00000.parquet" in keys
    # the run report is persisted beside the data, equal to what stdout printed
    report_key = f"staging/p/_reports/{doc['execution_id']}.json"
    body = (
        s3_client(s3_conn.endpoint_url or "").get_object(Bucket=s3_conn.bucket, Key=report_key)["Body"].read()
    )
    assert json.loads(body) == doc
    assert "logs" not in proc.stdout and proc.stderr  # logs on stderr only


def test_rerun_replaces_target(cfg: Path, mysql_db: str, pg_schema: str) -> None:
    make_customers(mysql_db)
    t = f"{mysql_db}.customers"
    doc, proc = run_json("--config-dir", str(cfg), "sync", "-p", "p", "-t", t)
    assert proc.returncode == 0, doc
    mysql_exec(
        mysql_db,
        "DELETE FROM customers WHERE id = 2",
        "UPDATE customers SET name = 'new' WHERE id = 1",
        "INSERT INTO customers VALUES (9, 'nine', NULL, NULL, NULL)",
    )
    doc, proc = run_json("--config-dir", str(cfg), "sync", "-p", "p", "-t", t)
    assert proc.returncode == 0, doc
    assert doc["table_results"][t]["rows_processed"] == 3
    assert assert_tables_equal(mysql_db, "customers", pg_schema, "dim_customers", "id") == 3


def test_empty_table_empties_target(cfg: Path, mysql_db: str, pg_schema: str) -> None:
    make_customers(mysql_db)
    t = f"{mysql_db}.customers"
    assert run_json("--config-dir", str(cfg), "sync", "-p", "p", "-t", t)[1].returncode == 0
    mysql_exec(mysql_db, "DELETE FROM customers")
    doc, proc = run_json("--config-dir", str(cfg), "sync", "-p", "p", "-t", t)
    assert proc.returncode == 0, doc
    assert doc["table_results"][t]["rows_processed"] == 0 and doc["table_results"][t]["files_created"] == 0
    assert pg_fetch(f'SELECT count(*) FROM "{pg_schema}".dim_customers')[0][0] == 0


def test_one_failing_table_among_good_ones(cfg: Path, mysql_db: str, pg_schema: str) -> None:
    make_customers(mysql_db)
    make_orders(mysql_db)
    tables = [f"{mysql_db}.customers", f"{mysql_db}.missing", f"{mysql_db}.orders"]
    doc, proc = run_json("--config-dir", str(cfg), "sync", "-p", "p", *[a for t in tables for a in ("-t", t)])
    assert proc.returncode == 1
    check_contract(doc, tables)
    assert doc["status"] == "partial_success"
    assert "missing" in doc["table_results"][tables[1]]["error_message"]
    assert "not found" in doc["table_results"][tables[1]]["error_message"]
    assert (
        assert_tables_equal(
            mysql_db, "orders", pg_schema, "orders", "id", json_cols=("payload",), float32_cols=("f",)
        )
        == 3
    )


def test_tables_whose_target_cannot_be_theirs_fail_alone_saying_what_to_do(
    tmp_path: Path,
    source_conn: SourceConn,
    pg_target: TargetConn,
    s3_conn: S3Conn,
    s3_endpoint: str,
    mysql_db: str,
    pg_schema: str,
) -> None:
    """Two tables that would load one target (here by target_name; on Redshift by case) would overwrite
    each other, and a table named like the state table would overwrite every watermark: none of them
    runs. A name the warehouse cannot hold and a dotted table name say what to do. The rest syncs."""
    make_customers(mysql_db)
    make_orders(mysql_db)
    long_name = "t" * 64
    mysql_exec(
        mysql_db,
        "CREATE TABLE s3shift_state (id INT PRIMARY KEY)",
        f"CREATE TABLE {long_name} (id INT PRIMARY KEY)",
        "CREATE TABLE `dot.ted` (id INT PRIMARY KEY)",
        "CREATE TABLE good (id INT PRIMARY KEY)",
        "INSERT INTO good VALUES (1)",
    )
    db = mysql_db
    bad = [f"{db}.customers", f"{db}.orders", f"{db}.s3shift_state", f"{db}.{long_name}", f"{db}.dot.ted"]
    tables = [*bad, f"{db}.good"]
    same = {"target_name": "dim"}
    cfg = write_config(tmp_path / "c", source_conn, pg_target, s3_conn, {tables[0]: same, tables[1]: same})
    doc, _ = run_json("--config-dir", str(cfg), "sync", "-p", "p", *[a for t in tables for a in ("-t", t)])
    check_contract(doc, tables)
    errors = failures(doc)
    assert list(errors) == bad and doc["status"] == "partial_success", doc
    assert errors[tables[0]].startswith(
        f"{db}.customers would load {pg_schema}.dim, as {db}.orders would too"
    )
    assert f"set tables.{db}.orders.target_name" in errors[tables[1]]
    assert f"{pg_schema}.s3shift_state, the state table of s3shift" in errors[tables[2]]
    assert "longer than 63 bytes" in errors[tables[3]] and "set target_name" in errors[tables[3]]
    assert f"CREATE VIEW `{db}`.`dot_ted` AS SELECT * FROM `{db}`.`dot.ted`" in errors[tables[4]]
    assert [doc["table_results"][t]["phase"] for t in (*tables[:3], tables[4])] == ["plan"] * 4
    assert pg_fetch("SELECT to_regclass($1)", f"{pg_schema}.dim")[0][0] is None
    state = pg_fetch(f'SELECT source_table, row_count FROM "{pg_schema}".s3shift_state')
    assert [tuple(r) for r in state] == [(f"{db}.good", 1)]  # the state table is the state, untouched
    # on Redshift, names that differ only by case are one table
    mysql_exec(mysql_db, "CREATE TABLE `Orders` (id INT PRIMARY KEY)")
    rs_target, rs_cli = as_redshift(pg_target, s3_endpoint)
    rs_cfg = write_config(tmp_path / "rs", source_conn, rs_target, s3_conn)
    pair = [f"{db}.orders", f"{db}.Orders"]
    doc, _ = run_json(
        "--config-dir", str(rs_cfg), "sync", "-p", "p", "-t", pair[0], "-t", pair[1], cli=rs_cli
    )
    assert "(redshift folds names to lowercase)" in failures(doc)[pair[1]], doc


def test_failed_table_leaves_previous_target_untouched(cfg: Path, mysql_db: str, pg_schema: str) -> None:
    make_customers(mysql_db)
    t = f"{mysql_db}.customers"
    assert run_json("--config-dir", str(cfg), "sync", "-p", "p", "-t", t)[1].returncode == 0
    # an incompatible type change (int -> varchar) under the default policy: the table fails, the
    # target keeps its rows and its column type
    mysql_exec(
        mysql_db,
        "ALTER TABLE customers MODIFY `Mixed Case` VARCHAR(10)",
        "DELETE FROM customers WHERE id = 1",
    )
    doc, proc = run_json("--config-dir", str(cfg), "sync", "-p", "p", "-t", t)
    assert proc.returncode == 1 and doc["status"] == "failed"
    msg = doc["table_results"][t]["error_message"]
    assert "dim_customers" in msg and "Mixed Case" in msg and "schema_change" in msg, msg
    assert pg_fetch(f'SELECT count(*) FROM "{pg_schema}".dim_customers')[0][0] == 3


def test_unknown_pipeline_fails_every_table(cfg: Path) -> None:
    doc, proc = run_json("--config-dir", str(cfg), "sync", "-p", "nope", "-t", "a.b", "-t", "c.d")
    assert proc.returncode == 1
    check_contract(doc, ["a.b", "c.d"], pipeline="nope")
    assert doc["status"] == "failed"
    for r in doc["table_results"].values():
        assert "pipeline 'nope' not found" in r["error_message"]


def test_default_pipeline_when_p_omitted(cfg: Path) -> None:
    doc, proc = run_json("--config-dir", str(cfg), "sync", "-t", "a.b")
    assert proc.returncode == 1 and doc["pipeline"] == "default"
    assert "pipeline 'default' not found" in doc["table_results"]["a.b"]["error_message"]


def test_bad_config_fails_every_table_naming_file_and_key(cfg: Path) -> None:
    conns = cfg / "connections.yml"
    conns.write_text(conns.read_text().replace('"max_connections"', '"max_conns"'))
    doc, proc = run_json("--config-dir", str(cfg), "sync", "-p", "p", "-t", "a.b")
    assert proc.returncode == 1 and doc["status"] == "failed"
    msg = doc["table_results"]["a.b"]["error_message"]
    assert "connections.yml" in msg and "max_conns" in msg


def test_unreachable_mysql_names_cause_and_hides_password(
    tmp_path: Path, source_conn: SourceConn, pg_target: TargetConn, s3_conn: S3Conn
) -> None:
    port = _free_port()
    from dataclasses import replace

    cfg = write_config(tmp_path / "c", replace(source_conn, port=port), pg_target, s3_conn)
    secret = "Sup3r-Secret-Pw!"
    doc, proc = run_json(
        "--config-dir", str(cfg), "sync", "-p", "p", "-t", "a.b", "-t", "a.c", env={PASSWORD_ENV: secret}
    )
    assert proc.returncode == 1
    check_contract(doc, ["a.b", "a.c"])
    msg = doc["table_results"]["a.b"]["error_message"]
    assert str(port) in msg and "MySQL" in msg
    assert secret not in proc.stdout and secret not in proc.stderr


def test_usage_error_exit_2() -> None:
    proc = run_cli("sync", "-p", "x")
    assert proc.returncode == 2 and proc.stdout == ""


@pytest.mark.parametrize(
    ("args", "tables", "says"),
    [
        (("sync", "-p", "x"), [], "Missing option '-t'"),
        (("sync", "-p", "x", "-t", "a.b,a.c", "--backup-only", "--load-only"), ["a.b", "a.c"], "--load-only"),
        (("sync", "--pipeline=x", "-ta.b", "--no-such-flag"), ["a.b"], "No such option '--no-such-flag'"),
    ],
)
def test_usage_error_with_json_output_still_prints_the_json(
    args: tuple[str, ...], tables: list[str], says: str
) -> None:
    """With --json-output the contract holds for a command line click refuses too: one JSON document on
    stdout, status failed, exit 1 (it was exit 2 and nothing on stdout); each table named fails with the
    usage message, which also goes to stderr."""
    doc, proc = run_json(*args)
    assert proc.returncode == 1, proc.stderr
    assert doc["status"] == "failed" and doc["pipeline"] == "x", doc  # with no table named too
    if tables:
        check_contract(doc, tables, pipeline="x")
    else:
        assert doc["tables_requested"] == [] and doc["summary"]["failure_count"] == 0, doc
    for table in tables:
        result = doc["table_results"][table]
        assert result["phase"] == "usage" and result["retryable"] is False and says in result["error_message"]
    assert says in proc.stderr and "Traceback" not in proc.stderr


def test_human_summary_without_json(cfg: Path, mysql_db: str) -> None:
    make_customers(mysql_db)
    proc = run_cli("--config-dir", str(cfg), "sync", "-p", "p", "-t", f"{mysql_db}.customers")
    assert proc.returncode == 0, proc.stderr
    assert "success" in proc.stdout and "3 rows" in proc.stdout and not proc.stdout.lstrip().startswith("{")


def test_verbose_keeps_stdout_pure(cfg: Path, mysql_db: str) -> None:
    make_customers(mysql_db)
    _doc, proc = run_json(
        "--config-dir", str(cfg), "sync", "-p", "p", "-t", f"{mysql_db}.customers", "--verbose"
    )
    assert proc.returncode == 0 and "DEBUG" in proc.stderr


def test_state_that_cannot_be_read_fails_every_table_and_the_report_is_kept(
    cfg: Path, mysql_db: str, pg_schema: str, s3_conn: S3Conn
) -> None:
    make_customers(mysql_db)
    pg_fetch(f'CREATE SCHEMA IF NOT EXISTS "{pg_schema}"')
    pg_fetch(f'CREATE TABLE "{pg_schema}".s3shift_state (x INT)')  # someone else's table, that name
    doc, proc = run_json("--config-dir", str(cfg), "sync", "-p", "p", "-t", f"{mysql_db}.customers")
    assert proc.returncode == 1 and doc["status"] == "failed", doc
    result = doc["table_results"][f"{mysql_db}.customers"]
    assert result["phase"] == "state" and "reading the state of" in result["error_message"]
    report_key = f"staging/p/_reports/{doc['execution_id']}.json"
    body = (
        s3_client(s3_conn.endpoint_url or "").get_object(Bucket=s3_conn.bucket, Key=report_key)["Body"].read()
    )
    assert json.loads(body) == doc


def test_an_internal_error_fails_every_table_as_not_retryable(cfg: Path) -> None:
    """A bug that escapes the engine still gives the contract's JSON, every table failed, exit 1, and one
    line on stderr; its tables are ``internal`` and not retryable (they were reported ``interrupted``,
    retryable: a CI retry loop would rerun the bug for ever)."""
    broken = (
        "import src.cli.main as m\n"
        "def start_workers(request):\n"
        "    raise RuntimeError('planted bug')\n"
        "m.start_workers = start_workers\n"
        "m.main()\n"
    )
    doc, proc = run_json(
        "--config-dir",
        str(cfg),
        "sync",
        "-p",
        "p",
        "-t",
        "a.b",
        "-t",
        "a.c",
        cli=(sys.executable, "-c", broken),
    )
    assert proc.returncode == 1
    check_contract(doc, ["a.b", "a.c"])
    for result in doc["table_results"].values():
        assert result["error_message"].startswith("internal error: RuntimeError: planted bug")
        assert (result["phase"], result["retryable"]) == ("internal", False), result
    errors = [line for line in proc.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and "planted bug" in errors[0] and "Traceback" not in proc.stderr, proc.stderr


@pytest.mark.parametrize(
    ("change", "expect"),
    [
        (
            "port",
            "ConnectionRefusedError: [Errno 111] Connect call failed ('127.0.0.1', {port}) — check "
            "connections.targets.tgt.host/port, the network path and that the server is running",
        ),
        ("database", 'database "s3s_no_such_db" does not exist — check connections.targets.tgt.database'),
        (
            "username",
            'role "s3s_no_such_role" does not exist — check connections.targets.tgt.username and '
            "its password",
        ),
    ],
)
def test_a_warehouse_that_refuses_the_connection_says_what_to_check(
    tmp_path: Path, source_conn: SourceConn, pg_target: TargetConn, s3_conn: S3Conn, change: str, expect: str
) -> None:
    """As MySQL's connect errors do, the warehouse's name the config key to check, not only the cause."""
    from dataclasses import replace

    port = _free_port()
    values = {"port": port, "database": "s3s_no_such_db", "username": "s3s_no_such_role"}
    cfg = write_config(tmp_path / "c", source_conn, replace(pg_target, **{change: values[change]}), s3_conn)
    doc, proc = run_json("--config-dir", str(cfg), "sync", "-p", "p", "-t", "a.b")
    assert proc.returncode == 1
    check_contract(doc, ["a.b"])
    result = doc["table_results"]["a.b"]
    assert result["phase"] == "connect" and result["error_message"].endswith(expect.format(port=port)), result
