"""The status page (`/`) and its JSON twin (`/api/groups`), rendered from a `controller.status.StatusBoard`.

Read-only and self-contained: one HTML document with its CSS and a small hand-written script inline (no
request leaves the page: a Content-Security-Policy allows only that script, by its hash); the chart data is
embedded as JSON and drawn as SVG paths. Every piece of user text (group names, policy specs, guard reasons)
is HTML-escaped, and the embedded JSON escapes `<`, `>` and `&`, so no value can close its script element.

Query: `group=NAME` (one group, at one point a minute; without it every group at one point per
`OVERVIEW_STEP` minutes). Anything else is answered 400 with one JSON line naming the problem; an unknown group
404.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import re
import urllib.parse
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import numpy as np

from fleetpilot.controller.status import DECISION_FIELDS, DECISIONS, StatusBoard

#: Minutes per chart point when the page shows every group (one group: every minute).
OVERVIEW_STEP = 10
#: Decisions per group when the page (or the JSON twin) shows every group (one group: DECISIONS).
OVERVIEW_DECISIONS = 5
#: A value of `group` that could never name a group (the config's pattern, see GroupConfig.name).
_GROUP_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_QUERY_KEYS = ("group",)
#: Groups per snapshot of the board when the page shows every group.
_SNAPSHOT_GROUPS = 256

Response = tuple[int, str, bytes, dict[str, str]]


class QueryError(ValueError):
    """A query the page cannot answer: (status code, message)."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


def _shown(value: str, limit: int = 80) -> str:
    return value if len(value) <= limit else value[:limit] + "..."


def parse_query(board: StatusBoard, query: str) -> int | None:
    """The group index the query asks for (None: every group). Raises QueryError."""
    if not query:
        return None
    try:
        pairs = urllib.parse.parse_qsl(
            query, keep_blank_values=True, strict_parsing=True, errors="strict", max_num_fields=len(_QUERY_KEYS) + 1
        )
    except (ValueError, UnicodeDecodeError) as exc:
        raise QueryError(400, f"query: cannot be parsed ({str(exc).splitlines()[0]}); expected group=NAME") from None
    keys = [k for k, _ in pairs]
    for k in keys:
        if k not in _QUERY_KEYS:
            raise QueryError(400, f"query: unknown parameter {_shown(k)!r}; expected group=NAME")
    if keys.count("group") > 1:
        raise QueryError(400, "query: group is given more than once")
    name = dict(pairs).get("group")
    if name is None:
        return None
    if name in board.index:
        return board.index[name]
    if not name:
        raise QueryError(400, "query: group is empty; expected group=NAME")
    if not _GROUP_NAME.match(name):
        raise QueryError(
            400,
            f"query: group {_shown(name)!r} is not a group name (a letter or digit, then letters, digits, "
            "'_', '.', '-'; at most 63 characters)",
        )
    raise QueryError(404, f"unknown group {name!r}")


# --- the data --------------------------------------------------------------------------------------------
def _floats(a: np.ndarray, digits: int) -> list[float | None]:
    """A JSON-ready list: rounded floats, None where NaN."""
    r = np.round(np.asarray(a, dtype=np.float64), digits)
    nan = np.isnan(r)
    out: list[float | None] = np.where(nan, 0, r).astype(np.int64).tolist() if digits == 0 else r.tolist()
    for j in np.flatnonzero(nan).tolist():
        out[j] = None
    return out


def _decision(t: tuple) -> dict[str, Any]:
    d = dict(zip(DECISION_FIELDS, t, strict=True))
    d["guards"] = list(d["guards"])
    d["shadows"] = list(d["shadows"])
    return d


def _state(board: StatusBoard, i: int, last: tuple | None) -> dict[str, Any]:
    g = board.groups[i]
    if last is None:
        return {"dry_run": board.dry_run, "paused": g.paused, "decided": False}
    d = dict(zip(DECISION_FIELDS, last, strict=True))
    cause = next((r.split(":", 1)[1] for r in d["guards"] if r.startswith("fallback:")), None)
    return {
        "dry_run": board.dry_run,
        "paused": g.paused,
        "decided": True,
        "data_status": d["data_status"],
        "data_fault": d["data_status"] != "ok",
        "fallback": d["action"] == "fallback",
        "fallback_cause": cause,
        "held": d["action"] == "hold",
        "backend_error": d["outcome"] == "error",
        "outcome": d["outcome"],
    }


