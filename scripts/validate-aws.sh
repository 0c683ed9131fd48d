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

# The bundle's own rules, on the template as written and as SAM translates it.
# Prints one line per failure and, last, the number of checks that passed.
log "bundle checks (functions, routes, queues, secret, IAM)"
if bundle_out="$("${offline[@]}" "$VENV/bin/python" - <<'PY'
import json
import sys
import tomllib
from pathlib import Path

import yaml
from samtranslator.translator.transform import transform

ROUTES = {
    "signup": ("POST", "/signup"),
    "login": ("POST", "/login"),
    "apply": ("POST", "/apply"),
    "status": ("GET", "/status"),
    "dashboard-info": ("GET", "/dashboard-info"),
    "financing-options": ("GET", "/financing-options"),
    "select-financing-option": ("POST", "/select-financing-option"),
    "update-status": ("PUT", "/update_status/{user}/{status}"),
    "admin-applications": ("GET", "/admin/applications"),
    "admin-update-status": ("PUT", "/admin/update_status/{application_id}/{status}"),
    "analytics": ("GET", "/analytics"),
}
CONSUMER = "notify-consumer"
QUEUES = {"user_registered", "user_activity", "application_submitted", "financing_option_selected"}
SECRET_KEYS = {"JWT_SECRET_KEY", "MONGODB_URI", "RABBITMQ_URI"}
EC2_ACTIONS = {
    "ec2:CreateNetworkInterface", "ec2:DeleteNetworkInterface", "ec2:DescribeNetworkInterfaces",
    "ec2:DescribeSecurityGroups", "ec2:DescribeSubnets", "ec2:DescribeVpcs",
}

passed = 0
failures = []


def check(ok, what):
    global passed
    if ok:
        passed += 1
    else:
        failures.append(what)
    return ok


class CfnLoader(yaml.SafeLoader):
    """Reads CloudFormation's short-form tags (!Ref, !Sub, ...) as their long
    JSON forms, and any other tag as plain data, so nothing fails to load."""


def _intrinsic(loader, suffix, node):
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    if suffix == "Ref":
        return {"Ref": value}
    if suffix == "Condition":
        return {"Condition": value}
    if suffix == "GetAtt" and isinstance(value, str):
        value = value.split(".", 1)
    return {f"Fn::{suffix}": value}


CfnLoader.add_multi_constructor("!", _intrinsic)
# YAML 1.1 would read an unquoted 2010-09-09 as a date, which CloudFormation does not.
CfnLoader.yaml_implicit_resolvers = {
    k: [(tag, rx) for tag, rx in v if tag != "tag:yaml.org,2002:timestamp"]
    for k, v in CfnLoader.yaml_implicit_resolvers.items()
}

root = Path.cwd()
template = yaml.load((root / "template.yaml").read_text(), Loader=CfnLoader)
resources = template.get("Resources", {})
params = template.get("Parameters", {})
glob_fn = template.get("Globals", {}).get("Function", {})


def ref(name):
    return {"Ref": name}


def effective(props, key):
    return props[key] if key in props else glob_fn.get(key)


# --- every function folder is exactly one SAM function building that binary --
folders = {}
for cargo in sorted(root.glob("functions/*/Cargo.toml")):
    manifest = tomllib.loads(cargo.read_text())
    bins = [b["name"] for b in manifest.get("bin", [])] or [manifest["package"]["name"]]
    folders[cargo.parent.name] = bins
check(set(folders) == set(ROUTES) | {CONSUMER},
      f"functions/ holds {sorted(folders)}, expected the 12 known functions")

functions = {lid: r for lid, r in resources.items() if r.get("Type") == "AWS::Serverless::Function"}
by_binary = {}
for lid, res in functions.items():
    binary = res.get("Metadata", {}).get("BuildProperties", {}).get("Binary")
    by_binary.setdefault(binary, []).append(lid)
