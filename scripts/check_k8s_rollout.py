#!/usr/bin/env python3
"""A config change rolls every pod: two renders of one overlay compared.

Usage: check_k8s_rollout.py BEFORE_YAML AFTER_YAML
  AFTER is BEFORE's overlay rendered again with one value of
  base/config/finapp-config.env changed (validate-k8s.sh does so).

Checks: the generated ConfigMap has a new name; every Deployment's pod
template differs (so `kubectl apply` starts a rollout of each), and only in
that name. Prints one line per Deployment; exits 1 on any failure.
"""

import json
import sys
from pathlib import Path

import yaml


def deployments(path):
    docs = [d for d in yaml.safe_load_all(Path(path).read_text(encoding="utf-8")) if d]
    return ({d["metadata"]["name"]: d["spec"]["template"] for d in docs if d["kind"] == "Deployment"},
            {d["metadata"]["name"] for d in docs if d["kind"] == "ConfigMap"})


def main():
    before, before_maps = deployments(sys.argv[1])
    after, after_maps = deployments(sys.argv[2])
    failed = 0
    old, new = sorted(before_maps - after_maps), sorted(after_maps - before_maps)
    if len(old) != 1 or len(new) != 1:
        print(f"  FAIL  the change renamed no single ConfigMap: gone {old}, new {new}")
        return 1
    print(f"  ok    ConfigMap {old[0]} -> {new[0]}")
    if set(before) != set(after) or not before:
        print(f"  FAIL  the Deployments differ: {sorted(before)} vs {sorted(after)}")
        return 1
    for name in sorted(before):
        changed = before[name] != after[name]
        # Swapping the one name back must give the old template exactly.
        restored = json.loads(json.dumps(after[name]).replace(f'"{new[0]}"', f'"{old[0]}"'))
        if changed and restored == before[name]:
            print(f"  ok    Deployment {name}: pod template changed (configMapRef {new[0]})")
        else:
            failed += 1
            print(f"  FAIL  Deployment {name}: " + ("pod template unchanged: no rollout" if not changed
                                                    else "pod template changed beyond the ConfigMap's name"))
    print(f"rollout checks: {len(before) - failed} of {len(before)} Deployments roll")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