def _view(board: StatusBoard, only: int | None) -> tuple[list[int], int, int]:
    """The groups shown, the minutes per point and the decisions per group."""
    if only is None:
        return list(range(len(board.groups))), OVERVIEW_STEP, OVERVIEW_DECISIONS
    return [only], 1, DECISIONS


def _groups(board: StatusBoard, only: int | None) -> Iterator[dict[str, Any]]:
    """The groups shown, one at a time, from snapshots of `_SNAPSHOT_GROUPS` groups (a small peak of memory, a
    short lock; the board's rings are minute-major, so a block of groups reads a short run of each row)."""
    rows, step, keep = _view(board, only)
    for lo in range(0, len(rows), _SNAPSHOT_GROUPS):
        block = rows[lo : lo + _SNAPSHOT_GROUPS]
        snap = board.snapshot(block, step, keep)
        for k, i in enumerate(block):
            yield _group(board, snap, step, k, i)


def _group(board: StatusBoard, snap: dict[str, Any], step: int, k: int, i: int) -> dict[str, Any]:
    """One group of the JSON twin: state, series, decisions (newest first) and shadows."""
    g = board.groups[i]
    decisions = snap["decisions"][k]
    last = decisions[-1] if decisions else None
    series: dict[str, Any] | None = None
    if snap["series"] is not None:
        s = snap["series"]
        tpm, machines = (1, 0) if step == 1 else (0, 1)  # decimals: a minute's values, or means
        series = {
            "start_minute": snap["start_minute"],
            "step_minutes": step,
            "load_tpm": _floats(s["load_tpm"][k], tpm),
            "active": _floats(s["active"][k], machines),
            "warming": _floats(s["warming"][k], machines),
            "desired": _floats(s["desired"][k], machines),
        }
        if "forecast_tpm" in s:
            series["forecast_tpm"] = _floats(s["forecast_tpm"][k], tpm)
            series["forecast_shift_minutes"] = g.warmup_minutes
        sh = snap["shadow_series"].get(i)
        if sh is not None:
            series["shadows"] = {p: _floats(sh[j], machines) for j, p in enumerate(g.shadow_policies)}
    book = board.economics
    return {
        "name": g.name,
        "policy": g.policy,
        "fallback_policy": g.fallback_policy,
        "min_machines": g.min_machines,
        "max_machines": g.max_machines,
        "capacity_tpm_per_machine": g.capacity_tpm_per_machine,
        "warmup_minutes": g.warmup_minutes,
        "source": g.source,
        "backend": g.backend,
        "state": _state(board, i, last),
        "now": None
        if last is None
        else {"minute": last[0], "load_tpm": last[2], "active": last[5], "warming": last[6], "desired": last[12]},
        "series": series,
        "decisions": [_decision(t) for t in reversed(decisions)],
        "shadow_policies": list(g.shadow_policies),
        "shadows": book.group_summary(i) if book is not None else [],
    }


def _daemon(board: StatusBoard) -> dict[str, Any]:
    return {
        "dry_run": board.dry_run,
        "clock": board.clock,
        "interval_seconds": board.interval_seconds,
        "ticks": board.ticks,
        "last_minute": board.last_minute,
        "groups": len(board.groups),
    }


def groups_data(board: StatusBoard, only: int | None) -> dict[str, Any]:
    """The JSON twin as one dict (every group, or one)."""
    return {"daemon": _daemon(board), "groups": list(_groups(board, only))}


# --- responses -------------------------------------------------------------------------------------------
def _json(code: int, data: Any) -> Response:
    body = json.dumps(data, separators=(",", ":"), allow_nan=False).encode()
    return code, "application/json", body, {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}


def _dumps(data: Any) -> str:
    return json.dumps(data, separators=(",", ":"), allow_nan=False)


