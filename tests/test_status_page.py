"""The status page (`/`) and its JSON twin (`/api/groups`): the in-memory board, the queries, escaping, and the
page in a real headless browser (chromium) against a running `fleetpilot run`: the chart has data points, a
screenshot is taken, and the browser's console stays silent."""

from __future__ import annotations

import json
import queue
import re
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from fleetpilot.controller.server import StatusServer
from fleetpilot.controller.status import GroupInfo, StatusBoard
from fleetpilot.controller.status_page import OVERVIEW_STEP, api_groups, page, pages
from tests.browser import render
from tests.journal_rows import journal_row as row
from tests.test_daemon_e2e import FLEETPILOT, _pump, config, get

EVIL = "<script>alert(1)</script>"


def info(name: str, **over) -> GroupInfo:
    d = dict(
        name=name,
        policy="target-tracking",
        fallback_policy="target-tracking",
        paused=False,
        min_machines=1,
        max_machines=100,
        capacity_tpm_per_machine=300.0,
        warmup_minutes=5,
        source="simulator",
        backend="simulated",
    )
    d.update(over)
    return GroupInfo(**d)


def fill(board: StatusBoard, minutes: range) -> None:
    for m in minutes:
        board.record(m, [row(g.name, m, load=100.0 + m % 1440) for g in board.groups])


# --- the board ---------------------------------------------------------------------------------------------
def test_board_keeps_a_day_and_the_last_decisions():
    b = StatusBoard([info("a"), info("b")], minutes=60, decisions=5)
    fill(b, range(1000, 1100))
    snap = b.snapshot([0, 1], 1)
    load = snap["series"]["load_tpm"]
    assert load.shape == (2, 60) and snap["start_minute"] == 1040 and snap["last_minute"] == 1099
    assert load[0, 0] == pytest.approx(100 + 1040) and load[0, -1] == pytest.approx(100 + 1099)
    assert [t[0] for t in snap["decisions"][1]] == [1095, 1096, 1097, 1098, 1099]
    four = b.snapshot([0], 4)["series"]["load_tpm"]
    assert four.shape == (1, 15) and four[0, -1] == pytest.approx(np.mean([100 + m for m in range(1096, 1100)]))


def test_board_clears_skipped_minutes_and_restarts_when_the_clock_goes_back():
    b = StatusBoard([info("a")], minutes=60)
    fill(b, range(0, 60))
    b.record(70, [row("a", 70, load=7.0)])  # minutes 60..69 were never ticked
    s = b.snapshot([0], 1)["series"]
    assert np.isnan(s["load_tpm"][0, -11:-1]).all() and s["load_tpm"][0, -1] == 7.0
    assert np.isnan(s["active"][0, -11:-1]).all() and s["active"][0, -1] == 4
    b.record(65, [row("a", 65, load=3.0)])  # back in time: the rings start again
    s = b.snapshot([0], 1)["series"]
    assert np.count_nonzero(~np.isnan(s["load_tpm"])) == 1 and s["load_tpm"][0, -1] == 3.0


def test_board_marks_a_missing_load_and_machines_as_gaps():
    b = StatusBoard([info("a")], minutes=10)
    b.record(1, [row("a", 1, load=None, final=None, active=None, warming=None, outcome="error")])
    s = b.snapshot([0], 1)["series"]
    assert np.isnan(s["load_tpm"][0, -1]) and np.isnan(s["desired"][0, -1]) and np.isnan(s["active"][0, -1])


# --- queries -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "query, code, words",
    [
        ("group=", 400, "group is empty"),
        ("group=%ff%fe", 400, "cannot be parsed"),
        ("grop=a", 400, "unknown parameter 'grop'"),
        ("group=a&group=b", 400, "more than once"),
        ("group=%3Cscript%3E", 400, "is not a group name"),
        ("group=" + "x" * 200, 400, "is not a group name"),
        ("a=1&b=2&c=3", 400, "query"),
        ("group=nope", 404, "unknown group 'nope'"),
    ],
)
def test_bad_queries_get_one_clear_json_line(query, code, words):
    b = StatusBoard([info("web")])
    got, ctype, body, _ = api_groups(b, query)
    assert got == code and ctype == "application/json"
    msg = json.loads(body)["error"]
    assert words in msg and "\n" not in msg
    got, ctype, body, _ = page(b, query)  # the page answers the same, as HTML
    assert got == code and ctype.startswith("text/html") and b"<script>" not in body.split(b"</style>", 1)[1]


