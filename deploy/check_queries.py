#!/usr/bin/env python3
"""Checks every PromQL expression of deploy/: the Grafana dashboards' queries and the
Prometheus rules.

1. Every expression parses: each is wrapped into a recording rule of its own file and
   `promtool check rules` reads them all (promtool has no expression checker of its own).
2. Every metric an expression names is one the services really export: a `pake serve` of
   all four services is started on free loopback ports over an embedded store and given
   something to report (a registered service with an instance, a rate-limited and cached
   route to it with requests that pass and fail, an SLO and an auto-scaling policy), and
   its four /metrics are read until every name the expressions use has appeared or 60 s
   have passed. The names the expositions declare (`# TYPE` lines, with the suffixes of
   each type; a family without samples is not declared) and sample are the exported
   ones; Prometheus's own `up` and the series the rules record are allowed too.

Exits non-zero, naming each problem and where it is, when either check fails.

usage: check_queries.py --pake target/debug/pake [--promtool promtool]
"""

import argparse
import http.server
import json
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

import yaml

DEPLOY = pathlib.Path(__file__).resolve().parent
SERVICES = ("registry", "gateway", "performance", "monitoring")
# Grafana's interval variables: replaced by a range before an expression is parsed.
GRAFANA_RANGES = ("$__rate_interval", "$__interval", "$__range")
# Series Prometheus makes itself for every scrape target.
PROMETHEUS_SERIES = {"up"}
KEYWORDS = {
    "and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring",
    "group_left", "group_right", "inf", "nan", "Inf", "NaN",
}
SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
    "summary": ("", "_sum", "_count", "_created"),
    "gauge": ("",),
    "info": ("_info",),
    "stateset": ("",),
    "unknown": ("",),
}