def api_groups(board: StatusBoard, query: str) -> Response:
    try:
        only = parse_query(board, query)
    except QueryError as exc:
        return _json(exc.code, {"error": str(exc)})
    daemon = _dumps(_daemon(board))
    parts = [_dumps(g) for g in _groups(board, only)]  # one group at a time: a small peak of Python objects
    body = f'{{"daemon":{daemon},"groups":[{",".join(parts)}]}}'
    return 200, "application/json", body.encode(), {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}


def page(board: StatusBoard, query: str) -> Response:
    try:
        only = parse_query(board, query)
    except QueryError as exc:
        return _html(exc.code, _document(f"fleetpilot: {exc.code}", f'<p class="error">{_e(str(exc))}</p>', None))
    daemon = _daemon(board)
    cards, charts = [], []
    for k, g in enumerate(_groups(board, only)):  # one group at a time: a small peak of Python objects
        cards.append(_card(g, k, only is not None))
        charts.append(_embed({"capacity": g["capacity_tpm_per_machine"], "series": g["series"]}))
    body = _header(daemon, len(cards)) + "<main>" + ("".join(cards) or "<p>no groups</p>") + "</main>"
    return _html(200, _document("fleetpilot status", body, '{"groups":[' + ",".join(charts) + "]}"))


# --- HTML ------------------------------------------------------------------------------------------------
def _e(v: Any) -> str:
    return html.escape(str(v), quote=True)


def _num(v: Any, digits: int = 0) -> str:
    if v is None:
        return "-"
    t = type(v)
    if t is int:
        return str(v)
    if t is float:
        return f"{v:.{digits}f}"
    return _e(v)


_TIMES: dict[int, str] = {}


def _time(minute: int | None) -> str:
    if minute is None:
        return "-"
    t = _TIMES.get(minute)
    if t is None:
        if len(_TIMES) > 4096:
            _TIMES.clear()
        t = _TIMES[minute] = datetime.fromtimestamp(minute * 60, UTC).strftime("%Y-%m-%d %H:%M")
    return t


def _badges(st: dict[str, Any]) -> str:
    b = []
    if st.get("dry_run"):
        b.append(("dry", "DRY-RUN: nothing is written"))
    if st.get("paused"):
        b.append(("paused", "PAUSED: decided, never written"))
    if st.get("fallback"):
        b.append(("fallback", f"FALLBACK: {st.get('fallback_cause') or 'unknown'}"))
    if st.get("data_fault"):
        b.append(("fault", f"DATA FAULT: {st.get('data_status')}"))
    if st.get("held") and not st.get("data_fault"):
        b.append(("fault", "HELD"))
    if st.get("backend_error"):
        b.append(("fault", "BACKEND ERROR"))
    if st.get("decided") and not b:
        b.append(("ok", "OK"))
    if not st.get("decided"):
        b.append(("idle", "no decision yet"))
    return "".join(f'<span class="badge {c}">{_e(t)}</span>' for c, t in b)


def _shadow_table(shadows: list[dict[str, Any]], policy: str) -> str:
    if not shadows:
        return ""
    head = (
        "<tr><th>policy</th><th>desired now</th><th>expected profit, 24 h</th><th>downtime min, 24 h</th>"
        "<th>minutes</th><th>expected profit, total</th><th>downtime min, total</th><th>errors</th></tr>"
    )
    rows = []
    for s in shadows:
        name = f"live: {policy}" if s["live"] else s["policy"]
        note = f' <span class="badge fault">{_e(s["unavailable"])}</span>' if s["unavailable"] else ""
        rows.append(
            f'<tr class="{"live" if s["live"] else "shadow"}"><td>{_e(name)}{note}</td><td>{_num(s["desired"])}</td>'
            f"<td>{_num(s['window_expected_profit_usd'], 2)}</td><td>{_num(s['window_downtime_minutes'], 2)}</td>"
            f"<td>{_num(s['window_minutes'])}</td><td>{_num(s['expected_profit_usd'], 2)}</td>"
            f"<td>{_num(s['downtime_minutes'], 2)}</td><td>{_num(s['errors'])}</td></tr>"
        )
    return (
        '<table class="shadows"><caption>shadow policies: estimated under the simulator\'s economics, each on its '
        f"own fleet (never written)</caption>{head}{''.join(rows)}</table>"
    )


