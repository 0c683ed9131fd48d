#!/usr/bin/env python3
"""Renders an nginx configuration from a Kubernetes Ingress the way ingress-nginx does.

Usage: ingress_nginx.py INGRESS_YAML --prefix DIR --listen PORT --upstream SERVICE=HOST:PORT ...
Writes DIR/nginx.conf for `nginx -p DIR -c nginx.conf`, which serves the
Ingress's rules on 127.0.0.1:PORT, each Service being the HOST:PORT given.

ingress-nginx (internal/ingress/controller/controller.go, updateServerLocations,
and its nginx.tmpl) turns the paths of a rule into nginx locations like this,
without the rewrite and regex annotations, which this bundle does not use:
  - pathType Exact  /a     -> location = /a
  - pathType Prefix /a/b   -> location /a/b/ (the path, ending in "/"), and
                              location = /a/b unless an Exact path says otherwise
nginx then picks an exact match first, else the longest prefix: the same result
as Kubernetes' element-wise Prefix matching. Anything else, /healthz included,
reaches the controller's default backend, which answers 404. The Service's port
(80 -> targetPort http) is the process's own port here. Needs PyYAML.
"""

import argparse
import sys
from pathlib import Path

import yaml


def locations(ingress, host):
    """[(nginx location argument, service name)] for the rule of `host`."""
    rules = [r for r in ingress["spec"]["rules"] if r.get("host") == host]
    if len(rules) != 1:
        sys.exit(f"ingress: expected one rule for host {host}, found {len(rules)}")
    paths = rules[0]["http"]["paths"]
    exact = {p["path"]: p for p in paths if p["pathType"] == "Exact"}
    out = []
    for p in paths:
        service = p["backend"]["service"]["name"]
        if p["pathType"] == "Exact":
            out.append((f"= {p['path']}", service))
        elif p["pathType"] == "Prefix":
            path = p["path"]
            if path == "/":
                out.append(("/", service))
                continue
            out.append((path if path.endswith("/") else path + "/", service))
            if path not in exact:
                out.append((f"= {path}", service))
        else:
            sys.exit(f"ingress: {p['path']}: pathType {p['pathType']} is not Exact or Prefix")
    return out


def render(ingress, host, listen, upstreams, prefix):
    blocks = []
    for location, service in locations(ingress, host):
        if service not in upstreams:
            sys.exit(f"ingress: no --upstream given for Service {service}")
        blocks.append(f"""
        location {location} {{
            proxy_pass http://{upstreams[service]};
        }}""")
    # A `location /` from the rules replaces the default backend's.
    default = "" if any(loc == "/" for loc, _ in locations(ingress, host)) else """
        location / {
            return 404;
        }"""
    tmp = prefix / "tmp"
    return f"""# Rendered by scripts/ingress_nginx.py from an Ingress; see that script.
daemon off;
worker_processes 1;
pid {prefix / "nginx.pid"};
error_log stderr notice;
events {{
    worker_connections 256;
}}
http {{
    access_log off;
    client_body_temp_path {tmp / "body"};
    proxy_temp_path {tmp / "proxy"};
    fastcgi_temp_path {tmp / "fastcgi"};
    uwsgi_temp_path {tmp / "uwsgi"};
    scgi_temp_path {tmp / "scgi"};
    # As ingress-nginx sends them.
    proxy_http_version 1.1;
    proxy_set_header Host $host;
    proxy_set_header X-Request-ID $http_x_request_id;
    proxy_set_header X-Forwarded-For $remote_addr;
    proxy_set_header X-Forwarded-Proto $scheme;
    proxy_set_header Connection "";

    # Another host: the controller's default server, 404 for everything.
    server {{
        listen 127.0.0.1:{listen} default_server;
        server_name _;
        location / {{
            return 404;
        }}
    }}

    server {{
        listen 127.0.0.1:{listen};
        server_name {host};{"".join(blocks)}{default}
    }}
}}
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ingress", type=Path)
    parser.add_argument("--prefix", type=Path, required=True)
    parser.add_argument("--listen", type=int, required=True)
    parser.add_argument("--upstream", action="append", default=[], metavar="SERVICE=HOST:PORT")
    args = parser.parse_args()
    upstreams = dict(u.split("=", 1) for u in args.upstream)
    docs = [d for d in yaml.safe_load_all(args.ingress.read_text(encoding="utf-8")) if d]
    ingresses = [d for d in docs if d.get("kind") == "Ingress"]
    if len(ingresses) != 1:
        sys.exit(f"{args.ingress}: expected one Ingress, found {len(ingresses)}")
    ingress = ingresses[0]
    hosts = [r.get("host") for r in ingress["spec"]["rules"]]
    prefix = args.prefix.resolve()
    for sub in ("tmp", "logs"):
        (prefix / sub).mkdir(parents=True, exist_ok=True)
    conf = render(ingress, hosts[0], args.listen, upstreams, prefix)
    (prefix / "nginx.conf").write_text(conf, encoding="utf-8")
    print(prefix / "nginx.conf")


if __name__ == "__main__":
    main()
