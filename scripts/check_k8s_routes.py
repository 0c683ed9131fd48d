#!/usr/bin/env python3
"""The bundle's own rules on a rendered overlay (`kustomize build` output).

Usage: check_k8s_routes.py ROOT RENDERED_YAML --overlay dev|prod|blue|green
  ROOT      the repository (or a copy): its routes.toml is the route table
  blue and green are checked rendered together with overlays/live, which
  points the Ingress at the colour named in it.

Checks: every function of routes.toml has its Deployment (and, with routes,
its Service), with its image, labels, settings and Secret references,
resources, probes and securityContext; every route reaches its own function's
Service through the Ingress, by Kubernetes' Exact/Prefix rules, and the Ingress
has no other path; the Secret is rendered by dev only (generated) and never by
prod, blue, green or live; the namespace enforces Pod Security "restricted".
Prints one line per check and, last, "route checks: N ok, M failing".
"""

import argparse
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from routes import IMAGE, HOST, load  # noqa: E402

NAMESPACE = "finapp"
CONTAINER_PORT = 8080
METRICS_PORT = 9464
SCRAPE_ANNOTATIONS = {"prometheus.io/scrape": "true", "prometheus.io/port": str(METRICS_PORT),
                      "prometheus.io/path": "/metrics"}
CONFIG_KEYS = {"MONGODB_DATABASE", "RUST_LOG", "BCRYPT_COST", "ACCESS_TOKEN_EXPIRE_MINUTES"}
SECRET_KEYS = {"JWT_SECRET_KEY", "MONGODB_URI", "RABBITMQ_URI"}


class Checks:
    def __init__(self):
        self.passed = 0
        self.failed = 0

    def check(self, ok, what, detail=""):
        if ok:
            self.passed += 1
            print(f"  ok    {what}")
        else:
            self.failed += 1
            print(f"  FAIL  {what}" + (f": {detail}" if detail else ""))
        return ok


