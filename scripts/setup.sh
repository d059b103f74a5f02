#!/usr/bin/env bash
# One-time (and idempotent) set-up of a checkout: creates .venv with python3 if missing, installs
# s3shift editable with its dev extras (skipped while pyproject.toml and the venv are unchanged:
# the stamp is .s3shift/setup.stamp), then starts the local services (scripts/services.sh).
# Env: PYTHON  the interpreter for a new venv (default python3; needs >= 3.11).
# Everything this script prints goes to stderr.
set -euo pipefail
cd "$(dirname "$0")/.."
exec 1>&2 # stdout belongs to callers (demo.sh prints JSON); our noise goes to stderr

log() { echo "setup: $*"; }
die() {
  echo "setup: ERROR: $*"
  exit 1
}

PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  command -v "$PYTHON" >/dev/null || die "$PYTHON not found; install Python 3.11+ or set PYTHON=/path/to/python3.11"
  "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
    die "$PYTHON is $("$PYTHON" -V 2>&1); s3shift needs Python 3.11+ (set PYTHON=...)"
  log "creating .venv with $("$PYTHON" -V 2>&1)"
  rm -rf .venv
  if ! "$PYTHON" -m venv .venv; then
    # Debian's own python3 ships venv/ensurepip separately.
    [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null ||
      die "'$PYTHON -m venv' failed; on Debian install python3-venv (apt-get install python3-venv)"
    log "installing python3-venv (Debian package)"
    rm -rf .venv
    DEBIAN_FRONTEND=noninteractive apt-get update -q </dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends python3-venv </dev/null
    "$PYTHON" -m venv .venv || die "'$PYTHON -m venv' failed even with python3-venv installed"
  fi
fi

# The stamp covers the dependency list and the venv itself (a recreated venv has a new pyvenv.cfg).
stamp_now="$(cat pyproject.toml .venv/pyvenv.cfg | sha256sum | cut -d' ' -f1) $(stat -c %Y .venv/pyvenv.cfg)"
mkdir -p .s3shift
if [ "$(cat .s3shift/setup.stamp 2>/dev/null)" != "$stamp_now" ]; then
  log "installing s3shift and its dev dependencies into .venv (pip, quiet)"
  PIP_DISABLE_PIP_VERSION_CHECK=1 .venv/bin/python -m pip install -q --no-input -e '.[dev]' </dev/null ||
    die "pip install -e '.[dev]' failed (see above); is PyPI reachable?"
  echo "$stamp_now" >.s3shift/setup.stamp
else
  log ".venv is up to date"
fi
# The editable install leaves src/ uncompiled, and with PYTHONDONTWRITEBYTECODE set every run would
# compile it again (~50 ms of each start); stale files are recompiled, in memory, as usual.
.venv/bin/python -m compileall -q src >/dev/null || log "warning: compileall src failed (runs still work)"

bash scripts/services.sh
