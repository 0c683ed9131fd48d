#!/usr/bin/env bash
# Installs (when missing) and starts the local services every FinApp job needs:
#   PostgreSQL (Debian's postgresql), a private cluster  on 127.0.0.1:5433
#   FerretDB 1.24 (MongoDB wire protocol on PostgreSQL)  on 127.0.0.1:27017
#   RabbitMQ (Debian's rabbitmq-server)                  on 127.0.0.1:5672
#   cargo-lambda (PyPI)                                  for `cargo lambda watch` / `invoke`
# Idempotent: a service that already answers is left alone. Source it or run it.
#
#   FINAPP_FERRETDB_BACKEND  postgresql (default) or sqlite. PostgreSQL pushes
#                            filters down and keeps its indexes; SQLite scans every
#                            collection on every query (docs/database.md has figures)
#   FINAPP_MONGODB_PORT      FerretDB's port (27017)
#   FINAPP_POSTGRES_PORT     the private PostgreSQL cluster's port (5433, beside a
#                            system cluster's 5432, which is never used nor started)
#   FINAPP_RABBITMQ_PORT     RabbitMQ's port (5672)
#   FINAPP_STATE_DIR         data and logs ($ROOT/.dev)
#   FINAPP_POSTGRES_FAST_COMMIT=1  opt in to synchronous_commit = off (commits
#                            acknowledged before they reach the disk: a crash of
#                            PostgreSQL loses the last of them). Never the default:
#                            by default an acknowledged write survives a crash
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE="${FINAPP_STATE_DIR:-$ROOT/.dev}"
BACKEND="${FINAPP_FERRETDB_BACKEND:-postgresql}"
MONGODB_PORT="${FINAPP_MONGODB_PORT:-27017}"
POSTGRES_PORT="${FINAPP_POSTGRES_PORT:-5433}"
if [ "${FINAPP_POSTGRES_FAST_COMMIT:-0}" = 1 ]; then SYNC_COMMIT=off; else SYNC_COMMIT=on; fi
RABBITMQ_PORT="${FINAPP_RABBITMQ_PORT:-5672}"
export PATH="$PATH:/usr/local/go/bin"
GOBIN_DIR="$(go env GOPATH 2>/dev/null || echo "$HOME/go")/bin"
export PATH="$GOBIN_DIR:$HOME/.cargo/bin:$PATH:/usr/local/go/bin"
mkdir -p "$STATE"

log() { printf '[services] %s\n' "$*" >&2; }

