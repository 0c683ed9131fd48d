#!/usr/bin/env python3
"""Checks infra/k8s against the bundle's routes and the repository's functions.

Usage: check_k8s_routes.py REPO_ROOT [DESIGN_MD]

The routes come from the routes table of DESIGN_MD when that file exists (rows
"| function | METHOD /path | who |"; a row whose route is not an HTTP method
and path, like notify-consumer's, names a function without an HTTP route),
otherwise from FALLBACK_ROUTES below. Checked:
  - every HTTP route reaches its function's Service through the Ingress
    (Exact path for fixed routes, Prefix up to the first "{" for routes with
    path parameters), also by simulating Kubernetes' path matching on a
    concrete request path, so overlapping prefixes cannot steal a route;
  - every function (every folder in functions/ and every function of the
    table) has a Deployment with the agreed image, labels, env, resources,
    probes and security context; HTTP functions have a Service on port 80;
  - the Ingress, ConfigMap, Secret template and Namespace are as agreed;
  - kustomization.yaml lists exactly the files in infra/k8s that hold a resource.
Prints one line per check and "route checks: N ok, M failing" at the end; exits 1
on any failure. Needs PyYAML.
"""

import re
import sys
from pathlib import Path

import yaml

# Used only when DESIGN.md is not beside the repository; keep it in step.
FALLBACK_ROUTES = {
    "signup": "POST /signup",
    "login": "POST /login",
    "apply": "POST /apply",
    "status": "GET /status",
    "dashboard-info": "GET /dashboard-info",
    "financing-options": "GET /financing-options",
    "select-financing-option": "POST /select-financing-option",
    "update-status": "PUT /update_status/{user}/{status}",
    "admin-applications": "GET /admin/applications",
    "admin-update-status": "PUT /admin/update_status/{application_id}/{status}",
    "analytics": "GET /analytics",
    "notify-consumer": None,  # RabbitMQ consumer: no HTTP route
}

NAMESPACE = "finapp"
IMAGE = "ghcr.io/finapp/finapp-functions/{name}:latest"
HOST = "finapp.example.com"
CONTAINER_PORT = 8080
SECRET_KEYS = {"JWT_SECRET_KEY", "MONGODB_URI", "RABBITMQ_URI"}
CONFIG_KEYS = {"MONGODB_DATABASE", "RUST_LOG", "BCRYPT_COST", "ACCESS_TOKEN_EXPIRE_MINUTES"}
MIN_JWT_SECRET_BYTES = 32  # shared/src/config.rs: shorter keys stop every function
ROUTE_RE = re.compile(r"^(GET|POST|PUT|PATCH|DELETE)\s+(/\S*)$")


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


def read_routes(design):
    """{function: "METHOD /path" or None} from DESIGN.md's table, or the fallback."""
    if design is None or not design.is_file():
        print(f"routes: {design} not found, using the list in {Path(__file__).name}")
        return dict(FALLBACK_ROUTES)
    routes = {}
    in_table = False
    for line in design.read_text(encoding="utf-8").splitlines():
        cells = [c.strip().strip("`") for c in line.strip().strip("|").split("|")]
        if not line.lstrip().startswith("|"):
            in_table = False
            continue
        if [c.lower() for c in cells[:2]] == ["function", "route"]:
            in_table = True
            continue
        if not in_table or set(cells[0]) <= set("-: "):
            continue
        match = ROUTE_RE.match(cells[1].split("?")[0].strip())
        routes[cells[0]] = f"{match[1]} {match[2]}" if match else None
    if not routes:
        sys.exit(f"routes: no '| function | route |' table found in {design}")
    print(f"routes: {len(routes)} functions from {design}")
    if routes != FALLBACK_ROUTES:
        print(f"  note  {Path(__file__).name}'s FALLBACK_ROUTES differs from {design.name}; update it")
    return routes


def load_manifests(k8s):
    """[(relative file, document)] for every YAML document under infra/k8s."""
    docs = []
    for path in sorted(k8s.rglob("*.y*ml")):
        rel = path.relative_to(k8s).as_posix()
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if doc:
                docs.append((rel, doc))
    return docs


