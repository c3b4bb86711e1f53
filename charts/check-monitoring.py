#!/usr/bin/env python3
"""Checks the chart's monitoring objects against the Rust sources they describe.

  check-monitoring.py dashboard DASHBOARD.json RENDERED.yaml
      Every metric name in the dashboard's PromQL (panel targets and template
      variables) is one that inference/src/metrics.rs or operator/src/metrics.rs
      registers (histograms as <name>_bucket, _sum, _count); every label a
      selector, a `by (...)` clause, a legend or a variable names is one of that
      metric's labels or a label the scrape adds (Prometheus Operator's target
      labels, and the relabelings' targetLabels of the PodMonitor or ServiceMonitor
      in RENDERED.yaml, `helm template` output); `outcome` values are ones the
      inference server records; quantiles are taken over _bucket series by `le`;
      every query uses the ${datasource} variable. RENDERED.yaml may be `-` (stdin).

  check-monitoring.py selftest RENDERED.yaml
      Breaks copies of the dashboard and of the PodMonitor in known ways and
      fails unless each check refuses each copy.

  check-monitoring.py podmonitor RENDERED.yaml
      The PodMonitor in RENDERED.yaml selects the pods operator/src/build.rs
      builds (the labels of labels(), which the pod template carries; checked
      against build.rs's own test fixture too) and no pod without the
      operator's managed-by label, scrapes the container port that serves the
      server's --metrics-addr by its name, on the path inference/src/http.rs
      serves /metrics at, and copies pod labels that exist, to target labels
      no inference metric already has.

Exits 1 with one line per problem.
"""

import contextlib
import io
import json
import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
INFERENCE_METRICS = ROOT / "inference/src/metrics.rs"
OPERATOR_METRICS = ROOT / "operator/src/metrics.rs"
INFERENCE_ERRORS = ROOT / "inference/src/error.rs"
INFERENCE_RELAY = ROOT / "inference/src/relay.rs"
INFERENCE_HTTP = ROOT / "inference/src/http.rs"
BUILD = ROOT / "operator/src/build.rs"

# Labels Prometheus Operator puts on every target of a PodMonitor / ServiceMonitor.
POD_TARGET_LABELS = {"instance", "job", "namespace", "pod", "container", "endpoint"}
SERVICE_TARGET_LABELS = POD_TARGET_LABELS | {"service"}

# What the dashboard is for (issue 18): a panel over each of these.
REQUIRED = {
    "backhaul_inference_time_to_first_token_seconds_bucket",
    "backhaul_inference_inter_token_latency_seconds_bucket",
    "backhaul_inference_requests_queued",
    "backhaul_inference_requests_in_flight",
    "backhaul_inference_requests_total",
    "backhaul_inference_generation_tokens_total",
    "backhaul_inference_model_load_seconds",
    "backhaul_operator_reconciles_total",
    "backhaul_operator_reconcile_duration_seconds_bucket",
    "backhaul_operator_publishes_total",
    "backhaul_operator_leader",
}

PROMQL_FUNCTIONS = {
    "sum", "min", "max", "avg", "count", "topk", "bottomk", "quantile", "stddev", "group",
    "rate", "irate", "increase", "delta", "deriv", "histogram_quantile", "clamp_min",
    "clamp_max", "abs", "label_replace", "vector", "scalar", "time", "avg_over_time",
    "max_over_time", "min_over_time", "sum_over_time", "absent", "round", "sort", "sort_desc",
}
PROMQL_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right",
                   "and", "or", "unless", "bool", "offset"}

problems = []


def problem(msg):
    problems.append(msg)


# ---------------------------------------------------------------------------
# The metrics the Rust sources register
# ---------------------------------------------------------------------------
METRIC_DEF = re.compile(
    r"let\s+(\w+)\s*=\s*(IntCounterVec|IntCounter|CounterVec|Counter|IntGaugeVec|IntGauge|GaugeVec|Gauge|HistogramVec|Histogram)"
    r"::(?:new|with_opts)\(\s*(?:(?:Histogram)?Opts::new\(\s*)?\"([^\"]+)\"")


