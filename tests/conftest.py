"""Fixtures for the real services: MariaDB, PostgreSQL and a moto S3 server over HTTP on loopback.

Each test gets its own MySQL database, PostgreSQL schema and S3 bucket, so tests never see each
other's data. Endpoints come from the environment when set (S3SHIFT_TEST_*), else the local defaults.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import http.client
import http.server
import logging
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import boto3
import pymysql
import pytest

from src.common.secret import Secret
from src.config.models import S3Conn, SourceConn, TargetConn

ROOT = Path(__file__).resolve().parent.parent
MYSQL_HOST = os.environ.get("S3SHIFT_TEST_MYSQL_HOST", "127.0.0.1")
MYSQL_PORT = int(os.environ.get("S3SHIFT_TEST_MYSQL_PORT", "3306"))
MYSQL_USER = os.environ.get("S3SHIFT_TEST_MYSQL_USER", "root")
MYSQL_PASSWORD = os.environ.get("S3SHIFT_TEST_MYSQL_PASSWORD", "")
PG_HOST = os.environ.get("S3SHIFT_TEST_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("S3SHIFT_TEST_PG_PORT", "5432"))
PG_USER = os.environ.get("S3SHIFT_TEST_PG_USER", "postgres")
PG_DATABASE = os.environ.get("S3SHIFT_TEST_PG_DATABASE", "test")
S3_KEY = "testing"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _s3_up(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/moto-api/", timeout=1):
            return True
    except OSError:
        return False


def start_moto(port: int) -> subprocess.Popen[bytes]:
    """A moto S3 server in its own process on 127.0.0.1:``port``, once it answers."""
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while not _s3_up(url):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"moto server did not start on {url}")
        time.sleep(0.1)
    return proc


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A moto S3 server in its own process (or S3SHIFT_TEST_S3_ENDPOINT if already running)."""
    given = os.environ.get("S3SHIFT_TEST_S3_ENDPOINT")
    if given:
        yield given
        return
    port = _free_port()
    proc = start_moto(port)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


