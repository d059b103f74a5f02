#!/usr/bin/env bash
# Start a moto S3 server on loopback (idempotent). Usage: scripts/s3_server.sh [PORT]
# Prints the endpoint URL. Uses the repo's venv (.venv) created by scripts/setup.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
port="${1:-${S3SHIFT_S3_PORT:-5055}}"
url="http://127.0.0.1:${port}"
if curl -fsS -o /dev/null "${url}/moto-api/" 2>/dev/null; then
  echo "$url"; exit 0
fi
mkdir -p .s3shift
nohup .venv/bin/python -m moto.server -H 127.0.0.1 -p "$port" >.s3shift/moto.log 2>&1 &
echo $! > .s3shift/moto.pid
for _ in $(seq 1 100); do
  if curl -fsS -o /dev/null "${url}/moto-api/" 2>/dev/null; then echo "$url"; exit 0; fi
  sleep 0.1
done
echo "s3_server: moto did not start on ${url}; see .s3shift/moto.log" >&2
exit 1