def ingress_backend(paths, request_path):
    """The service Kubernetes' Ingress rules pick for request_path, or None:
    an Exact match first, else the longest Prefix whose path elements are a
    leading run of the request's (a trailing "/" is ignored)."""
    for entry in paths:
        if entry["pathType"] == "Exact" and entry["path"] == request_path:
            return entry["service"]
    best, best_len = None, -1
    request_elems = [e for e in request_path.split("/") if e]
    for entry in paths:
        if entry["pathType"] != "Prefix":
            continue
        elems = [e for e in entry["path"].split("/") if e]
        if request_elems[: len(elems)] == elems and len(elems) > best_len:
            best, best_len = entry["service"], len(elems)
    return best


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("rendered", type=Path)
    parser.add_argument("--overlay", required=True, choices=["dev", "prod", "blue", "green"])
    args = parser.parse_args()
    functions, routes = load(args.root.resolve())
    c = Checks()
    colour = args.overlay if args.overlay in ("blue", "green") else None
    prefix = f"{colour}-" if colour else ""

    docs = [d for d in yaml.safe_load_all(args.rendered.read_text(encoding="utf-8")) if d]
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d.get("kind"), {})[d["metadata"]["name"]] = d
    ids = [f"{d.get('kind')}/{d['metadata']['name']}" for d in docs]
    print(f"{args.overlay}: {len(ids)} resources")
    c.check(len(ids) == len(set(ids)), "no resource rendered twice",
            str(sorted({i for i in ids if ids.count(i) > 1})))

    secrets = by_kind.get("Secret", {})
    if args.overlay == "dev":
        c.check(len(secrets) == 1 and next(iter(secrets)).startswith("finapp-secrets-"),
                "dev renders one generated Secret finapp-secrets-<hash>", str(sorted(secrets)))
        secret_name = next(iter(secrets), "finapp-secrets")
        if secrets:
            c.check(set(next(iter(secrets.values())).get("data", {})) == SECRET_KEYS,
                    f"the dev Secret holds exactly {', '.join(sorted(SECRET_KEYS))}")
    else:
        c.check(not secrets, f"{args.overlay} renders no Secret (it uses the existing finapp-secrets)",
                str(sorted(secrets)))
        secret_name = "finapp-secrets"

    print("deployments:")
    deployments = by_kind.get("Deployment", {})
    services = by_kind.get("Service", {})
    http = {f["name"] for f in functions if f.get("routes")}
    for f in functions:
        fn = f["name"]
        dep = deployments.get(prefix + fn)
        if not c.check(dep is not None, f"{prefix}{fn}: has a Deployment"):
            continue
        labels = {"app.kubernetes.io/name": fn, "app.kubernetes.io/part-of": "finapp"}
        if colour:
            labels["app.kubernetes.io/instance"] = colour
        spec = dep["spec"]
        pod = spec["template"]["spec"]
        problems = []
        if spec["selector"].get("matchLabels") != labels:
            problems.append(f"selector.matchLabels {spec['selector'].get('matchLabels')}")
        for where, got in (("metadata.labels", dep["metadata"].get("labels", {})),
                           ("template labels", spec["template"]["metadata"].get("labels", {}))):
            if any(got.get(k) != v for k, v in labels.items()):
                problems.append(where)
        if len(pod["containers"]) != 1:
            problems.append("exactly one container")
        ctr = pod["containers"][0]
        image = ctr.get("image", "")
        if image.rsplit(":", 1)[0] != IMAGE.format(name=fn):
            problems.append(f"image {image}")
        refs = {(next(iter(e)), next(iter(e.values()))["name"]) for e in ctr.get("envFrom", [])}
        if refs != {("configMapRef", "finapp-config"), ("secretRef", secret_name)}:
            problems.append(f"envFrom {sorted(refs)}")
        res = ctr.get("resources", {})
        if not all(res.get(k, {}).get(r) for k in ("requests", "limits") for r in ("cpu", "memory")):
            problems.append("resources requests/limits for cpu and memory")
        sc = ctr.get("securityContext", {})
        want_sc = {"runAsNonRoot": True, "runAsUser": 65532, "readOnlyRootFilesystem": True,
                   "allowPrivilegeEscalation": False}
        if any(sc.get(k) != v for k, v in want_sc.items()) \
                or sc.get("capabilities", {}).get("drop") != ["ALL"] \
                or sc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
            problems.append("securityContext")
        env = {e["name"]: e.get("value") for e in ctr.get("env", [])}
        ports = [(p.get("name"), p.get("containerPort")) for p in ctr.get("ports", [])]
        annotations = dep["spec"]["template"]["metadata"].get("annotations", {})
        if any(annotations.get(k) != v for k, v in SCRAPE_ANNOTATIONS.items()):
            problems.append(f"pod annotations {SCRAPE_ANNOTATIONS}")
        if env.get("METRICS_PORT") != str(METRICS_PORT):
            problems.append(f"env METRICS_PORT={METRICS_PORT}")
        if fn in http:
            if ports != [("http", CONTAINER_PORT), ("metrics", METRICS_PORT)]:
                problems.append("ports: http on 8080 and metrics on 9464")
            if env.get("PORT") != str(CONTAINER_PORT):
                problems.append("env PORT=8080")
            for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
                get = ctr.get(probe, {}).get("httpGet", {})
                if get.get("path") != path or get.get("port") not in ("http", CONTAINER_PORT):
                    problems.append(f"{probe} GET {path} on 8080")
        elif ports != [("metrics", METRICS_PORT)] or "PORT" in env \
                or ctr.get("livenessProbe") or ctr.get("readinessProbe"):
            problems.append("a consumer: the metrics port only, no PORT, no probes")
        c.check(not problems, f"{prefix}{fn}: image, labels, settings, resources, probes, securityContext",
                ", ".join(problems))

    print("services:")
    for f in functions:
        fn = f["name"]
        svc = services.get(prefix + fn)
        if fn not in http:
            c.check(svc is None, f"{prefix}{fn}: no Service (no HTTP route)")
            continue
        if not c.check(svc is not None, f"{prefix}{fn}: has a Service"):
            continue
        spec = svc["spec"]
        ports = spec.get("ports", [])
        selector = {"app.kubernetes.io/name": fn, "app.kubernetes.io/part-of": "finapp"}
        if colour:
            selector["app.kubernetes.io/instance"] = colour
        ok = (spec.get("type", "ClusterIP") == "ClusterIP" and spec.get("selector") == selector
              and len(ports) == 1 and ports[0].get("port") == 80
              and ports[0].get("targetPort") in ("http", CONTAINER_PORT))
        c.check(ok, f"{prefix}{fn}: Service ClusterIP 80 -> 8080 selecting only its pods", str(spec))
    c.check(set(services) <= {prefix + fn for fn in http}, "no Service for an unknown function",
            str(sorted(services)))

    print("ingress:")
    ingresses = list(by_kind.get("Ingress", {}).values())
    if c.check(len(ingresses) == 1, "exactly one Ingress", str(len(ingresses))):
        ing = ingresses[0]
        spec = ing["spec"]
        c.check(spec.get("ingressClassName") == "nginx", "ingressClassName nginx")
        c.check(ing["metadata"].get("annotations", {}).get("cert-manager.io/cluster-issuer")
                == "letsencrypt-prod", "annotation cert-manager.io/cluster-issuer: letsencrypt-prod")
        c.check(spec.get("tls") == [{"hosts": [HOST], "secretName": "finapp-tls"}],
                f"tls: {HOST} in secret finapp-tls", str(spec.get("tls")))
        rules = spec.get("rules", [])
        c.check([r.get("host") for r in rules] == [HOST], f"one rule, for host {HOST}")
        paths = []
        for rule in rules:
            for p in rule.get("http", {}).get("paths", []):
                backend = p["backend"]["service"]
                paths.append({"path": p["path"], "pathType": p.get("pathType"),
                              "service": backend["name"], "port": backend["port"]})
        c.check(all(p["pathType"] in ("Exact", "Prefix") for p in paths),
                "every path is Exact or Prefix (no ImplementationSpecific)")
        for p in paths:
            svc = services.get(p["service"])
            c.check(svc is not None and any(p["port"].get("number") == sp.get("port")
                                            for sp in svc["spec"]["ports"]),
                    f"{p['path']} -> Service {p['service']} port {p['port']} is rendered")
        for r in routes:
            path, kind = r.ingress
            found = [p for p in paths if p["path"] == path and p["pathType"] == kind]
            c.check(len(found) == 1 and found[0]["service"] == prefix + r.function,
                    f"{r.method} {r.path} -> {kind} {path} -> Service {prefix}{r.function}", f"found {found}")
            picked = ingress_backend(paths, r.sample)
            c.check(picked == prefix + r.function, f"request {r.sample} is routed to {prefix}{r.function}",
                    f"routed to {picked}")
        wanted = {r.ingress for r in routes}
        extra = [p["path"] for p in paths if (p["path"], p["pathType"]) not in wanted]
        c.check(not extra, "no Ingress path beyond routes.toml", str(extra))
        for probe in ("/healthz", "/nope"):
            c.check(ingress_backend(paths, probe) is None, f"request {probe} matches no path (404)")

    print("config, namespace:")
    cm = by_kind.get("ConfigMap", {}).get("finapp-config")
    c.check(cm is not None and CONFIG_KEYS <= set(cm.get("data", {})),
            f"ConfigMap finapp-config holds {', '.join(sorted(CONFIG_KEYS))}")
    c.check(cm is not None and not (SECRET_KEYS | {"PORT"}) & set(cm.get("data", {})),
            "ConfigMap holds no secret and no PORT")
    ns = by_kind.get("Namespace", {}).get(NAMESPACE)
    labels = (ns or {}).get("metadata", {}).get("labels", {})
    c.check(labels.get("pod-security.kubernetes.io/enforce") == "restricted",
            f"Namespace {NAMESPACE} enforces Pod Security restricted")
    wrong_ns = [f"{d['kind']}/{d['metadata']['name']}" for d in docs
                if d["kind"] != "Namespace" and d["metadata"].get("namespace") != NAMESPACE]
    c.check(not wrong_ns, f"every namespaced resource is in namespace {NAMESPACE}", str(wrong_ns))
    if colour:
        live = by_kind.get("ConfigMap", {}).get("finapp-live", {}).get("data", {}).get("colour")
        c.check(live == colour, f"overlays/live names colour {colour}", f"it names {live}")

    print(f"route checks: {c.passed} ok, {c.failed} failing")
    return 1 if c.failed else 0


if __name__ == "__main__":
    sys.exit(main())
