#!/usr/bin/env bash
# Benchmarks every function against its physical ceiling and writes
# BENCHMARKS.md: installs wrk from Debian if it is missing, starts FerretDB and
# RabbitMQ, builds the release binaries and the `cargo lambda build --release`
# bootstraps, then runs target/release/finapp-bench (bench/), which runs every
# scenario and writes the report.
#
#   BENCH_QUICK=1        short runs, for trying the harness out (not for committing)
#   BENCH_SKIP_LAMBDA=1  skip the long `cargo lambda build`; report target/release sizes
#   BENCH_ONLY=a,b       only these scenarios: status-apply, login, framework,
#                        pipeline, cold-start, memory, artifacts, scale
#   BENCH_SCALE_*        sizes of the scale scenario (1,000 users, 100,000 applications,
#                        1,000,000 events; growth curve 1000,10000,100000)
# Every other BENCH_* knob (runs, durations, counts) is in bench/src/settings.rs.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/services.sh

if ! command -v wrk >/dev/null; then
  log "installing wrk from Debian"
  sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq wrk >/dev/null
fi

echo "== cargo build --release (every function, bench-hello, finapp-bench)" >&2
cargo build --release --locked --workspace --bins

case "${BENCH_SKIP_LAMBDA:-}" in
  "" | 0 | false | no)
    # arm64, as the SAM template deploys, when that Rust target is installed;
    # one function at a time, as `sam build` builds them, so each bootstrap
    # carries only its own function's dependency features.
    arch=()
    arm64_installed() { rustup target list --installed 2>/dev/null | grep -qx aarch64-unknown-linux-gnu; }
    if ! arm64_installed && command -v rustup >/dev/null; then
      log "adding the rustup target aarch64-unknown-linux-gnu (the SAM template deploys arm64)"
      rustup target add aarch64-unknown-linux-gnu >&2 || log "could not add it; building for x86_64"
    fi
    if arm64_installed; then
      arch=(--arm64)
    fi
    for dir in functions/*/; do
      name="$(basename "$dir")"
      echo "== cargo lambda build --release ${arch[*]} -p $name" >&2
      cargo lambda build --release "${arch[@]}" --locked -p "$name"
    done
    ;;
  *)
    echo "== cargo lambda build skipped (BENCH_SKIP_LAMBDA); target/release sizes are reported" >&2
    ;;
esac

echo "== finapp-bench" >&2
exec target/release/finapp-bench
