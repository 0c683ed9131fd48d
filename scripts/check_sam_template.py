#!/usr/bin/env python3
"""The bundle's own rules on template.yaml, as written and as SAM translates it.

Usage: check_sam_template.py [ROOT]  (default: the current directory)
Reads ROOT's routes.toml (the route table), template.yaml, Cargo.toml,
functions/*/Cargo.toml and samconfig.toml. Checks: a SAM function per function
folder building that binary; one HttpApi event per route of routes.toml on the
one HTTP API; the same routes as `cargo lambda watch` (Cargo.toml); the MQ
trigger on the consumer's queues and its one schedule (the outbox relay); for
every function: its reserved concurrency from routes.toml, the alias `live`
with a DeploymentPreference (a canary in prod) rolled back by at least two
CloudWatch alarms that watch this function, Tracing Active, JSON LoggingConfig
with both log levels into a log group of its own with a retention; the two
secrets (the JWT key apart from the connection URIs); least-privilege roles;
samconfig.toml's dev and prod environments. Prints one line per failure and, last, the
number of checks that passed. Needs PyYAML and aws-sam-translator
(scripts/validate-aws.sh installs both into .dev/venv-aws).
"""

import json
import logging
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
RESERVED = {f["name"]: f["lambda_reserved_concurrency"] for f in _functions}
SECRET_KEYS = {"JWT_SECRET_KEY", "JWT_PREVIOUS_SECRET_KEY", "MONGODB_URI", "RABBITMQ_URI"}
SECRETS = {"FinAppJwtSecret", "FinAppConnectionSecret"}
ALIAS = "live"
ENVIRONMENTS = {"dev", "prod"}
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
check(variables.get("FINAPP_SECRET_ID") == {"Fn::Sub": "${FinAppJwtSecret},${FinAppConnectionSecret}"},
      "Globals: FINAPP_SECRET_ID is not both secrets, comma-separated")
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

# --- the secrets: the JWT key apart from the connection URIs ------------------
secrets = {lid: r for lid, r in resources.items() if r.get("Type") == "AWS::SecretsManager::Secret"}
check(set(secrets) == SECRETS, f"secrets {sorted(secrets)}, expected {sorted(SECRETS)}")
jwt = secrets.get("FinAppJwtSecret", {}).get("Properties", {})
gen = jwt.get("GenerateSecretString", {})
check(gen.get("GenerateStringKey") == "JWT_SECRET_KEY", "FinAppJwtSecret does not generate JWT_SECRET_KEY")
check(gen.get("PasswordLength", 0) >= 32 and gen.get("ExcludePunctuation") is True,
      "FinAppJwtSecret's JWT_SECRET_KEY must be >= 32 characters without punctuation")
# Nothing of the stack's parameters may reach the JWT secret: a change of one
# would regenerate the key and sign everybody out.
check("Ref" not in json.dumps(jwt) and "Fn::Sub" not in json.dumps(jwt),
      "FinAppJwtSecret depends on a parameter or resource: updating it would regenerate the key")
conn = secrets.get("FinAppConnectionSecret", {}).get("Properties", {})
sst = conn.get("SecretString", {})
sst = sst.get("Fn::Sub", "") if isinstance(sst, dict) else sst
try:
    sst_keys = set(json.loads(sst))
except ValueError:
    sst_keys = set()
check(sst_keys == {"MONGODB_URI", "RABBITMQ_URI"}, f"FinAppConnectionSecret keys {sorted(sst_keys)}")
for name in ("MongoDbUri", "RabbitMqUri"):
    check(params.get(name, {}).get("NoEcho") is True, f"parameter {name} is not NoEcho")
    check(f"${{{name}}}" in sst, f"FinAppConnectionSecret does not use ${{{name}}}")

# --- every function: capacity, gradual deploys, logs and traces ----------------
mapping = template.get("Mappings", {}).get("Environments", {})
check(set(mapping) == ENVIRONMENTS, f"Mappings.Environments has {sorted(mapping)}, expected {sorted(ENVIRONMENTS)}")
check(set(params.get("Environment", {}).get("AllowedValues", [])) == ENVIRONMENTS,
      "parameter Environment must allow exactly dev and prod")
check(str(mapping.get("prod", {}).get("DeploymentType", "")).startswith("Canary"),
      f"prod's DeploymentType {mapping.get('prod', {}).get('DeploymentType')!r} is not a canary")
