#!/usr/bin/env bash
# What each piece of the shared HTTP middleware costs, in instructions per
# request: runs every bench-layers variant (bench/src/bin/bench-layers.rs)
# under callgrind, sends it FEW and then MANY keep-alive `GET /healthz`
# requests from one client, and divides the difference in instructions by the
# difference in requests, so shutdown cancels out (start-up is not counted).
# Instruction counts are the same from run to run whatever else the machine
# is doing, unlike req/s; they count user space only (no kernel, no cache
# misses).
#
#   LAYERS_FEW=1000 LAYERS_MANY=3000   the two request counts
#   LAYERS_CASES="bare:info shared:info"  only these variants (variant:RUST_LOG), bare first
#   (`shared-traced` exports its spans to an OTLP sink this script starts)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

few=${LAYERS_FEW:-1000}
many=${LAYERS_MANY:-3000}
((many > few)) || { echo "LAYERS_MANY must exceed LAYERS_FEW" >&2; exit 2; }
command -v valgrind >/dev/null || { echo "valgrind is needed (Debian package valgrind)" >&2; exit 1; }

echo "== cargo build --release -p finapp-bench --bin bench-layers" >&2
cargo build --release --locked -p finapp-bench --bin bench-layers
binary="${CARGO_TARGET_DIR:-target}/release/bench-layers"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# Sends $2 requests to port $1 over one connection; fails on anything but 200.
send() {
  python3 - "$1" "$2" <<'EOF'
import http.client, sys
port, count = int(sys.argv[1]), int(sys.argv[2])
connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
for _ in range(count):
    connection.request("GET", "/healthz")
    response = connection.getresponse()
    response.read()
    if response.status != 200:
        sys.exit(f"GET /healthz answered {response.status}")
EOF
}

# Total instructions of one run of variant $1 with RUST_LOG=$2 serving $3 requests.
instructions() {
  local variant=$1 rust_log=$2 count=$3 port out pid deadline
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  out="$work/$variant-$rust_log-$count.callgrind"
  # Counting starts once the server listens: start-up (the metrics clock's
  # calibration, timed in wall time, among it) varies by millions from run
  # to run and would not cancel out.
  RUST_LOG=$rust_log PORT=$port valgrind --tool=callgrind --instr-atstart=no \
    --callgrind-out-file="$out" "$binary" "$variant" >"$work/server.log" 2>&1 &
  pid=$!
  deadline=$((SECONDS + 120))
  until (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
    if ((SECONDS >= deadline)) || ! kill -0 "$pid" 2>/dev/null; then
      echo "bench-layers $variant did not start:" >&2; tail -n 20 "$work/server.log" >&2; exit 1
    fi
    sleep 0.2
  done
  callgrind_control --instr=on "$pid" >/dev/null 2>&1
  send "$port" "$count"
  kill -TERM "$pid"
  wait "$pid" || true # ended by the signal
  awk '/^summary:/ { found = 1; print $2 } END { exit !found }' "$out"
}

# `shared-traced` exports to a sink that answers every OTLP POST with 200,
# as a collector would; it runs outside valgrind, so its work is not counted.
if [[ " ${LAYERS_CASES:-shared-traced:} " == *" shared-traced:"* ]]; then
  sink_port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  python3 - "$sink_port" <<'EOF' &
import http.server, sys
class Sink(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Sink).serve_forever()
EOF
  sink_pid=$!
  trap 'kill "$sink_pid" 2>/dev/null; rm -rf "$work"' EXIT
  export BENCH_OTLP_ENDPOINT="http://127.0.0.1:$sink_port"
fi

bare=""
printf '| variant | RUST_LOG | instructions per request | vs bare |\n|---|---|---|---|\n'
cases=${LAYERS_CASES:-bare:info shared:info shared-metrics:info shared-traced:info shared:warn shared-server:info function:info from-fn:info request-id:info limits:info tower-http:info}
for case in $cases; do
  IFS=: read -r variant rust_log <<<"$case"
  low=$(instructions "$variant" "$rust_log" "$few")
  high=$(instructions "$variant" "$rust_log" "$many")
  per_request=$(((high - low) / (many - few)))
  [ -n "$bare" ] || bare=$per_request
  awk -v variant="$variant" -v rust_log="$rust_log" -v n="$per_request" -v bare="$bare" \
    'BEGIN { printf "| `%s` | `%s` | %d | %+.0f%% |\n", variant, rust_log, n, (n - bare) * 100 / bare }'
done
