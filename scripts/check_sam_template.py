#!/usr/bin/env python3
"""The bundle's own rules on template.yaml, as written and as SAM translates it.

Usage: check_sam_template.py [ROOT]  (default: the current directory)
Reads ROOT's routes.toml (the route table), template.yaml, Cargo.toml,
functions/*/Cargo.toml and samconfig.toml. Checks: a SAM function per function
folder building that binary; one HttpApi event per route of routes.toml on the
one HTTP API; the same routes as `cargo lambda watch` (Cargo.toml); the MQ
trigger on the consumer's queues and its one schedule (the outbox relay); the
secret; least-privilege roles. Prints one line per failure and, last, the
number of checks that passed. Needs PyYAML and aws-sam-translator
(scripts/validate-aws.sh installs both into .dev/venv-aws).
"""

import json
import sys
import tomllib
from pathlib import Path

import yaml
from samtranslator.translator.transform import transform

sys.path.insert(0, str(Path(__file__).resolve().parent))
from routes import load  # noqa: E402

root = Path(sys.argv[1] if len(sys.argv) > 1 else ".").resolve()
_functions, _routes = load(root)
# {function: {(METHOD, path), ...}} for the HTTP functions.
ROUTES = {}
for _r in _routes:
    ROUTES.setdefault(_r.function, set()).add((_r.method, _r.path))
_consumers = [f for f in _functions if f["who"] == "event-triggered"]
if len(_consumers) != 1:
    sys.exit(f"routes.toml: expected one event-triggered function, found {len(_consumers)}")
CONSUMER = _consumers[0]["name"]
QUEUES = set(_consumers[0].get("queues", []))
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
      f"functions/ holds {sorted(folders)}, routes.toml names {sorted(set(ROUTES) | {CONSUMER})}")

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
for name, wanted in ROUTES.items():
    lids = by_binary.get(name, [])
    if len(lids) != 1:
        continue
    events = functions[lids[0]].get("Properties", {}).get("Events", {})
    got = set()
    for ename, event in events.items():
        ep = event.get("Properties", {})
        check(event.get("Type") == "HttpApi", f"{name}: event {ename} type {event.get('Type')}, expected HttpApi")
        check(ep.get("ApiId") == ref("FinAppHttpApi"), f"{name}: event {ename} not attached to FinAppHttpApi")
        got.add((str(ep.get("Method", "")).upper(), ep.get("Path")))
    check(got == wanted, f"{name}: routes {sorted(got)}, routes.toml says {sorted(wanted)}")
    template_routes |= {(name, method, path) for method, path in got}

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
    schedules = []
    for ename, event in events.items():
        ep = event.get("Properties", {})
        if event.get("Type") == "Schedule":
            schedules.append(ename)
            expression = str(ep.get("Schedule", ""))
            check(expression.startswith(("rate(", "cron(")),
                  f"notify-consumer schedule {ename}: Schedule {expression!r} is not rate(...) or cron(...)")
            check(ep.get("Enabled", True) is True and ep.get("State", "ENABLED") == "ENABLED",
                  f"notify-consumer schedule {ename} is disabled: the outbox would never be relayed")
            continue
        if not check(event.get("Type") == "MQ", f"notify-consumer event {ename}: type {event.get('Type')}, expected MQ or Schedule"):
            continue
        seen += ep.get("Queues", [])
        check(ep.get("Broker") == ref("BrokerArn"), f"notify-consumer event {ename}: Broker is not !Ref BrokerArn")
        access = {a.get("Type"): a.get("URI") for a in ep.get("SourceAccessConfigurations", [])}
        check(access == {"BASIC_AUTH": ref("BrokerCredentialsSecretArn"), "VIRTUAL_HOST": ref("BrokerVirtualHost")},
              f"notify-consumer event {ename}: SourceAccessConfigurations {access}")
    check(sorted(seen) == sorted(QUEUES), f"notify-consumer consumes {sorted(seen)}, expected {sorted(QUEUES)}")
    check(len(schedules) == 1, f"notify-consumer: {len(schedules)} Schedule events, expected one (the outbox relay)")
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
check(api_routes == set().union(*ROUTES.values()), f"translated HTTP API routes {sorted(api_routes)}")

rules = [r["Properties"] for r in out.values() if r["Type"] == "AWS::Events::Rule"]
check(len(rules) == 1 and any(t.get("Arn") == {"Fn::GetAtt": [consumer_lids[0], "Arn"]}
                              for t in rules[0].get("Targets", [])) if consumer_lids else False,
      "expected one EventBridge rule, invoking notify-consumer (the outbox relay)")

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
