#!/usr/bin/env bash
# Validates the Kubernetes bundle (infra/k8s) and the Dockerfile offline: no
# cluster, no Docker engine. Each overlay is rendered with the pinned kustomize
# (the one `kubectl kustomize` embeds) and the rendered output is checked:
#   dev                 (on a temporary copy holding a secrets.env made from the example)
#   prod
#   ingress             prod with the Ingress in place of the Gateway API
#   blue + live         live points the HTTPRoutes at blue, as committed
#   green + live        live switched to green by its one line, on a temporary copy
# For each: the Gateway and HTTPRoutes against the Gateway API CRDs at their
# pinned version (scripts/check_crds.py, strict), everything else with
# kubernetes-validate --strict against Kubernetes $K8S_VERSION's schemas; Pod
# Security "restricted" with the admission code itself (tools/podsecurity);
# kube-score; scripts/check_k8s_routes.py (every function and route of
# routes.toml, HPAs and PDBs, the Secret rules). Then: prod rendered twice is
# the same and holds no Secret; a changed config value rolls every Deployment
# (scripts/check_k8s_rollout.py); the generated files match routes.toml
# (scripts/routes.py); the alerting rules (scripts/check_alerts.py); hadolint
# on the Dockerfile.
# Tools come from scripts/deploy-tools.sh. Runs from any directory.
# Usage: scripts/validate-k8s.sh [DIR]  validates DIR's infra/k8s, routes.toml
# and Dockerfile (default: this repository); tests point it at broken copies.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TARGET="$(cd "${1:-$REPO}" && pwd)"
source "$REPO/scripts/deploy-tools.sh"

# Newest Kubernetes whose schemas kubernetes-validate 1.37.0 bundles.
K8S_VERSION=1.37.0
PY="$VALIDATE_VENV/bin/python"
# kube-score: the tag is chosen at deploy time (`kustomize edit set image`,
# docs/deploy.md), so a "latest" in the committed files is expected; the
# seccomp check is optional in kube-score and wanted here. Warnings (a pod
# anti-affinity) are printed, not failed.
KUBE_SCORE_ARGS=(--ignore-test container-image-tag --enable-optional-test container-seccomp-profile
  --output-format ci)

cd "$TARGET"
passed=0
failed=()
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

step() { # step NAME COMMAND...: runs one check, counting it
  local name=$1
  shift
  if "$@" >"$tmp/step.out" 2>&1; then
    passed=$((passed + 1))
    echo "  ok    $name"
  else
    cat "$tmp/step.out"
    echo "  FAIL  $name"
    failed+=("$name")
  fi
}

crds() { # crds FILE: the custom resources against the Gateway API CRDs; the rest into FILE.rest
  "$PY" "$REPO/scripts/check_crds.py" "$GATEWAY_API_CRDS" "$1" --rest "$1.rest"
}
kv() { # kv FILE: kubernetes-validate --strict on what crds left, where a WARN (no schema for a kind) fails too
  [ -s "$1.rest" ] || { echo "no $1.rest: the CRD check did not run"; return 1; }
  "$VALIDATE_VENV/bin/kubernetes-validate" --strict --quiet -k "$K8S_VERSION" "$1.rest" >"$tmp/kv.out" 2>&1 || { cat "$tmp/kv.out"; return 1; }
  ! grep -qE '^(WARN|ERROR|FATAL)' "$tmp/kv.out" || { cat "$tmp/kv.out"; return 1; }
}
kube_score() { kube-score score "${KUBE_SCORE_ARGS[@]}" "$1"; }
pss() { finapp-podsecurity -level restricted <"$1"; }
routes_check() { "$PY" "$REPO/scripts/check_k8s_routes.py" . "$1" --overlay "$2"; }

# Copies of the bundle for the two renders that need a change first.
cp -r infra/k8s "$tmp/k8s-dev"
sed -e "s|^JWT_SECRET_KEY=.*|JWT_SECRET_KEY=$(head -c 48 /dev/urandom | base64 | tr -d '\n/+=')|" \
  infra/k8s/overlays/dev/secrets.env.example >"$tmp/k8s-dev/overlays/dev/secrets.env"
cp -r infra/k8s "$tmp/k8s-green"
sed -i 's/^      - colour=blue$/      - colour=green/' "$tmp/k8s-green/overlays/live/kustomization.yaml"

