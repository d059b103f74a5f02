"""TIMESTAMP is read as the true UTC instant whatever the server's time zone, and DATETIME as its stored wall
time: against a private MariaDB started in +05:00 (system zone Asia/Karachi), both drivers."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import pyarrow as pa
import pymysql
import pytest

from src.config.models import Driver, SourceConn
from src.plan.models import Watermark, Window
from src.source.extract import ExtractStats
from src.source.introspect import describe_table, server_now
from src.source.mysql import MySQLSource
from src.source.window import extract_window

START_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class PrivateServer:
    port: int

    def connect(self, database: str | None = None, **kw: Any) -> Any:
        return pymysql.connect(
            host="127.0.0.1",
            port=self.port,
            user="root",
            database=database,
            autocommit=True,
            ssl_disabled=True,
            **kw,
        )


def _binary(name: str) -> str | None:
    return shutil.which(name) or next(
        (p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if os.access(p, os.X_OK)), None
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _install(install_db: str, datadir: Path, user: list[str]) -> None:
    cmd = [install_db, "--no-defaults", f"--datadir={datadir}", "--auth-root-authentication-method=normal"]
    done = subprocess.run(
        [*cmd, "--skip-test-db", *user], capture_output=True, text=True, timeout=120, check=False
    )
    if done.returncode != 0:
        pytest.skip(f"mariadb-install-db failed (exit {done.returncode}): {done.stderr.strip()[-300:]}")


def _wait_up(server: PrivateServer, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        try:
            server.connect().close()
            return
        except pymysql.err.OperationalError:
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = log.read_text(errors="replace")[-400:] if log.exists() else ""
                pytest.skip(f"the private mariadbd did not start on port {server.port}: {tail}")
            time.sleep(0.2)


@pytest.fixture(scope="session")
def plus5_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateServer]:
    """A second, private mariadbd (own datadir, free port) whose time zone is +05:00; skipped with the
    reason when it cannot start here, stopped at the end of the session."""
    mariadbd, install_db = _binary("mariadbd"), _binary("mariadb-install-db")
    if mariadbd is None or install_db is None:
        pytest.skip("mariadbd / mariadb-install-db not installed: cannot start a server in +05:00")
    base = tmp_path_factory.mktemp("mariadb_plus5")
    user = ["--user=root"] if os.geteuid() == 0 else []
    _install(install_db, base / "data", user)
    server = PrivateServer(_free_port())
    log = base / "error.log"
    args = [
        mariadbd,
        "--no-defaults",
        f"--datadir={base / 'data'}",
        f"--port={server.port}",
        "--bind-address=127.0.0.1",
        f"--socket={base / 'mysqld.sock'}",
        f"--pid-file={base / 'mysqld.pid'}",
        f"--log-error={log}",
        "--default-time-zone=+05:00",
        "--skip-grant-tables",
        "--skip-log-bin",
        "--innodb-buffer-pool-size=32M",
        *user,
    ]
    proc = subprocess.Popen(args, env={**os.environ, "TZ": "Asia/Karachi"}, stdin=subprocess.DEVNULL)
    try:
        _wait_up(server, proc, log)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture(params=["asyncmy", "aiomysql"])
def plus5(request: pytest.FixtureRequest, plus5_server: PrivateServer) -> Iterator[SourceConn]:
    driver: Driver = request.param
    name = f"tz_{driver}"
    conn = plus5_server.connect()
    try:
        with conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS {name}")
            cur.execute(f"CREATE DATABASE {name} CHARACTER SET utf8mb4")
        yield SourceConn(name="plus5", host="127.0.0.1", port=plus5_server.port, database=name, driver=driver)
    finally:
        conn.close()


WALL = [  # written by a session in the server's own zone (+05:00)
    "1970-01-01 05:00:01.000000",
    "2024-03-01 12:00:00.123456",
    "2038-01-19 08:14:07.999999",
    "2024-03-01 04:59:59.999999",  # the previous day in UTC
]


def _wall(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%S.%f")


@pytest.mark.anyio
async def test_timestamps_are_utc_and_datetimes_wall_time(
    plus5: SourceConn, plus5_server: PrivateServer
) -> None:
    assert plus5.database
    writer = plus5_server.connect(plus5.database)
    try:
        with writer.cursor() as cur:
            cur.execute("SELECT @@session.time_zone, @@global.time_zone, @@system_time_zone")
            assert cur.fetchone()[:2] == ("+05:00", "+05:00")
            cur.execute("CREATE TABLE t (id INT PRIMARY KEY, ts TIMESTAMP(6) NULL, dt DATETIME(6), KEY (ts))")
            for i, text in enumerate(WALL, start=1):
                cur.execute("INSERT INTO t VALUES (%s, %s, %s)", (i, text, text))
    finally:
        writer.close()
    window = Window("hybrid", ts_column="ts", id_column="id", end=Watermark(ts=datetime(2100, 1, 1)))
    rows = await _read(plus5, "t", window)
    utc = [_wall(text) - timedelta(hours=5) for text in WALL]
    assert sorted((r["id"], r["ts"]) for r in rows) == [
        (i, value.replace(tzinfo=UTC)) for i, value in enumerate(utc, start=1)
    ]
    assert {r["id"]: r["dt"] for r in rows} == {i: _wall(text) for i, text in enumerate(WALL, start=1)}
    assert [r["id"] for r in rows] == [1, 4, 2, 3]  # read in UTC order, in pages of 2
    async with MySQLSource(plus5) as src, src.connection() as conn:
        now = await server_now(conn)
    assert abs(now - datetime.now(UTC)) < timedelta(seconds=30)


async def _read(cfg: SourceConn, table: str, window: Window) -> list[dict[str, Any]]:
    assert cfg.database
    db = cfg.database
    send, receive = anyio.create_memory_object_stream[pa.RecordBatch](1)
    batches: list[pa.RecordBatch] = []
    async with MySQLSource(cfg) as src, src.connection() as conn:
        schema = await describe_table(conn, db, table)
        stats = ExtractStats()
        async with anyio.create_task_group() as tg:
            tg.start_soon(
                lambda: extract_window(
                    conn, db, table, schema, send, window=window, batch_size=2, stats=stats
                )
            )
            async with receive:
                batches.extend([b async for b in receive])
    assert stats.coercions == {} and stats.rows == len(WALL)
    return pa.Table.from_batches(batches, schema.arrow_schema()).to_pylist()