check(len(functions) == len(folders),
      f"{len(functions)} AWS::Serverless::Function resources for {len(folders)} function folders")
for name, bins in folders.items():
    check(name in bins, f"functions/{name}: no binary named {name} (binaries: {bins})")
    lids = by_binary.get(name, [])
    if not check(len(lids) == 1, f"functions/{name}: {len(lids)} SAM functions with Binary {name}: {lids}"):
        continue
    lid = lids[0]
    res = functions[lid]
    props = res.get("Properties", {})
    pascal = "".join(part.capitalize() for part in name.split("-")) + "Function"
    check(lid == pascal, f"{name}: logical id {lid}, expected {pascal}")
    check(res["Metadata"].get("BuildMethod") == "rust-cargolambda", f"{lid}: BuildMethod is not rust-cargolambda")
    check(effective(props, "CodeUri") == ".", f"{lid}: CodeUri is not the workspace root '.'")
    check(effective(props, "Runtime") == "provided.al2023", f"{lid}: Runtime is not provided.al2023")
    check(effective(props, "Handler") == "bootstrap", f"{lid}: Handler is not bootstrap")
    check(effective(props, "Architectures") == ["arm64"], f"{lid}: Architectures is not [arm64]")
for binary in by_binary:
    check(binary in folders, f"Binary {binary!r} in template.yaml has no functions/{binary} folder")

variables = glob_fn.get("Environment", {}).get("Variables", {})
check(variables.get("FINAPP_SECRET_ID") == ref("FinAppSecret"), "Globals: FINAPP_SECRET_ID is not !Ref FinAppSecret")
for var in ("MONGODB_DATABASE", "RUST_LOG"):
    check(var in variables, f"Globals: environment variable {var} missing")
leaked = SECRET_KEYS & set(variables) | {
    k for r in functions.values() for k in r.get("Properties", {}).get("Environment", {}).get("Variables", {})
    if k in SECRET_KEYS}
check(not leaked, f"secret values set as plain environment variables: {sorted(leaked)}")

# --- routes: one HttpApi event each, on the one HttpApi, production paths ----
apis = [lid for lid, r in resources.items() if r.get("Type") == "AWS::Serverless::HttpApi"]
check(apis == ["FinAppHttpApi"], f"HttpApi resources {apis}, expected exactly FinAppHttpApi")
template_routes = set()
for name, (method, path) in ROUTES.items():
    lids = by_binary.get(name, [])
    if len(lids) != 1:
        continue
    events = functions[lids[0]].get("Properties", {}).get("Events", {})
    if not check(len(events) == 1, f"{name}: {len(events)} events, expected one HttpApi event"):
        continue
    event = next(iter(events.values()))
    ep = event.get("Properties", {})
    check(event.get("Type") == "HttpApi", f"{name}: event type {event.get('Type')}, expected HttpApi")
    check(ep.get("ApiId") == ref("FinAppHttpApi"), f"{name}: event not attached to FinAppHttpApi")
    check((str(ep.get("Method", "")).upper(), ep.get("Path")) == (method, path),
          f"{name}: route {ep.get('Method')} {ep.get('Path')}, expected {method} {path}")
    template_routes.add((name, str(ep.get("Method", "")).upper(), ep.get("Path")))

# The same routes as `cargo lambda watch` serves locally (Cargo.toml).
router = (tomllib.loads((root / "Cargo.toml").read_text())
          .get("workspace", {}).get("metadata", {}).get("lambda", {}).get("watch", {}).get("router", {}))
watch_routes = {(t["function"], t["method"].upper(), path) for path, targets in router.items() for t in targets}
check(watch_routes == template_routes,
      "routes differ from Cargo.toml [workspace.metadata.lambda.watch.router]: "
      f"only in template {sorted(template_routes - watch_routes)}, only in Cargo.toml {sorted(watch_routes - template_routes)}")

