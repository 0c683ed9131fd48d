#!/usr/bin/env bash
# Offline validation of the AWS and GitHub Actions files: template.yaml,
# samconfig.toml and .github/workflows/*.yml. Installs what is missing (pinned):
#   .dev/venv-aws   aws-sam-cli + cfn-lint (PyPI)
#   .dev/bin        actionlint (Go module proxy)
#   ShellCheck      (Debian package) if it can be installed; actionlint uses it
# then runs sam validate, sam validate --lint, cfn-lint, actionlint, and the
# bundle-specific checks below. Needs no AWS account, credentials or network
# to AWS; idempotent; runnable from any directory.
# Usage: scripts/validate-aws.sh [DIR]  validates DIR's files (default: this
# repository); tests point it at deliberately broken copies. Every check runs,
# and the last line names those that failed.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TARGET="$(cd "${1:-$ROOT}" && pwd)"

SAM_CLI_VERSION=1.170.0
CFN_LINT_VERSION=1.58.0
ACTIONLINT_VERSION=v1.7.12

VENV="$ROOT/.dev/venv-aws"
BIN="$ROOT/.dev/bin"
export PATH="$BIN:$PATH:/usr/local/go/bin"
# SAM CLI sends usage telemetry to AWS unless told not to.
export SAM_CLI_TELEMETRY=0
# The SAM translator wants a region for pseudo parameters; nothing is called there.
export AWS_DEFAULT_REGION=us-east-1

log() { printf '[validate-aws] %s\n' "$*" >&2; }
die() { log "FAILED: $*"; exit 1; }

# ------------------------------------------------------------------ install --
install_venv() {
  local pins="aws-sam-cli==$SAM_CLI_VERSION cfn-lint==$CFN_LINT_VERSION"
  # A stamp of the pins saves a slow `pip show` on every run.
  if [ -x "$VENV/bin/sam" ] && [ "$(cat "$VENV/.pins" 2>/dev/null)" = "$pins" ]; then
    return
  fi
  log "installing $pins into $VENV"
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
  # shellcheck disable=SC2086 # $pins is a list of requirement specifiers
  "$VENV/bin/pip" install --quiet --disable-pip-version-check $pins
  printf '%s' "$pins" >"$VENV/.pins"
}

install_actionlint() {
  if [ -x "$BIN/actionlint" ] &&
    [ "$("$BIN/actionlint" -version 2>/dev/null | head -n1)" = "$ACTIONLINT_VERSION" ]; then
    return
  fi
  local go
  go="$(command -v go || true)"
  [ -n "$go" ] || die "Go is needed to install actionlint (not on PATH nor in /usr/local/go/bin)"
  log "installing actionlint $ACTIONLINT_VERSION into $BIN"
  mkdir -p "$BIN"
  GOBIN="$BIN" "$go" install "github.com/rhysd/actionlint/cmd/actionlint@$ACTIONLINT_VERSION"
}

# actionlint checks `run:` scripts with shellcheck only when shellcheck is on
# PATH; without it (no root, no apt) that part is skipped, not failed.
install_shellcheck() {
  command -v shellcheck >/dev/null && return
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then sudo="sudo"; else
      log "shellcheck missing and no root: actionlint will skip run: scripts"
      return
    fi
  fi
  command -v apt-get >/dev/null || { log "shellcheck missing and no apt-get: skipped"; return; }
  log "installing shellcheck from Debian"
  if ! { $sudo apt-get update -qq &&
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq shellcheck >/dev/null; }; then
    log "shellcheck could not be installed: actionlint will skip run: scripts"
  fi
}

install_venv
install_actionlint
install_shellcheck

# ------------------------------------------------------------------- checks --
# Where the machine allows it (root, or unprivileged user namespaces), every
# validator runs in a network namespace with no interfaces: proof that none of
# them needs the network, AWS included. Elsewhere they run as they are.
offline=()
if unshare -n true 2>/dev/null; then
  offline=(unshare -n --)
elif unshare -rn true 2>/dev/null; then
  offline=(unshare -rn --)
fi

cd "$TARGET"
passed=0
failed=()
run_check() {
  local name=$1
  shift
  log "$name"
  if "${offline[@]}" "$@"; then
    passed=$((passed + 1))
  else
    log "FAILED: $name"
    failed+=("$name")
  fi
}

# No AWS credentials are needed: neither the plain translation nor --lint calls
# AWS (SAM would ask IAM only for managed policies given by name; this template
# names none). Plain `sam validate` runs the SAM translator that CloudFormation
# runs at deploy time, which catches errors that --lint alone passes.
run_check "sam validate (SAM translation)" \
  "$VENV/bin/sam" validate --region us-east-1 --template template.yaml
run_check "sam validate --lint" \
  "$VENV/bin/sam" validate --lint --region us-east-1 --template template.yaml
run_check "cfn-lint" "$VENV/bin/cfn-lint" template.yaml
shopt -s nullglob
workflows=(.github/workflows/*.yml .github/workflows/*.yaml)
shopt -u nullglob
[ "${#workflows[@]}" -gt 0 ] || die "no workflow files in .github/workflows"
run_check "actionlint (${#workflows[@]} workflows$(command -v shellcheck >/dev/null && echo ', with shellcheck'))" \
  "$BIN/actionlint" "${workflows[@]}"

# The bundle's own rules (scripts/check_sam_template.py), on the template as
# written and as SAM translates it, against routes.toml.
log "bundle checks (functions, routes, queues, secret, IAM)"
if bundle_out="$("${offline[@]}" "$VENV/bin/python" "$ROOT/scripts/check_sam_template.py" .)"; then
  bundle_passed="$(printf '%s\n' "$bundle_out" | tail -n1)"
  log "bundle checks: $bundle_passed passed"
  passed=$((passed + bundle_passed))
else
  printf '%s\n' "$bundle_out" | sed '/^[0-9]*$/d' >&2
  log "FAILED: bundle checks"
  failed+=("bundle checks")
fi

if [ "${#failed[@]}" -ne 0 ]; then
  echo "aws validation: $passed checks passed; FAILED: $(IFS=,; echo "${failed[*]}")"
  exit 1
fi
echo "aws validation: $passed checks passed"
