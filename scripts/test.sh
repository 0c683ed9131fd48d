#!/usr/bin/env bash
# The whole test suite on a fresh machine: installs and starts the services,
# checks formatting and lints, builds every function, and runs every test
# (unit tests, integration tests against FerretDB and RabbitMQ, and the Lambda
# path through `cargo lambda watch`).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/services.sh

echo "== cargo fmt --check" >&2
cargo fmt --all --check
echo "== cargo clippy" >&2
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo build (the integration tests run these binaries)" >&2
cargo build --workspace --bins --locked
echo "== cargo test" >&2
log="$(mktemp)"
cargo test --workspace --locked 2>&1 | tee "$log"
# cargo prints a result line per test target, most of them empty doc-test
# targets; close with one line that totals them all.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed;/) p += $i; if ($(i+1) ~ /^failed;/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
rm -f "$log"
