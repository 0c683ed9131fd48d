#!/usr/bin/env bash
# Installs (when missing) and starts the local services every FinApp job needs:
#   FerretDB 1.24 (MongoDB wire protocol on SQLite) on 127.0.0.1:27017
#   RabbitMQ (Debian's rabbitmq-server)              on 127.0.0.1:5672
#   cargo-lambda (PyPI)                              for `cargo lambda watch` / `invoke`
# Idempotent: a service that already answers is left alone. Source it or run it.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE="${FINAPP_STATE_DIR:-$ROOT/.dev}"
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

install_ferretdb() {
  command -v finapp-ferretdb >/dev/null && return
  log "building FerretDB v1.24.2 from the Go module proxy (pinned in tools/ferretdb/go.mod)"
  # tools/ferretdb/main.go explains why this wraps FerretDB's embeddable package.
  (cd "$ROOT/tools/ferretdb" && go build -o "$GOBIN_DIR/finapp-ferretdb" .)
}

install_rabbitmq() {
  command -v rabbitmq-server >/dev/null && return
  log "installing rabbitmq-server from Debian"
  local sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq rabbitmq-server >/dev/null
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
  port_open 27017 && return
  log "starting FerretDB on 127.0.0.1:27017 (data in $STATE/ferretdb)"
  mkdir -p "$STATE/ferretdb/data"
  setsid nohup finapp-ferretdb --sqlite-url="file:$STATE/ferretdb/data/" \
    --listen-addr=127.0.0.1:27017 --log-level=warn >"$STATE/ferretdb.log" 2>&1 &
  wait_port 27017 30 || { show_log "$STATE/ferretdb.log"; return 1; }
}

# The node runs as the caller, named finapp@localhost, with its data and logs
# under $STATE. Debian's /usr/sbin wrapper would re-run it as the rabbitmq user
# (via su) and name it rabbit@$(hostname), which fails to start on a machine
# whose hostname does not resolve; the script underneath has neither problem.
start_rabbitmq() {
  port_open 5672 && return
  log "starting RabbitMQ on 127.0.0.1:5672 (data in $STATE/rabbitmq)"
  local dir="$STATE/rabbitmq" server=/usr/lib/rabbitmq/bin/rabbitmq-server
  [ -x "$server" ] || server=rabbitmq-server
  mkdir -p "$dir"
  [ -f "$dir/enabled_plugins" ] || echo '[].' >"$dir/enabled_plugins"
  touch "$dir/rabbitmq-env.conf"
  RABBITMQ_NODENAME=finapp@localhost RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 RABBITMQ_NODE_PORT=5672 \
    RABBITMQ_MNESIA_BASE="$dir/mnesia" RABBITMQ_LOG_BASE="$dir/log" RABBITMQ_PID_FILE="$dir/pid" \
    RABBITMQ_ENABLED_PLUGINS_FILE="$dir/enabled_plugins" RABBITMQ_CONF_ENV_FILE="$dir/rabbitmq-env.conf" \
    setsid nohup "$server" >"$STATE/rabbitmq.log" 2>&1 &
  wait_port 5672 120 || { show_log "$STATE/rabbitmq.log" "$dir"/log/*.log; return 1; }
}

install_ferretdb
install_rabbitmq
install_cargo_lambda
install_moto
start_ferretdb
start_rabbitmq
log "FerretDB and RabbitMQ are up"
