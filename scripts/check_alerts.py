#!/usr/bin/env python3
"""Checks infra/k8s/alerts.yaml: it parses as YAML, has the shape of a
Prometheus rules file, holds the alerts docs/operations.md describes, and
names only metrics the code records (the constants of shared/src/metrics.rs,
plus a histogram's _bucket/_sum/_count).

Usage: scripts/check_alerts.py [DIR]   (DIR's infra/k8s/alerts.yaml; default: this repository)
"""

import re
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
WANTED = {"FinAppOutboxLate", "FinAppEventsDeadLettered", "FinAppHttp5xxRate"}
DURATION = re.compile(r"^\d+[smhdwy]$")


def main():
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO
    source = (REPO / "shared/src/metrics.rs").read_text()
    known = set(re.findall(r'pub const \w+: &str = "(finapp_\w+)";', source))
    problems = []
    try:
        rules_file = yaml.safe_load((root / "infra/k8s/alerts.yaml").read_text())
    except (OSError, yaml.YAMLError) as err:
        print(f"alerts.yaml: {err}")
        return 1
    groups = rules_file.get("groups") if isinstance(rules_file, dict) else None
    if not isinstance(groups, list) or not groups:
        print("alerts.yaml: no groups")
        return 1
    seen = set()
    for group in groups:
        if not isinstance(group.get("name"), str) or not isinstance(group.get("rules"), list):
            problems.append(f"group {group!r}: needs name and rules")
            continue
        for rule in group["rules"]:
            name = rule.get("alert")
            if not isinstance(name, str):
                problems.append(f"rule {rule!r}: no alert name")
                continue
            seen.add(name)
            expr = rule.get("expr")
            if not isinstance(expr, str) or not expr.strip():
                problems.append(f"{name}: no expr")
                continue
            if "for" in rule and not DURATION.match(str(rule["for"])):
                problems.append(f"{name}: for {rule['for']!r} is not a duration")
            if not isinstance(rule.get("labels", {}).get("severity"), str):
                problems.append(f"{name}: no severity label")
            annotations = rule.get("annotations", {})
            for key in ("summary", "description", "runbook"):
                if not isinstance(annotations.get(key), str):
                    problems.append(f"{name}: no {key} annotation")
            for metric in re.findall(r"\bfinapp_\w+", expr):
                base = re.sub(r"_(bucket|sum|count)$", "", metric)
                if metric not in known and base not in known:
                    problems.append(f"{name}: {metric} is not a metric the code records")
            if expr.count("(") != expr.count(")"):
                problems.append(f"{name}: unbalanced parentheses")
    missing = WANTED - seen
    if missing:
        problems.append(f"missing alerts {sorted(missing)}")
    for problem in problems:
        print(f"alerts.yaml: {problem}")
    if not problems:
        print(f"alerts.yaml: {len(seen)} alerts ok")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
