#!/usr/bin/env bash
# Runs the whole test suite against a real PostgreSQL (provisioned like dev.sh does).
# Every test creates its own database; leftovers of earlier runs are dropped first.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

ensure_postgres
export AUTOKEY_TEST_DATABASE_URL="$SERVER_URL"
# apalis-postgres checks its own queries at build time; it must use its offline data.
export SQLX_OFFLINE=true

drop_databases_with_prefix autokey_test_

# Outside tools of the suite (scripts/test-deps.sh): Debian's chromium and a Python venv
# (.venv/: Playwright, schemathesis, openapi-spec-validator, openapi-python-client,
# standardwebhooks), Node with tests/clients/node_modules (openapi-typescript, openapi-fetch,
# typescript) and tests/oidc/node_modules (oidc-provider), cargo-audit and cargo-deny.
ensure_test_tools

log "building"
# The CLI tests run the real binaries (target/debug/autokey-api and autokey-worker).
cargo build --workspace --bins --locked
cargo test --workspace --locked --no-run

log "running the test suite"
# Tests mostly wait on the database, so run more of them at once than there are cores.
# The suite takes 6-15 minutes here; a test that hangs fails it after TEST_TIMEOUT
# (default 40 minutes) instead of running into CI's own limit.
timeout --foreground "${TEST_TIMEOUT:-40m}" \
  cargo test --workspace --locked -- --test-threads="${TEST_THREADS:-6}" "$@"

# The dependency audit (scripts/audit.sh): RustSec advisories and deny.toml's policy; it
# fails when it cannot run (no advisory database anywhere).
log "auditing Cargo.lock"
./scripts/audit.sh

# The fault suite (RELIABILITY.md): the release binaries under worker kills, a database
# restart, terminated connections and a rolling api restart, on a private PostgreSQL
# cluster of its own. FAULTS_SECONDS=0 skips it.
if [ "${FAULTS_SECONDS:-60}" != 0 ]; then
  log "fault suite (${FAULTS_SECONDS:-60} s)"
  ./scripts/faults.sh "${FAULTS_SECONDS:-60}"
fi
