#!/usr/bin/env bash
# The container, built and run for real: builds FUNCTION's image with
# scripts/build-image.sh (static musl binary, FROM scratch, buildah), starts it
# with podman with nothing but the documented variables (plus the image's own
# PORT and SSL_CERT_FILE), and checks that it answers GET /healthz as uid 65532,
# then stops it with SIGTERM and expects a clean exit 0.
#   scripts/check-container.sh [FUNCTION]     (default: signup)
# Needs FerretDB and RabbitMQ on 127.0.0.1 (scripts/services.sh); the container
# shares the host's network to reach them.
#
# How it runs here: Debian's crun refuses this machine's limits (setrlimit
# RLIMIT_NOFILE, then RLIMIT_NPROC, even at the current values) and its
# cgroup layout ("cgroups in hybrid mode not supported"). runc, with both
# limits set below the machine's (--ulimit), runs the image as it is.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
fn="${1:-signup}"
source scripts/deploy-tools.sh

build_out="$(scripts/build-image.sh "$fn" | tail -n1)"
echo "$build_out"
image="${IMAGE_REPO:-ghcr.io/finapp/finapp-functions}/$fn:${IMAGE_TAG:-latest}"
port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
name="finapp-check-$fn-$$"

started=$(date +%s%N)
podman --runtime "$(command -v runc)" run -d --name "$name" \
  --network host --ulimit nofile=4096:4096 --ulimit nproc=4096:4096 \
  -e PORT="$port" \
  -e JWT_SECRET_KEY="container-check-secret-0123456789abcdef" \
  -e MONGODB_URI="mongodb://127.0.0.1:27017" -e MONGODB_DATABASE="container_check" \
  -e RABBITMQ_URI="amqp://guest:guest@127.0.0.1:5672/%2f" \
  "$image" >/dev/null
trap 'podman rm -f "$name" >/dev/null 2>&1 || true' EXIT
fail() { echo "container check: $*"; podman logs "$name" 2>&1 | tail -n 20; exit 1; }

body=""
deadline=$((SECONDS + 20))
until body="$(curl -fsS "http://127.0.0.1:$port/healthz" 2>/dev/null)"; do
  [ "$(podman inspect --format '{{.State.Running}}' "$name")" = true ] || fail "$fn exited during start-up"
  ((SECONDS < deadline)) || fail "no answer on /healthz within 20 s"
  sleep 0.05
done
ready_ms=$(( ($(date +%s%N) - started) / 1000000 ))
[ "$body" = '{"status":"ok"}' ] || fail "GET /healthz answered '$body'"

pid="$(podman inspect --format '{{.State.Pid}}' "$name")"
uid="$(awk '/^Uid:/ { print $2 }' "/proc/$pid/status")"
[ "$uid" = 65532 ] || fail "the process runs as uid $uid, not 65532"
env_names="$(tr '\0' '\n' <"/proc/$pid/environ" | cut -d= -f1 | LC_ALL=C sort | tr '\n' ' ')"

podman stop -t 10 "$name" >/dev/null
status="$(podman inspect --format '{{.State.ExitCode}}' "$name")"
[ "$status" = 0 ] || fail "exited $status after SIGTERM"
podman logs "$name" 2>&1 | grep -q '"shutting down"' || fail "no graceful shutdown logged"
echo "container check: $image answered /healthz in ${ready_ms} ms as uid $uid with only: ${env_names% }; exit 0 on SIGTERM"
