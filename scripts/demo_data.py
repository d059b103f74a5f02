"""Create the demo database ``shop`` in MariaDB/MySQL with deterministic, realistic data.

    .venv/bin/python scripts/demo_data.py          # (re)create shop.customers, shop.orders, shop.products
    .venv/bin/python scripts/demo_data.py --check  # row counts vs PostgreSQL analytics.* (exit 1 if unequal)

Only the three demo tables are dropped and recreated; the rest of the database is left alone. The data
comes from a seeded generator, so every run produces the same rows. Connections use the variables of
config/connections.yml: MYSQL_HOST/PORT/USER/PASSWORD and PG_HOST/PORT/USER/PASSWORD/DATABASE.
All output goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import random
import sys
import time
import unicodedata
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pymysql

DATABASE = "shop"
TARGET_SCHEMA = "analytics"
SEED = 20240601
N_CUSTOMERS = 5_000
N_ORDERS = 20_000
N_PRODUCTS = 500
EPOCH = datetime(2023, 1, 1, tzinfo=UTC)
SPAN_SECONDS = 2 * 365 * 86_400
Row = tuple[Any, ...]

DDL = {
    "customers": """
        CREATE TABLE customers (
          id BIGINT UNSIGNED NOT NULL PRIMARY KEY,
          name VARCHAR(100) NOT NULL,
          email VARCHAR(255) NOT NULL,
          country CHAR(2) NOT NULL,
          signup DATE NOT NULL,
          is_active TINYINT(1) NOT NULL DEFAULT 1,
          balance DECIMAL(12,2) NOT NULL DEFAULT 0.00,
          created_at DATETIME(6) NOT NULL,
          updated_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6),
          KEY ix_customers_updated (updated_at, id)
        ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4""",
    "orders": """
        CREATE TABLE orders (
          id BIGINT NOT NULL PRIMARY KEY,
          customer_id BIGINT UNSIGNED NOT NULL,
          status ENUM('pending','paid','shipped','delivered','cancelled','refunded') NOT NULL,
          amount DECIMAL(12,2) NOT NULL,
          quantity INT NOT NULL,
          discount DOUBLE NOT NULL DEFAULT 0,
          note TEXT NULL,
          tags SET('gift','express','fragile','b2b','promo') NOT NULL DEFAULT '',
          payload JSON NOT NULL,
          created_at DATETIME(6) NOT NULL,
          updated_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6),
          shipped_on DATE NULL,
          KEY ix_orders_customer (customer_id),
          KEY ix_orders_updated (updated_at, id)
        ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4""",
    "products": """
        CREATE TABLE products (
          id INT NOT NULL PRIMARY KEY,
          sku VARCHAR(32) NOT NULL,
          name VARCHAR(200) NOT NULL,
          category VARCHAR(50) NOT NULL,
          price DECIMAL(10,2) NOT NULL,
          weight_kg FLOAT NOT NULL,
          sku_hash VARBINARY(32) NOT NULL,
          thumbnail BLOB NULL,
          in_stock TINYINT(1) NOT NULL DEFAULT 1,
          created_at DATETIME(6) NOT NULL,
          UNIQUE KEY ux_products_sku (sku)
        ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4""",
}

FIRST = [
    "Anna",
    "José",
    "Zoë",
    "Łukasz",
    "Søren",
    "François",
    "Mia",
    "Noah",
    "Ólafur",
    "Chloé",
    "Ahmed",
    "Yuki",
    "Ольга",
    "Dmitri",
    "Nguyễn",
    "Priya",
    "Björn",
    "Ana María",
    "Liam",
    "Emma",
    "Jürgen",
    "Siobhán",
    "Mateo",
    "Élodie",
    "Kwame",
    "Sofía",
    "İbrahim",
    "Aoife",
    "Ravi",
    "Grace",
]
LAST = [
    "Müller",
    "García",
    "Kowalski",
    "Johansson",
    "O'Brien",
    "Dubois",
    "Smith",
    "Nakamura",
    "Petrov",
    "Rossi",
    "Ngata",
    "Chen",
    "Østergaard",
    "Fernández",
    "Nowak",
    "Papadopoulos",
    "田中",
    "Jones",
    "Silva",
    "Kim",
    "van der Berg",
    "Çelik",
    "Ivanova",
    "Brown",
    "Lefèvre",
]
EMOJI = ["🚀", "😀", "🎉", "🌍", "☕", "👩‍💻", "🇩🇪"]
COUNTRIES = ["US", "DE", "FR", "GB", "PL", "ES", "SE", "JP", "IN", "BR", "NL", "IE", "TR", "VN", "CA"]
CATEGORIES = ["books", "garden", "kitchen", "toys", "outdoor", "electronics", "office", "beauty"]
ADJECTIVES = ["Classic", "Compact", "Deluxe", "Eco", "Ultra", "Mini", "Pro", "Smart", "Vintage", "Nordic"]
NOUNS = ["Kettle", "Lamp", "Backpack", "Notebook", "Chair", "Speaker", "Mug", "Tent", "Puzzle", "Café Set"]
STATUSES = ["pending", "paid", "shipped", "delivered", "cancelled", "refunded"]
STATUS_WEIGHTS = [5, 15, 20, 50, 6, 4]
TAGS = ["gift", "express", "fragile", "b2b", "promo"]
NOTES = [
    "Leave at the door",
    "Call before delivery",
    "Geschenkverpackung bitte",
    "Livraison rapide 🙏",
    "Fragile: glass inside",
    "請小心輕放",
    "Ring twice\nthen wait",
    "Tab\there, 'quotes' and \"doubles\"",
]


def _moment(rng: random.Random, after: datetime | None = None) -> datetime:
    """A UTC instant with microseconds: in the demo span, or within 30 days after ``after``."""
    if after is None:
        return EPOCH + timedelta(seconds=rng.randrange(SPAN_SECONDS), microseconds=rng.randrange(1_000_000))
    return after + timedelta(seconds=rng.randrange(30 * 86_400), microseconds=rng.randrange(1_000_000))


def _naive(moment: datetime) -> datetime:
    """pymysql sends naive datetimes; the session time zone is UTC."""
    return moment.replace(tzinfo=None)


def _customer(rng: random.Random, cid: int) -> Row:
    first, last = rng.choice(FIRST), rng.choice(LAST)
    name = f"{first} {last}" + (f" {rng.choice(EMOJI)}" if cid % 37 == 0 else "")
    ascii_name = unicodedata.normalize("NFKD", f"{first}.{last}".lower())
    slug = "".join(ch for ch in ascii_name if ch.isascii() and (ch.isalnum() or ch == "."))
    created = _moment(rng)
    balance = Decimal(rng.randrange(-50_000, 2_500_000)) / 100
    return (
        cid,
        name,
        f"{slug or 'customer'}.{cid}@example.com",
        rng.choice(COUNTRIES),
        created.date() - timedelta(days=rng.randrange(0, 3)),
        int(rng.random() < 0.85),
        balance,
        _naive(created),
        _naive(_moment(rng, created)),
    )


def _product(rng: random.Random, pid: int) -> Row:
    sku = f"SKU-{pid:05d}"
    thumbnail = bytes(rng.randrange(256) for _ in range(rng.randrange(16, 256))) if pid % 10 else None
    return (
        pid,
        sku,
        f"{rng.choice(ADJECTIVES)} {rng.choice(NOUNS)} {pid}",
        rng.choice(CATEGORIES),
        Decimal(rng.randrange(199, 99_999)) / 100,
        round(rng.uniform(0.05, 25.0), 3),
        hashlib.sha256(sku.encode()).digest(),
        thumbnail,
        int(rng.random() < 0.9),
        _naive(_moment(rng)),
    )


def _order(rng: random.Random, oid: int, customer_ids: Sequence[int], n_products: int) -> Row:
    status = rng.choices(STATUSES, STATUS_WEIGHTS)[0]
    created = _moment(rng)
    qtys = [rng.randrange(1, 5) for _ in range(rng.randrange(1, 4))]
    items = [{"sku": f"SKU-{rng.randrange(1, n_products + 1):05d}", "qty": qty} for qty in qtys]
    coupon = f"SPRING-{oid % 97}" if oid % 11 == 0 else None
    payload = {"channel": rng.choice(["web", "app", "store"]), "items": items, "coupon": coupon}
    shipped = None
    if status in ("shipped", "delivered"):
        shipped = created.date() + timedelta(days=rng.randrange(1, 6))
    tags = ",".join(tag for tag in TAGS if rng.random() < 0.15)
    return (
        oid,
        rng.choice(customer_ids),
        status,
        Decimal(rng.randrange(100, 500_000)) / 100,
        sum(qtys),
        round(rng.choice([0.0, 0.0, 0.0, 0.05, 0.1, 0.15, 0.2]) + rng.random() / 1000, 6),
        rng.choice(NOTES) if rng.random() < 0.2 else None,
        tags,
        json.dumps(payload, ensure_ascii=False),
        _naive(created),
        _naive(_moment(rng, created)),
        shipped,
    )


def generate() -> dict[str, list[Row]]:
    """Every demo row, deterministic for a given SEED."""
    rng = random.Random(SEED)
    customers = [_customer(rng, 1_000 + i) for i in range(N_CUSTOMERS)]
    products = [_product(rng, 1 + i) for i in range(N_PRODUCTS)]
    ids = [int(row[0]) for row in customers]
    orders = [_order(rng, 100_000 + i, ids, N_PRODUCTS) for i in range(N_ORDERS)]
    return {"customers": customers, "orders": orders, "products": products}


def mysql_connect(database: str | None = None) -> Any:
    return pymysql.connect(
        host=os.environ.get("MYSQL_HOST") or "127.0.0.1",
        port=int(os.environ.get("MYSQL_PORT") or "3306"),
        user=os.environ.get("MYSQL_USER") or "root",
        password=os.environ.get("MYSQL_PASSWORD", ""),
        database=database,
        charset="utf8mb4",
        autocommit=False,
        init_command="SET time_zone = '+00:00'",
        connect_timeout=10,
    )


def load(tables: dict[str, list[Row]], database: str = DATABASE) -> None:
    """Drop and recreate the demo tables in ``database`` (created if missing) and insert ``tables``."""
    conn = mysql_connect()
    try:
        with conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE IF NOT EXISTS `{database}` CHARACTER SET utf8mb4")
            cur.execute(f"USE `{database}`")
            for name, rows in tables.items():
                cur.execute(f"DROP TABLE IF EXISTS `{name}`")
                cur.execute(DDL[name])
                marks = ", ".join(["%s"] * len(rows[0]))
                for start in range(0, len(rows), 2_000):  # pymysql turns each chunk into one multi-row INSERT
                    cur.executemany(f"INSERT INTO `{name}` VALUES ({marks})", rows[start : start + 2_000])
                conn.commit()
                print(f"demo_data: {database}.{name}: {len(rows)} rows", file=sys.stderr)
    finally:
        conn.close()


def mysql_counts() -> dict[str, int]:
    conn = mysql_connect(DATABASE)
    try:
        with conn.cursor() as cur:
            counts = {}
            for name in DDL:
                cur.execute(f"SELECT COUNT(*) FROM `{name}`")
                counts[name] = int(cur.fetchone()[0])
            return counts
    finally:
        conn.close()


async def pg_counts() -> dict[str, int | None]:
    """Row counts of analytics.<table> in PostgreSQL (None where the table does not exist)."""
    import asyncpg

    conn = await asyncpg.connect(
        host=os.environ.get("PG_HOST") or "127.0.0.1",
        port=int(os.environ.get("PG_PORT") or "5432"),
        user=os.environ.get("PG_USER") or "postgres",
        password=os.environ.get("PG_PASSWORD") or None,
        database=os.environ.get("PG_DATABASE") or "test",
        timeout=10,
    )
    try:
        counts: dict[str, int | None] = {}
        for name in DDL:
            exists = await conn.fetchval("SELECT to_regclass($1)", f'"{TARGET_SCHEMA}"."{name}"')
            query = f'SELECT count(*) FROM "{TARGET_SCHEMA}"."{name}"'
            counts[name] = int(await conn.fetchval(query)) if exists else None
        return counts
    finally:
        await conn.close()


def check() -> int:
    """Print MySQL vs PostgreSQL row counts; 0 when every table matches."""
    source, target = mysql_counts(), asyncio.run(pg_counts())
    ok = True
    for name, expected in source.items():
        got = target[name]
        verdict = "ok" if got == expected else "MISMATCH"
        ok = ok and got == expected
        shown = "missing" if got is None else str(got)
        source_name, target_name = f"{DATABASE}.{name}", f"{TARGET_SCHEMA}.{name}"
        line = f"{source_name:<15} {expected:>7} rows  ->  {target_name:<20} {shown:>7}  {verdict}"
        print(f"check: {line}", file=sys.stderr)
    return 0 if ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="compare row counts with PostgreSQL analytics.*")
    args = parser.parse_args(argv)
    if args.check:
        return check()
    started = time.monotonic()
    load(generate())
    print(f"demo_data: database {DATABASE} ready in {time.monotonic() - started:.1f}s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
