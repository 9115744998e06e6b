#!/usr/bin/env bash
# The fault suite (RELIABILITY.md): the release binaries as child processes — an api and 3
# workers — under concurrent orders, payments, cancels and uploads, while workers are
# SIGKILLed every 1-3 s, the api's database connections are terminated, the database is
# stopped and started, and the api is replaced by a rolling restart; then checks that no
# order, key or payment was lost or doubled. Exits non-zero on any violation.
#
# Usage: scripts/faults.sh [seconds] [autokey-faults options]
#   scripts/faults.sh 60                      # what ./scripts/test.sh runs
#   scripts/faults.sh --orders 100000         # until 100k orders are placed
#   scripts/faults.sh --orders 100000 --no-faults   # the same load without faults
#
# It never touches a shared PostgreSQL: it creates its own cluster (initdb) in a temporary
# directory on a free port from 54339 up, stops and starts that one, and removes it at the
# end, also on failure or Ctrl-C. Process logs are kept in target/faults-logs/ when the
# run fails. FAULTS_NO_BUILD=1 skips the release build.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

args=()
if [ $# -gt 0 ] && [[ "$1" =~ ^[0-9]+$ ]]; then
  args+=(--seconds "$1")
  shift
fi
args+=("$@")

if [ "${FAULTS_NO_BUILD:-}" != 1 ]; then
  log "building release binaries"
  SQLX_OFFLINE=true cargo build --release --bins --locked
fi

if ! bin=$(pg_bin); then
  log "PostgreSQL is not installed: installing Debian's postgresql (for initdb and pg_ctl)"
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq postgresql >/dev/null
  bin=$(pg_bin) || { echo "PostgreSQL installation failed" >&2; exit 1; }
fi

run_dir=$(mktemp -d "${TMPDIR:-/tmp}/autokey-faults.XXXXXX")
chmod 755 "$run_dir"
pgdata="$run_dir/pgdata"
mkdir -p "$pgdata" "$run_dir/logs"
[ "$(id -u)" = 0 ] && chown postgres "$pgdata" "$run_dir/logs"

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  # Whatever the run started and left behind (it kills its children itself, unless it was
  # killed): only pids it recorded, and only if they are still our binaries.
  if [ -f "$run_dir/pids" ]; then
    while read -r pid; do
      if [ -n "$pid" ] && grep -qs autokey- "/proc/$pid/cmdline"; then
        kill -KILL "$pid" 2>/dev/null || true
      fi
    done <"$run_dir/pids"
  fi
  if [ -f "$pgdata/postmaster.pid" ]; then
    as_postgres "$bin/pg_ctl" -D "$pgdata" -m immediate -w stop >/dev/null 2>&1 || true
  fi
  if [ "$rc" != 0 ] && [ -d "$run_dir/logs" ]; then
    rm -rf "$ROOT/target/faults-logs"
    mkdir -p "$ROOT/target"
    cp -r "$run_dir/logs" "$ROOT/target/faults-logs" 2>/dev/null || true
    echo "faults: process logs kept in target/faults-logs/" >&2
  fi
  rm -rf "$run_dir"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port=54339
while tcp_open 127.0.0.1 "$port"; do port=$((port + 1)); done

log "private PostgreSQL cluster on port $port (in $run_dir)"
as_postgres "$bin/initdb" -D "$pgdata" -U postgres --auth=trust >/dev/null
cat >>"$pgdata/postgresql.conf" <<EOF
port = $port
listen_addresses = '127.0.0.1'
unix_socket_directories = '$pgdata'
max_connections = 400
EOF
as_postgres "$bin/pg_ctl" -D "$pgdata" -l "$run_dir/logs/postgres.log" -w start >/dev/null

log "fault run"
"$ROOT/target/release/autokey-faults" \
  --server-url "postgres://postgres@127.0.0.1:$port/postgres" \
  --pgdata "$pgdata" --pg-bin "$bin" --bin-dir "$ROOT/target/release" --run-dir "$run_dir" \
  "${args[@]}"
