"""A MySQL password beyond Latin-1 (``pässwörd€中文😀`` and the characters a URL must quote) logs in on
both extract paths: asyncmy (and aiomysql) get the password's UTF-8 bytes, as the server hashed them,
and connectorx gets it URL-quoted. No form of it (as given, as the drivers are handed it, URL-quoted)
ever appears in a report, a log line or an error."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from urllib.parse import quote

import anyio
import pytest

from src.common.secret import REDACTED, Secret, scrub
from src.config.models import S3Conn, SourceConn, TargetConn
from src.source.fastpath import connection_url
from src.source.mysql import MySQLSource, wire_password
from tests.conftest import WIDE_PASSWORD, mysql_exec
from tests.e2e import PASSWORD_ENV, assert_tables_equal, check_contract, failures, run_json, write_config

TABLE = "CREATE TABLE t (id BIGINT PRIMARY KEY, v VARCHAR(40) NOT NULL, d DATETIME(6) NULL)"
FILL = (
    "INSERT INTO t SELECT seq, CONCAT('välue ', seq), '2024-01-01' + INTERVAL seq SECOND FROM seq_1_to_3000"
)


def forms(password: str) -> list[str]:
    """Every form the password takes on its way to the server."""
    wire = password.encode("utf-8").decode("latin-1")
    return [password, wire, quote(password, safe=""), quote(password, safe="").lower(), quote(password)]


@pytest.mark.parametrize(
    ("path", "driver"), [("connectorx", "asyncmy"), ("asyncmy", "asyncmy"), ("asyncmy", "aiomysql")]
)
def test_a_sync_logs_in_with_a_password_beyond_latin1(
    tmp_path: Path,
    mysql_user: SourceConn,
    pg_target: TargetConn,
    s3_conn: S3Conn,
    mysql_db: str,
    pg_schema: str,
    path: str,
    driver: str,
) -> None:
    mysql_exec(mysql_db, TABLE, FILL, "ANALYZE TABLE t")
    table = f"{mysql_db}.t"
    processing = {"range_rows": 500, "fast_path": path == "connectorx", "batch_size": 1000}
    source = replace(mysql_user, driver=driver)  # type: ignore[arg-type]
    cfg = write_config(tmp_path / "cfg", source, pg_target, s3_conn, processing=processing)
    args = ("--config-dir", str(cfg), "sync", "-p", "p", "-t", table, "--verbose")
    doc, proc = run_json(*args, env={PASSWORD_ENV: WIDE_PASSWORD})

    check_contract(doc, [table])
    assert proc.returncode == 0, failures(doc)
    extract = doc["table_results"][table]["extract"]
    assert extract["path"] == path and "fallbacks" not in extract, extract
    assert assert_tables_equal(mysql_db, "t", pg_schema, "t", "id") == 3000
    for form in forms(WIDE_PASSWORD):
        assert form not in proc.stdout + proc.stderr


def test_a_refused_password_beyond_latin1_is_never_shown(
    tmp_path: Path, mysql_user: SourceConn, pg_target: TargetConn, s3_conn: S3Conn, mysql_db: str
) -> None:
    wrong = "fälsch€中文😀 @:/?#%"
    cfg = write_config(tmp_path / "cfg", mysql_user, pg_target, s3_conn)
    doc, proc = run_json(
        "--config-dir",
        str(cfg),
        "sync",
        "-p",
        "p",
        "-t",
        f"{mysql_db}.t",
        "--verbose",
        env={PASSWORD_ENV: wrong},
    )
    result = doc["table_results"][f"{mysql_db}.t"]
    assert proc.returncode == 1 and result["phase"] == "connect", result
    assert (
        "Access denied" in result["error_message"]
        and "check the username and the password" in result["error_message"]
    )
    for form in forms(wrong):
        assert form not in proc.stdout + proc.stderr


def test_every_form_of_the_password_is_scrubbed(mysql_user: SourceConn) -> None:
    """The forms made for the drivers and connectorx's URL are secrets too: a message holding one (a
    driver echoing what it was given) is scrubbed."""
    password = "ünïcödé€-" + mysql_user.username  # a value no other test registered
    cfg = replace(mysql_user, password=Secret(password))
    connection_url(cfg, "db", tls=False)
    wire_password(cfg.password)
    for form in forms(password)[:3]:
        assert scrub(f"login failed with {form} here") == f"login failed with {REDACTED} here"


async def _ping(cfg: SourceConn) -> None:
    async with MySQLSource(cfg) as source:
        await source.ping()


@pytest.mark.parametrize("driver", ["asyncmy", "aiomysql"])
def test_both_drivers_log_in_with_a_latin1_password(mysql_user: SourceConn, driver: str) -> None:
    """``pässwörd`` lies within Latin-1: the drivers sent it in one byte per letter, which the server, that
    hashed its UTF-8 bytes, refused (1045)."""
    from tests.conftest import mysql_connect

    conn = mysql_connect()
    try:
        with conn.cursor() as cur:
            cur.execute("ALTER USER %s@'%%' IDENTIFIED BY %s", (mysql_user.username, "pässwörd"))
    finally:
        conn.close()
    cfg = replace(mysql_user, password=Secret("pässwörd"), driver=driver)  # type: ignore[arg-type]
    anyio.run(_ping, cfg)


def test_a_sync_keeps_to_the_accounts_own_connection_limit(
    tmp_path: Path,
    mysql_user: SourceConn,
    pg_target: TargetConn,
    s3_conn: S3Conn,
    mysql_db: str,
    pg_schema: str,
) -> None:
    """An account WITH MAX_USER_CONNECTIONS 2 and the default max_connections of 8: the pool and
    connectorx's ranges keep to 2, in each of the run's processes' shares (8 tables: 2 processes); the
    tables past 2 connections failed with error 1226."""
    mysql_exec(None, f"ALTER USER '{mysql_user.username}'@'%' WITH MAX_USER_CONNECTIONS 2")
    tables = [f"t{i}" for i in range(8)]
    mysql_exec(mysql_db, *(TABLE.replace("TABLE t ", f"TABLE {t} ") for t in tables))
    mysql_exec(mysql_db, *(FILL.replace("INTO t ", f"INTO {t} ") for t in tables))
    processing = {"range_rows": 500, "fast_path": True, "batch_size": 1000, "max_parallel_tables": 4}
    source = replace(mysql_user, max_connections=8)
    cfg = write_config(tmp_path / "cfg", source, pg_target, s3_conn, processing=processing)
    names = [f"{mysql_db}.{t}" for t in tables]
    args = ("--config-dir", str(cfg), "sync", "-p", "p", "-t", ",".join(names))
    doc, proc = run_json(*args, env={PASSWORD_ENV: WIDE_PASSWORD})

    check_contract(doc, names)
    assert proc.returncode == 0, failures(doc)
    assert "may open 2 connection(s) (MAX_USER_CONNECTIONS)" in proc.stderr
    assert "worker process 1 ran" in proc.stderr  # the limit was split between two processes
    for t in tables:
        assert assert_tables_equal(mysql_db, t, pg_schema, t, "id") == 3000


def test_a_dba_statement_time_limit_does_not_end_the_read(
    tmp_path: Path,
    mysql_user: SourceConn,
    pg_target: TargetConn,
    s3_conn: S3Conn,
    mysql_db: str,
    pg_schema: str,
) -> None:
    """An account WITH MAX_STATEMENT_TIME 0.1 (MariaDB; a global max_statement_time does the same): the
    table's read (asyncmy's: one statement) takes longer than that, and is not ended by it (1969). The
    connectorx sessions get the same settings (``session_sql``; their time zone is tested with it)."""
    path = "asyncmy"
    mysql_exec(None, f"ALTER USER '{mysql_user.username}'@'%' WITH MAX_STATEMENT_TIME 0.1")
    rows = 150_000
    mysql_exec(
        mysql_db,
        "CREATE TABLE t (id BIGINT PRIMARY KEY, v VARCHAR(200) NOT NULL)",
        f"INSERT INTO t SELECT seq, CONCAT(SHA2(seq, 512), SHA2(seq, 256)) FROM seq_1_to_{rows}",
        "ANALYZE TABLE t",
    )
    table = f"{mysql_db}.t"
    processing = {"range_rows": rows, "fast_path": path == "connectorx", "batch_size": 10_000}
    cfg = write_config(tmp_path / "cfg", mysql_user, pg_target, s3_conn, processing=processing)
    args = ("--config-dir", str(cfg), "sync", "-p", "p", "-t", table)
    doc, proc = run_json(*args, env={PASSWORD_ENV: WIDE_PASSWORD})

    check_contract(doc, [table])
    assert proc.returncode == 0, failures(doc)
    assert doc["table_results"][table]["extract"]["path"] == path
    assert assert_tables_equal(mysql_db, "t", pg_schema, "t", "id") == rows
