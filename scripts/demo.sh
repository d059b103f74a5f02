#!/usr/bin/env bash
# The demo, in one command:  bash scripts/demo.sh
# 1. scripts/setup.sh: .venv + dependencies, then MariaDB, PostgreSQL and a moto S3 server on loopback.
# 2. scripts/demo_data.py: (re)creates MariaDB database "shop" (customers 5,000, orders 20,000,
#    products 500 rows; deterministic).
# 3. Creates the demo bucket ($S3_BUCKET, default s3shift-demo) on the moto server if missing.
# 4. Runs the sync of config/pipelines/demo.yml (MariaDB -> S3 Parquet -> PostgreSQL schema
#    "analytics"); its JSON report is the only thing printed on stdout.
# 5. Prints a row-count check (MariaDB vs PostgreSQL) on stderr.
# Exit code: the sync's (0 success, 1 partial/failed); 1 as well if the sync said success but the
# row counts differ. Everything except the JSON goes to stderr.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python

bash scripts/setup.sh >&2
"$PY" scripts/demo_data.py >&2

# moto accepts any credentials; these fixed ones keep the demo away from real AWS accounts.
S3_ENDPOINT_URL="$(bash scripts/s3_server.sh)"
export S3_ENDPOINT_URL
export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_DEFAULT_REGION=us-east-1
export S3_BUCKET="${S3_BUCKET:-s3shift-demo}"
unset AWS_PROFILE AWS_SESSION_TOKEN
"$PY" - >&2 <<'PYEOF'
import os

import boto3
from botocore.exceptions import ClientError

s3 = boto3.client("s3", endpoint_url=os.environ["S3_ENDPOINT_URL"])
bucket = os.environ["S3_BUCKET"]
try:
    s3.head_bucket(Bucket=bucket)
    print(f"demo: bucket {bucket} exists")
except ClientError:
    s3.create_bucket(Bucket=bucket)
    print(f"demo: created bucket {bucket}")
PYEOF

echo "demo: syncing shop.customers, shop.orders, shop.products (pipeline demo) ..." >&2
rc=0
"$PY" -m src.cli.main sync -p demo -t shop.customers -t shop.orders -t shop.products --json-output || rc=$?
echo "demo: sync exit code $rc" >&2

check=0
"$PY" scripts/demo_data.py --check || check=$?
if [ "$rc" = 0 ] && [ "$check" != 0 ]; then
  echo "demo: ERROR: the sync reported success but the row counts differ" >&2
  exit 1
fi
exit "$rc"
