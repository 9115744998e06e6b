#!/usr/bin/env bash
# The dependency audit of Cargo.lock (part of ./scripts/test.sh): it fails, never merely warns,
# when it cannot run.
#   1. RustSec advisories, with cargo-audit: a vulnerability, a yanked version, an unmaintained
#      or unsound crate fails it (.cargo/audit.toml lists the ones kept, with the reason).
#   2. cargo-deny's policy in deny.toml: licences, banned and duplicated security crates,
#      sources (crates.io only).
#   3. No path dependency from outside this repository.
#
# The advisory database (rustsec/advisory-db), first found of:
#   - AUTOKEY_ADVISORY_DB=/path/to/a/copy (a clone or a snapshot), used as it is;
#   - a clone in ~/.cargo/advisory-db, fetched now (where its git host is reachable);
#   - a snapshot beside the repository, ../shared/advisory-db (or beside the repository this
#     one was cloned from, when that is a local path);
#   - a clone fetched earlier in ~/.cargo/advisory-db.
# The copy and its date are printed. With none of them the audit fails.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"
ensure_cargo_audit
ensure_cargo_deny

ADVISORY_DB_URL="https://github.com/rustsec/advisory-db.git"
CACHE="$HOME/.cargo/advisory-db"

fetch_cache() {
  if [ -d "$CACHE/.git" ]; then
    timeout 120 git -C "$CACHE" fetch -q --depth 1 origin HEAD && git -C "$CACHE" reset -q --hard FETCH_HEAD
  else
    rm -rf "$CACHE"
    timeout 120 git clone -q --depth 1 "$ADVISORY_DB_URL" "$CACHE"
  fi
}

# Snapshots handed beside the repository (or beside the local repository it was cloned from).
snapshot_candidates() {
  printf '%s\n' "$ROOT/../shared/advisory-db"
  local origin
  origin="$(git -C "$ROOT" remote get-url origin 2>/dev/null || true)"
  origin="${origin#file://}"
  if [ -n "$origin" ] && [ -d "$origin" ]; then
    printf '%s\n' "$(cd "$origin" && pwd)/../shared/advisory-db"
  fi
}

# "last change YYYY-MM-DD" of a copy: its git history, else a snapshot's SNAPSHOT.txt.
describe() {
  local when
  when="$(git -C "$1" log -1 --format=%cs 2>/dev/null || true)"
  if [ -z "$when" ] && [ -f "$1/SNAPSHOT.txt" ]; then
    when="$(grep -oE 'last change [0-9-]+' "$1/SNAPSHOT.txt" | head -n1 | cut -d' ' -f3)"
  fi
  printf '%s' "${when:-an unknown date}"
}

db="" how=""
if [ -n "${AUTOKEY_ADVISORY_DB:-}" ]; then
  db="$AUTOKEY_ADVISORY_DB" how="AUTOKEY_ADVISORY_DB"
elif fetch_cache 2>/dev/null; then
  db="$CACHE" how="fetched now"
else
  while read -r candidate; do
    if [ -d "$candidate/crates" ]; then
      db="$(cd "$candidate" && pwd)" how="a snapshot beside the repository; NOT fetched now"
      break
    fi
  done < <(snapshot_candidates)
  if [ -z "$db" ] && [ -d "$CACHE/crates" ]; then
    db="$CACHE" how="fetched on an earlier run; NOT fetched now"
  fi
fi
if [ -z "$db" ] || [ ! -d "$db/crates" ]; then
  cat >&2 <<'BANNER'
#########################################################################################
#  AUDIT FAILED: no RustSec advisory database. It could not be fetched from its git host, #
#  no snapshot is beside the repository (../shared/advisory-db) and none was fetched      #
#  earlier on this machine. Set AUTOKEY_ADVISORY_DB to a copy of rustsec/advisory-db.     #
#########################################################################################
BANNER
  exit 1
fi

# Yanked versions are read from cargo's local copy of the crates.io index: bring the entries
# of every locked crate up to date first (a dry-run update writes nothing).
if ! cargo update --dry-run >/dev/null 2>&1; then
  log "warning: the crates.io index could not be refreshed; yanked versions are checked against its local copy"
fi
log "cargo audit: advisory database $db ($how; last change $(describe "$db"))"
cargo audit --no-fetch --stale --db "$db"

log "cargo deny: licences, bans and sources (deny.toml)"
cargo deny --locked check licenses bans sources

log "no path dependency from outside the repository"
cargo metadata --locked --format-version 1 | python3 -c '
import json, os, sys
meta = json.load(sys.stdin)
root = os.path.realpath(sys.argv[1])
outside = [p["name"] + " at " + p["manifest_path"] for p in meta["packages"]
           if p["source"] is None and not os.path.realpath(p["manifest_path"]).startswith(root + os.sep)]
if outside:
    sys.exit("path dependencies outside the repository: " + ", ".join(outside))
' "$ROOT"
