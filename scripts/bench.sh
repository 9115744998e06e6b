#!/usr/bin/env bash
# Runs the benchmarks (never part of the test suite) against a real PostgreSQL: the one
# BENCH_DATABASE_URL names, else one provisioned like test.sh does.
# Usage: scripts/bench.sh [scenario|all] [autokey-bench options]
# (scenarios: drain, steady, http, footprint, ingest, rotation, and the SQL-seeded fulfill, limit;
# default all; `scripts/bench.sh all --help` lists the options and sizes).
# Results: tables on stdout, one dated JSON line per scenario in bench-results/results.jsonl,
# child process logs in bench-results/tmp/ (git-ignored).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

if [ -n "${BENCH_DATABASE_URL:-}" ]; then
  SERVER_URL="$BENCH_DATABASE_URL"
else
  ensure_postgres
  export BENCH_DATABASE_URL="$SERVER_URL"
fi
# The http scenario measures the HTTP stack's limit with wrk.
command -v wrk >/dev/null || apt_install wrk
# apalis-postgres checks its own queries at build time; it must use its offline data.
export SQLX_OFFLINE=true

# Leftovers of interrupted runs.
drop_databases_with_prefix autokey_bench_

log "building release binaries"
cargo build --release --bins --locked -p autokey-api -p autokey-worker -p autokey-bench

log "running the benchmarks"
scenario="${1:-all}"
shift || true
exec target/release/autokey-bench "$scenario" "$@"