def registered_metrics(path, scrape):
    """{exposed name: {"labels": set, "scrape": scrape, "base": name}} for one metrics.rs."""
    src = path.read_text()
    prefix = ""
    m = re.search(r"Registry::new_custom\(\s*Some\(\s*\"([^\"]+)\"", src)
    if m:
        prefix = m.group(1) + "_"
    registered = set(re.findall(r"Box::new\(\s*(\w+)\.clone\(\)\s*\)", src))
    defs = list(METRIC_DEF.finditer(src))
    out = {}
    for i, d in enumerate(defs):
        var, kind, name = d.groups()
        if var not in registered:
            continue
        end = defs[i + 1].start() if i + 1 < len(defs) else len(src)
        labels = set()
        if kind.endswith("Vec"):
            lm = re.search(r"&\[([^\]]*)\]", src[d.end():end])
            if not lm:
                problem(f"{path.name}: cannot find the label names of {var}")
                continue
            labels = set(re.findall(r"\"([^\"]+)\"", lm.group(1)))
        full = prefix + name
        names = [full + s for s in ("_bucket", "_sum", "_count")] if kind.startswith("Histogram") else [full]
        for n in names:
            out[n] = {"labels": labels | ({"le"} if n.endswith("_bucket") else set()), "scrape": scrape, "base": full}
    unregistered = registered - {d.group(1) for d in defs}
    if unregistered:
        problem(f"{path.name}: registered collectors this parser did not understand: {sorted(unregistered)}")
    return out


def metric_catalogue():
    inference = registered_metrics(INFERENCE_METRICS, "podmonitor")
    operator = registered_metrics(OPERATOR_METRICS, "servicemonitor")
    # A parser that silently finds nothing would pass every dashboard.
    if len({m["base"] for m in inference.values()}) < 10 or len({m["base"] for m in operator.values()}) < 5:
        problem(f"found only {len(inference)} inference and {len(operator)} operator series names: the parser is out of date")
    return {**inference, **operator}


def outcome_values():
    """The values of backhaul_inference_requests_total's outcome label."""
    src = INFERENCE_ERRORS.read_text()
    m = re.search(r"fn category\(&self\)[^{]*\{(.*?)\n    \}", src, re.S)
    values = set(re.findall(r"=>\s*\"([a-z_]+)\"", m.group(1))) if m else set()
    relay = INFERENCE_RELAY.read_text()
    for literal in ("ok", "client_cancelled"):
        if f'"{literal}"' in relay:
            values.add(literal)
    if len(values) < 5 or "overloaded" not in values:
        problem(f"outcome values found in error.rs/relay.rs look wrong: {sorted(values)}")
    return values


# ---------------------------------------------------------------------------
# PromQL, enough of it for a dashboard's expressions
# ---------------------------------------------------------------------------
STRING = r'"(?:[^"\\]|\\.)*"'
SELECTOR = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)?\s*\{([^}]*)\}")
MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*(" + STRING + ")")
GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")


def parse_promql(expr):
    """(metric names, [(metric or None, label, op, value)], grouping clauses [(kw, [labels])])."""
    matchers = []
    for sel in SELECTOR.finditer(expr):
        for lm in MATCHER.finditer(sel.group(2)):
            matchers.append((sel.group(1), lm.group(1), lm.group(2), json.loads(lm.group(3))))
    rest = SELECTOR.sub(lambda s: (s.group(1) or "") + " ", expr)
    rest = re.sub(STRING, " ", rest)
    rest = re.sub(r"\[[^\]]*\]", " ", rest)
    groupings = [(g.group(1), [x.strip() for x in g.group(2).split(",") if x.strip()]) for g in GROUPING.finditer(rest)]
    rest = GROUPING.sub(" ", rest)
    rest = re.sub(r"(?<![\w.])\d+(\.\d+)?([eE][-+]?\d+)?", " ", rest)
    metrics = []
    for t in re.finditer(r"[a-zA-Z_:][a-zA-Z0-9_:]*", rest):
        word = t.group(0)
        if re.match(r"\s*\(", rest[t.end():]):
            if word not in PROMQL_FUNCTIONS:
                problem(f"unknown PromQL function {word}( in: {expr}")
        elif word not in PROMQL_KEYWORDS:
            metrics.append(word)
    return metrics, matchers, groupings


