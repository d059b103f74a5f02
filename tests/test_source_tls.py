"""TLS to the MySQL source (``connections.sources.NAME.ssl_mode`` / ``ssl_ca``), against a MariaDB of the
test's own that requires it (``require_secure_transport``, a certificate of a CA made here): both extract
paths read over TLS by default (``preferred``), the verify modes check the certificate, and each way it
can fail says so in one line. The session's MariaDB offers no TLS: ``preferred`` reads it in plain text
(every other test), ``required`` refuses it."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from src.common.errors import ConfigError
from src.config.loader import load_pipeline
from src.config.models import S3Conn, SourceConn, TargetConn
from tests.conftest import _free_port
from tests.e2e import PASSWORD_ENV, check_contract, failures, run_json, write_config

ROWS = 3000
PASSWORD = "tls-Test+Secret/0123"


@dataclass(frozen=True)
class TlsServer:
    port: int
    socket: Path
    ca: Path  # the CA that signed the server's certificate (for 127.0.0.1)
    other_ca: Path  # a CA that did not

    def sql(self, *statements: str) -> str:
        done = subprocess.run(
            ["mariadb", "--no-defaults", "-S", str(self.socket), "-uroot", "-N", "-e", "; ".join(statements)],
            capture_output=True, text=True, check=True, timeout=60,
        )  # fmt: skip
        return done.stdout.strip()

    def ssl_accepts(self) -> int:
        return int(self.sql("SHOW GLOBAL STATUS LIKE 'Ssl_accepts'").split()[-1])


def _certificates(directory: Path) -> tuple[Path, Path, Path, Path]:
    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True, timeout=60)

    for ca in ("ca", "other"):
        openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-keyout", f"{ca}.key",
                "-out", f"{ca}.pem", "-subj", f"/CN=s3shift test {ca}")  # fmt: skip
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
            "-subj", "/CN=127.0.0.1")  # fmt: skip
    (directory / "san.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "server.pem", "-days", "2", "-extfile", "san.cnf")  # fmt: skip
    return directory / "ca.pem", directory / "other.pem", directory / "server.pem", directory / "server.key"


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsServer]:
    if not (shutil.which("mariadbd") or Path("/usr/sbin/mariadbd").exists()) or not shutil.which("openssl"):
        pytest.skip("mariadbd and openssl are needed for a TLS MariaDB of the test's own")
    base = tmp_path_factory.mktemp("tls-mariadb")
    ca, other, cert, key = _certificates(base)
    data, sock, port = base / "data", base / "mysqld.sock", _free_port()
    subprocess.run(
        ["mariadb-install-db", "--no-defaults", f"--datadir={data}", "--user=root",
         "--auth-root-authentication-method=normal", "--skip-test-db"],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    mariadbd = shutil.which("mariadbd") or "/usr/sbin/mariadbd"
    server = subprocess.Popen(
        [mariadbd, "--no-defaults", f"--datadir={data}", "--user=root", f"--port={port}",
         "--bind-address=127.0.0.1", f"--socket={sock}", f"--pid-file={base / 'pid'}",
         f"--ssl-cert={cert}", f"--ssl-key={key}", f"--ssl-ca={ca}", "--require-secure-transport=ON",
         "--skip-log-bin", "--innodb-buffer-pool-size=16M", "--skip-name-resolve"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    tls = TlsServer(port, sock, ca, other)
    try:
        deadline = time.monotonic() + 60
        while not sock.exists():
            assert server.poll() is None and time.monotonic() < deadline, "the TLS MariaDB did not start"
            time.sleep(0.1)
        tls.sql(
            f"CREATE USER 'reader'@'%' IDENTIFIED BY '{PASSWORD}'",
            "GRANT SELECT ON shop.* TO 'reader'@'%'",
            "CREATE DATABASE shop",
            "CREATE TABLE shop.t (id BIGINT PRIMARY KEY, v VARCHAR(40) NOT NULL)",
            f"INSERT INTO shop.t SELECT seq, CONCAT('välue ', seq) FROM shop.seq_1_to_{ROWS}",
        )
        yield tls
    finally:
        server.terminate()
        server.wait(timeout=60)


def _source(tls: TlsServer, **settings: Any) -> SourceConn:
    return replace(SourceConn(name="src", host="127.0.0.1", port=tls.port, username="reader"), **settings)


def _sync(tmp_path: Path, source: SourceConn, pg_target: TargetConn, s3: S3Conn, *, fast: bool) -> Any:
    processing = {"range_rows": 500, "fast_path": fast, "batch_size": 1000}
    cfg = write_config(tmp_path / "cfg", source, pg_target, s3, processing=processing)
    args = ("--config-dir", str(cfg), "sync", "-p", "p", "-t", "shop.t")
    doc, proc = run_json(*args, env={PASSWORD_ENV: PASSWORD})
    check_contract(doc, ["shop.t"])
    assert PASSWORD not in proc.stdout + proc.stderr
    return doc


@pytest.mark.parametrize("fast", [True, False], ids=["connectorx", "asyncmy"])
def test_a_server_that_requires_tls_is_read_over_tls_by_default(
    tmp_path: Path, tls_server: TlsServer, pg_target: TargetConn, s3_conn: S3Conn, pg_schema: str, fast: bool
) -> None:
    before = tls_server.ssl_accepts()
    doc = _sync(tmp_path, _source(tls_server), pg_target, s3_conn, fast=fast)
    result = doc["table_results"]["shop.t"]
    assert result["status"] == "success", failures(doc)
    assert result["rows_loaded"] == ROWS
    assert result["extract"]["path"] == ("connectorx" if fast else "asyncmy")
    assert tls_server.ssl_accepts() > before


def test_verify_identity_against_the_servers_ca(
    tmp_path: Path, tls_server: TlsServer, pg_target: TargetConn, s3_conn: S3Conn, pg_schema: str
) -> None:
    source = _source(tls_server, ssl_mode="verify_identity", ssl_ca=str(tls_server.ca))
    doc = _sync(tmp_path, source, pg_target, s3_conn, fast=True)
    assert doc["table_results"]["shop.t"]["status"] == "success", failures(doc)


def test_a_certificate_of_another_ca_fails_the_table_in_one_line(
    tmp_path: Path, tls_server: TlsServer, pg_target: TargetConn, s3_conn: S3Conn
) -> None:
    source = _source(tls_server, ssl_mode="verify_ca", ssl_ca=str(tls_server.other_ca))
    result = _sync(tmp_path, source, pg_target, s3_conn, fast=True)["table_results"]["shop.t"]
    assert result["status"] == "failed" and result["retryable"] is False, result
    message = result["error_message"]
    assert "\n" not in message and "TLS handshake failed" in message, message
    assert "did not verify against connections.sources.src.ssl_ca" in message, message


def test_required_tls_from_a_server_without_it_fails_in_one_line(
    tmp_path: Path, source_conn: SourceConn, pg_target: TargetConn, s3_conn: S3Conn, mysql_db: str
) -> None:
    cfg = write_config(tmp_path / "cfg", replace(source_conn, ssl_mode="required"), pg_target, s3_conn)
    doc, proc = run_json("--config-dir", str(cfg), "sync", "-p", "p", "-t", f"{mysql_db}.t")
    result = doc["table_results"][f"{mysql_db}.t"]
    assert proc.returncode == 1 and result["retryable"] is False, result
    assert (
        "the server offers no TLS: enable it there, or set connections.sources.src.ssl_mode"
        in (result["error_message"])
    )


@pytest.mark.parametrize(
    ("settings", "key", "words"),
    [
        ({"ssl_mode": "sometimes"}, "ssl_mode", "must be one of disabled, preferred, required, verify_ca"),
        ({"ssl_mode": "required", "ssl_ca": "/etc/hostname"}, "ssl_ca", "set ssl_mode to verify_ca"),
        ({"ssl_ca": "/no/such/ca.pem"}, "ssl_ca", "is not a readable file"),
    ],
)
def test_tls_settings_are_checked_when_the_config_loads(
    tmp_path: Path, settings: dict[str, str], key: str, words: str
) -> None:
    (tmp_path / "pipelines").mkdir()
    source = {"host": "127.0.0.1", **settings}
    conns = {"sources": {"src": source}, "targets": {"tgt": {"type": "postgres", "host": "h", "username": "u",
             "database": "d"}}, "s3": {"stage": {"bucket": "b"}}}  # fmt: skip
    (tmp_path / "connections.yml").write_text(json.dumps({"connections": conns}))
    (tmp_path / "pipelines" / "p.yml").write_text(
        json.dumps({"pipeline": {"name": "p", "source": "src", "target": "tgt", "s3_config": "stage"}})
    )
    with pytest.raises(ConfigError) as caught:
        load_pipeline(tmp_path, "p")
    assert caught.value.key == f"connections.sources.src.{key}" and words in caught.value.message
    assert "connections.yml" in caught.value.message


def test_ssl_mode_takes_the_mysql_clients_spelling(tmp_path: Path) -> None:
    (tmp_path / "pipelines").mkdir()
    conns = {"sources": {"src": {"host": "h", "ssl_mode": "VERIFY-IDENTITY", "ssl_ca": "/etc/hostname"}},
             "targets": {"tgt": {"type": "postgres", "host": "h", "username": "u", "database": "d"}},
             "s3": {"stage": {"bucket": "b"}}}  # fmt: skip
    (tmp_path / "connections.yml").write_text(json.dumps({"connections": conns}))
    (tmp_path / "pipelines" / "p.yml").write_text(
        json.dumps({"pipeline": {"name": "p", "source": "src", "target": "tgt", "s3_config": "stage"}})
    )
    source = load_pipeline(tmp_path, "p").source
    assert (source.ssl_mode, source.ssl_ca) == ("verify_identity", "/etc/hostname")
