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
cargo test --workspace --locked