# --- notify-consumer: Amazon MQ events on the four queues ---------------------
consumer_lids = by_binary.get(CONSUMER, [])
if check(len(consumer_lids) == 1, "notify-consumer: no single SAM function"):
    events = functions[consumer_lids[0]].get("Properties", {}).get("Events", {})
    seen = []
    for ename, event in events.items():
        ep = event.get("Properties", {})
        if not check(event.get("Type") == "MQ", f"notify-consumer event {ename}: type {event.get('Type')}, expected MQ"):
            continue
        seen += ep.get("Queues", [])
        check(ep.get("Broker") == ref("BrokerArn"), f"notify-consumer event {ename}: Broker is not !Ref BrokerArn")
        access = {a.get("Type"): a.get("URI") for a in ep.get("SourceAccessConfigurations", [])}
        check(access == {"BASIC_AUTH": ref("BrokerCredentialsSecretArn"), "VIRTUAL_HOST": ref("BrokerVirtualHost")},
              f"notify-consumer event {ename}: SourceAccessConfigurations {access}")
    check(sorted(seen) == sorted(QUEUES), f"notify-consumer consumes {sorted(seen)}, expected {sorted(QUEUES)}")
for name in ("BrokerArn", "BrokerCredentialsSecretArn", "BrokerVirtualHost"):
    check(params.get(name, {}).get("Type") == "String", f"parameter {name} missing or not a String")
check(params.get("BrokerVirtualHost", {}).get("Default") == "/", "BrokerVirtualHost default is not '/'")

# --- the secret ----------------------------------------------------------------
secrets = {lid: r for lid, r in resources.items() if r.get("Type") == "AWS::SecretsManager::Secret"}
check(list(secrets) == ["FinAppSecret"], f"secrets {list(secrets)}, expected exactly FinAppSecret")
gen = secrets.get("FinAppSecret", {}).get("Properties", {}).get("GenerateSecretString", {})
check(gen.get("GenerateStringKey") == "JWT_SECRET_KEY", "FinAppSecret does not generate JWT_SECRET_KEY")
check(gen.get("PasswordLength", 0) >= 32 and gen.get("ExcludePunctuation") is True,
      "FinAppSecret's JWT_SECRET_KEY must be >= 32 characters without punctuation")
sst = gen.get("SecretStringTemplate", {})
sst = sst.get("Fn::Sub", "") if isinstance(sst, dict) else sst
try:
    sst_keys = set(json.loads(sst))
except ValueError:
    sst_keys = set()
check(sst_keys == {"MONGODB_URI", "RABBITMQ_URI"}, f"SecretStringTemplate keys {sorted(sst_keys)}")
for name in ("MongoDbUri", "RabbitMqUri"):
    check(params.get(name, {}).get("NoEcho") is True, f"parameter {name} is not NoEcho")
    check(f"${{{name}}}" in sst, f"SecretStringTemplate does not use ${{{name}}}")
outputs = template.get("Outputs", {})
check(any(o.get("Value") == {"Fn::Sub": "https://${FinAppHttpApi}.execute-api.${AWS::Region}.${AWS::URLSuffix}/"}
          for o in outputs.values()), "no output with the HTTP API URL")
check(any(o.get("Value") == ref("FinAppSecret") for o in outputs.values()), "no output with the secret ARN")

# --- as CloudFormation will see it: SAM's own translation ------------------------
class NoManagedPolicies:
    def load(self):
        return {}  # the template names no managed policy; ARNs need no lookup


sam = yaml.load((root / "template.yaml").read_text(), Loader=CfnLoader)
for res in sam["Resources"].values():
    if res.get("Type") == "AWS::Serverless::Function":
        # What `sam package` does: the local code becomes an uploaded zip.
        res["Properties"]["CodeUri"] = "s3://bucket/function.zip"
cfn = transform(sam, {"AWS::Region": "us-east-1"}, NoManagedPolicies())
out = cfn["Resources"]

