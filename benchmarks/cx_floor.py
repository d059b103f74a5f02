"""A diagnostic floor, not a peer: the MySQL read alone, as s3shift's fast path does it.

connectorx reads each table's primary-key ranges (``--range-rows`` keys each) into Arrow in
``--threads`` connections (s3shift's default for one big table: 3), and throws the Arrow tables away:
no casts, no Parquet, no S3, no interpreter start-up beyond Python's and connectorx's. On a box where
MariaDB shares the cores, this is the fastest any connectorx-based pipeline can read the workload, so
it bounds the ratio s3shift can reach against a peer (printed under the targets).

    python benchmarks/cx_floor.py --database DB --tables t1,t2 [--host H --port P --threads 3]
"""

from __future__ import annotations

import argparse
import json
import threading
from collections import deque

import connectorx


def _ranges(url: str, table: str, step: int) -> list[str]:
    sql = f"SELECT MIN(id) AS lo, MAX(id) AS hi FROM `{table}`"
    bounds = connectorx.read_sql(url, sql, return_type="arrow")
    lo, hi = bounds.column("lo")[0].as_py(), bounds.column("hi")[0].as_py()
    if lo is None:
        return []
    where = "SELECT * FROM `{}` WHERE id >= {} AND id < {}"
    return [where.format(table, start, start + step) for start in range(lo, hi + 1, step)]


def main(args: argparse.Namespace) -> None:
    url = f"mysql://{args.user}@{args.host}:{args.port}/{args.database}"
    queries: deque[str] = deque()
    for table in args.tables.split(","):
        queries.extend(_ranges(url, table, args.range_rows))
    rows = [0]
    lock = threading.Lock()
    failures: list[BaseException] = []

    def worker() -> None:
        while True:
            with lock:
                if not queries or failures:
                    return
                sql = queries.popleft()
            try:
                got = connectorx.read_sql(url, sql, return_type="arrow").num_rows
            except BaseException as exc:  # connectorx panics are BaseExceptions
                with lock:
                    failures.append(exc)
                return
            with lock:
                rows[0] += got

    threads = [threading.Thread(target=worker) for _ in range(args.threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failures:
        raise SystemExit(f"cx-floor: {failures[0]!r}")
    print(json.dumps({"rows": rows[0]}))


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--database", required=True)
    ap.add_argument("--tables", required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=3306)
    ap.add_argument("--user", default="root")
    ap.add_argument("--threads", type=int, default=3)
    ap.add_argument("--range-rows", type=int, default=128_000)
    main(ap.parse_args())