def _last_decision(g: dict[str, Any], link: str) -> str:
    """The overview's line for a group: its last decision, and the way to its last DECISIONS."""
    more = f'<a href="{_e(link)}">last {DECISIONS} decisions, one point a minute</a>'
    if not g["decisions"]:
        return f'<p class="more">no decision yet · {more}</p>'
    d = g["decisions"][0]
    return (
        f'<p class="more">last decision {_time(d["minute"])} UTC: {_e(d["action"])}, raw action '
        f"{_num(d['raw_action'])}, guards {_e(', '.join(d['guards']) or '-')}, final {_num(d['final'])}, "
        f"{_e(d['outcome'])} · {more}</p>"
    )


def _decisions_table(g: dict[str, Any], open_: bool, link: str) -> str:
    if not open_:
        return _last_decision(g, link)
    ds = g["decisions"]
    shadow_cols = "".join(f"<th>shadow {_e(p)}</th>" for p in g["shadow_policies"])
    head = (
        "<tr><th>minute (UTC)</th><th>load tpm</th><th>data</th><th>action</th><th>active</th><th>warming</th>"
        "<th>desired before</th><th>raw action</th><th>policy</th><th>fallback</th><th>guards applied</th>"
        f"<th>final</th><th>outcome</th>{shadow_cols}</tr>"
    )
    rows = []
    for d in ds:
        sh = d["shadows"]
        cells = "".join(f"<td>{_num(sh[j] if j < len(sh) else None)}</td>" for j in range(len(g["shadow_policies"])))
        rows.append(
            f"<tr><td>{_time(d['minute'])}</td><td>{_num(d['load_tpm'])}</td><td>{_e(d['data_status'])}</td>"
            f"<td>{_e(d['action'])}</td><td>{_num(d['active'])}</td><td>{_num(d['warming'])}</td>"
            f"<td>{_num(d['desired_before'])}</td><td>{_num(d['raw_action'])}</td><td>{_num(d['policy_desired'])}</td>"
            f"<td>{_num(d['fallback_desired'])}</td><td>{_e(', '.join(d['guards']) or '-')}</td>"
            f"<td>{_num(d['final'])}</td><td>{_e(d['outcome'])}</td>{cells}</tr>"
        )
    return (
        f"<details open><summary>last {len(ds)} decisions (newest first)</summary>"
        f'<table class="decisions">{head}{"".join(rows)}</table></details>'
    )


def _header(dm: dict[str, Any], shown: int) -> str:
    return "".join(
        [
            '<header><h1><a href="/">fleetpilot</a></h1>',
            '<span class="badge dry">DRY-RUN: no group is written</span>' if dm["dry_run"] else "",
            f'<span class="meta">{shown} of {dm["groups"]} group{"s" if dm["groups"] != 1 else ""} · '
            f"{_e(dm['clock'])} clock · every {dm['interval_seconds']:g} s · {dm['ticks']} ticks · "
            f'last minute {_e(_time(dm["last_minute"]))} UTC · <a href="/api/groups">JSON</a> · '
            '<a href="/metrics">metrics</a></span></header>',
        ]
    )


