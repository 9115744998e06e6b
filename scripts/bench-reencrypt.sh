#!/usr/bin/env bash
# Benchmark of key rotation (issue 12): N keys (default 1,000,000) uploaded through the HTTP
# API into a fresh database, then `autokey-api keys reencrypt` to a new encryption key while
# storefront orders keep being created, paid and fulfilled by a worker. Reports keys/s, the
# command's peak RSS, and the orders served meanwhile; appends a JSON line to
# bench-results/results.jsonl. Never part of the test suite.
# Usage: scripts/bench-reencrypt.sh [keys]   (BENCH_DATABASE_URL or DATABASE_URL picks the server)
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

KEYS="${1:-1000000}"
[ -n "${BENCH_DATABASE_URL:-}" ] && export DATABASE_URL="$BENCH_DATABASE_URL"
ensure_postgres
export SQLX_OFFLINE=true
command -v curl >/dev/null || apt_install curl
[ -x /usr/bin/time ] || apt_install time

log "building release binaries"
cargo build --release --locked -p autokey-api -p autokey-worker
API=target/release/autokey-api
WORKER=target/release/autokey-worker

work="bench-results/tmp/reencrypt-$$"
mkdir -p "$work"
db="autokey_bench_reenc_$$"
server_sql "CREATE DATABASE $db"
export DATABASE_URL
DATABASE_URL="$(database_url "$db")"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  server_sql "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null || true
}
trap cleanup EXIT

secret() { "$API" keygen | sed -n "s/^$1=//p"; }
OLD="$(secret ENCRYPTION_KEY)"
NEW="$(secret ENCRYPTION_KEY)"
FP="$(secret FINGERPRINT_KEY)"
export FINGERPRINT_KEY="$FP" ENCRYPTION_KEY="$OLD" ENCRYPTION_KEY_ID=k1 SIMULATED_PAYMENTS=true
"$API" migrate 2>/dev/null
PORT=$((20000 + RANDOM % 20000))
PORT=$PORT RATE_LIMIT_PER_SECOND=100000 RATE_LIMIT_BURST=100000 "$API" serve >"$work/api.log" 2>&1 &
pids+=($!)
"$WORKER" >"$work/worker.log" 2>&1 &
pids+=($!)
BASE="http://127.0.0.1:$PORT"
for _ in $(seq 100); do curl -fs "$BASE/healthz" >/dev/null && break; sleep 0.1; done

SELLER="$("$API" token create --role seller 2>/dev/null)"
STORE="$("$API" token create --role storefront 2>/dev/null)"
json() { python3 -c "import json,sys; print(json.load(sys.stdin)$1)"; }
POOL="$(curl -fs -H "Authorization: Bearer $SELLER" -H 'content-type: application/json' \
  -d '{"name":"rotation bench"}' "$BASE/key-pools" | json "['id']")"

log "uploading $KEYS keys through POST /key-pools/:id/keys/upload"
python3 -c "
import sys
for i in range($KEYS): sys.stdout.write(f'REENC-{i:08d}-AAAA-BBBB\n')" >"$work/keys.txt"
start=$(date +%s.%N)
curl -fs -H "Authorization: Bearer $SELLER" -H 'content-type: text/plain' \
  --data-binary @"$work/keys.txt" "$BASE/key-pools/$POOL/keys/upload" | json "['added']" >"$work/added"
rm -f "$work/keys.txt"
upload_s=$(python3 -c "print(round($(date +%s.%N) - $start, 1))")
log "uploaded $(cat "$work/added") keys in ${upload_s}s"
OFFER="$(curl -fs -H "Authorization: Bearer $SELLER" -H 'content-type: application/json' \
  -d "{\"title\":\"bench\",\"priceCents\":100,\"currency\":\"EUR\",\"deliveryType\":\"AUTO_KEY\",\"keyPoolId\":\"$POOL\"}" \
  "$BASE/offers/draft" | json "['id']")"
curl -fs -H "Authorization: Bearer $SELLER" -H 'content-type: application/json' \
  -d "{\"offerId\":\"$OFFER\"}" "$BASE/offers/publish" >/dev/null

# Orders keep flowing during the rotation: 4 storefront clients create and pay in a loop.
# (No interpreter per order: the load is the service's, not the load generator's.)
order_loop() {
  while [ ! -e "$work/stop" ]; do
    id="$(curl -fs -H "Authorization: Bearer $STORE" -H 'content-type: application/json' \
      -d "{\"offerId\":\"$OFFER\",\"buyerId\":\"$(cat /proc/sys/kernel/random/uuid)\"}" \
      "$BASE/orders" | sed -n 's/^{"id":"\([0-9a-f-]*\)".*/\1/p')" || continue
    [ -n "$id" ] || continue
    curl -fs -X POST -H "Authorization: Bearer $STORE" "$BASE/orders/$id/pay" >/dev/null || true
  done
}
for _ in 1 2 3 4; do order_loop & pids+=($!); done
sleep 2

log "re-encrypting to k2 with orders flowing"
before=$(psql "$DATABASE_URL" -qAtc "SELECT count(*) FROM orders WHERE status = 'FULFILLED'")
start=$(date +%s.%N)
ENCRYPTION_KEY="$NEW" ENCRYPTION_KEY_ID=k2 ENCRYPTION_KEYS_RETIRED="k1:$OLD" \
  /usr/bin/time -f '%M' -o "$work/rss_kb" "$API" keys reencrypt 2>"$work/reencrypt.log"
elapsed=$(python3 -c "print($(date +%s.%N) - $start)")
touch "$work/stop"
after=$(psql "$DATABASE_URL" -qAtc "SELECT count(*) FROM orders WHERE status = 'FULFILLED'")
left=$(psql "$DATABASE_URL" -qAtc "SELECT count(*) FROM keys WHERE enc_key_id <> 'k2'")
rss_mb=$(python3 -c "print(round($(cat "$work/rss_kb") / 1024, 1))")
rate=$(python3 -c "print(round($KEYS / $elapsed))")
tail -n 3 "$work/reencrypt.log"
cat <<EOF

| measure | value |
|---|---|
| keys re-encrypted | $KEYS (left under k1: $left) |
| time | $(python3 -c "print(round($elapsed, 1))") s |
| keys/s | $rate (target >= 50,000) |
| peak RSS of \`keys reencrypt\` | $rss_mb MB |
| orders fulfilled meanwhile | $((after - before)) |
| upload of the keys (HTTP) | ${upload_s} s |
| machine | $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg) |
EOF
printf '{"date":"%s","commit":"%s","scenario":"reencrypt","keys":%s,"seconds":%s,"keys_per_s":%s,"rss_mb":%s,"orders_fulfilled_meanwhile":%s,"left":%s}\n' \
  "$(date -u +%FT%TZ)" "$(git rev-parse --short HEAD)" "$KEYS" "$elapsed" "$rate" "$rss_mb" \
  "$((after - before))" "$left" >>bench-results/results.jsonl
