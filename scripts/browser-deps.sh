#!/usr/bin/env bash
# Prepares the browser test's tools (./scripts/test.sh runs this too): Debian's chromium,
# installed when missing, and the Python venv .venv/ with Playwright. Idempotent; instant
# when both are there. Handy before running that test alone:
#   ./scripts/browser-deps.sh && cargo test -p autokey-tests --test console_browser
set -euo pipefail
source "$(dirname "$0")/lib.sh"
ensure_browser_test_deps