def _card(g: dict[str, Any], k: int, single: bool) -> str:
    st, now = g["state"], g["now"] or {}
    link = "/?" + urllib.parse.urlencode({"group": g["name"]})
    shadows = f" · shadows {_e(', '.join(g['shadow_policies']))}" if g["shadow_policies"] else ""
    step = g["series"]["step_minutes"] if g["series"] else 1
    per = "one point a minute" if step == 1 else f"{step}-minute means"
    return (
        f'<section class="group" id="group-{k}"><h2><a href="{_e(link)}">{_e(g["name"])}</a>{_badges(st)}</h2>'
        f'<p class="facts">policy <b>{_e(g["policy"])}</b> (fallback {_e(g["fallback_policy"])}) · '
        f"{g['min_machines']}..{g['max_machines']} machines of {g['capacity_tpm_per_machine']:g} tpm · "
        f"warm-up {g['warmup_minutes']} min · {_e(g['source'])} → {_e(g['backend'])}{shadows}</p>"
        f'<p class="now">load <b>{_num(now.get("load_tpm"))}</b> tpm · active <b>{_num(now.get("active"))}</b>'
        f" · warming <b>{_num(now.get('warming'))}</b> · desired <b>{_num(now.get('desired'))}</b>"
        f" · outcome {_e(st.get('outcome', '-'))}</p>"
        f'<figure><svg class="chart" data-index="{k}" data-points="0" viewBox="0 0 960 260" role="img">'
        f"<title>{_e(g['name'])}: load, machines and forecast, last 24 hours ({per})</title></svg>"
        f'<figcaption class="legend" data-index="{k}"></figcaption></figure>'
        f"{_shadow_table(g['shadows'], g['policy'])}{_decisions_table(g, single, link)}</section>"
    )


def _embed(data: Any) -> str:
    """JSON for an HTML script element of type application/json: `<`, `>`, `&` escaped, so it cannot end it."""
    s = json.dumps(data, separators=(",", ":"), allow_nan=False)
    return s.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#1d2430;background:#f5f6f8}
