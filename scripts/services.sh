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
  wait_port 27017 30
}

start_rabbitmq() {
  port_open 5672 && return
  log "starting RabbitMQ on 127.0.0.1:5672"
  # The Debian package may have started (or failed to start) a service already;
  # in a container without systemd we run the server ourselves.
  RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 setsid nohup rabbitmq-server >"$STATE/rabbitmq.log" 2>&1 &
  wait_port 5672 90
}

install_ferretdb
install_rabbitmq
install_cargo_lambda
install_moto
start_ferretdb
start_rabbitmq
log "FerretDB and RabbitMQ are up"
