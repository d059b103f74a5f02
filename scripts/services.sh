#!/usr/bin/env bash
# Start the local services the demo and the tests need, on loopback only, and only what is missing
# (idempotent; a no-op when everything already answers):
#   MariaDB     127.0.0.1:3306  user root, no password
#   PostgreSQL  127.0.0.1:5432  user postgres (trust), database "test" (or $PG_DATABASE)
#   S3 (moto)   http://127.0.0.1:5055  via scripts/s3_server.sh (needs .venv: run scripts/setup.sh)
# Debian's mariadb-server / postgresql are installed (apt-get, needs root) only when absent.
# When the default logins fail on a server this script can reach as root, it grants them:
# root@127.0.0.1 with no password (MariaDB), trust for postgres on loopback (pg_hba.conf).
# Using servers of your own instead? Set S3SHIFT_SKIP_DB_SERVICES=1 and point MYSQL_HOST/PORT/
# USER/PASSWORD and PG_HOST/PORT/USER/PASSWORD/DATABASE (config/connections.yml) and the
# S3SHIFT_TEST_* variables (tests/conftest.py) at them.
# Env: S3SHIFT_SERVICE_TIMEOUT seconds to wait for each service (default 60).
# Everything this script prints goes to stderr.
set -euo pipefail
cd "$(dirname "$0")/.."

TIMEOUT="${S3SHIFT_SERVICE_TIMEOUT:-60}"
MY_USER="${MYSQL_USER:-root}"
MY_PASS="${MYSQL_PASSWORD:-}"
PG_DB="${PG_DATABASE:-test}"
APT_UPDATED=0

log() { echo "services: $*" >&2; }
die() { echo "services: ERROR: $*" >&2; exit 1; }
is_root() { [ "$(id -u)" = 0 ]; }

# True when something accepts TCP connections on 127.0.0.1:$1.
port_open() { timeout 3 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null; }

# wait_for SECONDS NAME HINT COMMAND...: retry COMMAND until it succeeds, or fail naming the service.
wait_for() {
  local limit="$1" name="$2" hint="$3" deadline=$((SECONDS + $1))
  shift 3
  until "$@"; do
    [ "$SECONDS" -lt "$deadline" ] || die "$name did not answer within ${limit}s; $hint"
    sleep 0.5
  done
}

# apt_install PACKAGE...: noninteractive install; services are not auto-started (we start them).
apt_install() {
  is_root || die "$* not installed and not running as root: install it (apt-get install $*) or start your own"
  command -v apt-get >/dev/null || die "$* not installed and apt-get is not available: install it yourself"
  local own_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d && own_policy=1
  fi
  if [ "$APT_UPDATED" = 0 ]; then
    log "apt-get update"
    DEBIAN_FRONTEND=noninteractive apt-get update -q </dev/null >&2
    APT_UPDATED=1
  fi
  log "installing $* (Debian packages)"
  local rc=0
  # A UTF-8 locale, so that a PostgreSQL cluster created by the package gets encoding UTF8.
  LANG=C.UTF-8 LC_ALL=C.UTF-8 DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -q --no-install-recommends "$@" </dev/null >&2 || rc=$?
  [ "$own_policy" = 0 ] || rm -f /usr/sbin/policy-rc.d
  [ "$rc" = 0 ] || die "apt-get install $* failed (exit $rc)"
}

# ---------------------------------------------------------------- MariaDB
mysql_login() { MYSQL_PWD="$MY_PASS" mariadb --protocol=tcp -h 127.0.0.1 -P 3306 -u "$MY_USER" -e 'SELECT 1' >/dev/null 2>&1 </dev/null; }

# The value of a [mysqld] option in the server's option files (empty if unset).
mysqld_option() { { my_print_defaults --mysqld 2>/dev/null || true; } | sed -n "s/^--$1=//p" | tail -n 1; }

mysql_start() {
  [ -x /usr/sbin/mariadbd ] || apt_install mariadb-server
  is_root || die "MariaDB is installed but not running on 127.0.0.1:3306; start it (needs root)"
  local datadir errlog
  datadir="$(mysqld_option datadir)"
  datadir="${datadir:-/var/lib/mysql}"
  errlog="$(mysqld_option 'log[-_]error')"
  if [ ! -d "$datadir/mysql" ]; then
    log "initialising the MariaDB data directory $datadir"
    mariadb-install-db --user=mysql --datadir="$datadir" --skip-test-db </dev/null >&2
  fi
  install -d -o mysql -g mysql -m 0755 /run/mysqld
  log "starting MariaDB"
  start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd -- --user=mysql
  wait_for "$TIMEOUT" "MariaDB (127.0.0.1:3306)" "see ${errlog:-its error log ($datadir/*.err)}" port_open 3306
}

# Let root in over TCP with no password (Debian's default is unix_socket only). Dev machines only.
mysql_grant_root() {
  local sql="CREATE USER IF NOT EXISTS 'root'@'127.0.0.1';
    ALTER USER 'root'@'127.0.0.1' IDENTIFIED VIA mysql_native_password USING PASSWORD('');
    GRANT ALL PRIVILEGES ON *.* TO 'root'@'127.0.0.1' WITH GRANT OPTION;
    ALTER USER 'root'@'localhost' IDENTIFIED VIA mysql_native_password USING PASSWORD('') OR unix_socket;"
  log "MariaDB: allowing root over TCP on loopback with no password (dev set-up)"
  mariadb --protocol=socket -u root -e "$sql" </dev/null >&2 || log "MariaDB: the grant failed (see above)"
}