def test_api_groups_one_group_and_all():
    b = StatusBoard([info("web"), info("api", paused=True)])
    fill(b, range(0, 100))
    code, _, body, _ = api_groups(b, "group=api")
    one = json.loads(body)
    assert code == 200 and [g["name"] for g in one["groups"]] == ["api"]
    g = one["groups"][0]
    assert g["series"]["step_minutes"] == 1 and len(g["series"]["load_tpm"]) == 1440
    assert g["state"]["paused"] is True and g["now"]["desired"] == 5 and len(g["decisions"]) == 50
    assert g["decisions"][0]["minute"] == 99  # newest first
    code, _, body, _ = api_groups(b, "")
    every = json.loads(body)
    assert [x["name"] for x in every["groups"]] == ["web", "api"]
    assert every["groups"][0]["series"]["step_minutes"] == OVERVIEW_STEP
    assert "forecast_tpm" not in every["groups"][0]["series"]  # no policy forecasts: the series is absent


def test_state_flags_say_fallback_fault_and_dry_run_plainly():
    b = StatusBoard([info("a"), info("b")], dry_run=True)
    b.record(
        5,
        [
            row("a", 5, action="fallback", guards=["fallback:model_error"]),
            row("b", 5, load=None, action="hold", guards=["hold:nan"], outcome="held"),
        ],
    )
    data = json.loads(api_groups(b, "")[2])
    a, bb = (g["state"] for g in data["groups"])
    assert a["fallback"] and a["fallback_cause"] == "model_error" and a["dry_run"] and not a["data_fault"]
    assert bb["data_fault"] and bb["data_status"] == "nan" and bb["held"]
    html_ = page(b, "")[2].decode()
    for text in ("DRY-RUN", "FALLBACK: model_error", "DATA FAULT: nan"):
        assert text in html_


def test_user_text_is_escaped_in_html_and_embedded_json():
    evil_policy = "./models/<img src=x onerror=alert(2)>"
    b = StatusBoard([info(EVIL, policy=evil_policy, shadow_policies=("x</script>",))])
    fill(b, range(0, 20))
    code, _, body, headers = page(b, "")
    doc = body.decode()
    assert code == 200
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in doc
    assert "<img" not in doc and "alert(1)</script>" not in doc.replace("&lt;/script&gt;", "")
    assert len(re.findall(r"<script\b", doc)) == 2  # the data block and the page's own script, nothing else
    assert len(re.findall(r"</script>", doc)) == 2
    assert "script-src 'sha256-" in headers["Content-Security-Policy"]
    assert "default-src 'none'" in headers["Content-Security-Policy"]
    # the group's own view is reachable by its exact name, and JSON carries the name as it is
    data = json.loads(api_groups(b, "group=%3Cscript%3Ealert%281%29%3C%2Fscript%3E")[2])
    assert data["groups"][0]["name"] == EVIL


def test_server_serves_the_pages_next_to_metrics():
    b = StatusBoard([info("web")])
    fill(b, range(0, 30))
    srv = StatusServer("127.0.0.1", 0, CollectorRegistry(), lambda: (True, {}), lambda: (True, {}), pages=pages(b))
    srv.start()
    try:
        base = f"http://127.0.0.1:{srv.address[1]}"
        code, text = get(base + "/")
        assert code == 200 and "<svg" in text
        code, text = get(base + "/api/groups?group=web")
        assert code == 200 and json.loads(text)["groups"][0]["name"] == "web"
        code, text = get(base + "/api/groups?group=junk%00")
        assert code == 400 and "not a group name" in json.loads(text)["error"]
        assert get(base + "/metrics")[0] == 200
        code, text = get(base + "/nope")
        assert code == 404 and "/api/groups" in text
    finally:
        srv.stop()