class CutProxy:
    """A TCP proxy in front of a real server that a test cuts and restores: a network fault between
    s3shift and the server, which keeps its data. Cut, the port refuses connections and the open ones
    are closed under their users; restored, it forwards again on the same port.

    Faults aimed at one statement (the first client message holding ``marker``, on any connection):
    ``lose_answer_to`` forwards it, then hangs the connection up as soon as the server's reply comes
    (the server did the work; the client never hears of it); ``drop_before`` hangs up instead of
    forwarding it (the server never sees it); ``hold_answer_to`` forwards it and holds that connection's
    replies until ``release``. ``stall`` holds every reply of every connection, new ones included (a
    server that accepts and never answers). ``triggered`` is set when a statement fault has fired."""

    def __init__(self, target: str) -> None:
        host, port = urllib.parse.urlsplit(target).netloc.rsplit(":", 1)
        self._target = (host, int(port))
        self.port = _free_port()
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._rules: list[list[Any]] = []  # [marker, action, matches still to let through]
        self._held: set[int] = set()  # ids of client sockets whose replies are held
        self._stalled = False
        self._lost: set[int] = set()  # ids of client sockets to hang up at their next reply
        self.triggered = threading.Event()
        self.restore()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def restore(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            _hang_up(listener)
        with self._lock:
            for sock in list(self._open):
                _hang_up(sock)
            self._open.clear()

    def lose_answer_to(self, marker: bytes) -> None:
        self._rules.append([marker, "lose", 0])

    def drop_before(self, marker: bytes) -> None:
        self._rules.append([marker, "drop", 0])

    def hold_answer_to(self, marker: bytes, *, skip: int = 0) -> None:
        """(``skip``: let that many such statements through first.)"""
        self._rules.append([marker, "hold", skip])

    def stall(self) -> None:
        self._stalled = True

    def release(self) -> None:
        """Replies flow again (held ones first)."""
        self._stalled = False
        self._held.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:  # cut
                return
            try:
                server = socket.create_connection(self._target)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._open.update((client, server))
            threading.Thread(target=self._pump, args=(client, server, client), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, client), daemon=True).start()

    def _fault(self, data: bytes) -> str | None:
        with self._lock:
            for rule in self._rules:
                if rule[0] in data and rule[2] > 0:
                    rule[2] -= 1
                elif rule[0] in data:
                    self._rules.remove(rule)
                    return str(rule[1])
        return None

    def _pump(self, src: socket.socket, dst: socket.socket, client: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                if src is client:
                    action = self._fault(data)
                    if action == "drop":
                        self.triggered.set()
                        break
                    if action == "lose":
                        self._lost.add(id(client))
                    elif action == "hold":
                        self._held.add(id(client))
                    if action is not None:
                        self.triggered.set()
                else:
                    if id(client) in self._lost:
                        break
                    while (self._stalled or id(client) in self._held) and src.fileno() != -1:
                        time.sleep(0.02)
                dst.sendall(data)
        except OSError:
            pass
        for sock in (src, dst):
            with self._lock:
                self._open.discard(sock)
            _hang_up(sock)
        self._held.discard(id(client))  # ids are reused by later sockets: forget this one's
        self._lost.discard(id(client))


def _hang_up(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked in accept() or recv() on it
    sock.close()


@pytest.fixture
def s3_proxy(s3_endpoint: str) -> Iterator[CutProxy]:
    """A ``CutProxy`` in front of the session's S3 server (its ``url`` is the endpoint to use)."""
    proxy = CutProxy(s3_endpoint)
    try:
        yield proxy
    finally:
        proxy.cut()


class ErrorProxy:
    """An HTTP proxy in front of a real S3 server that answers chosen requests itself with an S3 error
    (``fail``), the way S3 answers a throttled or overloaded request (503 SlowDown, ServiceUnavailable);
    every other request goes through to the server unchanged. A fault for a process of its own (a real
    `sync`), which aiobotocore's event hooks cannot reach."""

    def __init__(self, target: str) -> None:
        self._target = urllib.parse.urlsplit(target).netloc
        self._rules: list[tuple[str, str, int, str]] = []
        self.failed: list[str] = []  # "METHOD path" of every request answered with an error
        self._lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _any(self) -> None:
                proxy._handle(self)

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _any

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def fail(self, method: str, path_part: str, status: int = 503, code: str = "SlowDown") -> None:
        """From now on answer every ``method`` request whose path holds ``path_part`` with that error."""
        with self._lock:
            self._rules.append((method, path_part, status, code))

    def clear(self) -> None:
        """Forward every request again."""
        with self._lock:
            self._rules.clear()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _rule(self, method: str, path: str) -> tuple[int, str] | None:
        with self._lock:
            for want, part, status, code in self._rules:
                if want == method and part in urllib.parse.unquote(path):
                    self.failed.append(f"{method} {path}")
                    return status, code
        return None

    def _handle(self, req: http.server.BaseHTTPRequestHandler) -> None:
        body = _request_body(req)
        rule = self._rule(req.command, req.path)
        if rule is not None:
            status, code = rule
            xml = (
                f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
                f"<Message>injected by the test</Message><RequestId>test</RequestId></Error>"
            ).encode()
            self._reply(req, status, [("Content-Type", "application/xml")], xml)
            return
        skip = {"host", "content-length", "transfer-encoding", "connection"}
        headers = {k: v for k, v in req.headers.items() if k.lower() not in skip}
        headers["Host"] = req.headers.get("Host", self._target)
        conn = http.client.HTTPConnection(self._target, timeout=60)
        try:
            conn.request(req.command, req.path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            head = req.command == "HEAD"  # no body: its Content-Length is the object's, kept as sent
            kept = [
                (k, v)
                for k, v in resp.getheaders()
                if k.lower() not in skip or (head and k.lower() == "content-length")
            ]
            self._reply(req, resp.status, kept, b"" if head else data, length=not head)
        finally:
            conn.close()

    @staticmethod
    def _reply(
        req: http.server.BaseHTTPRequestHandler,
        status: int,
        headers: list[tuple[str, str]],
        data: bytes,
        *,
        length: bool = True,
    ) -> None:
        req.send_response_only(status)
        for key, value in headers:
            req.send_header(key, value)
        if length:
            req.send_header("Content-Length", str(len(data)))
        req.end_headers()
        req.wfile.write(data)


def _request_body(req: http.server.BaseHTTPRequestHandler) -> bytes | None:
    if req.headers.get("Transfer-Encoding", "").lower() == "chunked":
        chunks = []
        while size := int(req.rfile.readline().split(b";")[0], 16):
            chunks.append(req.rfile.read(size))
            req.rfile.readline()
        req.rfile.readline()
        return b"".join(chunks)
    length = int(req.headers.get("Content-Length") or 0)
    return req.rfile.read(length) if length else None


@pytest.fixture
def s3_errors(s3_endpoint: str) -> Iterator[ErrorProxy]:
    """An ``ErrorProxy`` in front of the session's S3 server (its ``url`` is the endpoint to use)."""
    proxy = ErrorProxy(s3_endpoint)
    try:
        yield proxy
    finally:
        proxy.close()


@pytest.fixture
def stage_log(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """s3shift's logs, even after a CLI test in this session stopped them propagating to the root."""
    logger = logging.getLogger("s3shift")
    logger.addHandler(caplog.handler)
    caplog.set_level(logging.DEBUG, logger="s3shift")
    try:
        yield caplog
    finally:
        logger.removeHandler(caplog.handler)


@pytest.fixture(autouse=True)
def _aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Never let a test pick up real AWS credentials or config from the machine."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", S3_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", S3_KEY)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")


def s3_client(endpoint: str) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=S3_KEY,
        aws_secret_access_key=S3_KEY,
        region_name="us-east-1",
    )


@pytest.fixture
def s3_conn(s3_endpoint: str) -> S3Conn:
    """A fresh bucket on the moto server, as an S3Conn."""
    bucket = f"s3shift-test-{uuid.uuid4().hex[:12]}"
    s3_client(s3_endpoint).create_bucket(Bucket=bucket)
    return S3Conn(
        name="test_s3",
        bucket=bucket,
        prefix="staging/",
        region="us-east-1",
        endpoint_url=s3_endpoint,
        access_key_id=Secret(S3_KEY),
        secret_access_key=Secret(S3_KEY),
        part_size_mb=5,
    )


# No TLS to a server on this machine: pymysql otherwise builds a fresh SSL context for every connection
# (~20 ms of CPU loading the CA store, for a server whose TLS is usually off anyway); a remote server keeps
# pymysql's default (TLS when the server offers it).
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def mysql_connect(database: str | None = None) -> Any:
    return pymysql.connect(
        host=MYSQL_HOST,
        port=MYSQL_PORT,
        user=MYSQL_USER,
        password=MYSQL_PASSWORD,
        database=database,
        charset="utf8mb4",
        autocommit=True,
        init_command="SET time_zone='+00:00'",
        ssl_disabled=MYSQL_HOST in LOOPBACK,
    )


def mysql_exec(database: str | None, *statements: str) -> None:
    conn = mysql_connect(database)
    try:
        with conn.cursor() as cur:
            for stmt in statements:
                cur.execute(stmt)
    finally:
        conn.close()


def mysql_rows(database: str, sql: str, args: Any = None) -> list[tuple[Any, ...]]:
    conn = mysql_connect(database)
    try:
        with conn.cursor() as cur:
            cur.execute(sql, args)
            return list(cur.fetchall())
    finally:
        conn.close()


@pytest.fixture
def mysql_db() -> Iterator[str]:
    """A fresh MySQL database, dropped afterwards."""
    name = f"s3s_{uuid.uuid4().hex[:10]}"
    mysql_exec(None, f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
    try:
        yield name
    finally:
        mysql_exec(None, f"DROP DATABASE IF EXISTS `{name}`")


@pytest.fixture
def source_conn(mysql_db: str) -> SourceConn:
    return SourceConn(
        name="test_mysql",
        host=MYSQL_HOST,
        port=MYSQL_PORT,
        username=MYSQL_USER,
        password=Secret(MYSQL_PASSWORD),
        database=mysql_db,
        max_connections=4,
    )


# A password beyond Latin-1 (the euro sign, CJK, an emoji), with Latin-1 letters and every character a
# URL must quote: what the drivers and connectorx's URL have to carry exactly.
WIDE_PASSWORD = "pässwörd€中文😀 @:/?#%+&="


@pytest.fixture
def mysql_user(source_conn: SourceConn) -> Iterator[SourceConn]:
    """A real MariaDB user with ``WIDE_PASSWORD`` and every privilege on the test's database, as the
    source connection to use; dropped afterwards."""
    user = f"bbs_{uuid.uuid4().hex[:10]}"
    conn = mysql_connect()
    try:
        with conn.cursor() as cur:
            cur.execute("CREATE USER %s@'%%' IDENTIFIED BY %s", (user, WIDE_PASSWORD))
            cur.execute(f"GRANT ALL ON `{source_conn.database}`.* TO %s@'%%'", (user,))
        yield dataclasses.replace(source_conn, username=user, password=Secret(WIDE_PASSWORD))
    finally:
        with conn.cursor() as cur:
            cur.execute("DROP USER IF EXISTS %s@'%%'", (user,))
        conn.close()


def pg_run(coro_fn: Any) -> Any:
    async def go() -> Any:
        conn = await asyncpg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, database=PG_DATABASE)
        try:
            return await coro_fn(conn)
        finally:
            await conn.close()

    return asyncio.run(go())


def pg_fetch(sql: str, *args: Any) -> list[Any]:
    return list(pg_run(lambda c: c.fetch(sql, *args)))


@contextlib.contextmanager
def pg_tables_locked(*qualified: str) -> Iterator[None]:
    """The tables (quoted ``"schema"."table"`` names) locked ACCESS EXCLUSIVE by another session until the
    block ends: a load of one waits inside its transaction."""
    done, locked = threading.Event(), threading.Event()

    async def hold() -> None:
        conn = await asyncpg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, database=PG_DATABASE)
        try:
            async with conn.transaction():
                await conn.execute(f"LOCK TABLE {', '.join(qualified)} IN ACCESS EXCLUSIVE MODE")
                locked.set()
                await asyncio.to_thread(done.wait)
        finally:
            await conn.close()

    thread = threading.Thread(target=asyncio.run, args=(hold(),), daemon=True)
    thread.start()
    assert locked.wait(30)
    try:
        yield
    finally:
        done.set()
        thread.join(30)


@pytest.fixture
def pg_schema() -> Iterator[str]:
    """A fresh PostgreSQL schema name (not created: loaders must create it), dropped afterwards."""
    name = f"s3s_{uuid.uuid4().hex[:10]}"
    try:
        yield name
    finally:
        pg_run(lambda c: c.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE'))


@pytest.fixture
def pg_target(pg_schema: str) -> TargetConn:
    return TargetConn(
        name="test_pg",
        type="postgres",
        host=PG_HOST,
        port=PG_PORT,
        username=PG_USER,
        database=PG_DATABASE,
        schema=pg_schema,
    )
