#!/usr/bin/env bash
# Brings autokey up on this machine: PostgreSQL (found or provisioned), a .env with
# fresh secrets, migrations, then the API and a worker in the background.
#   ./scripts/dev.sh        start (or restart) everything and print how to use it
#   ./scripts/dev.sh stop   stop the API and the worker
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"
RUN="$ROOT/.run"
mkdir -p "$RUN"

stop() {
  for p in api worker; do
    if [ -f "$RUN/$p.pid" ] && kill -0 "$(cat "$RUN/$p.pid")" 2>/dev/null; then
      kill "$(cat "$RUN/$p.pid")" 2>/dev/null || true
      for _ in $(seq 50); do kill -0 "$(cat "$RUN/$p.pid")" 2>/dev/null || break; sleep 0.2; done
    fi
    rm -f "$RUN/$p.pid"
  done
}

if [ "${1:-}" = stop ]; then stop; log "stopped"; exit 0; fi

export SQLX_OFFLINE=true
log "building autokey (first build takes a few minutes)"
cargo build --locked --bins -q
BIN="$ROOT/target/debug"

if [ -f .env ] && grep -q '^DATABASE_URL=' .env; then
  set -a; source .env; set +a
  ensure_postgres
else
  ensure_postgres
  server_sql "SELECT 1 FROM pg_database WHERE datname = 'autokey'" | grep -q 1 \
    || server_sql "CREATE DATABASE autokey"
  if [ -n "${DATABASE_URL:-}" ]; then DB_URL="$DATABASE_URL"; else DB_URL="$(database_url autokey)"; fi
  log "writing .env with fresh secrets"
  { echo "DATABASE_URL=$DB_URL"; echo "PORT=${PORT:-4000}"
    echo "# Development only: POST /orders/:id/pay pays without a payment provider."
    echo "SIMULATED_PAYMENTS=true"
    "$BIN/autokey-api" keygen; } > .env
  chmod 600 .env
  set -a; source .env; set +a
fi

"$BIN/autokey-api" migrate 2>/dev/null
# Development: simulated payments on unless the .env or the caller says otherwise.
export SIMULATED_PAYMENTS="${SIMULATED_PAYMENTS:-true}"
stop
nohup "$BIN/autokey-api" serve >"$RUN/api.log" 2>&1 & echo $! >"$RUN/api.pid"
nohup "$BIN/autokey-worker" >"$RUN/worker.log" 2>&1 & echo $! >"$RUN/worker.pid"

URL="http://127.0.0.1:${PORT:-4000}"
for _ in $(seq 100); do
  curl -fsS "$URL/readyz" >/dev/null 2>&1 && break
  kill -0 "$(cat "$RUN/api.pid")" 2>/dev/null || { cat "$RUN/api.log" >&2; exit 1; }
  sleep 0.2
done
curl -fsS "$URL/readyz" >/dev/null || { echo "the API did not become ready; see .run/api.log" >&2; exit 1; }

SELLER=$("$BIN/autokey-api" token create --role seller 2>/dev/null)
STOREFRONT=$("$BIN/autokey-api" token create --role storefront 2>/dev/null)
cat <<TXT

autokey is up (logs: .run/api.log, .run/worker.log; stop: ./scripts/dev.sh stop)

  API:             $URL
  API docs:        $URL/docs
  Seller console:  $URL/seller
  Readiness:       $URL/readyz  (200)

  Seller token:     $SELLER
  Storefront token: $STOREFRONT

Try it:
  export SELLER=$SELLER STOREFRONT=$STOREFRONT
  curl -s -X POST $URL/key-pools -H "Authorization: Bearer \$SELLER" -H 'content-type: application/json' -d '{"name":"demo"}'
  # then: upload keys, publish an offer, order, pay and fulfill; see README.md.
TXT
