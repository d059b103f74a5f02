"""Black-box checks through the public CLI: secrets under --verbose, unknown tables in --load-only and
watermark set, YAML 1.1 scalars, extreme watermarks, and failures raised by foreign exceptions."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from src.config.models import S3Conn, SourceConn, TargetConn
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
    with 0 rows; it fails, naming the table and what to do."""
    mysql_exec(mysql_db, "CREATE TABLE t (id INT PRIMARY KEY)", "INSERT INTO t VALUES (1)")
    tables = [f"{mysql_db}.nope", f"{mysql_db}.t"]
    doc, proc = run_json(
        "--config-dir", str(cfg), "sync", "-p", "p", "-t", tables[0], "-t", tables[1], "--load-only"
    )
    assert proc.returncode == 1
    check_contract(doc, tables)
    for table in tables:
        result = doc["table_results"][table]
        assert result["error_message"] == (
            f"nothing to load for {table}: no staged run is pending and pipeline p never loaded it into "
            f"{pg_schema}.{table.split('.')[1]} — check the table name, or stage it first with sync --backup-only"
        )