def check_expr(where, expr, catalogue, targets, outcomes, legend=None):
    metrics, matchers, groupings = parse_promql(expr)
    if not metrics:
        problem(f"{where}: no metric in: {expr}")
    available = set()
    for m in metrics:
        if m not in catalogue:
            problem(f"{where}: {m} is not a metric inference/src/metrics.rs or operator/src/metrics.rs registers")
            continue
        available |= catalogue[m]["labels"] | targets[catalogue[m]["scrape"]]
    for metric, label, op, value in matchers:
        if metric in catalogue:
            own = catalogue[metric]["labels"] | targets[catalogue[metric]["scrape"]]
            if label not in own:
                problem(f"{where}: {metric} has no label {label!r} (it has {sorted(own)})")
            if metric == "backhaul_inference_requests_total" and label == "outcome":
                for v in (value.split("|") if "~" in op else [value]):
                    if v not in outcomes:
                        problem(f"{where}: outcome {v!r} is never recorded (the outcomes: {sorted(outcomes)})")
    for kw, labels in groupings:
        for label in labels:
            if label not in available:
                problem(f"{where}: {kw} ({label}): no metric in the expression has that label")
    if "histogram_quantile" in expr:
        if not any(m.endswith("_bucket") for m in metrics):
            problem(f"{where}: histogram_quantile over no _bucket series: {expr}")
        if not any(kw == "by" and "le" in labels for kw, labels in groupings):
            problem(f"{where}: histogram_quantile without sum by (le, ...): {expr}")
    if legend:
        out = available
        by = [labels for kw, labels in groupings if kw == "by"]
        if by:
            out = set(by[0]) - ({"le"} if "histogram_quantile" in expr else set())
        for label in re.findall(r"\{\{\s*(\w+)\s*\}\}", legend):
            if label not in out:
                problem(f"{where}: legend {{{{{label}}}}} is not a label of the result (it has {sorted(out)})")
    return metrics


def walk_panels(panels):
    for p in panels:
        yield p
        yield from walk_panels(p.get("panels", []))


def scrape_target_labels(docs):
    targets = {"podmonitor": set(POD_TARGET_LABELS), "servicemonitor": set(SERVICE_TARGET_LABELS)}
    for kind, key, endpoints in (("PodMonitor", "podmonitor", "podMetricsEndpoints"), ("ServiceMonitor", "servicemonitor", "endpoints")):
        found = [d for d in docs if d.get("kind") == kind]
        if len(found) != 1:
            problem(f"the rendered manifests hold {len(found)} {kind}s, not one (render with it enabled)")
            continue
        for ep in found[0]["spec"][endpoints]:
            for r in ep.get("relabelings", []):
                if r.get("action", "replace") == "replace" and "targetLabel" in r:
                    targets[key].add(r["targetLabel"])
    return targets