# Waits until a TCP port on 127.0.0.1 accepts connections, or fails after $2 seconds.
wait_port() {
  local port=$1 deadline=$((SECONDS + $2))
  until (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
    if ((SECONDS >= deadline)); then log "port $port not ready after $2s"; return 1; fi
    sleep 0.2
  done
}

# Prints the end of each log given, so a failed start says why in CI's output.
show_log() {
  local file
  for file in "$@"; do
    [ -f "$file" ] || continue
    log "last lines of $file:"
    tail -n 40 "$file" >&2
  done
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Installs Debian packages (apt-get's options may come first), through sudo
# unless the caller is root.
apt_install() {
  local sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
}

# Built into $STATE/bin and rebuilt whenever tools/ferretdb changes, so an
# older build (one without the postgresql handler, say) is never started.
FERRETDB_BIN="$STATE/bin/finapp-ferretdb"
# Tests start private FerretDB instances of their own with this binary.
export FINAPP_FERRETDB_BIN="$FERRETDB_BIN"
install_ferretdb() {
  local stamp tool="$ROOT/tools/ferretdb" src="$STATE/src" module
  stamp="$(cat "$tool"/{main.go,go.mod,go.sum,pushdown.patch} | sha256sum | cut -d' ' -f1)"
  [ -x "$FERRETDB_BIN" ] && [ "$(cat "$FERRETDB_BIN.source" 2>/dev/null)" = "$stamp" ] && return
  log "building FerretDB v1.24.2 from the Go module proxy (pinned in tools/ferretdb/go.mod), with tools/ferretdb/pushdown.patch"
  # tools/ferretdb/main.go explains why this wraps FerretDB's embeddable
  # package. The patch is applied to a copy of the module under $STATE/src,
  # and a copy of go.mod points at it, so tools/ferretdb stays as committed.
  module="$(cd "$tool" && go mod download -json github.com/FerretDB/FerretDB | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
  [ -d "$module" ] || { log "go mod download did not give FerretDB's source directory"; return 1; }
  rm -rf "$src" && mkdir -p "$src" "$STATE/bin"
  cp -R "$module" "$src/FerretDB" && chmod -R u+w "$src/FerretDB"
  command -v patch >/dev/null || { log "installing patch from Debian"; apt_install patch; }
  patch -d "$src/FerretDB" -p1 --forward --quiet <"$tool/pushdown.patch"
  cp "$tool/go.mod" "$src/go.mod" && cp "$tool/go.sum" "$src/go.sum"
  (cd "$tool" && go mod edit -modfile="$src/go.mod" -replace="github.com/FerretDB/FerretDB=$src/FerretDB" &&
    go build -modfile="$src/go.mod" -o "$FERRETDB_BIN" .)
  echo "$stamp" >"$FERRETDB_BIN.source"
  FERRETDB_REBUILT=1
}

# Debian's server binaries (initdb, pg_ctl), newest major version first.
pg_bindir() {
  local dir
  for dir in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -t/ -k4 -rn); do
    [ -x "$dir/initdb" ] && { echo "$dir"; return; }
  done
  return 1
}

# Only the server binaries are needed: the package's own cluster ("main") is
# not created and no system service is started (see createcluster.conf below).
install_postgresql() {
  pg_bindir >/dev/null && return
  log "installing postgresql from Debian (no system cluster, no service)"
  local sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
  if [ ! -e /etc/postgresql-common/createcluster.conf ]; then
    $sudo mkdir -p /etc/postgresql-common
    echo "create_main_cluster = false" | $sudo tee /etc/postgresql-common/createcluster.conf >/dev/null
  fi
  apt_install -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold postgresql
  pg_bindir >/dev/null || { log "postgresql installed but no initdb under /usr/lib/postgresql"; return 1; }
}

# PostgreSQL refuses to run as root; as root, the cluster runs as this
# unprivileged system user, created on first use.
PG_USER=finapp-postgres
as_pg_user() {
  if [ "$(id -u)" -eq 0 ]; then
    runuser -u "$PG_USER" -- "$@"
  else
    "$@"
  fi
}

# The cluster's data directory: $STATE/postgres, unless the caller is root and
# $STATE lies where the unprivileged user cannot reach (under /root, mode 700):
# then a directory of its own under /var/tmp, named after $STATE.
pg_datadir() {
  local dir="$STATE/postgres"
  if [ "$(id -u)" -eq 0 ] && ! runuser -u "$PG_USER" -- test -x "$STATE"; then
    dir="/var/tmp/finapp-postgres-$(echo "$STATE" | sha256sum | cut -c1-12)"
  fi
  echo "$dir"
}

start_postgresql() {
  local bin data
  if port_open "$POSTGRES_PORT"; then
    ensure_commit_durability
    return
  fi
  bin="$(pg_bindir)"
  if [ "$(id -u)" -eq 0 ] && ! id "$PG_USER" >/dev/null 2>&1; then
    log "creating the system user $PG_USER to run PostgreSQL (it refuses to run as root)"
    useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin "$PG_USER"
  fi
  data="$(pg_datadir)"
  if [ ! -s "$data/PG_VERSION" ]; then
    log "creating a PostgreSQL cluster in $data"
    mkdir -p "$data"
    [ "$(id -u)" -eq 0 ] && chown "$PG_USER" "$data"
    chmod 700 "$data"
    # trust on loopback only: a private development cluster, like FerretDB's own port.
    as_pg_user "$bin/initdb" -D "$data" -U postgres --auth=trust --encoding=UTF8 --locale=C.UTF-8 \
      >"$STATE/postgres-initdb.log" 2>&1 || { show_log "$STATE/postgres-initdb.log"; return 1; }
    # No Unix socket (TCP on loopback only). Commits are durable as
    # PostgreSQL's defaults have them (fsync, synchronous_commit on): see
    # ensure_commit_durability.
    cat >>"$data/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
unix_socket_directories = ''
max_connections = 200
shared_buffers = 256MB
CONF
  fi
  log "starting PostgreSQL on 127.0.0.1:$POSTGRES_PORT (data in $data, log in $data.log)"
  touch "$data.log"
  [ "$(id -u)" -eq 0 ] && chown "$PG_USER" "$data.log"
  as_pg_user "$bin/pg_ctl" -D "$data" -o "-p $POSTGRES_PORT" -l "$data.log" -w -t 60 start >/dev/null \
    || { show_log "$data.log"; return 1; }
  if ! as_pg_user "$bin/psql" -h 127.0.0.1 -p "$POSTGRES_PORT" -U postgres -d postgres -tAc \
    "SELECT 1 FROM pg_database WHERE datname = 'ferretdb'" | grep -q 1; then
    as_pg_user "$bin/createdb" -h 127.0.0.1 -p "$POSTGRES_PORT" -U postgres ferretdb
  fi
  # The file is read by psql as the unprivileged user: pass it on stdin.
  as_pg_user "$bin/psql" -q -h 127.0.0.1 -p "$POSTGRES_PORT" -U postgres -d ferretdb -v ON_ERROR_STOP=1 \
    <"$ROOT/tools/ferretdb/gin-twins.sql" >/dev/null
  ensure_commit_durability
}

# An acknowledged commit must survive a crash of PostgreSQL: fsync and
# synchronous_commit on, set (ALTER SYSTEM, then a reload) on every run, so a
# cluster made by an older services.sh with synchronous_commit = off in its
# postgresql.conf is brought back too. FINAPP_POSTGRES_FAST_COMMIT=1 opts out.
ensure_commit_durability() {
  local bin
  bin="$(pg_bindir)"
  as_pg_user "$bin/psql" -q -h 127.0.0.1 -p "$POSTGRES_PORT" -U postgres -d postgres -v ON_ERROR_STOP=1 \
    -c "ALTER SYSTEM SET fsync = on" \
    -c "ALTER SYSTEM SET synchronous_commit = '$SYNC_COMMIT'" \
    -c "SELECT pg_reload_conf()" >/dev/null
  [ "$SYNC_COMMIT" = on ] || log "PostgreSQL commits are not durable (FINAPP_POSTGRES_FAST_COMMIT=1)"
}

install_rabbitmq() {
  command -v rabbitmq-server >/dev/null && return
  log "installing rabbitmq-server from Debian"
  apt_install rabbitmq-server
}

install_cargo_lambda() {
  command -v cargo-lambda >/dev/null && return
  log "installing cargo-lambda from PyPI"
  python3 -m pip install --quiet --disable-pip-version-check cargo-lambda
  command -v pyenv >/dev/null && pyenv rehash
  command -v cargo-lambda >/dev/null || { log "cargo-lambda installed but not on PATH"; return 1; }
}

# moto's server mode stands in for AWS Secrets Manager in the tests.
MOTO_VERSION=5.2.5
install_moto() {
  [ -x "$STATE/venv-moto/bin/moto_server" ] && return
  log "installing moto[server] $MOTO_VERSION from PyPI into $STATE/venv-moto"
  python3 -m venv "$STATE/venv-moto"
  "$STATE/venv-moto/bin/pip" install --quiet --disable-pip-version-check "moto[server]==$MOTO_VERSION"
}

start_ferretdb() {
  # A FerretDB started from the build this one replaces is stopped first.
  if [ -n "${FERRETDB_REBUILT:-}" ] && pkill -f -- "^$FERRETDB_BIN "; then
    log "stopping the FerretDB built before tools/ferretdb changed"
    for _ in $(seq 100); do port_open "$MONGODB_PORT" || break; sleep 0.1; done
  fi
  port_open "$MONGODB_PORT" && return
  local backend_args
  case "$BACKEND" in
    postgresql)
      backend_args=(--handler=postgresql
        --postgresql-url="postgres://postgres@127.0.0.1:$POSTGRES_PORT/ferretdb")
      log "starting FerretDB on 127.0.0.1:$MONGODB_PORT (PostgreSQL on 127.0.0.1:$POSTGRES_PORT)"
      ;;
    sqlite)
      mkdir -p "$STATE/ferretdb/data"
      backend_args=(--handler=sqlite --sqlite-url="file:$STATE/ferretdb/data/")
      log "starting FerretDB on 127.0.0.1:$MONGODB_PORT (SQLite in $STATE/ferretdb)"
      ;;
    *) log "FINAPP_FERRETDB_BACKEND must be postgresql or sqlite, not $BACKEND"; return 1 ;;
  esac
  setsid nohup "$FERRETDB_BIN" "${backend_args[@]}" \
    --listen-addr="127.0.0.1:$MONGODB_PORT" --log-level=warn >"$STATE/ferretdb.log" 2>&1 &
  wait_port "$MONGODB_PORT" 30 || { show_log "$STATE/ferretdb.log"; return 1; }
}

