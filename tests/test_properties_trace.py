"""Trace CSVs (sim.load.read_trace), property-based: every well-formed file is read with exactly its
values and start; every malformed one is a TraceError naming `file:line` of the defect, never another
exception."""

from __future__ import annotations

import os
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleetpilot.sim.load import TraceError, read_trace
from tests.mutate import write_junk

SETTINGS = settings(
    max_examples=int(os.environ.get("PROPERTY_EXAMPLES", "80")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

starts = st.datetimes(min_value=datetime(1990, 1, 1), max_value=datetime(2090, 1, 1)).map(
    lambda t: t.replace(second=0, microsecond=0, tzinfo=UTC)
)
loads = st.floats(min_value=0, max_value=1e9, allow_nan=False, allow_infinity=False) | st.integers(0, 10**9)
#: Ways of writing the same UTC instant that read_trace accepts (ISO-8601).
TIME_FORMATS = (
    lambda t: t.strftime("%Y-%m-%dT%H:%M:%SZ"),
    lambda t: t.strftime("%Y-%m-%dT%H:%M:%S+00:00"),
    lambda t: t.strftime("%Y-%m-%d %H:%M:%S"),
    lambda t: t.strftime("%Y-%m-%dT%H:%M"),
    lambda t: (t + timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%S+02:00"),
    lambda t: (t - timedelta(hours=5, minutes=30)).strftime("%Y-%m-%dT%H:%M:%S-05:30"),
    lambda t: t.strftime("%Y-%m-%dT%H:%M:%S.000z"),
)


@st.composite
def trace(draw):
    """(rows as [timestamp, requests, *extra], header, start, values)."""
    start = draw(starts)
    values = draw(st.lists(loads, min_size=1, max_size=60))
    fmt = draw(st.sampled_from(TIME_FORMATS))
    swap = draw(st.booleans())
    extra = draw(st.booleans())
    header = ["requests", "timestamp"] if swap else ["timestamp", "requests"]
    header = [draw(st.sampled_from([h, h.upper(), f" {h} ", h.title()])) for h in header]
    if extra:
        header.append("region")
    rows = []
    for i, v in enumerate(values):
        cells = [fmt(start + timedelta(minutes=i)), repr(v) if isinstance(v, float) else str(v)]
        if swap:
            cells.reverse()
        if extra:
            cells.append("eu-west-3")
        rows.append(cells)
    return rows, header, start, values, swap


def write(d: Path, header: list[str], rows: list[list[str]], blank_lines: int = 0) -> Path:
    p = d / "trace.csv"
    lines = [",".join(header)] + [",".join(r) for r in rows] + [""] * blank_lines
    p.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return p


@SETTINGS
@given(trace(), st.integers(0, 2))
def test_every_well_formed_trace_is_read_exactly(t, blank_lines):
    rows, header, start, values, _ = t
    with tempfile.TemporaryDirectory() as tmp:
        load = read_trace(write(Path(tmp), header, rows, blank_lines))
    assert load.start == start and load.minutes == len(values)
    np.testing.assert_array_equal(load.load_tpm, np.asarray(values, dtype=np.float64))


@st.composite
def broken_trace(draw):
    """(header, rows, the 1-based line the error must name, what the message must say)."""
    rows, header, start, values, swap = draw(trace())
    ti, vi = (1, 0) if swap else (0, 1)
    i = draw(st.integers(0, len(rows) - 1))
    line = i + 2  # line 1 is the header
    defect = draw(
        st.sampled_from(
            [
                "value",
                "negative",
                "nonfinite",
                "time",
                "second",
                "duplicate",
                "earlier",
                "gap",
                "short",
                "header",
                "empty",
                "norows",
            ]
        )
    )
    if defect == "value":
        rows[i][vi] = draw(st.sampled_from(["abc", "", "12a", "1,5".replace(",", ";"), "--1", "0x10", "1e"]))
        return header, rows, line, "is not a number"
    if defect == "negative":
        rows[i][vi] = repr(-draw(st.floats(min_value=1e-9, max_value=1e9)))
        return header, rows, line, "is negative"
    if defect == "nonfinite":
        rows[i][vi] = draw(st.sampled_from(["nan", "NaN", "inf", "-inf", "Infinity", "1e999"]))
        return header, rows, line, "is not finite"
    if defect == "time":
        rows[i][ti] = draw(
            st.sampled_from(
                [
                    "yesterday",
                    "",
                    "2026-13-01T00:00:00Z",
                    "2026-02-30T00:00Z",
                    "12:00",
                    "2026/01/05 00:00",
                    "1767571200",
                ]
            )
        )
        return header, rows, line, "is not ISO-8601"
    if defect == "second":
        t = start + timedelta(minutes=i, seconds=draw(st.integers(1, 59)))
        rows[i][ti] = t.strftime("%Y-%m-%dT%H:%M:%SZ")
        return header, rows, line, "is not the start of a minute"
    if defect in ("duplicate", "earlier", "gap"):
        if len(rows) < 2 or i == 0:
            i = 1
            rows.append(list(rows[0])) if len(rows) < 2 else None
            line = 3
        back = {"duplicate": 1, "earlier": draw(st.integers(2, 50)), "gap": -draw(st.integers(1, 50))}[defect]
        t = start + timedelta(minutes=i - back)
        rows[i][ti] = t.strftime("%Y-%m-%dT%H:%M:%SZ")
        return (
            header,
            rows[: i + 1],
            line,
            {"duplicate": "duplicate timestamp", "earlier": "is earlier than", "gap": "gap of"}[defect],
        )
    if defect == "short":
        rows[i] = [rows[i][0]]
        return header, rows, line, "expected"
    if defect == "header":
        gone = draw(st.sampled_from(["timestamp", "requests"]))
        header = [("time" if gone == "timestamp" else "count") if h.strip().lower() == gone else h for h in header]
        return header, rows, 1, f"missing column '{gone}'"
    if defect == "empty":
        return [], [], 1, "empty file"
    return header, [], 2, "no data rows"


@SETTINGS
@given(broken_trace())
def test_every_malformed_trace_names_file_and_line(case):
    header, rows, line, reason = case
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        if header:
            p = write(d, header, rows)
        else:
            p = d / "trace.csv"
            p.write_text("")
        with pytest.raises(TraceError) as info:
            read_trace(p)
    msg = str(info.value)
    assert msg.startswith(f"{p}:{line}: ") and reason in msg and "\n" not in msg, (line, reason, msg)


@SETTINGS
@given(st.binary(max_size=400) | st.text(max_size=400))
def test_any_bytes_are_a_trace_or_a_trace_error(content):
    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / "junk.csv"
        write_junk(p, content)
        try:
            load = read_trace(p)
        except TraceError as exc:
            assert str(exc).startswith(f"{p}:") and "\n" not in str(exc)
        else:
            assert load.minutes >= 1 and np.all(np.isfinite(load.load_tpm)) and np.all(load.load_tpm >= 0)


def test_invalid_utf8_names_its_own_line(tmp_path):
    t = datetime(2026, 1, 5, tzinfo=UTC)
    rows = [f"{(t + timedelta(minutes=i)).strftime('%Y-%m-%dT%H:%M:%SZ')},{i}" for i in range(5)]
    p = tmp_path / "trace.csv"
    p.write_bytes(("timestamp,requests\n" + "\n".join(rows) + "\n").encode() + b"2026-01-05T00:05:00Z,\xff\n")
    with pytest.raises(TraceError, match=rf"^{p}:7: "):
        read_trace(p)