# --- in a real browser -------------------------------------------------------------------------------------
def _start_daemon(tmp_path: Path, groups: list[dict]) -> tuple[subprocess.Popen, str, queue.Queue]:
    cfg = config(tmp_path, groups=groups, interval_seconds=0.01)
    proc = subprocess.Popen(
        [FLEETPILOT, "run", "--config", str(cfg), "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    errq: queue.Queue = queue.Queue()
    threading.Thread(target=_pump, args=(proc.stderr, errq), daemon=True).start()
    threading.Thread(target=_pump, args=(proc.stdout, queue.Queue()), daemon=True).start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = errq.get(timeout=30)
        assert line is not None, "daemon exited early"
        rec = json.loads(line)
        if rec["msg"].startswith("serving /metrics"):
            return proc, f"http://127.0.0.1:{rec['port']}", errq
    raise AssertionError("the daemon did not start serving")


def test_status_page_in_chromium_has_a_chart_with_data_and_no_console_errors(tmp_path):
    groups = [
        {
            "name": "web",
            "policy": "predictive",
            "shadow_policies": ["target-tracking", "step"],
            "source": {"kind": "simulator", "seed": 3, "minutes": 3000},
            "backend": {"kind": "simulated", "seed": 3},
        },
        {
            "name": "batch",
            "policy": "target-tracking",
            "paused": True,
            "source": {"kind": "simulator", "seed": 4},
            "backend": {"kind": "simulated", "seed": 4},
        },
    ]
    proc, base, _ = _start_daemon(tmp_path, groups)
    try:
        deadline = time.monotonic() + 60
        while True:  # some ticks of simulated minutes
            data = json.loads(get(base + "/api/groups")[1])
            if data["daemon"]["ticks"] >= 200 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert data["daemon"]["ticks"] >= 200
        shot = tmp_path / "status.png"
        r = render(base + "/", screenshot=shot)
        assert r.console == [], r.console
        body = re.search(r"<body[^>]*>", r.dom)
        assert body is not None
        points = int(re.search(r'data-points="(\d+)"', body.group(0)).group(1))
        assert points > 200  # every group's series drawn after the script ran
        charts = re.findall(r'<svg class="chart" data-index="(\d+)" data-points="(\d+)"', r.dom)
        assert len(charts) == 2 and all(int(n) > 0 for _, n in charts)
        assert 'data-series="load (tpm)"' in r.dom and 'data-series="shadow target-tracking"' in r.dom
        assert "PAUSED" in r.dom and "shadow policies" in r.dom
        png = shot.read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
        # one group's view: one point a minute
        r = render(base + "/?group=web")
        assert r.console == [], r.console
        assert len(re.findall(r'<svg class="chart"', r.dom)) == 1
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_a_hostile_group_name_renders_as_text_in_chromium(tmp_path):
    b = StatusBoard([info(EVIL), info("ok")])
    fill(b, range(0, 300))
    srv = StatusServer("127.0.0.1", 0, CollectorRegistry(), lambda: (True, {}), lambda: (True, {}), pages=pages(b))
    srv.start()
    try:
        r = render(f"http://127.0.0.1:{srv.address[1]}/")
    finally:
        srv.stop()
    assert r.console == [], r.console  # no alert, no CSP violation, no error
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in r.dom  # shown as text
    assert len(re.findall(r"<script\b", r.dom)) == 2
    charts = re.findall(r'data-index="\d+" data-points="(\d+)"', r.dom)
    assert len(charts) == 2 and all(int(n) > 0 for n in charts)


def test_charts_below_the_fold_are_drawn_when_they_come_near_the_screen(tmp_path):
    b = StatusBoard([info(f"g{i}") for i in range(12)])
    fill(b, range(0, 100))
    srv = StatusServer("127.0.0.1", 0, CollectorRegistry(), lambda: (True, {}), lambda: (True, {}), pages=pages(b))
    srv.start()
    try:
        url = f"http://127.0.0.1:{srv.address[1]}/"
        short = render(url, window="1280,900", settle_ms=1000)
        tall = render(url, window="1280,9000", settle_ms=1000)  # every card near the screen
    finally:
        srv.stop()
    assert short.console == [] and tall.console == []

    def body(r) -> dict[str, int]:
        tag = re.search(r"<body[^>]*>", r.dom)
        assert tag is not None
        return {k: int(v) for k, v in re.findall(r'data-([a-z-]+)="(\d+)"', tag.group(0))}

    s, t = body(short), body(tall)
    assert s["charts"] == t["charts"] == 12
    assert 6 <= s["charts-drawn"] < 12  # the first screen at once, the rest on the way down
    assert t["charts-drawn"] == 12 and t["points"] == 12 * 4 * 10  # 100 minutes at 10-minute means, 4 series