def check_dashboard(dashboard_text, rendered):
    dashboard = json.loads(dashboard_text)
    docs = [d for d in yaml.safe_load_all(rendered) if d]
    catalogue = metric_catalogue()
    targets = scrape_target_labels(docs)
    outcomes = outcome_values()
    used = set()
    ds = {"type": "prometheus", "uid": "${datasource}"}

    variables = {v["name"]: v for v in dashboard.get("templating", {}).get("list", [])}
    dsvar = variables.get("datasource")
    if not dsvar or dsvar.get("type") != "datasource" or dsvar.get("query") != "prometheus":
        problem("no template variable `datasource` of type datasource, query prometheus")
    for name, v in variables.items():
        if v.get("type") != "query":
            continue
        if v.get("datasource") != ds:
            problem(f"variable {name}: datasource is not {ds}")
        q = v["query"]["query"] if isinstance(v.get("query"), dict) else v.get("query", "")
        m = re.fullmatch(r"\s*label_values\((.*),\s*(\w+)\s*\)\s*", q)
        if not m:
            problem(f"variable {name}: not label_values(<selector>, <label>): {q}")
            continue
        for metric in check_expr(f"variable {name}", m.group(1), catalogue, targets, outcomes):
            used.add(metric)
            if metric in catalogue and m.group(2) not in catalogue[metric]["labels"] | targets[catalogue[metric]["scrape"]]:
                problem(f"variable {name}: {metric} has no label {m.group(2)!r}")

    panels = [p for p in walk_panels(dashboard.get("panels", [])) if p.get("type") != "row"]
    if not panels:
        problem("the dashboard has no panels")
    ids = [p.get("id") for p in walk_panels(dashboard.get("panels", []))]
    if len(ids) != len(set(ids)):
        problem(f"panel ids repeat: {ids}")
    for p in panels:
        where = f"panel {p.get('title')!r}"
        if p.get("datasource") != ds:
            problem(f"{where}: datasource is not {ds}")
        targets_ = p.get("targets") or []
        if not targets_:
            problem(f"{where}: no queries")
        for t in targets_:
            if t.get("datasource") != ds:
                problem(f"{where} {t.get('refId')}: datasource is not {ds}")
            used.update(check_expr(f"{where} {t.get('refId')}", t.get("expr", ""), catalogue, targets, outcomes, t.get("legendFormat")))
    for m in sorted(REQUIRED - used):
        problem(f"no panel shows {m}")
    unused = sorted({catalogue[m]["base"] for m in catalogue} - {catalogue[m]["base"] for m in used if m in catalogue})
    if not problems:
        print(f"dashboard: {len(panels)} panels, {len(used)} series names, all registered; not shown: {', '.join(unused) or 'none'}")


# ---------------------------------------------------------------------------
# The PodMonitor and the inference pods operator/src/build.rs makes
# ---------------------------------------------------------------------------
def fn_body(src, name):
    m = re.search(r"\bfn " + name + r"\b[^{]*\{(.*?)\n\}", src, re.S)
    if not m:
        problem(f"build.rs: no fn {name}")
        return ""
    return m.group(1)


def inference_pod():
    """(static labels {key: value}, every label key, metrics port name, metrics path)."""
    src = BUILD.read_text()
    consts = dict(re.findall(r"pub const (\w+): &str = \"([^\"]*)\";", src))
    consts.update({k: int(v) for k, v in re.findall(r"pub const (\w+): i32 = (\d+);", src)})

    def value(expr):
        expr = expr.strip()
        m = re.fullmatch(r"\"([^\"]*)\"\.to_owned\(\)|(\w+)\.to_owned\(\)", expr)
        if m and m.group(1) is not None:
            return m.group(1)
        if m and isinstance(consts.get(m.group(2)), str):
            return consts[m.group(2)]
        return None  # depends on the ModelDeployment

    pair = re.compile(r"\(\s*(\"[^\"]+\"|[A-Z_]+)\.to_owned\(\),\s*((?:\"[^\"]*\"|\w+)\.to_owned\(\)|[^\n]*?)\s*,?\s*\),")
    static, keys = {}, set()
    labels_body = fn_body(src, "labels")
    if "selector_labels(v, region)" not in labels_body:
        problem("build.rs: labels() no longer starts from selector_labels()")
    for body in (fn_body(src, "selector_labels"), labels_body):
        for k, v in pair.findall(body):
            key = k.strip('"') if k.startswith('"') else consts.get(k)
            if key is None:
                problem(f"build.rs: label key {k} is not a known constant")
                continue
            keys.add(key)
            if value(v) is not None:
                static[key] = value(v)
    if not re.search(r"\"template\":\s*\{\s*\"metadata\":\s*\{\s*\"labels\":\s*labels\(v,", src):
        problem("build.rs: the pod template's labels are no longer labels(v, ...)")

    # Cross-check with the fixture build.rs's tests compare deployment() with.
    fixture = re.search(r"r#\"\nname: smollm2-us-east-\w+\n.*?\"#", src, re.S)
    if not fixture:
        problem("build.rs: the deployment metadata fixture is gone")
    else:
        golden = yaml.safe_load(fixture.group(0)[3:-2])["labels"]
        if set(golden) != keys:
            problem(f"build.rs: labels() parsed as {sorted(keys)}, its test expects {sorted(golden)}")
        for k, v in static.items():
            if golden.get(k) != v:
                problem(f"build.rs: label {k} parsed as {v!r}, its test expects {golden.get(k)!r}")

    ports = {name: const for name, const in re.findall(r"\{\"name\":\s*\"([\w-]+)\",\s*\"containerPort\":\s*([A-Z_]+)\b", src)}
    metrics_ports = [n for n, c in ports.items() if c == "METRICS_PORT"]
    if len(metrics_ports) != 1:
        problem(f"build.rs: container ports {ports}: not exactly one on METRICS_PORT")
    if not re.search(r"\"--metrics-addr\"\.into\(\),\s*format!\(\"0\.0\.0\.0:\{METRICS_PORT\}\"\)", src):
        problem("build.rs: the server's --metrics-addr is no longer 0.0.0.0:{METRICS_PORT}")
    router = re.search(r"fn metrics_router\(.*?\n\}", INFERENCE_HTTP.read_text(), re.S)
    paths = re.findall(r"\.route\(\"([^\"]+)\",\s*get\(render_metrics\)", router.group(0)) if router else []
    if len(paths) != 1:
        problem(f"inference/src/http.rs: metrics_router serves render_metrics at {paths}, not one path")
    return static, keys, (metrics_ports or [None])[0], (paths or [None])[0]


