#!/usr/bin/env bash
# The container contract, checked without a Docker engine: a function's release
# binary, started the way the Dockerfile starts it (no shell, non-root user
# 65532, only the documented environment), answers GET /healthz on PORT and
# exits 0 on SIGTERM. Usage: scripts/check-container-contract.sh [function]
# Needs FerretDB and RabbitMQ running (scripts/services.sh).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
fn="${1:-signup}"

cargo build --release --locked --bin "$fn"
binary="target/release/$fn"
port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
log="$(mktemp)"
chmod 644 "$log"

# As in the image: user 65532 where setpriv exists (it does on Debian), and an
# environment holding nothing but the documented variables.
as_nonroot=()
uid="$(id -u)"
if [ "$(id -u)" -eq 0 ] && command -v setpriv >/dev/null; then
  as_nonroot=(setpriv --reuid 65532 --regid 65532 --clear-groups)
  uid=65532
fi
env -i PORT="$port" \
  JWT_SECRET_KEY="container-contract-secret-0123456789abcdef" \
  MONGODB_URI="mongodb://127.0.0.1:27017" MONGODB_DATABASE="container_contract" \
  RABBITMQ_URI="amqp://guest:guest@127.0.0.1:5672/%2f" \
  "${as_nonroot[@]}" "$binary" >"$log" 2>&1 &
pid=$!
trap 'kill -9 "$pid" 2>/dev/null || true; rm -f "$log"' EXIT

started=$(date +%s%N)
body=""
for _ in $(seq 100); do
  body="$(curl -fsS "http://127.0.0.1:$port/healthz" 2>/dev/null)" && break
  kill -0 "$pid" 2>/dev/null || { echo "$fn exited during start-up:"; cat "$log"; exit 1; }
  sleep 0.05
done
ready_ms=$(( ($(date +%s%N) - started) / 1000000 ))
[ "$body" = '{"status":"ok"}' ] || { echo "GET /healthz answered '$body'"; cat "$log"; exit 1; }

kill -TERM "$pid"
for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
if kill -0 "$pid" 2>/dev/null; then echo "$fn ignored SIGTERM for 5 s"; cat "$log"; exit 1; fi
status=0; wait "$pid" || status=$?
[ "$status" -eq 0 ] || { echo "$fn exited $status after SIGTERM"; cat "$log"; exit 1; }
grep -q '"shutting down"' "$log" || { echo "no graceful shutdown logged"; cat "$log"; exit 1; }
echo "container contract: $fn ($(du -h "$binary" | cut -f1)) healthy in ${ready_ms} ms as uid ${uid}, stopped cleanly on SIGTERM"
