#!/usr/bin/env python3
"""Validates the custom resources of a rendered overlay against their CRDs.

Usage: check_crds.py CRD_DIR RENDERED_YAML --rest OUT
  CRD_DIR   a directory of CustomResourceDefinition files (validate-k8s.sh
            passes the Gateway API's config/crd/standard at its pinned version)
  --rest    where to write every other document, for kubernetes-validate,
            which has no schema for custom kinds

Each document whose apiVersion and kind a CRD serves is validated against that
version's openAPIV3Schema, strictly: a field the schema does not name is an
error (the API server would prune it without a word, so a misspelt field would
silently do nothing), as kubernetes-validate --strict does for built-in kinds.
metadata is left to the API server. The CRDs' CEL rules
(x-kubernetes-validations) are not evaluated: they need an API server.
Prints one line per custom resource; exits 1 if any fails or if a document of a
group the CRDs define has a kind or version they do not serve.
"""

import argparse
import copy
import sys
from pathlib import Path

import jsonschema
import yaml


def crd_schemas(crd_dir):
    """{(apiVersion, kind): openAPIV3Schema} for every served version."""
    schemas, groups = {}, set()
    for path in sorted(Path(crd_dir).glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if not doc or doc.get("kind") != "CustomResourceDefinition":
                continue
            spec = doc["spec"]
            groups.add(spec["group"])
            for version in spec["versions"]:
                if version.get("served"):
                    key = (f"{spec['group']}/{version['name']}", spec["names"]["kind"])
                    schemas[key] = version["schema"]["openAPIV3Schema"]
    return schemas, groups


def to_json_schema(node, top=False):
    """A CRD's structural OpenAPI schema as a strict JSON Schema."""
    if isinstance(node, list):
        return [to_json_schema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for key, value in node.items():
        if key.startswith("x-kubernetes-") or key in ("nullable", "format"):
            continue
        if key == "properties":
            out[key] = {name: (
                {"type": "object"} if top and name == "metadata" else to_json_schema(sub))
                for name, sub in value.items()}
        elif key in ("items", "additionalProperties", "not") and isinstance(value, dict):
            out[key] = to_json_schema(value)
        elif key in ("allOf", "anyOf", "oneOf"):
            out[key] = to_json_schema(value)
        else:
            out[key] = copy.deepcopy(value)
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = out.get("anyOf", []) + [{"type": "integer"}, {"type": "string"}]
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    # Structural schemas prune what they do not name; refuse it instead.
    if "properties" in out and "additionalProperties" not in node \
            and not node.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("crd_dir", type=Path)
    parser.add_argument("rendered", type=Path)
    parser.add_argument("--rest", type=Path, required=True)
    args = parser.parse_args()
    schemas, groups = crd_schemas(args.crd_dir)
    if not schemas:
        sys.exit(f"check_crds: no CustomResourceDefinition in {args.crd_dir}")
    validators = {key: jsonschema.Draft7Validator(to_json_schema(s, top=True)) for key, s in schemas.items()}

    docs = [d for d in yaml.safe_load_all(args.rendered.read_text(encoding="utf-8")) if d]
    rest, failed, checked = [], 0, 0
    for doc in docs:
        key = (doc.get("apiVersion", ""), doc.get("kind", ""))
        name = f"{key[1]}/{doc.get('metadata', {}).get('name')}"
        if key not in validators:
            if key[0].split("/")[0] in groups:
                print(f"  FAIL  {name}: {key[0]} {key[1]} is not served by the CRDs in {args.crd_dir}")
                failed += 1
            else:
                rest.append(doc)
            continue
        checked += 1
        errors = sorted(validators[key].iter_errors(doc), key=lambda e: list(e.absolute_path))
        if errors:
            failed += 1
            for err in errors:
                where = "/".join(str(p) for p in err.absolute_path) or "(root)"
                print(f"  FAIL  {name}: {where}: {err.message}")
        else:
            print(f"  ok    {name} ({key[0]})")
    args.rest.write_text(yaml.safe_dump_all(rest, sort_keys=False), encoding="utf-8")
    print(f"crd checks: {checked} custom resources, {failed} failing")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