for env, values in mapping.items():
    check(values.get("ApplicationLogLevel") in ("TRACE", "DEBUG", "INFO"),
          f"{env}: ApplicationLogLevel above INFO would drop the EMF metric lines (they carry no level)")
    check(values.get("SystemLogLevel") in ("DEBUG", "INFO", "WARN"), f"{env}: SystemLogLevel invalid")
    check(isinstance(values.get("LogRetentionDays"), int), f"{env}: LogRetentionDays is not a number")


def in_env(value):
    """{"Fn::FindInMap": ["Environments", {"Ref": "Environment"}, KEY]} -> KEY."""
    args = value.get("Fn::FindInMap") if isinstance(value, dict) else None
    if isinstance(args, list) and args[:2] == ["Environments", ref("Environment")]:
        return args[2]
    return None


check(effective({}, "Tracing") == "Active", "Globals: Tracing is not Active")
for name in folders:
    lids = by_binary.get(name, [])
    if len(lids) != 1:
        continue
    lid = lids[0]
    props = functions[lid].get("Properties", {})
    check(props.get("ReservedConcurrentExecutions") == RESERVED[name],
          f"{lid}: ReservedConcurrentExecutions {props.get('ReservedConcurrentExecutions')}, "
          f"routes.toml says {RESERVED[name]}")
    check(effective(props, "Tracing") == "Active", f"{lid}: Tracing is not Active")
    check(effective(props, "AutoPublishAlias") == ALIAS, f"{lid}: AutoPublishAlias is not {ALIAS}")
    pref = effective(props, "DeploymentPreference") or {}
    check(in_env(pref.get("Type")) == "DeploymentType",
          f"{lid}: DeploymentPreference Type is not the environment's DeploymentType")
    alarms = pref.get("Alarms", [])
    check(len(alarms) >= 2, f"{lid}: {len(alarms)} rollback alarms, expected at least 2")
    for a in alarms:
        alid = a.get("Ref") if isinstance(a, dict) else None
        alarm = resources.get(alid, {})
        if check(alarm.get("Type") == "AWS::CloudWatch::Alarm", f"{lid}: rollback alarm {a} is not an alarm of this template"):
            body = json.dumps(alarm.get("Properties", {}))
            check(json.dumps(ref(lid)) in body or f"${{{lid}}}" in body or f'"{name}"' in body,
                  f"{lid}: alarm {alid} watches no metric of this function")
    log_config = props.get("LoggingConfig", {})
    check(log_config.get("LogFormat") == "JSON", f"{lid}: LoggingConfig LogFormat is not JSON")
    check(in_env(log_config.get("ApplicationLogLevel")) == "ApplicationLogLevel"
          and in_env(log_config.get("SystemLogLevel")) == "SystemLogLevel",
          f"{lid}: LoggingConfig log levels are not the environment's")
    group_lid = (log_config.get("LogGroup") or {}).get("Ref") if isinstance(log_config.get("LogGroup"), dict) else None
    group = resources.get(group_lid, {})
    if check(group.get("Type") == "AWS::Logs::LogGroup", f"{lid}: LoggingConfig LogGroup is not a log group of this template"):
        check(in_env(group["Properties"].get("RetentionInDays")) == "LogRetentionDays",
              f"{group_lid}: RetentionInDays is not the environment's LogRetentionDays")
groups = [r.get("Properties", {}).get("LoggingConfig", {}).get("LogGroup") for r in functions.values()]
check(len({json.dumps(g) for g in groups}) == len(groups), "two functions share a log group")

outputs = template.get("Outputs", {})
check(any(o.get("Value") == {"Fn::Sub": "https://${FinAppHttpApi}.execute-api.${AWS::Region}.${AWS::URLSuffix}/"}
          for o in outputs.values()), "no output with the HTTP API URL")
for secret in sorted(SECRETS):
    check(any(o.get("Value") == ref(secret) for o in outputs.values()), f"no output with {secret}'s ARN")

# --- as CloudFormation will see it: SAM's own translation ------------------------
class NoManagedPolicies:
    def load(self):
        return {}  # the template names no managed policy; ARNs need no lookup


sam = yaml.load((root / "template.yaml").read_text(), Loader=CfnLoader)
for res in sam["Resources"].values():
    if res.get("Type") == "AWS::Serverless::Function":
        # What `sam package` does: the local code becomes an uploaded zip.
        res["Properties"]["CodeUri"] = "s3://bucket/function.zip"
