"""dlt contender (runs in the peers' venv): sql_database source -> filesystem destination on S3, Parquet.

    benchmarks/.venv-peers/bin/python benchmarks/peer_dlt.py --backend connectorx|pyarrow \\
        --mysql mysql+pymysql://root@127.0.0.1:3306/DB --tables t1,t2 --bucket-url s3://B/P --endpoint URL

Prints `{"rows": N}` (rows dlt reports it normalized for the data tables). dlt's pipeline folder is a
fresh temporary directory per run, so no state carries over between runs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

import dlt  # type: ignore[import-not-found,unused-ignore]
from dlt.sources.sql_database import sql_database  # type: ignore[import-not-found,unused-ignore]


def main() -> None:
    ap = argparse.ArgumentParser()
    for name in ("backend", "mysql", "tables", "bucket-url", "endpoint"):
        ap.add_argument(f"--{name}", required=True)
    args = ap.parse_args()
    # dlt's extract recurses per resource: with 1,000 tables in one source it raised "maximum recursion
    # depth exceeded" at Python's default limit of 1,000 (runs K and L). A user would raise the limit.
    sys.setrecursionlimit(20_000)
    prefix = "DESTINATION__FILESYSTEM__CREDENTIALS__"
    os.environ[prefix + "AWS_ACCESS_KEY_ID"] = "testing"
    os.environ[prefix + "AWS_SECRET_ACCESS_KEY"] = "testing"
    os.environ[prefix + "ENDPOINT_URL"] = args.endpoint
    os.environ[prefix + "REGION_NAME"] = "us-east-1"
    os.environ["RUNTIME__LOG_LEVEL"] = "WARNING"
    with tempfile.TemporaryDirectory(prefix="dlt-bench-") as workdir:
        pipeline = dlt.pipeline(
            pipeline_name="bench",
            pipelines_dir=workdir,
            destination=dlt.destinations.filesystem(bucket_url=args.bucket_url),
            dataset_name="bench",
            progress=None,
        )
        source = sql_database(
            credentials=args.mysql, table_names=args.tables.split(","), backend=args.backend
        )
        pipeline.run(source, loader_file_format="parquet")
        counts = pipeline.last_trace.last_normalize_info.row_counts
    rows = sum(n for table, n in counts.items() if not table.startswith("_dlt"))
    print(json.dumps({"rows": rows}))


if __name__ == "__main__":
    main()