def selects(selector, labels):
    for k, v in (selector.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for e in selector.get("matchExpressions") or []:
        op, k, vs = e["operator"], e["key"], e.get("values", [])
        if (op == "Exists" and k not in labels) or (op == "DoesNotExist" and k in labels) \
                or (op == "In" and labels.get(k) not in vs) or (op == "NotIn" and labels.get(k) in vs):
            return False
    return True


def check_podmonitor(rendered):
    docs = [d for d in yaml.safe_load_all(rendered) if d]
    pms = [d for d in docs if d.get("kind") == "PodMonitor"]
    if len(pms) != 1:
        problem(f"the rendered manifests hold {len(pms)} PodMonitors, not one")
        return
    spec = pms[0]["spec"]
    static, keys, port, path = inference_pod()
    if problems:
        return
    selector = spec.get("selector") or {}
    pod = {**{k: f"dynamic-{i}" for i, k in enumerate(sorted(keys))}, **static}
    if not selects(selector, pod):
        problem(f"the selector {selector} does not select a pod labelled {pod} (operator/src/build.rs labels())")
    managed_by = "app.kubernetes.io/managed-by"
    if selects(selector, {k: v for k, v in pod.items() if k != managed_by}) or \
            selects(selector, {**pod, managed_by: "Helm"}):
        problem(f"the selector {selector} also selects pods the operator does not manage ({managed_by})")
    for k, v in (selector.get("matchLabels") or {}).items():
        if static.get(k) != v:
            problem(f"matchLabels {k}: {v!r}: the operator's pods carry {static.get(k)!r}")
    for e in selector.get("matchExpressions") or []:
        if e["key"] not in keys:
            problem(f"matchExpressions on {e['key']}: the operator's pods have no such label")
    inference_labels = set()
    for m in registered_metrics(INFERENCE_METRICS, "podmonitor").values():
        inference_labels |= m["labels"]
    endpoints = spec.get("podMetricsEndpoints") or []
    if len(endpoints) != 1:
        problem(f"{len(endpoints)} podMetricsEndpoints, not one")
    for ep in endpoints:
        if ep.get("port") != port:
            problem(f"scrapes port {ep.get('port')!r}; the server's metrics listener is the container port named {port!r}")
        if ep.get("path", "/metrics") != path:
            problem(f"scrapes path {ep.get('path')!r}; inference/src/http.rs serves metrics at {path!r}")
        for r in ep.get("relabelings", []):
            for s in r.get("sourceLabels", []):
                key = s.removeprefix("__meta_kubernetes_pod_label_")
                if key != s and key not in {re.sub(r"[^a-zA-Z0-9_]", "_", k) for k in keys}:
                    problem(f"relabeling from {s}: the operator's pods have no such label")
            t = r.get("targetLabel")
            if t in inference_labels | POD_TARGET_LABELS | {"le"}:
                problem(f"relabeling to {t!r}: a label the inference metrics or the scrape already have")
    if not problems:
        print(f"podmonitor: selects pods labelled {static} with {sorted(set(keys) - set(static))}; port {port!r}, path {path!r}")


# Breakages each check must catch: (what, the text in the dashboard or the
# rendered manifests, its replacement, a word of the expected complaint).
DASHBOARD_BREAKAGES = [
    ("an unregistered metric", "backhaul_inference_requests_queued{", "backhaul_inference_queue_depth{", "not a metric"),
    ("a histogram's base name under histogram_quantile", "time_to_first_token_seconds_bucket", "time_to_first_token_seconds", "not a metric"),
    ("a label the metric lacks", "model_deployment=~", "modeldeployment=~", "has no label"),
    ("an outcome never recorded", 'outcome=\\"overloaded\\"', 'outcome=\\"throttled\\"', "never recorded"),
    ("a quantile not by le", "sum by (le, api)", "sum by (api)", "without sum by (le"),
    ("a legend label aggregated away", '"legendFormat": "{{outcome}}"', '"legendFormat": "{{pod}}"', "legend"),
    ("a fixed datasource", '"uid": "${datasource}"', '"uid": "prometheus"', "datasource"),
]
PODMONITOR_BREAKAGES = [
    ("another port", "port: metrics", "port: http", "scrapes port"),
    ("another path", "path: /metrics", "path: /stats", "scrapes path"),
    ("a label value the pods do not carry", "app.kubernetes.io/name: backhaul-inference", "app.kubernetes.io/name: inference", "does not select"),
    ("no managed-by label", "      app.kubernetes.io/managed-by: backhaul-operator\n", "", "does not manage"),
    ("a pod label that does not exist", "__meta_kubernetes_pod_label_backhaul_dev_region", "__meta_kubernetes_pod_label_backhaul_dev_zone", "no such label"),
    ("a target label the metrics already have", "targetLabel: model_deployment", "targetLabel: model", "already have"),
]


def selftest(rendered):
    """Each breakage above, made to a copy, fails its check with its complaint."""
    global problems
    dashboard = (ROOT / "charts/backhaul-operator/dashboards/backhaul.json").read_text()
    failures = []
    for kind, breakages, original in (("dashboard", DASHBOARD_BREAKAGES, dashboard), ("podmonitor", PODMONITOR_BREAKAGES, rendered)):
        for what, old, new, complaint in breakages:
            if old not in original:
                failures.append(f"{kind} self-test {what!r}: {old!r} is not in the original")
                continue
            broken = original.replace(old, new)
            problems = []
            with contextlib.redirect_stdout(io.StringIO()):
                if kind == "dashboard":
                    check_dashboard(broken, rendered)
                else:
                    check_podmonitor(broken)
            if not any(complaint in p for p in problems):
                failures.append(f"{kind} with {what} passed (problems: {problems})")
    problems = failures
    if not failures:
        print(f"selftest: {len(DASHBOARD_BREAKAGES)} broken dashboards and {len(PODMONITOR_BREAKAGES)} broken PodMonitors refused")


def main(argv):
    def read(arg):
        return sys.stdin.read() if arg == "-" else Path(arg).read_text()
    if len(argv) == 3 and argv[0] == "dashboard":
        check_dashboard(Path(argv[1]).read_text(), read(argv[2]))
    elif len(argv) == 2 and argv[0] == "podmonitor":
        check_podmonitor(read(argv[1]))
    elif len(argv) == 2 and argv[0] == "selftest":
        selftest(read(argv[1]))
    else:
        print(__doc__, file=sys.stderr)
        return 2
    for p in problems:
        print(p, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
