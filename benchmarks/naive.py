"""The naive baseline: one process, one connection, one table after another.

asyncmy SSCursor + fetchmany -> per-column Arrow arrays with explicit types -> pq.ParquetWriter into a
temporary file -> one boto3 upload (multipart above 8 MB). No concurrency, no overlap of read and write.

    python benchmarks/naive.py --database DB --tables t1,t2 --bucket B --prefix P --endpoint URL
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
from typing import Any

import asyncmy
import boto3  # type: ignore[import-untyped]
import pyarrow as pa
import pyarrow.parquet as pq
from asyncmy.cursors import SSCursor

BATCH = 50_000
TYPES: dict[str, Any] = {
    "bigint": pa.int64(),
    "int": pa.int32(),
    "smallint": pa.int16(),
    "tinyint": pa.int16(),
    "double": pa.float64(),
    "varchar": pa.string(),
    "char": pa.string(),
    "date": pa.date32(),
    "datetime": pa.timestamp("us"),
    "timestamp": pa.timestamp("us", tz="UTC"),
}


async def arrow_schema(conn: Any, database: str, table: str) -> pa.Schema:
    sql = (
        "SELECT COLUMN_NAME, DATA_TYPE, NUMERIC_PRECISION, NUMERIC_SCALE FROM information_schema.COLUMNS"
        " WHERE TABLE_SCHEMA=%s AND TABLE_NAME=%s ORDER BY ORDINAL_POSITION"
    )
    async with conn.cursor() as cur:
        await cur.execute(sql, (database, table))
        cols = await cur.fetchall()
    fields = [
        pa.field(name, pa.decimal128(int(p), int(s)) if kind == "decimal" else TYPES[kind])
        for name, kind, p, s in cols
    ]
    return pa.schema(fields)


async def dump(conn: Any, database: str, table: str, path: str) -> int:
    schema = await arrow_schema(conn, database, table)
    rows = 0
    with pq.ParquetWriter(path, schema, compression="zstd") as writer:
        async with conn.cursor(SSCursor) as cur:
            await cur.execute(f"SELECT * FROM `{database}`.`{table}`")
            while batch := await cur.fetchmany(BATCH):
                columns = list(zip(*batch, strict=True))
                arrays = [pa.array(col, type=f.type) for col, f in zip(columns, schema, strict=True)]
                writer.write_batch(pa.record_batch(arrays, schema=schema))
                rows += len(batch)
    return rows


async def main(args: argparse.Namespace) -> None:
    conn = await asyncmy.connect(host=args.host, port=args.port, user=args.user, password="")
    await (await conn.cursor()).execute("SET time_zone = '+00:00'")
    s3 = boto3.client("s3", endpoint_url=args.endpoint, region_name="us-east-1")
    total = 0
    for table in args.tables.split(","):
        with tempfile.NamedTemporaryFile(suffix=".parquet") as tmp:
            total += await dump(conn, args.database, table, tmp.name)
            s3.upload_file(tmp.name, args.bucket, f"{args.prefix}{table}.parquet")
    conn.close()
    print(json.dumps({"rows": total}))


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    for name in ("database", "tables", "bucket", "prefix", "endpoint"):
        ap.add_argument(f"--{name}", required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=3306)
    ap.add_argument("--user", default="root")
    asyncio.run(main(ap.parse_args()))