paths = out.get("FinAppHttpApi", {}).get("Properties", {}).get("Body", {}).get("paths", {})
api_routes = {(m.upper(), p) for p, methods in paths.items() for m in methods}
check(api_routes == set(ROUTES.values()), f"translated HTTP API routes {sorted(api_routes)}")

esms = [r["Properties"] for r in out.values() if r["Type"] == "AWS::Lambda::EventSourceMapping"]
check(len(esms) == len(QUEUES) and all(len(e.get("Queues", [])) == 1 for e in esms),
      "expected one event source mapping per queue (Amazon MQ allows one queue per mapping)")


def unsub(value):
    """{"Fn::Sub": ["${x}", {"x": V}]} (the policy templates' form) -> V."""
    if isinstance(value, dict) and isinstance(value.get("Fn::Sub"), list):
        text, names = value["Fn::Sub"]
        if text.startswith("${") and text.endswith("}") and text[2:-1] in names:
            return names[text[2:-1]]
    return value


def statements(doc, conditional=None):
    """Yields (statement, condition) for every statement, through Fn::If."""
    for st in doc.get("Statement", []):
        if isinstance(st, dict) and "Fn::If" in st:
            cond, yes, no = st["Fn::If"]
            for branch in (yes, no):
                if branch != ref("AWS::NoValue"):
                    yield branch, cond
        else:
            yield st, conditional


def as_list(value):
    return value if isinstance(value, list) else [value]


for lid, res in functions.items():
    binary = res.get("Metadata", {}).get("BuildProperties", {}).get("Binary")
    role = out.get(f"{lid}Role")
    if not check(role is not None and role["Type"] == "AWS::IAM::Role", f"{lid}: no SAM-generated role"):
        continue
    managed = [json.dumps(a) for a in role["Properties"].get("ManagedPolicyArns", [])]
    check(len(managed) == 1 and "AWSLambdaBasicExecutionRole" in managed[0],
          f"{lid}: managed policies {managed}, expected only AWSLambdaBasicExecutionRole (logs)")
    allowed = {("secretsmanager:GetSecretValue", json.dumps(ref("FinAppSecret")), None)}
    if binary == CONSUMER:
        allowed |= {
            ("secretsmanager:GetSecretValue", json.dumps(ref("BrokerCredentialsSecretArn")), None),
            ("mq:DescribeBroker", json.dumps(ref("BrokerArn")), None),
        }
        allowed |= {(a, json.dumps("*"), "BrokerIsPrivate") for a in EC2_ACTIONS}
    granted = set()
    for policy in role["Properties"].get("Policies", []):
        for st, cond in statements(policy["PolicyDocument"]):
            check(st.get("Effect") == "Allow" and "NotAction" not in st and "NotResource" not in st,
                  f"{lid}: unexpected statement shape {st}")
            for action in as_list(st.get("Action", [])):
                for resource in as_list(st.get("Resource", [])):
                    granted.add((action, json.dumps(unsub(resource)), cond))
    extra = granted - allowed
    check(not extra, f"{lid}: permissions beyond least privilege: {sorted(extra)}")
    check(("secretsmanager:GetSecretValue", json.dumps(ref("FinAppSecret")), None) in granted,
          f"{lid}: cannot read FinAppSecret")
    if binary == CONSUMER:
        check(granted == allowed, f"{lid}: missing MQ permissions {sorted(allowed - granted)}")

# --- samconfig.toml, if any -----------------------------------------------------
samconfig = root / "samconfig.toml"
if samconfig.exists():
    deploy = tomllib.loads(samconfig.read_text()).get("default", {}).get("deploy", {}).get("parameters", {})
    check("parameter_overrides" not in deploy or "MongoDbUri" not in str(deploy["parameter_overrides"]),
          "samconfig.toml must not hold secret parameter values")
    check(deploy.get("resolve_s3") is True, "samconfig.toml: deploy resolve_s3 is not true")

for failure in failures:
    print(f"FAIL: {failure}")
print(passed)
sys.exit(1 if failures else 0)
PY
)"; then
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
