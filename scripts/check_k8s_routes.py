#!/usr/bin/env python3
"""The bundle's own rules on a rendered overlay (`kustomize build` output).

Usage: check_k8s_routes.py ROOT RENDERED_YAML --overlay dev|prod|ingress|blue|green
  ROOT      the repository (or a copy): its routes.toml is the route table
  blue and green are checked rendered together with overlays/live, which
  points the HTTPRoutes at the colour named in it.

Checks: every function of routes.toml has its Deployment (and, with routes,
its Service), with its image, labels, settings and Secret references,
resources, probes (startup on the database, readiness on the process),
topology spread and securityContext, and no replica count of its own; its
HorizontalPodAutoscaler with routes.toml's bounds and its
PodDisruptionBudget; the settings come from a generated (hash-named)
ConfigMap; every route reaches its own function's Service through the
HTTPRoutes, by Gateway API's matching rules (method and path, Exact before
the longest PathPrefix), each function's HTTPRoute matches exactly its routes
of routes.toml and attaches to the Gateway, and a wrong method or an unlisted
path matches nothing; overlays/ingress routes the same paths through an
Ingress instead, by Kubernetes' Exact/Prefix rules; the Secret is rendered by
dev only (generated) and never by prod, ingress, blue, green or live; the
namespace enforces Pod Security "restricted".
Prints one line per check and, last, "route checks: N ok, M failing".
"""

import argparse
import re
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
GATEWAY = "finapp"
LISTENER = "https"
HASHED = re.compile(r"^(?P<name>.+)-[a-z0-9]{10}$")
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


def gateway_backend(routes, method, path):
    """The Service Gateway API's rules pick for `method path` among the
    HTTPRoutes' matches, or None: an Exact path match first, else the longest
    PathPrefix whose path elements are a leading run of the request's; a
    match's method must be the request's."""
    request_elems = [e for e in path.split("/") if e]
    best, best_rank = None, None
    for m in routes:
        if m["method"] is not None and m["method"] != method:
            continue
        if m["type"] == "Exact":
            if m["value"] != path:
                continue
            rank = (1, len(m["value"]))
        elif m["type"] == "PathPrefix":
            elems = [e for e in m["value"].split("/") if e]
            if request_elems[: len(elems)] != elems:
                continue
            rank = (0, len(m["value"]))
        else:
            continue
        if best_rank is None or rank > best_rank:
            best, best_rank = m["service"], rank
    return best


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("rendered", type=Path)
    parser.add_argument("--overlay", required=True, choices=["dev", "prod", "ingress", "blue", "green"])
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

    print("config:")
    config_maps = {n: cm for n, cm in by_kind.get("ConfigMap", {}).items()
                   if (m := HASHED.match(n)) and m["name"] == prefix + "finapp-config"}
    if c.check(len(config_maps) == 1,
               f"one ConfigMap {prefix}finapp-config-<hash>, from the configMapGenerator",
               str(sorted(by_kind.get("ConfigMap", {})))):
        config_name, cm = next(iter(config_maps.items()))
        c.check(CONFIG_KEYS <= set(cm.get("data", {})), f"{config_name} holds {', '.join(sorted(CONFIG_KEYS))}")
        c.check(not (SECRET_KEYS | {"PORT"}) & set(cm.get("data", {})), f"{config_name} holds no secret and no PORT")
    else:
        config_name = prefix + "finapp-config"
    c.check(prefix + "finapp-config" not in by_kind.get("ConfigMap", {}),
            "no plain (unhashed) finapp-config: a change to it would roll no pod")

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
        if refs != {("configMapRef", config_name), ("secretRef", secret_name)}:
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
        if "replicas" in spec:
            problems.append("replicas set (the HPA owns the count)")
        spread = {s.get("topologyKey"): s for s in pod.get("topologySpreadConstraints", [])}
        if set(spread) != {"topology.kubernetes.io/zone", "kubernetes.io/hostname"} or any(
                s.get("labelSelector", {}).get("matchLabels") != labels for s in spread.values()):
            problems.append("topology spread over zones and nodes, selecting this function's pods")
        if fn in http:
            if ports != [("http", CONTAINER_PORT), ("metrics", METRICS_PORT)]:
                problems.append("ports: http on 8080 and metrics on 9464")
            if env.get("PORT") != str(CONTAINER_PORT):
                problems.append("env PORT=8080")
            # Readiness reports the process, never the database: a database
            # outage must not empty every Service at once (docs/deploy.md).
            for probe, path in (("startupProbe", "/readyz"), ("livenessProbe", "/healthz")):
                get = ctr.get(probe, {}).get("httpGet", {})
                if get.get("path") != path or get.get("port") not in ("http", CONTAINER_PORT):
                    problems.append(f"{probe} GET {path} on 8080")
            if ctr.get("readinessProbe", {}).get("tcpSocket", {}).get("port") not in ("http", CONTAINER_PORT):
                problems.append("readinessProbe: the HTTP port accepts connections")
        elif ports != [("metrics", METRICS_PORT)] or "PORT" in env \
                or any(ctr.get(p) for p in ("livenessProbe", "readinessProbe", "startupProbe")):
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

    print("autoscaling and disruption budgets:")
    hpas = by_kind.get("HorizontalPodAutoscaler", {})
    pdbs = by_kind.get("PodDisruptionBudget", {})
    for f in functions:
        fn = prefix + f["name"]
        hpa = hpas.get(fn, {}).get("spec", {})
        metrics = [(m.get("type"), m.get("resource", {}).get("name")) for m in hpa.get("metrics", [])]
        c.check(hpa.get("scaleTargetRef") == {"apiVersion": "apps/v1", "kind": "Deployment", "name": fn}
                and hpa.get("minReplicas") == f["k8s_min_replicas"]
                and hpa.get("maxReplicas") == f["k8s_max_replicas"] and metrics == [("Resource", "cpu")],
                f"{fn}: HPA on CPU, {f['k8s_min_replicas']} to {f['k8s_max_replicas']} replicas (routes.toml)",
                str(hpa))
        labels = deployments.get(fn, {}).get("spec", {}).get("selector", {}).get("matchLabels")
        pdb = pdbs.get(fn, {}).get("spec", {})
        c.check(pdb.get("maxUnavailable") == 1 and labels is not None
                and pdb.get("selector", {}).get("matchLabels") == labels,
                f"{fn}: PodDisruptionBudget, one pod at a time, selecting its pods", str(pdb))
    c.check(set(hpas) == {prefix + f["name"] for f in functions}, "no HPA for an unknown function", str(sorted(hpas)))

    if args.overlay == "ingress":
        c.check(not by_kind.get("HTTPRoute") and not by_kind.get("Gateway"),
                "no Gateway or HTTPRoute beside the Ingress")
        check_ingress(c, by_kind, routes, services, prefix)
    else:
        c.check(not by_kind.get("Ingress"), "no Ingress: the HTTPRoutes are the route layer")
        check_gateway(c, by_kind, functions, routes, services, prefix)

    print("namespace:")
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


