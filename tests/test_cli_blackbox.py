"""Black-box checks through the public CLI: secrets under --verbose, unknown tables in --load-only and
watermark set, YAML 1.1 scalars, extreme watermarks, and failures raised by foreign exceptions."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from src.common.errors import ConfigError
from src.config.loader import load_pipeline
from src.config.models import Pipeline, S3Conn, SourceConn, TargetConn
from tests.conftest import mysql_exec
from tests.e2e import check_contract, run_cli, run_json, write_config

SECRET = "Bbl-Very-Secret-Pw-4711"
SECRET_ENV = "S3SHIFT_TEST_TARGET_PW"


@pytest.fixture
def cfg(tmp_path: Path, source_conn: SourceConn, pg_target: TargetConn, s3_conn: S3Conn) -> Path:
    """The test services, with a target password (PostgreSQL's trust auth ignores it) from the
    environment: a secret the run knows, so any text that shows it is a leak."""
    directory = write_config(tmp_path / "config", source_conn, pg_target, s3_conn)
    conns = directory / "connections.yml"
    doc = json.loads(conns.read_text())
    doc["connections"]["targets"]["tgt"]["password"] = f"${{{SECRET_ENV}:-}}"
    conns.write_text(json.dumps(doc, indent=1))
    return directory


# A driver's error that shows a DSN with the password, raised inside a table's sync and chained
# (__cause__ and __context__), and a thread dying on one: --verbose prints both tracebacks.
PLANTED = """
import threading
import src.cli.main as m
import src.engine.table as t

async def _run(ctx, plan, progress):
    pw = ctx.pipeline.target.password.reveal()
    def dying():
        raise ValueError(f"thread saw postgresql://postgres:{pw}@db/test")
    th = threading.Thread(target=dying)
    th.start()
    th.join()
    try:
        try:
            raise KeyError(f"context {pw}")
        except KeyError:
            raise OSError(f"cause: password={pw}")
    except OSError as exc:
        raise RuntimeError(f"driver failed: postgresql://postgres:{pw}@127.0.0.1/test") from exc

t._run = _run
m.main()
"""


def test_verbose_tracebacks_never_show_a_secret(cfg: Path) -> None:
    doc, proc = run_json(
        "--config-dir",
        str(cfg),
        "sync",
        "-p",
        "p",
        "-t",
        "a.b",
        "--verbose",
        env={SECRET_ENV: SECRET},
        cli=(sys.executable, "-c", PLANTED),
    )
    check_contract(doc, ["a.b"])
    assert "Traceback" in proc.stderr and "driver failed" in proc.stderr, proc.stderr  # shown, scrubbed
    assert "thread saw postgresql://postgres:***@db/test" in proc.stderr, proc.stderr
    assert "password=***" in proc.stderr and "context ***" in proc.stderr, proc.stderr
    assert SECRET not in proc.stderr and SECRET not in proc.stdout
    result = doc["table_results"]["a.b"]
    assert result["error_message"].startswith("internal error: RuntimeError: driver failed"), result
    assert (result["phase"], result["retryable"]) == ("internal", False), result


# A foreign exception ending a table once its phase is known (here: reading the state).
FOREIGN = """
import dataclasses
import src.cli.main as m
import src.engine.table as t

class Broken:
    def get(self, table):
        raise {exc}

async def _run(ctx, plan, progress):
    return await real(dataclasses.replace(ctx, states=Broken()), plan, progress)

real, t._run = t._run, _run
m.main()
"""


@pytest.mark.parametrize(
    ("exc", "phase", "retryable", "message"),
    [
        (
            "ConnectionResetError(104, 'Connection reset by peer')",
            "state",
            True,
            "ConnectionResetError: [Errno",
        ),
        ("TimeoutError('read timed out')", "state", True, "TimeoutError: read timed out"),
        ("KeyError('x')", "internal", False, "internal error: KeyError: 'x' (rerun with --verbose"),
        ("AttributeError('no y')", "internal", False, "internal error: AttributeError: no y"),
    ],
)
def test_a_foreign_exception_still_says_phase_and_retryable(
    cfg: Path, exc: str, phase: str, retryable: bool, message: str
) -> None:
    """Every failed table carries phase and retryable: an OSError (connection lost, timeout) is retryable
    where it happened, any other foreign exception is a bug (internal, not retryable); both lacked
    retryable, and the bug was reported in the phase it happened to be in."""
    doc, proc = run_json(
        "--config-dir",
        str(cfg),
        "sync",
        "-p",
        "p",
        "-t",
        "a.b",
        env={SECRET_ENV: SECRET},
        cli=(sys.executable, "-c", FOREIGN.format(exc=exc)),
    )
    assert proc.returncode == 1
    check_contract(doc, ["a.b"])
    result = doc["table_results"]["a.b"]
    assert (result["phase"], result["retryable"]) == (phase, retryable), result
    assert result["error_message"].startswith(message), result


def test_load_only_of_a_table_never_staged_nor_loaded_fails_naming_it(
    cfg: Path, mysql_db: str, pg_schema: str
) -> None:
    """--load-only of a table with nothing staged and no state (a typo, or never synced) reported success
    with 0 rows; it fails, naming the table and what to do. A table loaded before with nothing pending
    still succeeds (nothing new)."""
    mysql_exec(
        mysql_db,
        "CREATE TABLE t (id INT PRIMARY KEY)",
        "CREATE TABLE u (id INT PRIMARY KEY)",
        "INSERT INTO t VALUES (1)",
        "INSERT INTO u VALUES (1)",
    )
    doc, proc = run_json("--config-dir", str(cfg), "sync", "-p", "p", "-t", f"{mysql_db}.u")
    assert proc.returncode == 0, doc
    tables = [f"{mysql_db}.nope", f"{mysql_db}.t", f"{mysql_db}.u"]
    doc, proc = run_json("--config-dir", str(cfg), "sync", "-p", "p", "-t", ",".join(tables), "--load-only")
    assert proc.returncode == 1
    check_contract(doc, tables)
    for table in tables[:2]:
        result = doc["table_results"][table]
        name = table.split(".")[1]
        assert result["error_message"] == (
            f"nothing to load for {table}: no staged run is pending and pipeline p never loaded it into "
            f"{pg_schema}.{name} — check the table name, or stage it first with sync --backup-only"
        )
        assert (result["phase"], result["retryable"]) == ("state", False)
        assert f"{table} FAILED: nothing to load" in proc.stderr
    assert doc["table_results"][tables[2]]["rows_processed"] == 0


def watermark(cfg: Path, *args: str, json_output: bool = True) -> tuple[dict[str, Any] | str, int]:
    proc = run_cli("--config-dir", str(cfg), "watermark", *args, *(("--json-output",) if json_output else ()))
    assert proc.returncode != 2, proc.stderr
    return (json.loads(proc.stdout) if json_output else proc.stdout), proc.returncode


@pytest.mark.parametrize("action", ["set", "reset"])
def test_watermark_set_of_a_table_the_source_lacks_fails(cfg: Path, mysql_db: str, action: str) -> None:
    """watermark set (or reset) of a table that is not in MySQL, and never synced, wrote a state row and
    said success: a typo went unnoticed until the next sync. It fails, one line, exit 1; no state row
    (``get`` of it fails the same way: it said "no watermark")."""
    args = ["--timestamp", "2024-01-01T00:00:00"] if action == "set" else []
    table = f"{mysql_db}.nope"
    doc, code = watermark(cfg, action, "-p", "p", "-t", table, *args)
    assert code == 1 and isinstance(doc, dict)
    assert doc == {
        "pipeline": "p",
        "table": table,
        "status": "failed",
        "error_message": f"table {table} not found in MySQL source 'src' and never synced by pipeline p — "
        "check the database and table names (they are case-sensitive); a watermark is kept only for a "
        "table the source has",
    }
    text, code = watermark(cfg, action, "-p", "p", "-t", table, *args, json_output=False)
    assert code == 1 and text == f"{table}: FAILED: {doc['error_message']}\n"
    got, code = watermark(cfg, "get", "-p", "p", "-t", table)  # nothing was written: still unknown
    assert code == 1 and got == doc, got


def test_watermark_set_before_the_first_sync_is_a_start_point(
    cfg: Path, mysql_db: str, pg_schema: str
) -> None:
    """A table the source has but no run synced yet may get a watermark: the first sync reads after it."""
    mysql_exec(
        mysql_db,
        "CREATE TABLE ev (id INT PRIMARY KEY, ts DATETIME(6) NOT NULL, KEY (ts))",
        "INSERT INTO ev VALUES (1, '2020-01-01'), (2, '2024-06-01'), (3, '2024-07-01')",
    )
    table = f"{mysql_db}.ev"
    doc, code = watermark(cfg, "get", "-p", "p", "-t", table)  # known to the source, no watermark yet
    assert code == 0 and isinstance(doc, dict) and (doc["watermark"], doc["state"]) == (None, None), doc
    doc, code = watermark(cfg, "set", "-p", "p", "-t", table, "--timestamp", "2024-01-01T00:00:00")
    assert code == 0 and isinstance(doc, dict) and doc["watermark"]["ts"] == "2024-01-01 00:00:00.000000", doc
    cfg_pipe = cfg / "pipelines" / "p.yml"
    pipe = json.loads(cfg_pipe.read_text())
    pipe["tables"] = {table: {"cdc_strategy": "timestamp_only", "cdc_timestamp_column": "ts"}}
    cfg_pipe.write_text(json.dumps(pipe))
    report, proc = run_json("--config-dir", str(cfg), "sync", "-p", "p", "-t", table)
    assert proc.returncode == 0, report
    assert report["table_results"][table]["rows_processed"] == 2


YAML_CONNECTIONS = """
connections:
  sources:
    src: {host: 127.0.0.1, port: PORT, username: USER, password: PASSWORD, database: DATABASE,
          connect_timeout: TIMEOUT}
  targets:
    tgt: {type: postgres, host: 127.0.0.1, username: postgres, database: test, schema: SCHEMA, ssl: SSL}
  s3:
    stage: {bucket: BUCKET, prefix: PREFIX}
"""
YAML_PIPELINE = """
pipeline: {name: p, source: src, target: tgt, s3_config: stage, processing: {batch_size: BATCH}}
tables:
  shop.orders: {cdc_strategy: full_sync, primary_key: [KEY], target_name: TARGET,
                rename_columns: {KEY: TARGET}}
"""


def load_yaml(tmp_path: Path, **values: str) -> Pipeline:
    defaults = {
        "PORT": "3306",
        "USER": "root",
        "PASSWORD": '""',
        "DATABASE": "shop",
        "TIMEOUT": "10",
        "SCHEMA": "analytics",
        "SSL": "false",
        "BUCKET": "b",
        "PREFIX": "stage",
        "BATCH": "1000",
        "KEY": "id",
        "TARGET": "orders",
    }
    conns, pipe = YAML_CONNECTIONS, YAML_PIPELINE
    for key, value in {**defaults, **values}.items():
        conns, pipe = conns.replace(key, value), pipe.replace(key, value)
    (tmp_path / "pipelines").mkdir(exist_ok=True)
    (tmp_path / "connections.yml").write_text(conns)
    (tmp_path / "pipelines" / "p.yml").write_text(pipe)
    return load_pipeline(tmp_path, "p")


@pytest.mark.parametrize(
    "written",
    [
        "0123",
        "0o17",
        "0x1F",
        "1_000",
        "12:30",
        "1e3",
        "1.50",
        ".inf",
        "yes",
        "no",
        "on",
        "off",
        "y",
        "true",
        "2024-01-01",
    ],
)
def test_a_text_value_keeps_the_text_as_written(tmp_path: Path, written: str) -> None:
    """YAML 1.1 read ``password: 0123`` as 83, ``1_000`` as 1000, ``12:30`` as 750, ``yes`` as True, ``1.50``
    as 1.5: a text key got other text than the file holds (a password that failed to log in, a schema
    named 'True'). Every text key now takes its value as written."""
    p = load_yaml(
        tmp_path,
        PASSWORD=written,
        USER=written,
        DATABASE=written,
        SCHEMA=written,
        BUCKET=written,
        PREFIX=written,
        KEY=written,
        TARGET=written,
    )
    assert p.source.password.reveal() == written
    assert (p.source.username, p.source.database, p.target.schema, p.s3.bucket) == (written,) * 4
    assert p.s3.prefix == f"{written}/"
    t = p.table("shop.orders")
    assert (t.primary_key, t.target_name, t.columns.rename) == ((written,), written, ((written, written),))


@pytest.mark.parametrize(
    ("written", "port"),
    [("0123", 123), ("3306", 3306), ("03306", 3306), ("+3306", 3306), ("3_306", 3306), ("3306.0", 3306)],
)
def test_an_integer_with_a_leading_zero_is_decimal(tmp_path: Path, written: str, port: int) -> None:
    """``port: 0123`` was 83 (YAML 1.1 octal); a number is read in decimal, as written."""
    p = load_yaml(tmp_path, PORT=written, BATCH=written)
    assert (p.source.port, p.processing.batch_size) == (port, port)


@pytest.mark.parametrize("written", ["0o17", "0x1F", "12:30", "3306.5", "yes", ".inf", "1e400"])
def test_an_integer_written_otherwise_is_an_error_naming_the_key(tmp_path: Path, written: str) -> None:
    with pytest.raises(
        ConfigError, match=r"connections.yml: 'connections.sources.src.port' must be an integer"
    ):
        load_yaml(tmp_path, PORT=written)


@pytest.mark.parametrize(
    ("written", "value"), [("yes", True), ("off", False), ("true", True), ("False", False)]
)
def test_booleans_and_numbers_still_read(tmp_path: Path, written: str, value: bool) -> None:
    p = load_yaml(tmp_path, SSL=written, TIMEOUT="2.5")
    assert p.target.ssl is value and p.source.connect_timeout == 2.5


def test_a_null_value_is_still_unset(tmp_path: Path) -> None:
    p = load_yaml(tmp_path, PASSWORD="~", TIMEOUT="null")
    assert p.source.password.reveal() == "" and p.source.connect_timeout == 10


def events(mysql_db: str) -> str:
    mysql_exec(
        mysql_db,
        "CREATE TABLE ev (id INT PRIMARY KEY, ts DATETIME(6) NOT NULL, KEY (ts))",
        "INSERT INTO ev VALUES (1, '2020-01-01'), (2, '9999-12-31 23:59:59.999999')",
    )
    return f"{mysql_db}.ev"


def incremental(cfg: Path, table: str, **keys: object) -> None:
    path = cfg / "pipelines" / "p.yml"
    pipe = json.loads(path.read_text())
    pipe["tables"] = {table: {"cdc_strategy": "timestamp_only", "cdc_timestamp_column": "ts", **keys}}
    path.write_text(json.dumps(pipe))


@pytest.mark.parametrize("key", ["lag_seconds", "lookback_seconds"])
@pytest.mark.parametrize("seconds", [1e11, 1e20])
def test_a_lag_or_lookback_past_any_date_is_a_config_error(
    cfg: Path, mysql_db: str, key: str, seconds: float
) -> None:
    """lag_seconds: 1e11 moved the window's end before the year 1 (OverflowError, reported as a bug); 1e20
    could not even be a timedelta. Both are config errors naming the key and the range."""
    table = events(mysql_db)
    incremental(cfg, table, **{key: seconds})
    doc, proc = run_json("--config-dir", str(cfg), "sync", "-p", "p", "-t", table)
    assert proc.returncode == 1
    check_contract(doc, [table])
    result = doc["table_results"][table]
    assert result["error_message"].endswith(
        f"p.yml: 'tables.{table}.{key}' must be from 0 to 3153600000 seconds (100 years; got {seconds:g})"
    ), result
    assert (result["phase"], result["retryable"]) == ("config", False)


def test_watermarks_at_the_ends_of_time(cfg: Path, mysql_db: str) -> None:
    """A watermark at 0001-01-01 with a lookback read before the year 1 (OverflowError): the read starts
    at the earliest time instead, and its stage loads later; one at 9999-12-31 reads nothing; a
    --timestamp whose offset takes it out of range in UTC is a usage error, not a traceback; so is an
    --id no MySQL integer can hold (over 2**64 - 1 the JSON could not be printed: no output at all)."""
    table = events(mysql_db)
    incremental(cfg, table, lookback_seconds=60)
    doc, code = watermark(cfg, "set", "-p", "p", "-t", table, "--timestamp", "0001-01-01T00:00:00")
    assert code == 0 and isinstance(doc, dict), doc
    assert doc["watermark"]["ts"] == "0001-01-01 00:00:00.000000"
    report, proc = run_json("--config-dir", str(cfg), "sync", "-p", "p", "-t", table, "--backup-only")
    assert proc.returncode == 0, report
    check_contract(report, [table])
    result = report["table_results"][table]
    assert result["rows_processed"] == 1 and result["window"]["start"]["ts"] == "0001-01-01 00:00:00.000000"
    # the stage's manifest keeps the window start in a form it reads back (strftime wrote '1-01-01')
    report, proc = run_json("--config-dir", str(cfg), "sync", "-p", "p", "-t", table, "--load-only")
    assert proc.returncode == 0 and report["table_results"][table]["rows_loaded"] == 1, report
    doc, code = watermark(cfg, "set", "-p", "p", "-t", table, "--timestamp", "9999-12-31T23:59:59.999999")
    assert code == 0, doc
    report, proc = run_json("--config-dir", str(cfg), "sync", "-p", "p", "-t", table)
    assert proc.returncode == 0 and report["table_results"][table]["rows_processed"] == 0, report
    for args, expect in [
        (("--timestamp", "0001-01-01T00:00:00+01:00"), "is out of range in UTC (0001-01-01 to 9999-12-31)"),
        (("--timestamp", "9999-12-31T23:00:00-05:00"), "is out of range in UTC"),
        (("--id", str(2**64)), "is not in the range"),
        (("--id", str(-(2**63) - 1)), "is not in the range"),
    ]:
        proc = run_cli("--config-dir", str(cfg), "watermark", "set", "-p", "p", "-t", table, *args)
        assert proc.returncode == 2 and proc.stdout == "", proc.stderr
        assert expect in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    doc, code = watermark(
        cfg, "set", "-p", "p", "-t", table, "--id", str(2**64 - 1), "--timestamp", "2020-01-01"
    )
    assert code == 0 and isinstance(doc, dict) and doc["watermark"]["id"] == 2**64 - 1, doc


def test_a_name_with_control_characters_keeps_each_log_record_on_one_line(cfg: Path, mysql_db: str) -> None:
    """MySQL quotes any character into a name, so ``-t`` may carry a newline or an escape sequence: the
    failure's log line was split in two (a line of stderr that was no record of s3shift's), and the
    escape sequence reached the terminal. Each record is one line, its control characters escaped."""
    tables = [f"{mysql_db}.a\nb", f"{mysql_db}.red\x1b[31m"]
    doc, proc = run_json("--config-dir", str(cfg), "sync", "-p", "p", "-t", tables[0], "-t", tables[1])
    check_contract(doc, tables)  # the JSON keeps the names as given
    assert "\x1b" not in proc.stderr, proc.stderr
    assert all(line.startswith("20") for line in proc.stderr.splitlines()), proc.stderr  # each a record
    assert f"{mysql_db}.a\\nb FAILED: " in proc.stderr and f"{mysql_db}.red\\x1b[31m FAILED: " in proc.stderr


def test_the_human_summary_escapes_control_characters_too(cfg: Path, mysql_db: str) -> None:
    """Without --json-output, stdout's summary names each table on its own line, its control characters
    escaped as the log's are: a newline split a table's line, an escape sequence reached the terminal."""
    tables = [f"{mysql_db}.a\nb", f"{mysql_db}.red\x1b[31m"]
    proc = run_cli("--config-dir", str(cfg), "sync", "-p", "p", "-t", tables[0], "-t", tables[1])
    assert proc.returncode == 1, proc.stderr
    assert "\x1b" not in proc.stdout, proc.stdout
    lines = proc.stdout.splitlines()
    assert len(lines) == 4, proc.stdout  # the header, the counts, one line per table
    assert lines[2].startswith(f"  FAIL {mysql_db}.a\\nb ") and lines[3].startswith(
        f"  FAIL {mysql_db}.red\\x1b[31m"
    )
