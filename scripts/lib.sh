# Shared by dev.sh and test.sh: finds or provisions a PostgreSQL server and sets
# SERVER_URL (a URL to its `postgres` database). Order of preference:
#   1. DATABASE_URL, if set (kept as it is, TLS mode included);
#   2. a server already answering on 127.0.0.1:5432 (starting the Debian cluster if it is stopped);
#   3. a private cluster in .pgdata/ (git-ignored), installing Debian's postgresql if absent.
# A server on this machine is reached over its Unix socket when it lets us in there (a
# round trip costs both sides about half the CPU of loopback TCP), else over TCP without TLS.

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PRIVATE_PORT=54329

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

tcp_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

pg_bin() {
  local b
  for b in /usr/lib/postgresql/*/bin; do [ -x "$b/initdb" ] && { echo "$b"; return 0; }; done
  return 1
}

as_postgres() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

start_private_cluster() {
  local bin data="$ROOT/.pgdata"
  if ! bin=$(pg_bin); then
    log "PostgreSQL is not installed: installing Debian's postgresql"
    if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq postgresql >/dev/null
    bin=$(pg_bin) || { echo "PostgreSQL installation failed" >&2; exit 1; }
  fi
  if [ ! -f "$data/PG_VERSION" ]; then
    log "creating a private PostgreSQL cluster in .pgdata/"
    mkdir -p "$data"
    [ "$(id -u)" = 0 ] && chown postgres "$data"
    as_postgres "$bin/initdb" -D "$data" -U postgres --auth=trust >/dev/null
  fi
  if ! tcp_open 127.0.0.1 "$PRIVATE_PORT"; then
    as_postgres "$bin/pg_ctl" -D "$data" -l "$data/server.log" -w \
      -o "-p $PRIVATE_PORT -k $data -c listen_addresses=127.0.0.1 -c max_connections=300" start >/dev/null
  fi
  SERVER_URL="$(local_server_url "$PRIVATE_PORT")"
}

# The URL of the local server on TCP port $1: over its Unix socket if it accepts us there
# (Debian's default `peer` rule for local connections may not), else TCP without TLS.
local_server_url() {
  local port="$1" tcp="postgres://postgres@127.0.0.1:$1/postgres?sslmode=disable" dir enc
  dir=$(psql "$tcp" -qAtc "SELECT split_part(current_setting('unix_socket_directories'), ',', 1)" 2>/dev/null | tr -d ' ') || dir=""
  if [ -n "$dir" ] && [ -S "$dir/.s.PGSQL.$port" ]; then
    enc=$(printf '%s' "$dir" | sed 's|%|%25|g; s|/|%2F|g; s| |%20|g')
    if psql "postgres://postgres@$enc:$port/postgres" -qAtc 'SELECT 1' >/dev/null 2>&1; then
      printf 'postgres://postgres@%s:%s/postgres' "$enc" "$port"
      return
    fi
  fi
  printf '%s' "$tcp"
}

ensure_postgres() {
  if [ -n "${DATABASE_URL:-}" ]; then
    SERVER_URL="$DATABASE_URL"
    return
  fi
  if ! tcp_open 127.0.0.1 5432 && command -v pg_ctlcluster >/dev/null && [ -n "$(ls /etc/postgresql 2>/dev/null)" ]; then
    log "starting the local PostgreSQL cluster"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -n1)" main start || true
    sleep 1
  fi
  if tcp_open 127.0.0.1 5432; then
    # A server on this machine: its Unix socket, or TCP without TLS (TLS would cost ~28% of
    # a read); a DATABASE_URL keeps whatever sslmode it names.
    SERVER_URL="$(local_server_url 5432)"
  else
    start_private_cluster
  fi
}

# Runs SQL against the server's maintenance database (psql comes with the server packages).
server_sql() {
  psql "$SERVER_URL" -v ON_ERROR_STOP=1 -qAtc "$1"
}

# A URL to database $1 on the same server.
database_url() {
  local base="${SERVER_URL%%\?*}" query=""
  [ "$base" != "$SERVER_URL" ] && query="?${SERVER_URL#*\?}"
  printf '%s/%s%s' "${base%/*}" "$1" "$query"
}

# Drops every database whose name starts with $1 (leftovers of interrupted runs).
drop_databases_with_prefix() {
  local db
  for db in $(server_sql "SELECT datname FROM pg_database WHERE starts_with(datname, '$1')"); do
    server_sql "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" || true
  done
}

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

apt_install() {
  log "installing Debian's $*"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# Debian's Chromium for the browser test (never a browser build a test tool downloads).
CHROMIUM="${AUTOKEY_CHROMIUM:-/usr/bin/chromium}"
ensure_chromium() {
  [ -x "$CHROMIUM" ] && return
  apt_install chromium
  [ -x "$CHROMIUM" ] || { echo "Chromium is still missing at $CHROMIUM" >&2; exit 1; }
}

# .venv/ (git-ignored): the test suite's Python tools from tests/python-requirements.txt,
# installed again only when that file (or the Python) changes.
VENV="$ROOT/.venv"
ensure_python_venv() {
  local req="$ROOT/tests/python-requirements.txt" python="${PYTHON:-python3}" stamp want
  want="$( (cat "$req"; "$python" --version) | sha256sum | cut -d' ' -f1)"
  stamp="$VENV/.requirements.sha256"
  if [ -x "$VENV/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
    return
  fi
  log "preparing the Python venv .venv/ (tests/python-requirements.txt)"
  rm -rf "$VENV"
  if ! "$python" -m venv "$VENV" >/dev/null 2>&1; then
    rm -rf "$VENV"
    apt_install python3-venv
    "$python" -m venv "$VENV"
  fi
  PIP_DISABLE_PIP_VERSION_CHECK=1 "$VENV/bin/pip" install -q --no-input -r "$req"
  echo "$want" >"$stamp"
}

# Everything the browser test needs (tests/tests/console_browser.rs).
ensure_browser_test_deps() {
  ensure_chromium
  ensure_python_venv
}

# Node (Debian's nodejs and npm, installed when missing) and tests/clients/node_modules/
# (git-ignored): the TypeScript client generator and compiler, installed by `npm ci` from
# tests/clients/package-lock.json, again only when that file (or Node) changes.
ensure_node_modules() {
  local dir="$ROOT/tests/clients" stamp want
  # (A nodejs package that bundles npm, as NodeSource's does, conflicts with Debian's npm.)
  command -v node >/dev/null || apt_install nodejs
  command -v npm >/dev/null || apt_install npm
  command -v npm >/dev/null || { echo "npm is still missing" >&2; exit 1; }
  want="$( (cat "$dir/package-lock.json"; node --version) | sha256sum | cut -d' ' -f1)"
  stamp="$dir/node_modules/.package-lock.sha256"
  if [ -d "$dir/node_modules" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
    return
  fi
  log "installing tests/clients/node_modules (npm ci)"
  (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
  echo "$want" >"$stamp"
}

# tests/oidc/node_modules/ (git-ignored): oidc-provider, the OpenID provider of
# tests/tests/oidc.rs, installed by `npm ci` from tests/oidc/package-lock.json, again only
# when that file (or Node) changes.
ensure_oidc_provider() {
  local dir="$ROOT/tests/oidc" stamp want
  command -v node >/dev/null || apt_install nodejs
  command -v npm >/dev/null || apt_install npm
  want="$( (cat "$dir/package-lock.json"; node --version) | sha256sum | cut -d' ' -f1)"
  stamp="$dir/node_modules/.package-lock.sha256"
  if [ -d "$dir/node_modules" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
    return
  fi
  log "installing tests/oidc/node_modules (npm ci: oidc-provider)"
  (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
  echo "$want" >"$stamp"
}

# cargo-audit (crates.io), built once into ~/.cargo/bin (a few minutes the first time).
CARGO_AUDIT_VERSION=0.22.2
ensure_cargo_audit() {
  if cargo audit --version 2>/dev/null | grep -qF "$CARGO_AUDIT_VERSION"; then
    return
  fi
  log "installing cargo-audit $CARGO_AUDIT_VERSION (cargo install, once)"
  cargo install --locked --quiet cargo-audit --version "$CARGO_AUDIT_VERSION"
}

# cargo-deny (crates.io), likewise: the licence, ban and source policy of deny.toml.
CARGO_DENY_VERSION=0.20.2
ensure_cargo_deny() {
  if cargo deny --version 2>/dev/null | grep -qF "$CARGO_DENY_VERSION"; then
    return
  fi
  log "installing cargo-deny $CARGO_DENY_VERSION (cargo install, once)"
  cargo install --locked --quiet cargo-deny --version "$CARGO_DENY_VERSION"
}

# Every outside tool of the test suite: the browser test's, the venv's (schemathesis,
# openapi-spec-validator, openapi-python-client, standardwebhooks), Node's (the TypeScript
# client's tools, the OpenID provider), cargo-audit and cargo-deny.
ensure_test_tools() {
  ensure_browser_test_deps
  ensure_node_modules
  ensure_oidc_provider
  ensure_cargo_audit
  ensure_cargo_deny
}
