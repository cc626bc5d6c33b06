"""Progress of long commands (training.progress, on tqdm): a bar on a terminal, plain lines with an ETA
otherwise; `backtest`, `tune` and `train` use it, and `backtest --plot` still draws its per-trace figures."""

from __future__ import annotations

import fcntl
import io
import itertools
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

from fleetpilot.training.progress import Progress

REPO = Path(__file__).resolve().parents[1]
FLEETPILOT = str(Path(sys.executable).parent / "fleetpilot")
#: A plain progress line: "<desc>: n/total <unit> (p%) elapsed mm:ss, ETA mm:ss[, postfix]".
PLAIN = re.compile(r"^(?P<desc>.+?): (?P<n>[\d.]+[kMG]?)/(?P<total>[\d.]+[kMG]?) (?P<unit>\S+) \((?P<pct>\d+)%\) "
                   r"elapsed \d\d:\d\d, ETA (?:\d\d:\d\d|\?)(?:, (?P<post>.*))?$")  # fmt: skip


def _plain_lines(text: str, desc: str) -> list[re.Match]:
    return [m for line in text.splitlines() if (m := PLAIN.match(line)) and m["desc"].startswith(desc)]


def test_plain_lines_when_not_a_tty():
    out = io.StringIO()  # not a TTY
    with Progress(100, "work", "items", lines=10, stream=out) as bar:
        assert not bar.tty
        for i in range(100):
            bar.update(1, postfix=f"item {i}")
    lines = _plain_lines(out.getvalue(), "work")
    assert [int(m["n"]) for m in lines] == list(range(10, 101, 10))  # every total/lines units, and the last
    assert lines[-1]["pct"] == "100" and lines[-1]["post"] == "item 99" and lines[-1]["unit"] == "items"
    assert len(out.getvalue().splitlines()) == 10 and "\r" not in out.getvalue()


def test_plain_lines_with_uneven_steps_and_a_resumed_start():
    out = io.StringIO()
    bar = Progress(1000, "train", "steps", initial=400, lines=3, stream=out)
    for _ in range(3):
        bar.update(200)
    bar.close()
    assert [int(m["n"]) for m in _plain_lines(out.getvalue(), "train")] == [600, 800, 1000]


def test_a_tty_gets_a_tqdm_bar():
    out = io.StringIO()
    with Progress(4, "work", "items", stream=out, tty=True) as bar:
        for _ in range(4):
            bar.update(1)
    text = out.getvalue()
    assert "\r" in text and re.search(r"work: 100%\|.+\| 4/4 \[\d\d:\d\d<\d\d:\d\d", text), text


def test_no_hand_written_progress_line_is_left():
    for path in (REPO / "training").glob("*.py"):
        src = path.read_text(encoding="utf-8")
        assert '"\\r' not in src and 'f"\\r' not in src, f"{path.name}: a hand-written carriage-return line"


@pytest.fixture(scope="module")
def traces(tmp_path_factory) -> list[Path]:
    """Three traces of different lengths (each its own backtest batch)."""
    d = tmp_path_factory.mktemp("traces")
    paths = []
    for seed, minutes in ((1, 2000), (2, 2100), (3, 2200)):
        p = d / f"t{seed}.csv"
        r = subprocess.run(
            [FLEETPILOT, "traces", "generate", "--seed", str(seed), "--minutes", str(minutes), "--out", str(p)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert r.returncode == 0, r.stderr
        paths.append(p)
    return paths


def _backtest_args(traces: list[Path]) -> list[str]:
    args = [FLEETPILOT, "backtest", "--policy", "static", "--policy", "target-tracking"]
    for t in traces:
        args += ["--trace", str(t)]
    return args


def test_backtest_not_on_a_tty_prints_progress_lines_with_an_eta(traces, tmp_path):
    plot = tmp_path / "bt.png"
    r = subprocess.run([*_backtest_args(traces), "--plot", str(plot)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    lines = _plain_lines(r.stderr, "backtest")
    # 3 traces x 2 policies, each trace its own batch: one line per finished run
    assert [int(m["n"]) for m in lines] == [1, 2, 3, 4, 5, 6], r.stderr
    assert {m["total"] for m in lines} == {"6"} and lines[0]["desc"] == "backtest (3 loads x 2 policies)"
    assert "\r" not in r.stderr and "|" not in r.stderr  # no bar in a pipe
    assert "static" in r.stdout and "target-tracking" in r.stdout  # the table still goes to stdout
    # --plot: one panel per trace (3.2 inches each at 90 dpi), as before
    head = plot.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", head[16:24]) == (int(12 * 90), int(3.2 * 3 * 90))


def _run_on_a_pty(args: list[str], timeout: float = 300) -> tuple[int, str]:
    """Run `args` with stdout and stderr on a pseudo-terminal; (exit code, everything it wrote)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))  # 40 rows, 120 columns
    env = {**os.environ, "COLUMNS": "120", "TERM": "xterm"}
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave, env=env)
    os.close(slave)
    chunks = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not data:
                    break
                chunks.append(data)
            elif proc.poll() is not None:
                break
        rc = proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    return rc, b"".join(chunks).decode("utf-8", "replace")


def test_backtest_on_a_terminal_shows_a_tqdm_bar(traces):
    rc, text = _run_on_a_pty(_backtest_args(traces))
    assert rc == 0, text[-2000:]
    # tqdm's bar: percentage, bar, counts, [elapsed<remaining, rate], redrawn in place with \r
    assert re.search(r"backtest \(3 loads x 2 policies\): 100%\|[^|]+\| 6/6 \[\d\d:\d\d<\d\d:\d\d", text), text
    assert "\r" in text
    assert not _plain_lines(text, "backtest")  # not the pipe format


def test_tune_prints_progress_per_chunk_of_grid_points(tmp_path):
    """Grid points are scored a few at a time (`point_chunks`): a line as each chunk ends, counting points."""
    r = subprocess.run(
        [FLEETPILOT, "tune", "--policy", "static", "--synthetic", "--seeds", "0", "--minutes", "300"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    lines = _plain_lines(r.stderr, "tune static")
    from fleetpilot.training.tune import GRIDS, grid_points, point_chunks

    chunks = point_chunks(grid_points(GRIDS["static"]), 1)  # one load
    assert len(chunks) >= 4 and sum(map(len, chunks)) == len(GRIDS["static"]["machines"])
    assert [int(m["n"]) for m in lines] == list(itertools.accumulate(len(c) for c in chunks))
    assert lines[-1]["post"].startswith("best E[profit] $")
    assert '"policy": "static"' in r.stdout


def test_train_prints_progress_lines_with_an_eta(tmp_path):
    pytest.importorskip("torch")
    cfg = tmp_path / "ppo.yaml"
    cfg.write_text(
        "num_envs: 16\nnum_steps: 32\nepisode_minutes: 400\neval_seeds: [500]\neval_minutes: 300\n"
        "eval_every_updates: 2\n"
    )
    r = subprocess.run(
        [FLEETPILOT, "train", "--config", str(cfg), "--steps", "2048", "--seed", "3", "--out", str(tmp_path / "m")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    lines = _plain_lines(r.stderr, "train")
    assert len(lines) == 4, r.stderr  # 4 updates of 512 steps
    assert lines[-1]["pct"] == "100" and lines[-1]["unit"] == "steps" and lines[-1]["total"] == "2.05k"
    assert "$/10k min" in lines[-1]["post"] and "of oracle" in lines[-1]["post"]
    assert "\r" not in r.stderr
