#!/usr/bin/env bash
# Start a moto S3 server on loopback (idempotent) and print its endpoint URL on stdout.
# Usage: scripts/s3_server.sh [PORT]         start (or find) the server; PORT defaults to
#                                            $S3SHIFT_S3_PORT, else 5055
#        scripts/s3_server.sh --stop [PORT]  stop the server this script started on PORT
# Uses the repo's venv (.venv, created by scripts/setup.sh). moto keeps buckets in memory only:
# they are gone when the server stops. Pid and log: .s3shift/moto-PORT.pid, .s3shift/moto-PORT.log.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
[ -x "$PY" ] || { echo "s3_server: no .venv here; run scripts/setup.sh first" >&2; exit 1; }

stop=0
if [ "${1:-}" = --stop ]; then
  stop=1
  shift
fi
port="${1:-${S3SHIFT_S3_PORT:-5055}}"
url="http://127.0.0.1:${port}"
pidfile=".s3shift/moto-${port}.pid"
logfile=".s3shift/moto-${port}.log"

if [ "$stop" = 1 ]; then
  if [ -f "$pidfile" ] && kill "$(cat "$pidfile")" 2>/dev/null; then
    echo "s3_server: stopped the moto server on port $port (pid $(cat "$pidfile"))" >&2
  else
    echo "s3_server: no moto server started by this script is running on port $port" >&2
  fi
  rm -f "$pidfile"
  exit 0
fi

# True when a moto server answers at $url (its /moto-api/ page exists only on moto).
moto_up() {
  "$PY" - "$url" <<'PYEOF' 2>/dev/null
import sys, urllib.request
with urllib.request.urlopen(sys.argv[1] + "/moto-api/", timeout=2):
    pass
PYEOF
}

if moto_up; then
  echo "$url"
  exit 0
fi
mkdir -p .s3shift
nohup "$PY" -m moto.server -H 127.0.0.1 -p "$port" </dev/null >"$logfile" 2>&1 &
pid=$!
echo "$pid" >"$pidfile"
for _ in $(seq 1 300); do
  if moto_up; then
    echo "$url"
    exit 0
  fi
  if ! kill -0 "$pid" 2>/dev/null; then
    echo "s3_server: moto exited at start on ${url} (port in use?); last lines of $logfile:" >&2
    tail -n 5 "$logfile" >&2
    rm -f "$pidfile"
    exit 1
  fi
  sleep 0.1
done
echo "s3_server: moto did not answer on ${url} within 30s; see $logfile" >&2
exit 1