def check_gateway(c, by_kind, functions, routes, services, prefix):
    """The Gateway and one HTTPRoute per HTTP function, matching routes.toml."""
    print("gateway:")
    gateways = by_kind.get("Gateway", {})
    if c.check(list(gateways) == [GATEWAY], f"exactly one Gateway, {GATEWAY}", str(sorted(gateways))):
        listeners = gateways[GATEWAY]["spec"].get("listeners", [])
        https = [l for l in listeners if l.get("name") == LISTENER]
        c.check(len(https) == 1 and https[0].get("protocol") == "HTTPS" and https[0].get("port") == 443
                and https[0].get("hostname") == HOST
                and [r.get("name") for r in https[0].get("tls", {}).get("certificateRefs", [])] == ["finapp-tls"],
                f"listener {LISTENER}: HTTPS on 443 for {HOST}, certificate finapp-tls", str(listeners))
    httproutes = by_kind.get("HTTPRoute", {})
    http = [f["name"] for f in functions if f.get("routes")]
    c.check(set(httproutes) == set(http), "one HTTPRoute per HTTP function, named after it",
            f"HTTPRoutes {sorted(httproutes)}")
    matches = []
    for fn in http:
        route = httproutes.get(fn)
        if route is None:
            continue
        spec = route["spec"]
        c.check(spec.get("parentRefs") == [{"group": "gateway.networking.k8s.io", "kind": "Gateway",
                                             "name": GATEWAY, "sectionName": LISTENER}],
                f"HTTPRoute {fn}: attached to Gateway {GATEWAY}, listener {LISTENER}", str(spec.get("parentRefs")))
        c.check(spec.get("hostnames") == [HOST], f"HTTPRoute {fn}: host {HOST}")
        got, backends = set(), []
        for rule in spec.get("rules", []):
            refs = [(b.get("name"), b.get("port")) for b in rule.get("backendRefs", [])]
            backends += refs
            for m in rule.get("matches", []):
                path = m.get("path", {})
                got.add((m.get("method"), path.get("type"), path.get("value")))
                for service, _ in refs:
                    matches.append({"method": m.get("method"), "type": path.get("type"),
                                    "value": path.get("value"), "service": service})
        wanted = {(r.method, *r.gateway) for r in routes if r.function == fn}
        c.check(got == wanted, f"HTTPRoute {fn}: matches exactly its routes of routes.toml",
                f"it matches {sorted(got)}, routes.toml gives {sorted(wanted)}")
        c.check(set(backends) == {(prefix + fn, 80)} and prefix + fn in services,
                f"HTTPRoute {fn}: every rule goes to Service {prefix}{fn} port 80", str(backends))
    for r in routes:
        picked = gateway_backend(matches, r.method, r.sample)
        c.check(picked == prefix + r.function, f"request {r.method} {r.sample} is routed to {prefix}{r.function}",
                f"routed to {picked}")
        wrong = "DELETE" if r.method != "DELETE" else "PATCH"
        c.check(gateway_backend(matches, wrong, r.sample) is None,
                f"request {wrong} {r.sample} matches no route (404)")
    for probe in ("/healthz", "/metrics", "/nope"):
        c.check(gateway_backend(matches, "GET", probe) is None, f"request GET {probe} matches no route (404)")


def check_ingress(c, by_kind, routes, services, prefix):
    """overlays/ingress: one Ingress routing every path of routes.toml."""
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


if __name__ == "__main__":
    sys.exit(main())