# The node runs as the caller, named finapp@localhost, with its data and logs
# under $STATE. Debian's /usr/sbin wrapper would re-run it as the rabbitmq user
# (via su) and name it rabbit@$(hostname), which fails to start on a machine
# whose hostname does not resolve; the script underneath has neither problem.
start_rabbitmq() {
  port_open "$RABBITMQ_PORT" && return
  log "starting RabbitMQ on 127.0.0.1:$RABBITMQ_PORT (data in $STATE/rabbitmq)"
  local dir="$STATE/rabbitmq" server=/usr/lib/rabbitmq/bin/rabbitmq-server
  [ -x "$server" ] || server=rabbitmq-server
  mkdir -p "$dir"
  [ -f "$dir/enabled_plugins" ] || echo '[].' >"$dir/enabled_plugins"
  touch "$dir/rabbitmq-env.conf"
  RABBITMQ_NODENAME=finapp@localhost RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 RABBITMQ_NODE_PORT="$RABBITMQ_PORT" \
    RABBITMQ_MNESIA_BASE="$dir/mnesia" RABBITMQ_LOG_BASE="$dir/log" RABBITMQ_PID_FILE="$dir/pid" \
    RABBITMQ_ENABLED_PLUGINS_FILE="$dir/enabled_plugins" RABBITMQ_CONF_ENV_FILE="$dir/rabbitmq-env.conf" \
    setsid nohup "$server" >"$STATE/rabbitmq.log" 2>&1 &
  wait_port "$RABBITMQ_PORT" 120 || { show_log "$STATE/rabbitmq.log" "$dir"/log/*.log; return 1; }
}

install_ferretdb
[ "$BACKEND" = postgresql ] && install_postgresql
install_rabbitmq
install_cargo_lambda
install_moto
[ "$BACKEND" = postgresql ] && start_postgresql
start_ferretdb
start_rabbitmq
log "FerretDB ($BACKEND) and RabbitMQ are up"
