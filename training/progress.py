"""Progress of long commands (`train`, `backtest`, `tune`, the generalization benchmark), from tqdm.

On a terminal (the stream is a TTY) a tqdm bar with rate and ETA; otherwise (a pipe, a log file, CI) plain
lines, at most about `lines` of them plus the last, each with an ETA in the text:

    backtest: 12/40 runs (30%) elapsed 00:05, ETA 00:12

The plain lines are formatted by tqdm too (`tqdm.format_meter`), so both say the same. Without tqdm installed
(it comes with the `train` extra) the plain lines are still printed, with the same fields.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

#: The plain line (tqdm's bar_format fields; `postfix` comes with its own leading ", ").
PLAIN_FORMAT = "{desc}: {n_fmt}/{total_fmt} {unit} ({percentage:.0f}%) elapsed {elapsed}, ETA {remaining}{postfix}"


def _tqdm() -> Any:
    try:
        from tqdm import tqdm
    except ImportError:  # the runtime install (no `train` extra): plain lines only
        return None
    return tqdm


def _clock(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h:d}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class Progress:
    """A progress display over `total` units; `update(n, postfix)` after each piece of work, `close()` at the end
    (or use it as a context manager). `initial`: units already done (a resumed training)."""

    def __init__(
        self,
        total: int,
        desc: str,
        unit: str = "run",
        *,
        initial: int = 0,
        unit_scale: bool = False,
        lines: int = 20,
        stream: TextIO | None = None,
        tty: bool | None = None,
    ) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.total, self.initial, self.n = int(total), int(initial), int(initial)
        self.desc, self.unit, self.unit_scale = desc, unit, unit_scale
        if tty is None:
            isatty = getattr(self.stream, "isatty", None)
            tty = bool(isatty and isatty())
        self.tty = tty
        self.postfix = ""
        self._t0 = time.monotonic()
        self._every = max(1, -(-(self.total - self.initial) // max(lines, 1)))
        self._next_line = self.initial + self._every
        self._printed_at: int | None = None
        tqdm = _tqdm()
        self._tqdm = tqdm
        self._bar = None
        if tty and tqdm is not None:
            self._bar = tqdm(
                total=self.total,
                initial=self.initial,
                desc=desc,
                unit=unit,
                unit_scale=unit_scale,
                file=self.stream,
                dynamic_ncols=True,
                smoothing=0.1,
            )

    def update(self, n: int = 1, postfix: str | None = None) -> None:
        """`n` more units done; `postfix`: a short status shown after the counts (kept until replaced)."""
        self.n += n
        if postfix is not None:
            self.postfix = postfix
        if self._bar is not None:
            if postfix is not None:
                self._bar.set_postfix_str(postfix, refresh=False)
            self._bar.update(n)
            return
        if self.n >= self._next_line or self.n >= self.total:
            self._line()
            while self._next_line <= self.n:
                self._next_line += self._every

    def write(self, message: str) -> None:
        """A message line that does not break the bar."""
        if self._bar is not None:
            self._bar.write(message, file=self.stream)
        else:
            print(message, file=self.stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self._printed_at != self.n and self.n > self.initial:
            self._line()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def line(self) -> str:
        """The plain progress line as it stands now."""
        elapsed = time.monotonic() - self._t0
        if self._tqdm is not None:
            return str(
                self._tqdm.format_meter(
                    self.n,
                    self.total,
                    elapsed,
                    prefix=self.desc,
                    unit=self.unit,
                    unit_scale=self.unit_scale,
                    postfix=self.postfix or None,
                    bar_format=PLAIN_FORMAT,
                    initial=self.initial,
                )
            )
        done = self.n - self.initial
        remaining = (self.total - self.n) * elapsed / done if done > 0 else None
        pct = 100 * self.n / self.total if self.total else 100.0
        eta = _clock(remaining) if remaining is not None else "?"
        post = f", {self.postfix}" if self.postfix else ""
        return f"{self.desc}: {self.n}/{self.total} {self.unit} ({pct:.0f}%) elapsed {_clock(elapsed)}, ETA {eta}{post}"

    def _line(self) -> None:
        print(self.line(), file=self.stream, flush=True)
        self._printed_at = self.n
