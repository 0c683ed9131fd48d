#!/usr/bin/env bash
# The whole test suite on a fresh machine: installs and starts the services,
# checks formatting and lints, builds every function, runs every test (unit
# tests, integration tests against FerretDB and RabbitMQ, and the Lambda path
# through `cargo lambda watch`), then validates the deployment artefacts offline
# (SAM template, workflows, Kubernetes manifests, Dockerfile) and checks the
# container contract on a release binary.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/services.sh
# nginx, the RIE, kustomize, kube-score, the Pod Security check, podman: the
# deployment tests and checks below need them; schemathesis: tests/it/fuzz.rs;
# cargo-deny: the dependency policy.
source scripts/deploy-tools.sh

echo "== cargo fmt --check" >&2
cargo fmt --all --check
echo "== cargo clippy" >&2
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== rust-version: what Cargo.lock needs" >&2
python3 scripts/check_rust_version.py
# Offline; the CI workflow also checks the advisories, which need the network.
echo "== cargo deny check bans licenses sources (deny.toml)" >&2
cargo deny --locked check bans licenses sources
echo "== cargo build (the integration tests run these binaries)" >&2
cargo build --workspace --bins --locked

log="$(mktemp)"
trap 'rm -f "$log"' EXIT
failed_steps=()
echo "== cargo test" >&2
cargo_failed=0
cargo test --workspace --locked 2>&1 | tee "$log" || { cargo_failed=1; failed_steps+=("cargo test"); }

# Each deployment check is one step of the suite: it passes or fails as a whole.
steps_passed=0
steps_failed=0
# One image only: a static release build takes minutes on two cores.
for step in scripts/validate-k8s.sh scripts/validate-aws.sh "scripts/check-container.sh signup"; do
  echo "== $step" >&2
  if $step; then
    steps_passed=$((steps_passed + 1))
  else
    steps_failed=$((steps_failed + 1))
    failed_steps+=("$step")
  fi
done

# cargo prints a result line per test target, most of them empty doc-test
# targets; close with one line that totals them all, each deployment check
# counted as one test. A cargo test run that failed without a failing test
# (a build error, say) still counts as one failure.
awk -v sp="$steps_passed" -v sf="$steps_failed" -v cf="$cargo_failed" '
  /^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed;/) p += $i; if ($(i+1) ~ /^failed;/) f += $i } }
  END { if (cf && f == 0) f = 1; printf "tests: %d passed, %d failed\n", p + sp, f + sf }' "$log"
if [ "${#failed_steps[@]}" -ne 0 ]; then
  echo "failed: ${failed_steps[*]}" >&2
  exit 1
fi