def ingress_backend(paths, request_path):
    """The service Kubernetes' Ingress rules pick for request_path, or None.

    Exact matches first; otherwise the longest Prefix whose path elements are
    a leading run of the request's elements (a trailing "/" is ignored).
    """
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
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    root = Path(sys.argv[1]).resolve()
    design = Path(sys.argv[2]) if len(sys.argv) == 3 else None
    k8s = root / "infra" / "k8s"
    c = Checks()

    routes = read_routes(design)
    http = {fn: r for fn, r in routes.items() if r}
    folders = sorted(p.name for p in (root / "functions").iterdir() if p.is_dir())
    functions = sorted(set(routes) | set(folders))

    docs = load_manifests(k8s)
    kustomization = [d for f, d in docs if f == "kustomization.yaml"]
    resources = [(f, d) for f, d in docs if f != "kustomization.yaml"]
    by_kind = {}
    for f, d in resources:
        by_kind.setdefault(d.get("kind"), {})[d["metadata"]["name"]] = d

    ids = [f"{d.get('kind')}/{d['metadata']['name']}" for _, d in resources]
    print("manifests:")
    c.check(len(ids) == len(set(ids)), f"{len(ids)} resources, none defined twice",
            str(sorted({i for i in ids if ids.count(i) > 1})))

    print("functions:")
    c.check(set(folders) == set(routes),
            "functions/ folders and the routes table name the same functions",
            f"only in functions/: {sorted(set(folders) - set(routes))}, "
            f"only in the table: {sorted(set(routes) - set(folders))}")

    print("deployments:")
    deployments = by_kind.get("Deployment", {})
    services = by_kind.get("Service", {})
    for fn in functions:
        dep = deployments.get(fn)
        if not c.check(dep is not None, f"{fn}: has a Deployment"):
            continue
        labels = {"app.kubernetes.io/name": fn, "app.kubernetes.io/part-of": "finapp"}
        spec = dep["spec"]
        pod = spec["template"]["spec"]
        problems = []
        if spec["selector"].get("matchLabels") != labels:
            problems.append("selector.matchLabels")
        for where, got in (("metadata.labels", dep["metadata"].get("labels", {})),
                           ("template labels", spec["template"]["metadata"].get("labels", {}))):
            if any(got.get(k) != v for k, v in labels.items()):
                problems.append(where)
        if len(pod["containers"]) != 1:
            problems.append("exactly one container")
        ctr = pod["containers"][0]
        if ctr.get("image") != IMAGE.format(name=fn):
            problems.append(f"image {ctr.get('image')}")
        refs = {(next(iter(e)), next(iter(e.values()))["name"]) for e in ctr.get("envFrom", [])}
        if refs != {("configMapRef", "finapp-config"), ("secretRef", "finapp-secrets")}:
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
        if fn in http:
            ports = ctr.get("ports", [])
            env = {e["name"]: e.get("value") for e in ctr.get("env", [])}
            if [(p.get("name"), p.get("containerPort")) for p in ports] != [("http", CONTAINER_PORT)]:
                problems.append("ports: one named http on 8080")
            if env.get("PORT") != str(CONTAINER_PORT):
                problems.append("env PORT=8080")
            for probe in ("livenessProbe", "readinessProbe"):
                get = ctr.get(probe, {}).get("httpGet", {})
                if get.get("path") != "/healthz" or get.get("port") not in ("http", CONTAINER_PORT):
                    problems.append(f"{probe} GET /healthz on 8080")
        elif ctr.get("ports") or ctr.get("livenessProbe") or ctr.get("readinessProbe"):
            problems.append("no HTTP port or probes for a consumer")
        c.check(not problems, f"{fn}: Deployment image, labels, env, resources, probes, securityContext",
                ", ".join(problems))

    print("services:")
    for fn in functions:
        svc = services.get(fn)
        if fn not in http:
            c.check(svc is None, f"{fn}: no Service (no HTTP route)")
            continue
        if not c.check(svc is not None, f"{fn}: has a Service"):
            continue
        spec = svc["spec"]
        ports = spec.get("ports", [])
        ok = (spec.get("type", "ClusterIP") == "ClusterIP"
              and spec.get("selector") == {"app.kubernetes.io/name": fn,
                                           "app.kubernetes.io/part-of": "finapp"}
              and len(ports) == 1 and ports[0].get("port") == 80
              and ports[0].get("targetPort") in ("http", CONTAINER_PORT))
        c.check(ok, f"{fn}: Service ClusterIP 80 -> 8080 selecting its pods", str(spec))
    c.check(set(services) <= set(http), "no Service for an unknown function", str(sorted(services)))

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
            svc_ports = svc["spec"]["ports"] if svc else []
            port = p["port"]
            c.check(any(port.get("number") == sp.get("port") or port.get("name") == sp.get("name")
                        for sp in svc_ports),
                    f"{p['path']} -> Service {p['service']} port {port} exists")
        for fn, route in sorted(http.items()):
            path = route.split()[1]
            if "{" in path:
                want = {"path": path[: path.index("{")], "pathType": "Prefix"}
            else:
                want = {"path": path, "pathType": "Exact"}
            found = [p for p in paths if p["path"] == want["path"] and p["pathType"] == want["pathType"]]
            c.check(len(found) == 1 and found[0]["service"] == fn,
                    f"{route} -> {want['pathType']} {want['path']} -> Service {fn}",
                    f"found {found}")
            sample = re.sub(r"\{[^}]*\}", "x", path)
            picked = ingress_backend(paths, sample)
            c.check(picked == fn, f"request {sample} is routed to {fn}", f"routed to {picked}")
        wanted = {(r.split()[1][: r.split()[1].index("{")] if "{" in r else r.split()[1]) for r in http.values()}
        extra = [p["path"] for p in paths if p["path"] not in wanted]
        c.check(not extra, "no Ingress path beyond the routes table", str(extra))

    print("config, secret, namespace:")
    cm = by_kind.get("ConfigMap", {}).get("finapp-config")
    c.check(cm is not None and CONFIG_KEYS <= set(cm.get("data", {})),
            f"ConfigMap finapp-config holds {', '.join(sorted(CONFIG_KEYS))}")
    c.check(cm is not None and not (SECRET_KEYS | {"PORT"}) & set(cm.get("data", {})),
            "ConfigMap holds no secret and no PORT")
    secret = by_kind.get("Secret", {}).get("finapp-secrets")
    if c.check(secret is not None and set(secret.get("stringData", {})) == SECRET_KEYS
               and not secret.get("data"),
               f"Secret finapp-secrets (stringData) holds exactly {', '.join(sorted(SECRET_KEYS))}"):
        values = secret["stringData"]
        c.check(all(str(v).startswith("CHANGE-ME") for v in values.values()),
                "Secret template holds CHANGE-ME placeholders only")
        c.check(len(str(values["JWT_SECRET_KEY"]).encode()) < MIN_JWT_SECRET_BYTES,
                f"JWT_SECRET_KEY placeholder is under {MIN_JWT_SECRET_BYTES} bytes, so functions refuse it")
    c.check(NAMESPACE in by_kind.get("Namespace", {}), f"Namespace {NAMESPACE} exists")
    wrong_ns = [f"{d['kind']}/{d['metadata']['name']}" for _, d in resources
                if d["kind"] != "Namespace" and d["metadata"].get("namespace") != NAMESPACE]
    c.check(not wrong_ns, f"every namespaced resource names namespace {NAMESPACE}", str(wrong_ns))

    print("kustomization:")
    if c.check(len(kustomization) == 1, "kustomization.yaml exists"):
        kust = kustomization[0]
        listed = kust.get("resources", [])
        files = sorted({f for f, _ in resources})
        c.check(kust.get("namespace") == NAMESPACE, f"namespace: {NAMESPACE}")
        c.check(len(listed) == len(set(listed)), "no resource listed twice")
        c.check(set(listed) == set(files), "resources lists every manifest file and nothing else",
                f"missing {sorted(set(files) - set(listed))}, unknown {sorted(set(listed) - set(files))}")

    print(f"route checks: {c.passed} ok, {c.failed} failing")
    return 1 if c.failed else 0


if __name__ == "__main__":
    sys.exit(main())