render() { # render NAME DIR...: kustomize build of each DIR, concatenated into $tmp/NAME.yaml
  local name=$1 dir
  shift
  : >"$tmp/$name.yaml"
  for dir in "$@"; do
    kustomize build "$dir" >>"$tmp/$name.yaml" || return 1
    echo "---" >>"$tmp/$name.yaml"
  done
}

for overlay in dev prod ingress blue green; do
  case $overlay in
    dev) dirs=("$tmp/k8s-dev/overlays/dev") ;;
    prod) dirs=(infra/k8s/overlays/prod) ;;
    ingress) dirs=(infra/k8s/overlays/ingress) ;;
    blue) dirs=(infra/k8s/overlays/live infra/k8s/overlays/blue) ;;
    green) dirs=("$tmp/k8s-green/overlays/live" infra/k8s/overlays/green) ;;
  esac
  echo "== $overlay: kustomize build ${dirs[*]#"$tmp/"}"
  if ! render "$overlay" "${dirs[@]}" 2>"$tmp/render.err"; then
    cat "$tmp/render.err"
    echo "  FAIL  $overlay: kustomize build"
    failed+=("kustomize $overlay")
    continue
  fi
  echo "  ok    $overlay renders $(grep -c '^kind:' "$tmp/$overlay.yaml") resources"
  rm -f "$tmp/$overlay.yaml.rest"
  step "$overlay: Gateway API CRDs" crds "$tmp/$overlay.yaml"
  step "$overlay: kubernetes-validate --strict" kv "$tmp/$overlay.yaml"
  step "$overlay: Pod Security restricted" pss "$tmp/$overlay.yaml"
  step "$overlay: kube-score" kube_score "$tmp/$overlay.yaml"
  if routes_check "$tmp/$overlay.yaml" "$overlay" >"$tmp/routes.out" 2>&1; then
    passed=$((passed + $(sed -n 's/^route checks: \([0-9]*\) ok.*/\1/p' "$tmp/routes.out")))
    echo "  ok    $overlay: check_k8s_routes.py ($(tail -n1 "$tmp/routes.out"))"
  else
    grep -v '^  ok ' "$tmp/routes.out"
    echo "  FAIL  $overlay: check_k8s_routes.py"
    failed+=("check_k8s_routes.py $overlay")
  fi
done

echo "== prod applied twice"
prod_twice() {
  kustomize build infra/k8s/overlays/prod >"$tmp/prod-2.yaml"
  cmp -s "$tmp/prod.yaml" <(cat "$tmp/prod-2.yaml"; echo "---") || { echo "two renders differ"; return 1; }
  ! grep -q '^kind: Secret$' "$tmp/prod-2.yaml" || { echo "prod renders a Secret"; return 1; }
}
step "prod renders the same twice and never a Secret" prod_twice
echo "== a config change rolls every pod"
config_rolls() {
  cp -r infra/k8s "$tmp/k8s-config"
  sed -i 's/^BCRYPT_COST=12$/BCRYPT_COST=13/' "$tmp/k8s-config/base/config/finapp-config.env"
  ! cmp -s infra/k8s/base/config/finapp-config.env "$tmp/k8s-config/base/config/finapp-config.env" ||
    { echo "BCRYPT_COST=12 not found in finapp-config.env"; return 1; }
  kustomize build "$tmp/k8s-config/overlays/prod" >"$tmp/prod-config.yaml"
  "$PY" "$REPO/scripts/check_k8s_rollout.py" "$tmp/prod-2.yaml" "$tmp/prod-config.yaml"
}
step "a changed finapp-config.env value changes every Deployment's pod template" config_rolls
echo "== dev without secrets.env"
dev_needs_file() {
  rm -f "$tmp/k8s-dev/overlays/dev/secrets.env"
  ! kustomize build "$tmp/k8s-dev/overlays/dev" >/dev/null 2>&1
}
step "dev does not render without its secrets.env" dev_needs_file

echo "== generated files (scripts/routes.py)"
step "routes.py: generated files match routes.toml" python3 "$REPO/scripts/routes.py" --root .

echo "== alerting rules (infra/k8s/alerts.yaml)"
step "check_alerts.py: alerts.yaml parses and names recorded metrics" "$PY" "$REPO/scripts/check_alerts.py" .

echo "== hadolint Dockerfile"
step "hadolint" "$VALIDATE_VENV/bin/hadolint" --no-color Dockerfile

if [ "${#failed[@]}" -ne 0 ]; then
  echo "k8s/docker validation: $passed checks passed; FAILED: ${failed[*]}"
  exit 1
fi
echo "k8s/docker validation: $passed checks passed"
