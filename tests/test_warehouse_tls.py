"""A PostgreSQL that accepts only TLS connections (pg_hba ``hostssl`` lines only, as Redshift's
``require_ssl`` and RDS's ``rds.force_ssl`` make it), started by the test: with ``ssl: false`` the run
fails at ``connect`` in one line that says to set ``ssl: true``, instead of "check the username"."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from src.config.models import S3Conn, SourceConn, TargetConn
from tests.conftest import _free_port, mysql_exec
from tests.e2e import check_contract, run_json, write_config

BIN = Path("/usr/lib/postgresql/15/bin")


@pytest.fixture(scope="module")
def tls_only_postgres() -> Iterator[int]:
    if os.geteuid() != 0 or not (BIN / "initdb").exists() or not shutil.which("openssl"):
        pytest.skip("a PostgreSQL of the test's own needs root (to run it as postgres), initdb and openssl")
    base = Path(tempfile.mkdtemp(prefix="s3shift-tls-pg-"))  # pytest's own is root's alone (0700)
    data, port = base / "data", _free_port()
    shutil.chown(base, "postgres")

    def as_postgres(*cmd: str) -> None:
        subprocess.run(
            ["runuser", "-u", "postgres", "--", *cmd], check=True, capture_output=True, timeout=120
        )

    as_postgres(str(BIN / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
         "-keyout", str(data / "server.key"), "-out", str(data / "server.crt")],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    for name in ("server.key", "server.crt"):
        shutil.chown(data / name, "postgres")
    (data / "server.key").chmod(0o600)
    (data / "pg_hba.conf").write_text("local all all trust\nhostssl all all 127.0.0.1/32 trust\n")
    options = f"-p {port} -k {base} -c ssl=on -c listen_addresses=127.0.0.1"
    as_postgres(str(BIN / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(base / "log"), "-w", "start")
    try:
        yield port
    finally:
        as_postgres(str(BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop")
        shutil.rmtree(base, ignore_errors=True)


def test_a_server_that_accepts_only_tls_says_to_set_ssl(
    tmp_path: Path,
    tls_only_postgres: int,
    source_conn: SourceConn,
    pg_target: TargetConn,
    s3_conn: S3Conn,
    mysql_db: str,
) -> None:
    mysql_exec(mysql_db, "CREATE TABLE t (id INT PRIMARY KEY)", "INSERT INTO t VALUES (1)")
    target = replace(pg_target, host="127.0.0.1", port=tls_only_postgres, database="postgres", ssl=False)
    cfg = write_config(tmp_path / "cfg", source_conn, target, s3_conn)
    doc, proc = run_json("--config-dir", str(cfg), "sync", "-p", "p", "-t", f"{mysql_db}.t")

    check_contract(doc, [f"{mysql_db}.t"])
    result = doc["table_results"][f"{mysql_db}.t"]
    assert proc.returncode == 1 and result["phase"] == "connect", result
    message = result["error_message"]
    assert "\n" not in message and "no pg_hba.conf entry" in message, message
    assert message.endswith("the server accepts only TLS connections: set connections.targets.tgt.ssl: true")
