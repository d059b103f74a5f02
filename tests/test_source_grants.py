"""An account granted SELECT on only some columns of a table sees only those in information_schema: the
table would be synced without the others, and nobody told. Through the real CLI: such a table fails
with a line saying what to do, unless include_columns lists the columns to read; whole-table grants,
direct or through a role, sync as ever."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from src.common.secret import Secret
from src.config.models import S3Conn, SourceConn, TargetConn
from tests.conftest import mysql_exec, pg_fetch
from tests.e2e import PASSWORD_ENV, failures, run_json, write_config

PASSWORD = "column-grants-pw"


@pytest.fixture
def reader(source_conn: SourceConn, mysql_db: str) -> Iterator[SourceConn]:
    """An account with SELECT on ``t``'s columns id, a, b only (not ``secret``), on the whole of ``u``,
    on ``r``'s column id directly and on the whole of ``r`` through its default role, and through that
    role on ``v``'s columns id, a only."""
    tag = uuid.uuid4().hex[:10]
    user, role = f"cg_{tag}", f"cgr_{tag}"
    columns = "(id INT PRIMARY KEY, a INT, b VARCHAR(10), secret VARCHAR(10))"
    rows = "VALUES (1, 10, 'x', 's1'), (2, 20, 'y', 's2')"
    mysql_exec(
        mysql_db,
        *(f"CREATE TABLE {t} {columns}" for t in "turv"),
        *(f"INSERT INTO {t} {rows}" for t in "turv"),
        f"CREATE USER '{user}'@'%' IDENTIFIED BY '{PASSWORD}'",
        f"CREATE ROLE {role}",
        f"GRANT SELECT (id, a, b) ON `{mysql_db}`.t TO '{user}'@'%'",
        f"GRANT SELECT ON `{mysql_db}`.u TO '{user}'@'%'",
        f"GRANT SELECT (id) ON `{mysql_db}`.r TO '{user}'@'%'",
        f"GRANT SELECT ON `{mysql_db}`.r TO {role}",
        f"GRANT SELECT (id, a) ON `{mysql_db}`.v TO {role}",
        f"GRANT {role} TO '{user}'@'%'",
        f"SET DEFAULT ROLE {role} FOR '{user}'@'%'",
    )
    try:
        yield replace(source_conn, username=user, password=Secret(PASSWORD))
    finally:
        mysql_exec(None, f"DROP USER IF EXISTS '{user}'@'%'", f"DROP ROLE IF EXISTS {role}")


def test_a_column_level_grant_fails_the_table_unless_its_columns_are_listed(
    tmp_path: Path, reader: SourceConn, pg_target: TargetConn, s3_conn: S3Conn, mysql_db: str, pg_schema: str
) -> None:
    names = [f"{mysql_db}.{t}" for t in "turv"]
    cfg = write_config(tmp_path / "cfg", reader, pg_target, s3_conn)
    sync = ("--config-dir", str(cfg), "sync", "-p", "p", *[a for n in names for a in ("-t", n)])
    doc, proc = run_json(*sync, env={PASSWORD_ENV: PASSWORD})
    assert proc.returncode == 1 and doc["status"] == "partial_success", failures(doc)
    results = doc["table_results"]
    for hidden in (names[0], names[3]):  # t: its own column grant; v: its role's, which the views hide
        result = results[hidden]
        assert result["status"] == "failed" and result["retryable"] is False, result
        message = result["error_message"]
        assert "\n" not in message and f"only some columns of {hidden}" in message, message
        assert "GRANT SELECT ON" in message and f"include_columns of {hidden}" in message, message
    assert (
        pg_fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = $1 AND tablename IN ('t', 'v')", pg_schema
        )
        == []
    )
    for whole in (names[1], names[2]):  # u: a table grant; r: a column grant and the whole table by its role
        assert results[whole]["status"] == "success" and results[whole]["rows_processed"] == 2, results[whole]
        table = whole.split(".")[1]
        assert len(pg_fetch(f'SELECT secret FROM "{pg_schema}"."{table}"')) == 2

    listed = {names[0]: {"include_columns": ["id", "a", "b"]}, names[3]: {"include_columns": ["id", "a"]}}
    cfg = write_config(tmp_path / "cfg2", reader, pg_target, s3_conn, listed)
    doc, proc = run_json(
        "--config-dir",
        str(cfg),
        "sync",
        "-p",
        "p",
        "-t",
        names[0],
        "-t",
        names[3],
        env={PASSWORD_ENV: PASSWORD},
    )
    assert proc.returncode == 0 and doc["status"] == "success", failures(doc)
    for table, columns in (("t", ["id", "a", "b"]), ("v", ["id", "a"])):
        found = pg_fetch(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = $1 AND table_name = $2 "
            "ORDER BY ordinal_position",
            pg_schema,
            table,
        )
        assert [c["column_name"] for c in found] == columns
        assert pg_fetch(f'SELECT count(*) AS n FROM "{pg_schema}"."{table}"')[0]["n"] == 2
