"""A PostgreSQL that accepts only TLS connections (pg_hba ``hostssl`` lines only, as Redshift's
``require_ssl`` and RDS's ``rds.force_ssl`` make it), started by the test: with ``ssl: false`` the run
fails at ``connect`` in one line that says to set ``ssl: true``, instead of "check the username"."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from src.common.errors import ConfigError
from src.config.loader import load_pipeline
from src.config.models import S3Conn, SourceConn, TargetConn
from tests.conftest import _free_port, mysql_exec
from tests.e2e import check_contract, run_json, write_config

BIN = Path("/usr/lib/postgresql/15/bin")


@pytest.fixture(scope="module")
def tls_only_postgres() -> Iterator[tuple[int, Path]]:
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
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(data / "server.key"),
         "-out", str(data / "server.crt")],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    for name in ("server.key", "server.crt"):
        shutil.chown(data / name, "postgres")
    (data / "server.key").chmod(0o600)
    (data / "pg_hba.conf").write_text("local all all trust\nhostssl all all 127.0.0.1/32 trust\n")
    options = f"-p {port} -k {base} -c ssl=on -c listen_addresses=127.0.0.1"
    as_postgres(str(BIN / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(base / "log"), "-w", "start")
    shutil.copy(data / "server.crt", base / "ca.pem")  # self-signed: its own CA
    try:
        yield port, base / "ca.pem"
    finally:
        as_postgres(str(BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop")
        shutil.rmtree(base, ignore_errors=True)


def test_a_server_that_accepts_only_tls_says_to_set_ssl(
    tmp_path: Path,
    tls_only_postgres: tuple[int, Path],
    source_conn: SourceConn,
    pg_target: TargetConn,
    s3_conn: S3Conn,
    mysql_db: str,
) -> None:
    mysql_exec(mysql_db, "CREATE TABLE t (id INT PRIMARY KEY)", "INSERT INTO t VALUES (1)")
    port, _ = tls_only_postgres
    target = replace(pg_target, host="127.0.0.1", port=port, database="postgres", ssl=False)
    cfg = write_config(tmp_path / "cfg", source_conn, target, s3_conn)
    doc, proc = run_json("--config-dir", str(cfg), "sync", "-p", "p", "-t", f"{mysql_db}.t")

    check_contract(doc, [f"{mysql_db}.t"])
    result = doc["table_results"][f"{mysql_db}.t"]
    assert proc.returncode == 1 and result["phase"] == "connect", result
    message = result["error_message"]
    assert "\n" not in message and "no pg_hba.conf entry" in message, message
    assert message.endswith("the server accepts only TLS connections: set connections.targets.tgt.ssl: true")


def test_ssl_with_the_servers_own_ca_loads_over_tls(
    tmp_path: Path,
    tls_only_postgres: tuple[int, Path],
    source_conn: SourceConn,
    pg_target: TargetConn,
    s3_conn: S3Conn,
    mysql_db: str,
) -> None:
    """A server whose certificate no system bundle holds (RDS signs with its own CA): ``ssl_ca``."""
    mysql_exec(mysql_db, "CREATE TABLE t (id INT PRIMARY KEY)", "INSERT INTO t VALUES (1), (2)")
    port, ca = tls_only_postgres
    target = replace(pg_target, host="127.0.0.1", port=port, database="postgres", ssl=True, ssl_ca=str(ca))
    cfg = write_config(tmp_path / "cfg", source_conn, target, s3_conn)
    doc, proc = run_json("--config-dir", str(cfg), "sync", "-p", "p", "-t", f"{mysql_db}.t")
    result = doc["table_results"][f"{mysql_db}.t"]
    assert proc.returncode == 0 and result["rows_loaded"] == 2, result

    unverified = replace(target, ssl_ca=None)  # the system's CAs do not know it
    cfg = write_config(tmp_path / "cfg2", source_conn, unverified, s3_conn)
    doc, proc = run_json("--config-dir", str(cfg), "sync", "-p", "p", "-t", f"{mysql_db}.t")
    result = doc["table_results"][f"{mysql_db}.t"]
    assert proc.returncode == 1 and result["phase"] == "connect", result
    assert "certificate verify failed" in result["error_message"], result
    assert result["error_message"].endswith(
        "the server's certificate did not verify against the system's CAs: "
        "set connections.targets.tgt.ssl_ca to its CA"
    ), result


@pytest.mark.parametrize(
    ("settings", "words"),
    [
        ({"ssl_ca": "/etc/hostname"}, "verifies the server's certificate: set ssl:"),  # true: maybe scrubbed
        ({"ssl": True, "ssl_ca": "/no/such/ca.pem"}, "is not a readable file"),
    ],
)
def test_a_target_ssl_ca_is_checked_when_the_config_loads(
    tmp_path: Path, settings: dict[str, object], words: str
) -> None:
    (tmp_path / "pipelines").mkdir()
    target = {"type": "postgres", "host": "h", "username": "u", "database": "d", **settings}
    conns = {"sources": {"src": {"host": "h"}}, "targets": {"tgt": target}, "s3": {"stage": {"bucket": "b"}}}
    (tmp_path / "connections.yml").write_text(json.dumps({"connections": conns}))
    pipeline = {"pipeline": {"name": "p", "source": "src", "target": "tgt", "s3_config": "stage"}}
    (tmp_path / "pipelines" / "p.yml").write_text(json.dumps(pipeline))
    with pytest.raises(ConfigError) as caught:
        load_pipeline(tmp_path, "p")
    assert caught.value.key == "connections.targets.tgt.ssl_ca" and words in caught.value.message
