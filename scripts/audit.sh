#!/usr/bin/env bash
# RustSec advisories against Cargo.lock, with cargo-audit (installed once by lib.sh).
#
# The advisory database is a git repository (rustsec/advisory-db); it is cloned, or brought
# up to date, in ~/.cargo/advisory-db (where cargo-audit keeps it), then audited against
# with --no-fetch. Where it cannot be fetched:
#   - AUTOKEY_ADVISORY_DB=/path/to/a/clone audits against that copy instead;
#   - otherwise a copy fetched earlier on this machine is used, saying from when;
#   - otherwise the audit cannot be done: a banner says so and the script exits 0, or 1
#     with AUTOKEY_REQUIRE_AUDIT=1 (set it where the database is reachable).
# Any advisory that applies to Cargo.lock (a vulnerability, or a yanked crate) fails it.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"
ensure_cargo_audit

ADVISORY_DB_URL="https://github.com/rustsec/advisory-db.git"
db="${AUTOKEY_ADVISORY_DB:-$HOME/.cargo/advisory-db}"

fetch() {
  if [ -d "$db/.git" ]; then
    timeout 120 git -C "$db" fetch -q --depth 1 origin HEAD && git -C "$db" reset -q --hard FETCH_HEAD
  else
    rm -rf "$db"
    timeout 120 git clone -q --depth 1 "$ADVISORY_DB_URL" "$db"
  fi
}

fetched=0
if [ -z "${AUTOKEY_ADVISORY_DB:-}" ]; then
  if fetch 2>/dev/null; then fetched=1; fi
fi
if [ ! -d "$db/crates" ]; then
  cat >&2 <<'BANNER'
#########################################################################################
#  cargo audit: ADVISORIES NOT CHECKED. The RustSec advisory database could not be        #
#  fetched (no route to its git host?) and no copy is on this machine. Set                #
#  AUTOKEY_ADVISORY_DB to a clone of rustsec/advisory-db, or run where it can be fetched.  #
#########################################################################################
BANNER
  [ "${AUTOKEY_REQUIRE_AUDIT:-0}" = 1 ] && exit 1
  exit 0
fi
when="$(git -C "$db" log -1 --format=%cs 2>/dev/null || echo 'an unknown date')"
if [ "$fetched" = 1 ]; then
  log "cargo audit (advisory database fetched now, last change $when)"
else
  log "cargo audit against the advisory database copy in $db (last change $when; NOT fetched now)"
fi
cargo audit --no-fetch --stale --db "$db" --deny yanked
