"""The Grafana dashboard (deploy/grafana/fleetpilot.json) against the real daemon and a real Prometheus.

A daemon (`fleetpilot run`, one simulated group) serves /metrics, a real Prometheus scrapes it, and every PromQL
expression of the dashboard (with Grafana's variables substituted) is sent to Prometheus' query API: each must
parse, and every metric it names must be one the daemon exports (its /metrics exposition, plus the shadow
metrics when controller/metrics.py defines them).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DASHBOARD = REPO / "deploy" / "grafana" / "fleetpilot.json"
FLEETPILOT = str(Path(sys.executable).parent / "fleetpilot")
GROUP = "web"
#: The shadow panels' metrics (controller/shadow.py): profit is revenue minus cost, two counters, because a
#: counter cannot go down.
SHADOW_METRICS = {
    "fleetpilot_shadow_desired_machines",
    "fleetpilot_shadow_expected_revenue_usd_total",
    "fleetpilot_shadow_expected_cost_usd_total",
    "fleetpilot_shadow_downtime_minutes_total",
}
#: What Grafana substitutes before a query reaches Prometheus.
VARIABLES = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "5m", "$group": GROUP}

_KEYWORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "offset",
    "and",
    "or",
    "unless",
    "atan2",
    "inf",
    "nan",
}


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def panels(d: dict) -> list[dict]:
    out = []
    for p in d["panels"]:
        out.append(p)
        out.extend(p.get("panels", []))  # panels of a collapsed row
    return out


def expressions(d: dict) -> list[tuple[str, str]]:
    """(panel title, expr) of every query target."""
    return [(p["title"], t["expr"]) for p in panels(d) for t in p.get("targets", [])]


def substitute(expr: str) -> str:
    for name in sorted(VARIABLES, key=len, reverse=True):
        expr = expr.replace(name, VARIABLES[name])
    return expr


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: identifiers that are not functions or aggregations
    (followed by `(`), keywords, label names (inside `{}` or a by/without/on/ignoring/group_x list), string
    contents or durations."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals (label values, regexes)
    s = re.sub(r"\{[^}]*\}", "{}", s)  # label matchers
    s = re.sub(r"\[[^\]]*\]", "[]", s)  # ranges and subqueries
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)
    s = re.sub(r"(?<![A-Za-z0-9_:])\d[A-Za-z0-9_.]*", " ", s)  # numbers and durations (0.99, 1e3, 5m)
    names = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", s):
        word = m.group(0)
        rest = s[m.end() :].lstrip()
        if rest.startswith("(") or word.lower() in _KEYWORDS:
            continue
        names.add(word)
    return names


def defined_metric_names() -> set[str]:
    """Every sample name controller/metrics.py's Metrics defines (counters with _total, histograms with
    _bucket/_sum/_count), whether or not a series exists yet."""
    from fleetpilot.controller.metrics import Metrics

    names = set()
    for family in _collect(Metrics):
        if family.type == "counter":
            names |= {family.name + "_total", family.name + "_created"}
        elif family.type == "histogram":
            names |= {family.name + s for s in ("_bucket", "_sum", "_count", "_created")}
        else:
            names.add(family.name)
    assert "fleetpilot_ticks_total" in names and "fleetpilot_tick_duration_seconds_bucket" in names
    return names


def _collect(metrics_cls):
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry()
    metrics_cls(registry)
    return list(registry.collect())


def exposition_names(text: str) -> tuple[set[str], set[str]]:
    """(declared, sampled) names of a Prometheus text exposition: `declared` from its `# TYPE` lines (a labelled
    counter with no series yet, such as fleetpilot_fallbacks_total before any fallback, is declared), with a
    histogram's _bucket/_sum/_count; `sampled`: the names of the samples present."""
    declared = set()
    for name, kind in re.findall(r"^# TYPE ([A-Za-z_:][A-Za-z0-9_:]*) (\w+)$", text, re.M):
        declared |= {name + s for s in ("_bucket", "_sum", "_count")} if kind == "histogram" else {name}
    sampled = {m.group(1) for m in re.finditer(r"^([A-Za-z_:][A-Za-z0-9_:]*)[{ ]", text, re.M)}
    return declared | sampled, sampled