def expressions():
    """(where, expression) for every rule and dashboard query, and the recorded names."""
    found, recorded = [], set()
    rules = yaml.safe_load((DEPLOY / "prometheus/rules.yaml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            name = rule.get("record") or rule.get("alert")
            if "record" in rule:
                recorded.add(rule["record"])
            found.append((f"prometheus/rules.yaml: {group['name']}/{name}", rule["expr"]))
    dashboards = sorted((DEPLOY / "grafana").glob("*.json"))
    if not dashboards:
        sys.exit("no dashboards under deploy/grafana")
    for path in dashboards:
        board = json.loads(path.read_text())

        def walk(panels):
            for panel in panels:
                for target in panel.get("targets", []):
                    if target.get("expr"):
                        found.append((f"grafana/{path.name}: {panel.get('title')!r} {target.get('refId')}", target["expr"]))
                walk(panel.get("panels", []))

        walk(board.get("panels", []))
        for variable in board.get("templating", {}).get("list", []):
            query = variable.get("query")
            if variable.get("type") == "query" and isinstance(query, dict):
                query = query.get("query")
            if variable.get("type") == "query" and query:
                found.append((f"grafana/{path.name}: variable {variable['name']}", query))
    return found, recorded


def as_promql(expression):
    for variable in GRAFANA_RANGES:
        expression = expression.replace(variable, "5m")
    return expression


def parse_problems(found, promtool):
    """Expressions promtool cannot read, with its message."""
    problems = []
    with tempfile.TemporaryDirectory() as scratch:
        files = []
        for index, (where, expression) in enumerate(found):
            if "$" in as_promql(expression):
                problems.append(f"{where}: a template variable promtool cannot read: {expression}")
            path = pathlib.Path(scratch, f"expr-{index}.yaml")
            rule = {"record": f"pake_check:expr_{index}", "expr": as_promql(expression)}
            path.write_text(yaml.safe_dump({"groups": [{"name": f"expr-{index}", "rules": [rule]}]}))
            files.append(path)
        check = [promtool, "check", "rules"]
        if subprocess.run([*check, *map(str, files)], capture_output=True).returncode == 0:
            return problems
        # Something does not parse: check each alone to say which.
        for (where, expression), path in zip(found, files):
            result = subprocess.run([*check, str(path)], capture_output=True, text=True)
            if result.returncode != 0:
                message = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else result.stdout
                problems.append(f"{where}: does not parse: {message}\n    {expression}")
    return problems


def names_in(expression):
    """The metric names an expression selects: identifiers that are not functions,
    keywords, label names or label values."""
    text = re.sub(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`', '""', expression)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in re.finditer(r"(?<![0-9.A-Za-z_:])[A-Za-z_:][A-Za-z0-9_:]*", text):
        rest = text[match.end():].lstrip()
        if rest.startswith("(") or match.group() in KEYWORDS:
            continue
        names.add(match.group())
    return names


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Upstream(http.server.BaseHTTPRequestHandler):
    """A registered instance: 200 on /health and /check/ok, 503 (retried) on anything else."""

    def do_GET(self):
        status = 200 if self.path in ("/health", "/check/ok") else 503
        body = b'{"status": "pass"}'
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def call(port, method, path, token=None, body=None):
    headers = {"content-type": "application/json"}
    if token:
        headers["authorization"] = f"Bearer {token}"
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            text = answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()
    return answer.status, text


def exercise(ports, token, upstream_port):
    """Gives every service something to report on."""

    def create(service, path, body):
        status, text = call(ports[service], "POST", path, token, body)
        if status not in (200, 201):
            sys.exit(f"POST {path} on the {service} service answered {status}: {text}")
        return json.loads(text)

    registered = create("registry", "/api/v1/services/register", {"name": "check-upstream", "version": "1.0.0"})
    create("registry", f"/api/v1/services/{registered['id']}/instances", {"address": "127.0.0.1", "port": upstream_port})
    policy = create("gateway", "/v1/admin/rate-limit-policies",
                    {"name": "check", "algorithm": "gcra", "rate": 1000, "period_seconds": 1, "scope": "per_tenant"})
    create("gateway", "/v1/admin/routes", {
        "name": "check", "path_prefix": "/check", "methods": ["GET"], "api_version": "v1",
        "service": "check-upstream", "rate_limit_policy_id": policy["id"],
        "cache": {"enabled": True, "ttl_seconds": 30},
        "retry": {"max_attempts": 1, "retry_on": ["5xx"], "budget_percent": 100},
    })
    create("performance", "/api/v1/slos",
           {"name": "availability", "service": "check-upstream", "objective": "availability", "target": 99.9})
    create("performance", "/api/v1/autoscaling-policies",
           {"service": "check-upstream", "min_replicas": 1, "max_replicas": 3, "target_rps_per_replica": 10})


def exported_names(pake, wanted):
    """Every metric name the four services declare or sample on their /metrics once they
    have had something to report, or after 60 s without all of `wanted`."""
    ports = {service: free_port() for service in SERVICES}
    upstream = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Upstream)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    with tempfile.TemporaryDirectory() as data:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PAKE_")}
        env.update({f"PAKE_{service.upper()}_ADDR": f"127.0.0.1:{port}" for service, port in ports.items()})
        env.update({"PAKE_DATA_DIR": data, "RUST_LOG": "warn", "PAKE_SCRAPE_INTERVAL_SECONDS": "1"})
        log = open(pathlib.Path(data, "serve.log"), "w")
        server = subprocess.Popen([pake, "serve"], env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 90
            while True:
                if server.poll() is not None:
                    sys.exit(f"pake serve stopped ({server.returncode}):\n{pathlib.Path(data, 'serve.log').read_text()}")
                if time.monotonic() > deadline:
                    sys.exit("pake serve did not answer on /metrics within 90 s")
                try:
                    if all(call(port, "GET", "/metrics")[0] == 200 for port in ports.values()):
                        break
                except OSError:
                    time.sleep(0.2)
            scopes = ["mesh:read", "mesh:write", "gateway:admin", "performance:read", "performance:write"]
            token = subprocess.run([pake, "token", *(f"--scope={scope}" for scope in scopes)],
                                   env=env, capture_output=True, text=True, check=True).stdout.strip()
            exercise(ports, token, upstream.server_address[1])
            deadline = time.monotonic() + 60
            while True:
                for path in ("/v1/check/ok", "/v1/check/ok", "/v1/check/fail"):
                    call(ports["gateway"], "GET", path)
                call(ports["gateway"], "POST", "/v1/auth/token", body={
                    "grant_type": "client_credentials", "client_id": "pk_unknown", "client_secret": "x" * 32})
                names = set()
                for service, port in ports.items():
                    names |= names_of(service, call(port, "GET", "/metrics")[1])
                if wanted <= names or time.monotonic() > deadline:
                    return names
                time.sleep(1)
        finally:
            upstream.shutdown()
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
            log.close()


def names_of(service, text):
    names, declared = set(), 0
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(maxsplit=3)
            names.update(name + suffix for suffix in SUFFIXES.get(kind, ("",)))
            declared += 1
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{\s]", line, maxsplit=1)[0])
    if declared == 0:
        sys.exit(f"the {service} service's /metrics declares no metric:\n{text}")
    return names


def main():
    arguments = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    arguments.add_argument("--pake", required=True, help="the pake binary to start")
    arguments.add_argument("--promtool", default="promtool")
    options = arguments.parse_args()
    found, recorded = expressions()
    problems = parse_problems(found, options.promtool)
    used = set()
    for _, expression in found:
        used |= names_in(as_promql(expression))
    exported = exported_names(options.pake, used - PROMETHEUS_SERIES - recorded)
    allowed = exported | PROMETHEUS_SERIES | recorded
    for where, expression in found:
        names = names_in(as_promql(expression))
        if not names:
            problems.append(f"{where}: names no metric: {expression}")
        for name in sorted(names - allowed):
            problems.append(f"{where}: {name} is not exported by any PAKE service")
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    if problems:
        sys.exit(f"{len(problems)} problem(s) in {len(found)} expression(s)")
    print(f"{len(found)} expressions parse and name only exported metrics "
          f"({len(used)} distinct of {len(exported)} exported names)")


if __name__ == "__main__":
    main()