header{display:flex;gap:12px;align-items:center;flex-wrap:wrap;padding:10px 20px;background:#1d2430;color:#fff}
header h1{font-size:18px;margin:0}header a{color:#9cc8ff}.meta{opacity:.85}
main{padding:12px 20px}
section.group{background:#fff;border:1px solid #d8dce3;border-radius:6px;margin:0 0 16px;padding:10px 14px;
content-visibility:auto;contain-intrinsic-size:auto 560px}
h2{font-size:16px;margin:0 0 4px;display:flex;gap:8px;align-items:center;flex-wrap:wrap}h2 a{color:#1d2430}
.facts,.now{margin:2px 0;color:#4a5568}
.badge{font-size:11px;font-weight:600;padding:2px 7px;border-radius:10px;letter-spacing:.02em}
.badge.ok{background:#d7f5df;color:#17632e}.badge.dry{background:#fff1c2;color:#7a5300}
.badge.paused{background:#e2e8f0;color:#2d3748}.badge.fallback{background:#ffe0c2;color:#8a3b00}
.badge.fault{background:#ffd6d6;color:#9b1c1c}.badge.idle{background:#edf2f7;color:#4a5568}
figure{margin:6px 0}svg.chart{width:100%;max-width:1100px;height:auto;background:#fbfcfd;border:1px solid #e2e6ec}
.legend{display:flex;gap:14px;flex-wrap:wrap;font-size:12px;color:#4a5568}
.legend i{display:inline-block;width:14px;height:3px;margin-right:4px;vertical-align:middle}
table{border-collapse:collapse;font-size:12px;margin:6px 0}th,td{border:1px solid #e2e6ec;padding:2px 6px;text-align:right}
td{white-space:nowrap}
th{background:#f0f2f5}td:nth-child(3),td:nth-child(4),td:nth-child(11),td:nth-child(13){text-align:left}
caption{text-align:left;color:#4a5568;padding:2px 0}tr.live td{font-weight:600}
summary{cursor:pointer;color:#2b6cb0}.error{color:#9b1c1c;font-weight:600}.more{margin:2px 0;font-size:12px}
"""

_SCRIPT = """
(function () {
  "use strict";
  var started = performance.now();
  var NS = "http://www.w3.org/2000/svg";
  var node = document.getElementById("fp-data");
  if (!node) { return; }
  var data = JSON.parse(node.textContent);
  var W = 960, H = 260, L = 56, R = 60, T = 14, B = 24;
  var COLORS = {load: "#2b6cb0", forecast: "#805ad5", active: "#2f855a", total: "#dd6b20", desired: "#1a202c"};
  var SHADOW = ["#d53f8c", "#319795", "#b7791f", "#718096", "#e53e3e", "#38a169", "#3182ce", "#975a16"];
  function el(name, attrs, parent) {
    var e = document.createElementNS(NS, name);
    for (var k in attrs) { e.setAttribute(k, String(attrs[k])); }
    if (parent) { parent.appendChild(e); }
    return e;
  }
  function hhmm(minute) {
    var d = new Date(minute * 60000);
    return ("0" + d.getUTCHours()).slice(-2) + ":" + ("0" + d.getUTCMinutes()).slice(-2);
  }
  function draw(svg, g) {
    var s = g.series;
    if (!s) {
      el("text", {x: W / 2, y: H / 2, "text-anchor": "middle", fill: "#718096"}, svg).textContent = "no data yet";
      return [];
    }
    var cap = g.capacity, step = s.step_minutes, n = s.load_tpm.length, start = s.start_minute;
    var lines = [
      {key: "load", label: "load (tpm)", v: s.load_tpm, k: 1, shift: 0},
      {key: "active", label: "active", v: s.active, k: cap, shift: 0},
      {key: "total", label: "active + warming", v: s.active.map(function (a, i) {
        var w = s.warming[i]; return (a === null || w === null) ? null : a + w; }), k: cap, shift: 0},
      {key: "desired", label: "desired", v: s.desired, k: cap, shift: 0, dash: "5 3"}
    ];
    if (s.forecast_tpm) {
      lines.push({key: "forecast", label: "forecast (tpm)", v: s.forecast_tpm, k: 1,
                  shift: (s.forecast_shift_minutes || 0) / step, dash: "2 3"});
    }
    var names = Object.keys(s.shadows || {});
    names.forEach(function (p, j) {
      lines.push({key: "shadow", label: "shadow " + p, v: s.shadows[p], k: cap, shift: 0,
                  dash: "1 2", color: SHADOW[j % SHADOW.length]});
    });
    var top = 0;
    lines.forEach(function (ln) {
      ln.v.forEach(function (x) { if (x !== null && x * ln.k > top) { top = x * ln.k; } });
    });
    top = top > 0 ? top * 1.08 : 1;
    var span = Math.max(n - 1, 1);
    function X(i) { return L + (W - L - R) * i / span; }
    function Y(v) { return T + (H - T - B) * (1 - v / top); }
    for (var t = 0; t <= 4; t++) {
      var v = top * t / 4, y = Y(v);
      el("line", {x1: L, x2: W - R, y1: y, y2: y, stroke: "#e2e8f0"}, svg);
      el("text", {x: L - 4, y: y + 4, "text-anchor": "end", "font-size": 10, fill: "#4a5568"}, svg)
        .textContent = Math.round(v).toLocaleString("en-US");
      el("text", {x: W - R + 4, y: y + 4, "font-size": 10, fill: "#4a5568"}, svg)
        .textContent = (v / cap).toFixed(v / cap < 10 ? 1 : 0);
    }
    el("text", {x: 4, y: T - 3, "font-size": 10, fill: "#4a5568"}, svg).textContent = "tpm";
    el("text", {x: W - 4, y: T - 3, "text-anchor": "end", "font-size": 10, fill: "#4a5568"}, svg).textContent = "machines";
    for (var q = 0; q <= 6; q++) {
      var i = Math.round(span * q / 6);
      el("text", {x: X(i), y: H - 6, "text-anchor": "middle", "font-size": 10, fill: "#4a5568"}, svg)
        .textContent = hhmm(start + i * step);
    }
    var points = 0;
    lines.forEach(function (ln) {
      var d = [], pen = false;
      for (var i = 0; i < n; i++) {
        var x = ln.v[i];
        var xi = i + ln.shift;
        if (x === null || xi > span + ln.shift) { pen = false; continue; }
        d.push((pen ? "L" : "M") + Math.round(X(xi) * 2) / 2 + " " + Math.round(Y(x * ln.k) * 2) / 2);
        pen = true;
        points++;
      }
      if (d.length) {
        var attrs = {d: d.join(""), fill: "none", stroke: ln.color || COLORS[ln.key], "stroke-width": 1.5,
                     "data-series": ln.label, "data-points": d.length};
        if (ln.dash) { attrs["stroke-dasharray"] = ln.dash; }
        el("path", attrs, svg);
        ln.drawn = true;
      }
    });
    svg.setAttribute("data-points", String(points));
    return lines;
  }
  var svgs = document.querySelectorAll("svg.chart");
  var total = 0, drawn = 0;
  function drawOne(svg) {
    if (svg.getAttribute("data-drawn")) { return; }
    svg.setAttribute("data-drawn", "1");
    var k = Number(svg.getAttribute("data-index"));
    var lines = draw(svg, data.groups[k]);
    total += Number(svg.getAttribute("data-points"));
    drawn++;
    var legend = document.querySelector('figcaption.legend[data-index="' + k + '"]');
    lines.filter(function (ln) { return ln.drawn; }).forEach(function (ln) {
      var span = document.createElement("span"), sw = document.createElement("i");
      sw.style.background = ln.color || COLORS[ln.key];
      span.appendChild(sw);
      span.appendChild(document.createTextNode(ln.label));
      legend.appendChild(span);
    });
    document.body.setAttribute("data-points", String(total));
    document.body.setAttribute("data-charts-drawn", String(drawn));
  }
  // the charts on or near the first screen at once (at least the first six), measured from the layout so
  // that it does not wait for a frame; those further down as they come near the screen (a page of 100 groups)
  var EAGER = 6, NEAR = 800, reach = (window.innerHeight || 0) + NEAR, c = 0;
  while (c < svgs.length && (c < EAGER || svgs[c].getBoundingClientRect().top < reach)) { drawOne(svgs[c++]); }
  if (c < svgs.length) {
    if ("IntersectionObserver" in window) {
      var io = new IntersectionObserver(function (entries) {
        entries.forEach(function (e) {
          if (e.isIntersecting) { io.unobserve(e.target); drawOne(e.target); }
        });
      }, {rootMargin: NEAR + "px 0px"});
      for (; c < svgs.length; c++) { io.observe(svgs[c]); }
    } else {
      for (; c < svgs.length; c++) { drawOne(svgs[c]); }
    }
  }
  document.body.setAttribute("data-charts", String(svgs.length));
  var nav = performance.getEntriesByType("navigation")[0];
  document.body.setAttribute("data-rendered-ms", String(Math.round(performance.now())));
  document.body.setAttribute("data-script-ms", String(Math.round(performance.now() - started)));
  if (nav) { document.body.setAttribute("data-response-end-ms", String(Math.round(nav.responseEnd))); }
})();
"""


def _hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


_CSP = (
    f"default-src 'none'; script-src {_hash(_SCRIPT)}; style-src {_hash(_STYLE)}; img-src data:; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


def _document(title: str, body: str, chart: str | None) -> str:
    """`chart`: the chart data, JSON already made safe by `_embed`."""
    data = f'<script type="application/json" id="fp-data">{chart}</script>' if chart is not None else ""
    script = f"<script>{_SCRIPT}</script>" if chart is not None else ""
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<link rel="icon" href="data:,"><title>{_e(title)}</title><style>{_STYLE}</style></head>'
        f"<body>{body}{data}{script}</body></html>"
    )


def _html(code: int, doc: str) -> Response:
    return (
        code,
        "text/html; charset=utf-8",
        doc.encode(),
        {
            "Content-Security-Policy": _CSP,
            "Cache-Control": "no-store",
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
        },
    )


def _trimmer() -> Any:
    """glibc's malloc_trim, or None (another libc)."""
    try:
        import ctypes

        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


_MALLOC_TRIM = _trimmer()


def _released(response: Response) -> Response:
    """A page's text is built and freed in pieces of a few hundred kB, which glibc keeps in the heap after they
    are freed: hand that back to the OS at once (microseconds), so serving the page does not grow the daemon's
    resident memory (benchmarks/status_bench.py measures it)."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)
    return response


def pages(board: StatusBoard) -> dict[str, Any]:
    """The server's extra routes: path -> handler(query string) -> (code, content type, body, headers)."""
    return {
        "/": lambda q: _released(page(board, q)),
        "/api/groups": lambda q: _released(api_groups(board, q)),
    }