ensure_mysql() {
  port_open 3306 || mysql_start
  command -v mariadb >/dev/null || { log "MariaDB answers on :3306 (no client here to check the login)"; return; }
  mysql_login || mysql_fix_login
  wait_for 10 "MariaDB login as $MY_USER over TCP" "check MYSQL_USER/MYSQL_PASSWORD" mysql_login
  log "MariaDB ready on 127.0.0.1:3306 (user $MY_USER)"
}

# Only the default account is ours to fix; a custom user/password is the user's to get right.
mysql_fix_login() {
  if [ "$MY_USER" = root ] && [ -z "$MY_PASS" ] && is_root &&
    mariadb --protocol=socket -u root -e 'SELECT 1' >/dev/null 2>&1 </dev/null; then
    mysql_grant_root
  fi
}

# ---------------------------------------------------------------- PostgreSQL
PG_USER_="${PG_USER:-postgres}"
pg_sql() { PGPASSWORD="${PG_PASSWORD:-}" psql -h 127.0.0.1 -p 5432 -U "$PG_USER_" -w -X -q -At "$@"; }
pg_login() { pg_sql -d postgres -c 'SELECT 1' </dev/null >/dev/null 2>&1; }

# The local cluster on port 5432 as "VERSION NAME" (empty if none).
pg_cluster() {
  command -v pg_lsclusters >/dev/null || return 0
  pg_lsclusters -h 2>/dev/null | awk '$3 == 5432 { print $1, $2; exit }'
}

pg_start() {
  if ! command -v pg_ctlcluster >/dev/null || ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
    apt_install postgresql
  fi
  is_root || die "PostgreSQL is installed but not running on 127.0.0.1:5432; start it (needs root)"
  local cluster version name=main
  cluster="$(pg_cluster)"
  if [ -z "$cluster" ]; then
    version="$(ls /usr/lib/postgresql | sort -V | tail -n 1)"
    [ ! -e "/etc/postgresql/$version/main" ] || name=s3shift
    log "creating PostgreSQL cluster $version/$name on port 5432"
    LANG=C.UTF-8 LC_ALL=C.UTF-8 pg_createcluster "$version" "$name" --port 5432 </dev/null >&2
    cluster="$version $name"
  fi
  log "starting PostgreSQL cluster ${cluster// //}"
  # shellcheck disable=SC2086 # "VERSION NAME" are two arguments
  pg_ctlcluster --skip-systemctl-redirect $cluster start </dev/null >&2 || true
  wait_for "$TIMEOUT" "PostgreSQL (127.0.0.1:5432)" "see /var/log/postgresql/" port_open 5432
}

# Trust the postgres user on loopback (first matching pg_hba line wins, so insert at the top).
pg_trust() {
  local cluster hba marker="# added by s3shift scripts/services.sh"
  cluster="$(pg_cluster)"
  [ -n "$cluster" ] || return 1
  hba="/etc/postgresql/${cluster// //}/pg_hba.conf"
  [ -w "$hba" ] || return 1
  if ! grep -qF "$marker" "$hba"; then
    log "PostgreSQL: trusting user postgres on loopback in $hba (dev set-up)"
    sed -i "1i $marker\nhost all postgres 127.0.0.1/32 trust\nhost all postgres ::1/128 trust" "$hba"
  fi
  # shellcheck disable=SC2086
  pg_ctlcluster --skip-systemctl-redirect $cluster reload </dev/null >&2
}

pg_fix_login() {
  if [ "$PG_USER_" = postgres ] && [ -z "${PG_PASSWORD:-}" ] && is_root; then
    pg_trust || true
  fi
}

ensure_pg() {
  port_open 5432 || pg_start
  command -v psql >/dev/null || { log "PostgreSQL answers on :5432 (no psql here to check the login)"; return; }
  pg_login || pg_fix_login
  wait_for 10 "PostgreSQL login as $PG_USER_ over TCP" "check PG_USER/PG_PASSWORD and pg_hba.conf" pg_login
  if [ -z "$(pg_sql -d postgres -v db="$PG_DB" <<<"SELECT 1 FROM pg_database WHERE datname = :'db'")" ]; then
    log "PostgreSQL: creating database $PG_DB"
    pg_sql -d postgres -v db="$PG_DB" <<<'CREATE DATABASE :"db" ENCODING '"'UTF8'"' TEMPLATE template0' ||
      pg_sql -d postgres -v db="$PG_DB" <<<'CREATE DATABASE :"db"'
  fi
  log "PostgreSQL ready on 127.0.0.1:5432 (user $PG_USER_, database $PG_DB)"
}

# ---------------------------------------------------------------- main
main() {
  if [ "${S3SHIFT_SKIP_DB_SERVICES:-0}" = 1 ]; then
    log "S3SHIFT_SKIP_DB_SERVICES=1: leaving MariaDB and PostgreSQL alone"
  else
    ensure_mysql
    ensure_pg
  fi
  [ -x .venv/bin/python ] || die "no .venv here: run scripts/setup.sh first (it creates .venv, then calls this script)"
  log "S3 (moto) ready at $(bash scripts/s3_server.sh)"
}

[ "${BASH_SOURCE[0]}" != "$0" ] || main "$@" # sourcing (for tests) defines the functions only
