"""The daemon's clocks: the wall clock (with jump detection) and the simulated clock (one minute per tick).

Optional capabilities are declared on the `Clock` protocol with their defaults: a clock that cannot jump has no
`monotonic` reading (None), and a clock is not `simulated` unless it says so. Implementations (and test clocks)
subclass `Clock` to inherit them.
"""

from __future__ import annotations

import time
from typing import Protocol

#: The wall clock moved this many seconds more (or less) than the monotonic clock between two ticks: a jump
#: (an NTP step, a manual change, a suspended VM), not drift (NTP slews at most 0.5 ms per second).
CLOCK_JUMP_SECONDS = 30.0


class Clock(Protocol):
    #: Each tick is one simulated minute (simulator/CSV sources): no gap backfill, no wall-clock scheduling.
    simulated: bool = False

    def now_seconds(self) -> float:
        """Seconds since the Unix epoch, of the daemon's world."""
        ...

    def advance(self) -> None:
        """Move to the next tick (a no-op for the wall clock)."""

    def monotonic(self) -> float | None:
        """Seconds of a clock that never jumps, to detect jumps of `now_seconds`; None: this clock cannot jump."""
        return None


class WallClock(Clock):
    simulated = False

    def now_seconds(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()


class SimulatedClock(Clock):
    """Tick k is at the start of minute `start_minute + 1 + k`: its last complete minute is minute k."""

    simulated = True

    def __init__(self, start_minute: int):
        self.minute = int(start_minute) + 1

    def now_seconds(self) -> float:
        return self.minute * 60.0

    def advance(self) -> None:
        self.minute += 1


class JumpDetector:
    """Compares how far the wall clock and the monotonic clock moved between two ticks."""

    def __init__(self, threshold_seconds: float = CLOCK_JUMP_SECONDS):
        self.threshold = threshold_seconds
        self._last: tuple[float, float] | None = None  #: (wall, monotonic) seconds at the last check

    def check(self, wall_seconds: float, monotonic_seconds: float | None) -> float | None:
        """The skew in seconds (wall moved minus monotonic moved) when it exceeds the threshold, else None."""
        if monotonic_seconds is None:  # the simulated clock (and test clocks) cannot jump
            return None
        last, self._last = self._last, (wall_seconds, float(monotonic_seconds))
        if last is None:
            return None
        skew = (wall_seconds - last[0]) - (float(monotonic_seconds) - last[1])
        return skew if abs(skew) > self.threshold else None
