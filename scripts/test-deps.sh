#!/usr/bin/env bash
# Prepares every outside tool of the test suite (./scripts/test.sh runs this too):
# Debian's chromium, the Python venv .venv/ (tests/python-requirements.txt), Node and
# tests/clients/node_modules/ and tests/oidc/node_modules/ (npm ci), cargo-audit and
# cargo-deny. Idempotent; instant when all are there. Handy before running one of the tests
# that use them alone:
#   ./scripts/test-deps.sh && cargo test -p autokey-tests --test schemathesis
set -euo pipefail
source "$(dirname "$0")/lib.sh"
ensure_test_tools
