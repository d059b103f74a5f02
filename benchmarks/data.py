"""The workloads' data in MySQL, generated with MariaDB's SEQUENCE engine (repeatable, kept between runs).

Each workload has its own database `<prefix>_<w>` (W1 and W2 share `<prefix>_w1`: the same data).
A table is regenerated only when its row count differs from what the workload asks for.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import asyncpg
import pymysql

ORDERS = """CREATE TABLE {t} (
  id BIGINT NOT NULL PRIMARY KEY, customer_id INT NOT NULL, status VARCHAR(16) NOT NULL,
  amount DECIMAL(12,2) NOT NULL, currency CHAR(3) NOT NULL, created_at DATETIME(6) NOT NULL,
  updated_at TIMESTAMP(6) NOT NULL, note VARCHAR(200) NULL, quantity SMALLINT NOT NULL,
  weight DOUBLE NOT NULL, is_gift TINYINT(1) NOT NULL, ship_date DATE NULL)"""
ORDERS_FILL = """INSERT INTO {t} SELECT seq, seq % 100000, ELT(1 + seq % 4, 'new','paid','shipped','done'),
  (seq % 100000) / 100, 'EUR', '2024-01-01' + INTERVAL seq SECOND, '2024-06-01' + INTERVAL seq SECOND,
  IF(seq % 3 = 0, NULL, CONCAT('note for order ', seq)), seq % 50, seq / 7, seq % 2,
  IF(seq % 5 = 0, NULL, '2024-01-01' + INTERVAL (seq % 365) DAY) FROM seq_1_to_{rows}"""
NARROW = """CREATE TABLE {t} (
  id BIGINT NOT NULL PRIMARY KEY, account_id INT NOT NULL, value DOUBLE NOT NULL)"""
NARROW_FILL = "INSERT INTO {t} SELECT seq, seq % 50000, seq / 3 FROM seq_1_to_{rows}"
CHUNK = 1_000_000  # rows per INSERT ... SELECT (keeps MariaDB's undo log small)


@dataclass(frozen=True)
class Workload:
    """One workload: its tables in one database, and how s3shift runs it."""

    name: str
    database: str
    tables: tuple[str, ...]
    rows_per_table: int
    shape: str  # "orders" | "narrow"
    end_to_end: bool  # s3shift loads PostgreSQL (else --backup-only)

    @property
    def rows(self) -> int:
        return self.rows_per_table * len(self.tables)

    def qualified(self) -> list[str]:
        return [f"{self.database}.{t}" for t in self.tables]


def workloads(prefix: str, scale: float, w4_tables: int, w4_rows: int) -> dict[str, Workload]:
    def n(rows: int) -> int:
        return max(1, round(rows * scale))

    w4 = tuple(f"t{i:04d}" for i in range(1, w4_tables + 1))
    return {
        "W1": Workload("W1", f"{prefix}_w1", ("orders",), n(2_000_000), "orders", False),
        "W2": Workload("W2", f"{prefix}_w1", ("orders",), n(2_000_000), "orders", True),
        "W3": Workload("W3", f"{prefix}_w3", ("narrow",), n(5_000_000), "narrow", False),
        "W4": Workload("W4", f"{prefix}_w4", w4, w4_rows, "orders", True),
        "W5": Workload("W5", f"{prefix}_w5", ("orders",), n(20_000_000), "orders", False),
    }


def _connect(host: str, port: int, user: str, password: str) -> Any:
    return pymysql.connect(host=host, port=port, user=user, password=password, autocommit=True)


def _count(cur: Any, database: str, table: str) -> int | None:
    cur.execute(
        "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA=%s AND TABLE_NAME=%s",
        (database, table),
    )
    if not cur.fetchone()[0]:
        return None
    cur.execute(f"SELECT COUNT(*) FROM `{database}`.`{table}`")
    return int(cur.fetchone()[0])


def _fill(cur: Any, table: str, shape: str, rows: int) -> None:
    create, fill = (ORDERS, ORDERS_FILL) if shape == "orders" else (NARROW, NARROW_FILL)
    cur.execute(f"DROP TABLE IF EXISTS `{table}`")
    cur.execute(create.format(t=f"`{table}`"))
    for start in range(0, rows, CHUNK):
        stop = min(rows, start + CHUNK)
        sql = fill.format(t=f"`{table}`", rows=stop).replace(f"seq_1_to_{stop}", f"seq_{start + 1}_to_{stop}")
        cur.execute(sql)


def prepare(w: Workload, host: str, port: int, user: str, password: str) -> bool:
    """Create the workload's tables if missing or of the wrong size; True when anything was (re)built."""
    conn = _connect(host, port, user, password)
    built = False
    try:
        with conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE IF NOT EXISTS `{w.database}`")
            cur.execute(f"USE `{w.database}`")
            for table in w.tables:
                if _count(cur, w.database, table) != w.rows_per_table:
                    _fill(cur, table, w.shape, w.rows_per_table)
                    built = True
            if len(w.tables) > 1:
                cur.execute(
                    "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA=%s", (w.database,)
                )
                for (extra,) in cur.fetchall():
                    if extra not in w.tables:
                        cur.execute(f"DROP TABLE `{extra}`")
    finally:
        conn.close()
    return built


def drop(databases: list[str], host: str, port: int, user: str, password: str) -> None:
    conn = _connect(host, port, user, password)
    try:
        with conn.cursor() as cur:
            for db in databases:
                cur.execute(f"DROP DATABASE IF EXISTS `{db}`")
    finally:
        conn.close()


def drop_pg_schemas(schemas: list[str]) -> None:
    """Drop the PostgreSQL schemas s3shift loaded (database `test` on 127.0.0.1:5432)."""

    async def go() -> None:
        conn = await asyncpg.connect(host="127.0.0.1", port=5432, user="postgres", database="test")
        try:
            for schema in schemas:
                await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await conn.close()

    asyncio.run(go())
