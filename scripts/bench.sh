#!/usr/bin/env bash
# Runs the benchmarks (never part of the test suite) against a real PostgreSQL, provisioned
# like test.sh does. Usage: scripts/bench.sh [scenario|all] [autokey-bench options]
# (scenarios: fulfill, limit, latency, intake, ingest, footprint; default all).
# Results: tables on stdout, one dated JSON line per scenario in bench-results/results.jsonl,
# child process logs in bench-results/tmp/ (git-ignored).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

ensure_postgres
export BENCH_DATABASE_URL="$SERVER_URL"
# apalis-postgres checks its own queries at build time; it must use its offline data.
export SQLX_OFFLINE=true

# Leftovers of interrupted runs.
drop_databases_with_prefix autokey_bench_

log "building release binaries"
cargo build --release --bins --locked

log "running the benchmarks"
scenario="${1:-all}"
shift || true
exec target/release/autokey-bench "$scenario" "$@"