# Offline there is no feature-toggle config; the translator warns once per
# DeploymentPreference that it falls back to the defaults, which is what we want.
logging.getLogger("samtranslator.feature_toggle").setLevel(logging.ERROR)
cfn = transform(sam, {"AWS::Region": "us-east-1", "Environment": "prod"}, NoManagedPolicies())
out = cfn["Resources"]

# Each function: an alias `live` on a published version, moved by a CodeDeploy
# deployment group that the function's alarms roll back.
groups = {lid: r["Properties"] for lid, r in out.items() if r["Type"] == "AWS::CodeDeploy::DeploymentGroup"}
for lid, res in functions.items():
    alias = out.get(f"{lid}Alias{ALIAS}")
    if not check(alias is not None and alias["Type"] == "AWS::Lambda::Alias",
                 f"{lid}: no translated alias {ALIAS}"):
        continue
    policy = alias.get("UpdatePolicy", {}).get("CodeDeployLambdaAliasUpdate", {})
    group = groups.get((policy.get("DeploymentGroupName") or {}).get("Ref"), {})
    configured = [a.get("Name") for a in group.get("AlarmConfiguration", {}).get("Alarms", [])]
    check(group.get("AlarmConfiguration", {}).get("Enabled") is True and len(configured) >= 2,
          f"{lid}: the translated deployment group has {len(configured)} rollback alarms")
    check("DEPLOYMENT_STOP_ON_ALARM" in json.dumps(group.get("AutoRollbackConfiguration", {})),
          f"{lid}: the deployment group does not roll back on an alarm")

paths = out.get("FinAppHttpApi", {}).get("Properties", {}).get("Body", {}).get("paths", {})
api_routes = {(m.upper(), p) for p, methods in paths.items() for m in methods}
check(api_routes == set().union(*ROUTES.values()), f"translated HTTP API routes {sorted(api_routes)}")

rules = [r["Properties"] for r in out.values() if r["Type"] == "AWS::Events::Rule"]
# The rule invokes the consumer's alias, so a relay also moves by its deployment.
check(len(rules) == 1 and any(t.get("Arn") == ref(f"{consumer_lids[0]}Alias{ALIAS}")
                              for t in rules[0].get("Targets", [])) if consumer_lids else False,
      f"expected one EventBridge rule, invoking notify-consumer's alias {ALIAS} (the outbox relay)")

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
    managed = sorted(json.dumps(a) for a in role["Properties"].get("ManagedPolicyArns", []))
    check(len(managed) == 2 and "AWSXrayWriteOnlyAccess" in managed[0] and "AWSLambdaBasicExecutionRole" in managed[1],
          f"{lid}: managed policies {managed}, expected only AWSLambdaBasicExecutionRole (logs) "
          "and AWSXrayWriteOnlyAccess (traces)")
    allowed = {("secretsmanager:GetSecretValue", json.dumps(ref(s)), None) for s in SECRETS}
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
    for s in sorted(SECRETS):
        check(("secretsmanager:GetSecretValue", json.dumps(ref(s)), None) in granted, f"{lid}: cannot read {s}")
    if binary == CONSUMER:
        check(granted == allowed, f"{lid}: missing MQ permissions {sorted(allowed - granted)}")

# --- samconfig.toml, if any -----------------------------------------------------
samconfig = root / "samconfig.toml"
if check(samconfig.exists(), "no samconfig.toml"):
    config = tomllib.loads(samconfig.read_text())
    stacks = set()
    for env in sorted(ENVIRONMENTS):
        deploy = config.get(env, {}).get("deploy", {}).get("parameters", {})
        overrides = deploy.get("parameter_overrides", "")
        overrides = " ".join(overrides) if isinstance(overrides, list) else str(overrides)
        check(f"Environment={env}" in overrides.split(),
              f"samconfig.toml: [{env}.deploy.parameters] does not set Environment={env}")
        check(not any(s in overrides for s in ("MongoDbUri", "RabbitMqUri")),
              f"samconfig.toml: [{env}] must not hold secret parameter values")
        check(deploy.get("resolve_s3") is True, f"samconfig.toml: [{env}] deploy resolve_s3 is not true")
        stack = config.get(env, {}).get("global", {}).get("parameters", {}).get("stack_name")
        check(bool(stack), f"samconfig.toml: [{env}.global.parameters] has no stack_name")
        stacks.add(stack)
    check(len(stacks) == len(ENVIRONMENTS), "samconfig.toml: dev and prod must be different stacks")

for failure in failures:
    print(f"FAIL: {failure}")
print(passed)
sys.exit(1 if failures else 0)
