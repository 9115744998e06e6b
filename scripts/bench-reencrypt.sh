#!/usr/bin/env bash
# Benchmark of key rotation (issue 12): N keys (default 1,000,000) uploaded through the HTTP
# API into a fresh database, then `autokey-api keys reencrypt` to a new encryption key while
# orders keep being created and paid (50/s) and fulfilled by a worker. The `rotation`
# scenario of autokey-bench: keys/s, the command's peak RSS, the orders served meanwhile
# and their pay -> fulfilled latency; appends a JSON line to bench-results/results.jsonl.
# Never part of the test suite.
# Usage: scripts/bench-reencrypt.sh [keys] [autokey-bench options, e.g. --rotation-order-rate 100]
# (BENCH_DATABASE_URL picks the server, else one provisioned like test.sh does)
set -euo pipefail
KEYS="${1:-1000000}"
shift || true
exec "$(dirname "$0")/bench.sh" rotation --keys "$KEYS" "$@"
