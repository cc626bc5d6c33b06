"""`simulator`: the seed's synthetic load (sim.load.synthetic_load), replayed on the daemon's clock.

The load is generated once from `seed` (`numpy.random.default_rng(seed)`) for `minutes` minutes and repeats
after that. Minute i of the load is the epoch minute `start_minute + i`; `latest(now)` is the last complete
minute, `now - 1`. There is no data before `start_minute` (an explicit None / empty history, never a zero).
"""

from __future__ import annotations

import numpy as np

from fleetpilot.controller.sources.base import MetricSource, Sample
from fleetpilot.sim.load import SYNTHETIC_START, Load, synthetic_load

#: Epoch minute of the first synthetic minute (sim.load.SYNTHETIC_START, a Monday 00:00 UTC).
SYNTHETIC_START_MINUTE = int(SYNTHETIC_START.timestamp() // 60)


class ReplaySource(MetricSource):
    """A per-minute load array replayed from `start_minute` (shared by the simulator and CSV sources)."""

    def __init__(self, load_tpm: np.ndarray, start_minute: int, loop: bool = True):
        if load_tpm.size == 0:
            raise ValueError("a replayed load needs at least one minute")
        self.load_tpm = np.asarray(load_tpm, dtype=np.float32)  # loads are whole tpm: float32 is exact
        self.start_minute = int(start_minute)
        self.loop = bool(loop)

    @property
    def minutes(self) -> int:
        return int(self.load_tpm.shape[0])

    def _index(self, minute: int) -> int | None:
        i = minute - self.start_minute
        if i < 0:
            return None
        if i >= self.minutes:
            return i % self.minutes if self.loop else None
        return i

    def latest(self, now_minute: int) -> Sample | None:
        m = now_minute - 1
        if m < self.start_minute:
            return None
        if not self.loop and m - self.start_minute >= self.minutes:
            m = self.start_minute + self.minutes - 1  # the replay has ended: the last sample, which goes stale
        return Sample(m, float(self.load_tpm[self._index(m)]))

    def history(self, start_minute: int, end_minute: int) -> list[Sample]:
        out = []
        for m in range(max(start_minute, self.start_minute), end_minute):
            i = self._index(m)
            if i is not None:
                out.append(Sample(m, float(self.load_tpm[i])))
        return out

    def close(self) -> None:
        pass


class SimulatorSource(ReplaySource):
    """Synthetic seed load: `SimulatorSource(seed, start_minute, minutes=20160, peak_tpm=None)`."""

    def __init__(
        self,
        seed: int,
        start_minute: int = SYNTHETIC_START_MINUTE,
        minutes: int = 20_160,
        peak_tpm: float | None = None,
    ):
        load = synthetic_load(np.random.default_rng(seed), minutes)
        if peak_tpm is not None:
            load = Load("synthetic", load).rescaled(peak_tpm).load_tpm
        super().__init__(load, start_minute, loop=True)
        self.seed = seed