# -- static checks ------------------------------------------------------------------------------------------


def test_metric_name_extraction():
    assert metric_names(
        'sum by (group, reason) (rate(fleetpilot_decisions_total{group=~"a|b",reason!="x"}[5m])) * 60'
    ) == {"fleetpilot_decisions_total"}
    assert metric_names("time() - max(fleetpilot_last_tick_timestamp_seconds)") == {
        "fleetpilot_last_tick_timestamp_seconds"
    }
    assert metric_names("histogram_quantile(0.99, sum by (le) (rate(a_bucket[1m]))) or vector(0)") == {"a_bucket"}
    assert metric_names("x / on (group) group_left y offset 5m") == {"x", "y"}
    assert metric_names("rate(x[1h:5m]) > 1e3 and y") == {"x", "y"}


def test_dashboard_shape():
    d = dashboard()
    assert d["uid"] == "fleetpilot" and d["schemaVersion"] >= 36
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    group = variables["group"]
    assert group["type"] == "query" and group["multi"] and group["includeAll"]
    assert metric_names(group["query"]["query"].replace("label_values(", "(").split(",")[0] + ")") == {
        "fleetpilot_machines"
    }
    ids = [p["id"] for p in panels(d)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    titles = " | ".join(p["title"].lower() for p in panels(d))
    for wanted in ("load vs capacity", "by reason", "fallback", "source errors", "backend errors", "tick duration"):
        assert wanted in titles, f"no panel about {wanted!r}"
    for p in panels(d):
        if p["type"] == "row":
            continue
        assert p["targets"], f"panel {p['title']!r} has no query"
        assert p["datasource"]["uid"] == "${datasource}"
        for t in p["targets"]:
            assert t["datasource"]["uid"] == "${datasource}"
            # every per-group metric is filtered by the group variable
            if any(n in defined_metric_names() for n in metric_names(t["expr"])) and "group" in t["expr"]:
                assert 'group=~"$group"' in t["expr"], f"{p['title']}: {t['expr']}"


def test_shadow_panels_name_exactly_the_shadow_metrics():
    named = set().union(*(metric_names(e) for _, e in expressions(dashboard())))
    assert {n for n in named if n.startswith("fleetpilot_shadow_")} == SHADOW_METRICS
    assert named - SHADOW_METRICS, "the dashboard has other panels too"


def test_dashboard_is_documented():
    doc = (REPO / "docs" / "grafana.md").read_text(encoding="utf-8")
    assert "deploy/grafana/fleetpilot.json" in doc and "grafanaDashboard.enabled" in doc
    for name in metric_names(" ".join(e for _, e in expressions(dashboard()))):
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        assert f"`{base}`" in (REPO / "docs" / "metrics.md").read_text(encoding="utf-8"), f"{name} undocumented"


# -- against the daemon and a real Prometheus --------------------------------------------------------------


def _start_daemon(tmp_path: Path) -> tuple[subprocess.Popen, str]:
    cfg = {
        "interval_seconds": 0.1,
        "journal_path": str(tmp_path / "journal.sqlite"),
        "server": {"host": "127.0.0.1", "port": 0},
        "groups": [
            {
                "name": GROUP,
                "policy": "target-tracking",
                "fallback_policy": "target-tracking",
                "shadow_policies": ["default"],
                "source": {"kind": "simulator", "seed": 5},
                "backend": {"kind": "simulated", "seed": 5, "initial_machines": 20},
            }
        ],
    }
    path = tmp_path / "fleetpilot.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    log = tmp_path / "daemon.log"
    with log.open("w") as err:  # a file, not a pipe: a full pipe would stall the daemon while Prometheus scrapes
        proc = subprocess.Popen(
            [FLEETPILOT, "run", "--config", str(path), "--quiet"], stdout=subprocess.DEVNULL, stderr=err
        )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for line in log.read_text().splitlines(keepends=True):
            if not line.endswith("\n"):  # still being written
                break
            rec = json.loads(line)
            if rec["msg"].startswith("serving /metrics"):
                return proc, f"127.0.0.1:{rec['port']}"
        if proc.poll() is not None:
            raise AssertionError(f"the daemon exited with {proc.returncode}: {log.read_text()[-2000:]}")
        time.sleep(0.1)
    proc.kill()
    raise AssertionError("the daemon did not serve /metrics within 30 s")


def _prometheus_query(url: str, expr: str) -> dict:
    q = urllib.parse.urlencode({"query": expr})
    try:
        with urllib.request.urlopen(f"{url}/api/v1/query?{q}", timeout=10) as r:  # noqa: S310 - loopback
            return json.loads(r.read())
    except urllib.error.HTTPError as exc:  # a parse error is a 400 with a JSON body
        return json.loads(exc.read())


@pytest.fixture(scope="module")
def checked(tmp_path_factory, prometheus_factory) -> dict:
    """Run the daemon, scrape it with a real Prometheus, send every dashboard expression to the query API."""
    proc, target = _start_daemon(tmp_path_factory.mktemp("daemon"))
    try:
        prom = prometheus_factory([target])
        prom.wait_for(f'fleetpilot_ticks_total{{outcome="ok",instance="{target}"}}', lambda v: v and v[0] >= 10)
        # several scrapes, so rate() over the window has points
        prom.wait_for(f'count_over_time(fleetpilot_load_tpm{{group="{GROUP}"}}[1m])', lambda v: v and v[0] >= 3)
        with urllib.request.urlopen(f"http://{target}/metrics", timeout=5) as r:  # noqa: S310 - loopback
            exposition = r.read().decode()
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    answers = []
    for title, raw in expressions(dashboard()):
        expr = substitute(raw)
        answers.append((title, expr, _prometheus_query(prom.url, expr)))
    exported, sampled = exposition_names(exposition)
    return {"exported": exported, "sampled": sampled, "answers": answers}


def test_every_expression_parses_and_names_only_exported_metrics(checked):
    exported, sampled = checked["exported"], checked["sampled"]
    assert {"fleetpilot_load_tpm", "fleetpilot_machines", "fleetpilot_decisions_total"} <= sampled
    assert "fleetpilot_fallbacks_total" in exported
    allowed = exported
    assert len(checked["answers"]) >= 15
    problems, empty = [], []
    for title, expr, answer in checked["answers"]:
        assert "$" not in expr, f"{title}: an unsubstituted variable in {expr}"
        if answer.get("status") != "success":
            problems.append(f"{title}: {expr}: {answer.get('errorType')}: {answer.get('error')}")
            continue
        names = metric_names(expr)
        assert names, f"{title}: no metric in {expr}"
        unknown = names - allowed
        if unknown:
            problems.append(f"{title}: {expr}: not exported by the daemon: {sorted(unknown)}")
        # a query on series the daemon already exports must return data (a wrong label would give none)
        if names <= sampled and not answer["data"]["result"]:
            empty.append(f"{title}: {expr}")
    assert not problems, "\n".join(problems)
    assert not empty, "queries on exported series returned nothing:\n" + "\n".join(empty)


def test_shadow_expressions_parse_and_name_metrics_the_daemon_exports(checked):
    """The daemon of the fixture runs a shadow policy, so the shadow series exist and must answer with data."""
    shadow = [(t, e, a) for t, e, a in checked["answers"] if metric_names(e) & SHADOW_METRICS]
    assert {n for _, e, _ in shadow for n in metric_names(e)} & SHADOW_METRICS == SHADOW_METRICS
    assert SHADOW_METRICS <= checked["sampled"]
    for title, expr, answer in shadow:
        assert answer.get("status") == "success", f"{title}: {expr}: {answer}"
        assert answer["data"]["result"], f"{title}: {expr}: no data"
