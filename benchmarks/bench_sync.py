"""End-to-end throughput of `s3shift sync` (full_sync into PostgreSQL) against the one-connection read
ceiling (`mariadb --quick -B ... > /dev/null`), measured side by side in the same run.

    .venv/bin/python benchmarks/bench_sync.py [--rows 1000000] [--repeat 3]

Needs the services of scripts/setup.sh (MariaDB, PostgreSQL, moto S3 on 127.0.0.1:5055). Generates the
W1 `orders` shape (12 mixed columns) in database `s3shift_bench`, alternates the contenders, and prints
medians: rows/s, MB/s of Parquet staged, wall time, peak RSS, and the ratio to the ceiling.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import boto3  # type: ignore[import-untyped]
import pymysql

ROOT = Path(__file__).resolve().parent.parent
DB = "s3shift_bench"
S3 = os.environ.get("S3_ENDPOINT_URL", "http://127.0.0.1:5055")
ORDERS = """CREATE TABLE orders (
  id BIGINT NOT NULL PRIMARY KEY, customer_id INT NOT NULL, status VARCHAR(16) NOT NULL,
  amount DECIMAL(12,2) NOT NULL, currency CHAR(3) NOT NULL, created_at DATETIME(6) NOT NULL,
  updated_at TIMESTAMP(6) NOT NULL, note VARCHAR(200) NULL, quantity SMALLINT NOT NULL,
  weight DOUBLE NOT NULL, is_gift TINYINT(1) NOT NULL, ship_date DATE NULL)"""
FILL = """INSERT INTO orders SELECT seq, seq % 100000, ELT(1 + seq % 4, 'new','paid','shipped','done'),
  (seq % 100000) / 100, 'EUR', '2024-01-01' + INTERVAL seq SECOND, '2024-06-01' + INTERVAL seq SECOND,
  IF(seq % 3 = 0, NULL, CONCAT('note for order ', seq)), seq % 50, seq / 7, seq % 2,
  IF(seq % 5 = 0, NULL, '2024-01-01' + INTERVAL (seq % 365) DAY) FROM seq_1_to_{rows}"""


def prepare(rows: int) -> None:
    conn = pymysql.connect(host="127.0.0.1", user="root", autocommit=True)
    with conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE IF NOT EXISTS {DB}")
        cur.execute(f"USE {DB}")
        cur.execute(
            "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA=%s AND TABLE_NAME='orders'",
            (DB,),
        )
        if cur.fetchone()[0]:
            cur.execute("SELECT COUNT(*) FROM orders")
            if cur.fetchone()[0] == rows:
                return
            cur.execute("DROP TABLE orders")
        cur.execute(ORDERS)
        cur.execute(FILL.format(rows=rows))
    conn.close()


def config(directory: Path) -> None:
    (directory / "pipelines").mkdir(parents=True, exist_ok=True)
    conns = {
        "connections": {
            "sources": {"bench": {"host": "127.0.0.1", "port": 3306, "username": "root", "database": DB}},
            "targets": {
                "pg": {
                    "type": "postgres",
                    "host": "127.0.0.1",
                    "port": 5432,
                    "username": "postgres",
                    "database": "test",
                    "schema": "s3shift_bench",
                }
            },
            "s3": {"stage": {"bucket": "s3shift-bench", "prefix": "bench/", "endpoint_url": S3}},
        }
    }
    pipe = {
        "pipeline": {"name": "bench", "source": "bench", "target": "pg", "s3_config": "stage"},
        "tables": {},
    }
    (directory / "connections.yml").write_text(json.dumps(conns))
    (directory / "pipelines" / "bench.yml").write_text(json.dumps(pipe))
    s3 = boto3.client(
        "s3",
        endpoint_url=S3,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )
    if "s3shift-bench" not in [b["Name"] for b in s3.list_buckets().get("Buckets", [])]:
        s3.create_bucket(Bucket="s3shift-bench")


def timed(
    cmd: list[str], env: dict[str, str] | None = None, stdout: Any = subprocess.DEVNULL
) -> tuple[float, int, str]:
    """Wall seconds, peak RSS in MB (of the child, via wait4) and its stdout."""
    with tempfile.TemporaryFile() as out:
        start = time.perf_counter()
        proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env={**os.environ, **(env or {})},
            stdout=out if stdout is None else stdout,
            stderr=subprocess.DEVNULL,
        )
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        code = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text = out.read().decode()
    if code != 0:
        raise SystemExit(f"{cmd[0]} failed with exit code {code}: {text[-2000:]}")
    return wall, usage.ru_maxrss // 1024, text


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    prepare(args.rows)
    cfgdir = Path(tempfile.mkdtemp(prefix="s3shift-bench-"))
    config(cfgdir)
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    ceiling = ["mariadb", "--quick", "-B", "-h127.0.0.1", "-uroot", DB, "-e", "SELECT * FROM orders"]
    sync = [
        sys.executable,
        "-m",
        "src.cli.main",
        "--config-dir",
        str(cfgdir),
        "sync",
        "-p",
        "bench",
        "-t",
        f"{DB}.orders",
        "--json-output",
    ]
    runs: dict[str, list[tuple[float, int]]] = {
        "mariadb --quick (ceiling)": [],
        "s3shift full_sync -> PostgreSQL": [],
    }
    staged_mb: list[float] = []
    for _ in range(args.repeat):  # alternate the contenders: the machine is noisy
        wall, rss, _ = timed(ceiling)
        runs["mariadb --quick (ceiling)"].append((wall, rss))
        wall, rss, text = timed(sync, env, stdout=None)
        doc = json.loads(text)
        result = doc["table_results"][f"{DB}.orders"]
        assert result["status"] == "success" and result["rows_processed"] == args.rows, result
        staged_mb.append(result["bytes_written"] / 1e6)
        runs["s3shift full_sync -> PostgreSQL"].append((wall, rss))
    base = statistics.median(w for w, _ in runs["mariadb --quick (ceiling)"])
    print(f"rows={args.rows:,} repeat={args.repeat} cores={os.cpu_count()} (medians)")
    print(f"{'contender':34} {'wall s':>8} {'rows/s':>11} {'MB/s':>7} {'peak RSS MB':>12} {'x ceiling':>10}")
    for name, samples in runs.items():
        wall = statistics.median(w for w, _ in samples)
        rss = max(r for _, r in samples)
        mbs = statistics.median(staged_mb) / wall if "s3shift" in name else float("nan")
        print(f"{name:34} {wall:8.2f} {args.rows / wall:11,.0f} {mbs:7.1f} {rss:12d} {base / wall:10.2f}")


if __name__ == "__main__":
    main()
