"""The `newsvendor` rule and the tail of rises it prices headroom with (policies/newsvendor.py, rise_tail.py)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from scipy.special import ndtr

from fleetpilot.policies.newsvendor import MIN_MINUTES, NewsvendorParams, NewsvendorPolicy, newsvendor_machines
from fleetpilot.policies.observation import ObservationBuilder
from fleetpilot.policies.registry import PolicyError, make_policy
from fleetpilot.policies.rise_tail import EDGES, SCALE_MINUTES, TAIL_VERSION, UPPER

T0 = 28_000_000  # an epoch minute
FLEETPILOT = [sys.executable, "-m", "fleetpilot.controller.cli"]


def feed(loads: np.ndarray, warmup: int = 5, cap: float = 300.0, machines: int = 20) -> ObservationBuilder:
    """A builder of loads.shape[0] groups, fed loads.shape[1] minutes."""
    n, m = loads.shape
    b = ObservationBuilder(n, cap, warmup)
    act = np.full(n, machines)
    for t in range(m):
        b.update(loads[:, t], act, np.zeros(n, dtype=np.int64), np.full(n, T0 + t))
    return b


def steps(minutes: int, every: int, rise: float, base: float = 1000.0) -> np.ndarray:
    """A flat load that jumps up by `rise` (share of base) for 20 minutes every `every` minutes."""
    x = np.full(minutes, base)
    for s in range(every, minutes, every):
        x[s : s + 20] = base * (1 + rise)
    return x


def test_the_tail_records_each_rise_in_its_bin_and_nothing_on_a_flat_load():
    b = feed(np.stack([np.full(3000, 1000.0), steps(3000, 300, 0.5)]))
    p = b.rise.probabilities()
    assert p[0, 0] == pytest.approx(1.0)  # flat: every minute in the no-rise bin
    # the stepped load: each 50% step is a rise of half the hour's largest load for the origins 1..5 minutes
    # before it, in 5..1 of the 5 minutes after each, each minute weighing 1/5: 3 origins' worth a step (the last
    # step is 300 minutes old, so the decay barely matters): 9 steps x 3 of about 2,935 minutes. Were the most the
    # load reached in the 5 minutes taken instead, each step would count 5 origins (0.0153)
    k = int(np.searchsorted(EDGES, 0.5, side="right") - 1)
    assert 0.0085 < p[1, k] < 0.0105
    assert p[1, 0] + p[1, k] == pytest.approx(1.0)  # nothing else: falls and flat minutes are no rise


class _ReferenceTail:
    """The rise tail as first written (8b188a2): a bincount over every cell, histogram by histogram. The fast
    `RiseTail.step` must give the very same sums."""

    def __init__(self, n: int, w: int):
        from fleetpilot.policies.rise_tail import BINS

        self.w, self.bins = w, BINS
        self.counts, self.counts_day, self.mass = np.zeros((n, BINS)), np.zeros((n, BINS)), np.zeros(n)
        self.ring = np.zeros((w + 1, n))

    def step(self, lags, count, rows, day_max):
        from fleetpilot.policies.rise_tail import _DECAY

        w, bins = self.w, self.bins
        ready = count > w + SCALE_MINUTES
        if rows is not None:
            ready = ready & rows
        take = rows if rows is not None else slice(None)
        for a in (self.counts, self.counts_day, self.mass):
            a[take] *= _DECAY
        g = np.arange(count.shape[0]) if rows is None else np.nonzero(rows)[0]
        self.ring[count[g] % (w + 1), g] = day_max[g]
        day = np.zeros(count.shape[0])
        day[g] = self.ring[(count[g] + 1) % (w + 1), g]
        r = np.nonzero(ready)[0]
        if not r.size:
            return
        recent = lags(0, w)[r].astype(np.float64)
        rises = np.maximum(recent[:, :w] - recent[:, w:], 0.0)
        hour = np.maximum(lags(w, w + SCALE_MINUTES - 1)[r].max(axis=1).astype(np.float64), 1.0)
        for counts, scale in ((self.counts, hour), (self.counts_day, np.maximum(day[r], 1.0))):
            b = np.clip(np.searchsorted(EDGES, rises / scale[:, None], side="right") - 1, 0, bins - 1)
            flat = np.bincount((r[:, None] * bins + b).ravel(), minlength=counts.size)
            counts += flat.reshape(counts.shape) * (1.0 / w)
        self.mass[r] += 1.0


@pytest.mark.parametrize("n,w", [(0, 5), (1, 5), (7, 5), (7, 1), (5, 30)])
def test_the_fast_tail_sums_exactly_what_the_first_one_did(n, w):
    """Bit for bit, against the reference: every group, a subset of rows, uneven sample counts, and a reset."""
    from fleetpilot.policies.rise_tail import RiseTail

    rng = np.random.default_rng(n * 100 + w)
    ring = rng.gamma(2.0, 500.0, size=(n, w + SCALE_MINUTES + 1)).astype(np.float32)
    fast, ref = RiseTail(n, w), _ReferenceTail(n, w)
    count = np.full(n, w + SCALE_MINUTES - 3, dtype=np.int64)
    for minute in range(400):
        ring = np.roll(ring, 1, axis=1)
        ring[:, 0] = rng.gamma(2.0, 500.0, size=n) * (1 + 4 * (rng.random(n) < 0.02))  # some bursts
        rows = None if minute % 3 else rng.random(n) < 0.6
        count = count + (1 if rows is None else rows)
        day = ring.max(axis=1).astype(np.float64) * rng.uniform(1.0, 1.5, size=n)
        lags = lambda lo, hi, ring=ring: ring[:, lo : hi + 1]  # noqa: E731
        fast.step(lags, count, rows, day)
        ref.step(lags, count, rows, day)
        if minute == 200 and n:
            reset = np.zeros(n, dtype=bool)
            reset[::2] = True
            fast.reset(reset)
            for a in (ref.counts, ref.counts_day, ref.mass):
                a[reset] = 0.0
            ref.ring[:, reset] = 0.0
    assert np.array_equal(fast.counts, ref.counts) and np.array_equal(fast.counts_day, ref.counts_day)
    assert np.array_equal(fast.mass, ref.mass)
    assert n == 0 or ref.mass.sum() > 0  # rises were recorded


def test_rows_are_independent_and_a_reset_forgets_the_tail():
    rng = np.random.default_rng(0)
    loads = np.stack([steps(2000, 250, 0.8), 1000 * rng.lognormal(0, 0.2, 2000), np.full(2000, 500.0)])
    together = feed(loads)
    for i in range(3):
        alone = feed(loads[i : i + 1])
        assert np.array_equal(alone.rise.counts[0], together.rise.counts[i])
        assert alone.rise.mass[0] == together.rise.mass[i]
    together.reset(np.array([1]))
    assert together.rise.mass[1] == 0 and not together.rise.counts[1].any() and together.rise.mass[0] > 0


def test_missed_minutes_take_no_rise_and_refused_samples_change_nothing():
    b = feed(np.full((1, 500), 1000.0))
    before = b.rise.counts.copy(), b.rise.mass.copy()
    b.update(np.array([5000.0]), np.array([20]), np.array([0]), np.array([T0 + 499]))  # not after the last
    assert np.array_equal(b.rise.counts, before[0]) and np.array_equal(b.rise.mass, before[1])


def _obs(load_history: np.ndarray, **kw):
    return feed(load_history[None, :], **kw).observation()


def test_a_bursty_history_buys_more_headroom_than_a_calm_one_at_the_same_load():
    calm, bursty = np.full(5000, 1000.0), steps(5000, 200, 1.0)
    bursty[-30:] = 1000.0  # both stand at 1,000 tpm now, after the last burst's hour
    p = NewsvendorParams()
    m_calm = newsvendor_machines(_obs(calm), p)[0]
    m_bursty = newsvendor_machines(_obs(bursty), p)[0]
    # flat: only the capacity noise (10%) is priced; 5 machines would be down about 1 minute in 2,000 (z -3.3),
    # which costs more than a sixth machine
    assert m_calm == 6
    # a doubling came every 200 minutes and lasted 20: a fleet decided now serves it in about 3 of each 200
    # minutes (the 5 warm-up minutes after the 5 origins before each step, each minute weighing 1/5). It is
    # covered beyond the capacity noise's mean: 9 machines are down in about 1 of 230 doubled minutes, $0.013 a
    # minute against $0.05 for a tenth machine (z = 3 would need 10; the calm load's 6 would be down every time)
    assert m_bursty == 9


def test_machines_grow_with_the_penalty_and_shrink_with_the_machine_price():
    rng = np.random.default_rng(1)
    obs = _obs(3000 * rng.lognormal(0, 0.15, 6000) + steps(6000, 700, 0.6, 800))
    m = [newsvendor_machines(obs, NewsvendorParams(downtime_cost_usd_per_minute=d))[0] for d in (2, 20, 200, 2000)]
    assert m == sorted(m) and m[0] < m[-1]
    c = [newsvendor_machines(obs, NewsvendorParams(machine_cost_usd_per_minute=x))[0] for x in (0.01, 0.1, 1, 10)]
    assert c == sorted(c, reverse=True) and c[0] > c[-1]
    assert newsvendor_machines(obs, NewsvendorParams(), risk=10.0)[0] == m[-1]  # risk multiplies the penalty


def _cost(c: np.ndarray, loads: np.ndarray, probs: np.ndarray, cap: float) -> np.ndarray:
    """The seed's prices: machine cost + downtime penalty x P(down), capacity noise 10%."""
    p_down = ndtr((0.995 * loads[None, :] / c[:, None] - cap) / (0.1 * cap))  # down: capacity < 99.5% of load
    return 0.05 * c + 200.0 * p_down @ probs


def test_the_chosen_fleet_is_near_the_cheapest_of_all_fleets():
    """Brute force over every fleet size: the rule's candidates (each scenario covered at 0, 1.5, 3 sigma)
    never cost more than 2% above the true optimum of the same cost."""
    rng = np.random.default_rng(2)
    p = NewsvendorParams()
    for trial in range(5):
        load = 2000 * rng.lognormal(0, rng.uniform(0.02, 0.3), 6000) + steps(6000, int(rng.integers(150, 900)), 1.0)
        obs = _obs(load)
        chosen = newsvendor_machines(obs, p)[0]
        x, cap = max(float(obs.load_tpm[0]), float(obs.history.window_mean(0, 2)[0])), 300.0
        scale = max(float(obs.history.lags(0, SCALE_MINUTES - 1).max()), 1.0)
        probs = obs.rise.probabilities()[0]

        fleets = np.arange(1, 400, dtype=np.float64)
        costs = _cost(np.append(fleets, chosen), x + UPPER * scale, probs, cap)
        assert costs[-1] <= costs[:-1].min() * 1.02 + 1e-9, trial


def test_the_day_tail_records_each_rise_as_a_share_of_the_daily_maximum_at_its_origin():
    """A reference replay: every rise the hour tail records is also recorded, in the day tail, as a share of the
    builder's leaky daily maximum as it stood at the rise's origin (`warmup` samples before), with the same decay."""
    from fleetpilot.policies.rise_tail import _DECAY, BINS

    rng = np.random.default_rng(4)
    w, minutes = 5, 1500
    load = (1000 * rng.lognormal(0, 0.1, minutes) + steps(minutes, 170, 1.5, 600)).astype(np.float32)  # as stored
    b = ObservationBuilder(1, 300.0, w)
    day_max, expected, mass = [], np.zeros(BINS), 0.0
    for t in range(minutes):
        b.update(load[t : t + 1], np.array([20]), np.zeros(1, dtype=np.int64), np.array([T0 + t]))
        day_max.append(float(b.day_max[0]))
        expected *= _DECAY
        mass *= _DECAY
        if t + 1 > w + SCALE_MINUTES:
            for u in range(t - w + 1, t + 1):  # each minute after the origin, weighing 1 / w
                rise = max(float(load[u]) - float(load[t - w]), 0.0)
                k = int(np.clip(np.searchsorted(EDGES, rise / max(day_max[t - w], 1.0), side="right") - 1, 0, BINS - 1))
                expected[k] += 1.0 / w
            mass += 1.0
    assert b.rise.mass[0] == pytest.approx(mass)
    assert np.allclose(b.rise.counts_day[0], expected)
    assert not np.allclose(b.rise.counts_day[0], b.rise.counts[0])  # the two scales differ on this load
    assert np.allclose(b.rise.probabilities(day=True)[0], expected / mass)
    b.reset(np.array([0]))
    assert not b.rise.counts_day.any() and not b.rise._day_ring.any()


def test_a_gap_holds_the_daily_maximum_and_uneven_rows_record_as_alone():
    """Missed minutes fill the daily-maximum ring with the maximum held then: a group with a 99-minute hole after
    its first sample records its rises as one fed every minute does (no rise scaled by the empty ring), and
    groups sampled unevenly (`update_where`) record each its own tail, as when fed alone."""
    rng = np.random.default_rng(6)
    load = 1000 * rng.lognormal(0, 0.02, 1000)
    gap = ObservationBuilder(1, 300.0, 5)
    for t in (0, *range(100, 1000)):
        gap.update(load[t : t + 1], np.array([20]), np.zeros(1, dtype=np.int64), np.array([T0 + t]))
    top = int(np.searchsorted(EDGES, 0.5))  # rises of half the daily maximum and more: none on this load
    assert not gap.rise.counts_day[0, top:].any()
    whole = feed(load[None, :])
    p = NewsvendorParams(rise_scale="mixture")
    assert abs(newsvendor_machines(gap.observation(), p)[0] - newsvendor_machines(whole.observation(), p)[0]) <= 1
    loads = np.stack([steps(1500, 170, 1.5), 1000 * rng.lognormal(0, 0.2, 1500)])
    take = rng.random((1500, 2)) < 0.9
    take[:10] = True
    both = ObservationBuilder(2, 300.0, 5)
    for t in range(1500):
        both.update_where(take[t], loads[:, t], np.full(2, 20), np.zeros(2, dtype=np.int64), np.full(2, T0 + t))
    for i in range(2):
        alone = ObservationBuilder(1, 300.0, 5)
        for t in np.nonzero(take[:, i])[0]:
            alone.update(loads[i, t : t + 1], np.array([20]), np.zeros(1, dtype=np.int64), np.array([T0 + t]))
        assert np.allclose(alone.rise.counts_day[0], both.rise.counts_day[i])
        assert np.allclose(alone.rise.counts[0], both.rise.counts[i])


def _reference_machines(obs, p: NewsvendorParams, risk, rows) -> np.ndarray:
    """The rule as its docstring says, one group at a time: every scenario of the priced tails, every candidate
    fleet (each scenario covered at 0, 1.5 and 3 standard deviations), P(down) from `policies.downtime`."""
    from fleetpilot.policies.downtime import downtime_probability
    from fleetpilot.policies.newsvendor import _Z

    out = []
    risk = np.broadcast_to(np.asarray(risk, dtype=np.float64), (len(rows),))
    for j, g in enumerate(rows):
        base = max(float(obs.load_tpm[g]), float(obs.history.window_mean(0, 2)[g]))
        cap = float(np.broadcast_to(obs.capacity_tpm_per_machine, (obs.n,))[g])
        if obs.rise.mass[g] < MIN_MINUTES:
            out.append(base / (cap * p.cold_utilization))
            continue
        hyps = []
        if p.rise_scale != "day":
            hyps.append((obs.rise.probabilities()[g], max(float(obs.history.lags(0, SCALE_MINUTES - 1)[g].max()), 1)))
        if p.rise_scale != "hour":
            hyps.append((obs.rise.probabilities(day=True)[g], max(float(obs.day_max_tpm[g]), 1.0)))
        probs = np.concatenate([q / len(hyps) for q, _ in hyps])
        loads = np.concatenate([base + UPPER * sc for _, sc in hyps])
        sd = p.capacity_sigma_share * cap
        fleets = np.maximum(np.ceil(p.downtime_served_share * loads[:, None] / np.maximum(cap - _Z * sd, 1e-9)), 1)
        fleets = fleets.ravel()
        p_down = downtime_probability(fleets[:, None], loads[None, :], cap, sd, p.downtime_served_share)
        cost = p.machine_cost_usd_per_minute * fleets + p.downtime_cost_usd_per_minute * p.risk * risk[j] * (
            p_down @ probs
        )
        out.append(float(fleets[np.argmin(cost)]))
    return np.array(out)


@pytest.mark.parametrize("rise_scale", ["hour", "day", "mixture"])
def test_the_rule_chooses_exactly_what_its_docstring_prices(rise_scale):
    """Pricing each distinct fleet once and the normal CDF only within 8.5 standard deviations change nothing:
    the same fleets as the plain formula over every candidate, for a risk per group, a subset of groups, groups
    still cold, a zero load and a noiseless capacity."""
    rng = np.random.default_rng(8)
    n = 24
    loads = np.stack(
        [
            (_day_and_night(2, burst=float(rng.uniform(100, 3000))) * rng.lognormal(0, rng.uniform(0.01, 0.3), 2880)
             + steps(2880, int(rng.integers(100, 900)), float(rng.uniform(0.1, 2)))) * rng.uniform(0.01, 20)
            for _ in range(n)
        ]
    )  # fmt: skip
    loads[3, -1] = 0.0  # a zero reading now
    b = feed(loads)
    b.reset(np.array([5]))  # a group starting over: cold
    b.update(loads[:, -1], np.full(n, 20), np.zeros(n, dtype=np.int64), b.minute + 1)
    obs = b.observation()
    rows = np.array([0, 3, 5, 7, 11, 12, 20, 23])
    risk = rng.choice([0.1, 1.0, 10.0], size=rows.size)
    for sigma in (0.1, 0.0):
        p = NewsvendorParams(rise_scale=rise_scale, capacity_sigma_share=sigma)
        got = newsvendor_machines(obs, p, risk, rows=rows)
        assert np.array_equal(got, _reference_machines(obs, p, risk, rows)), sigma
    p = NewsvendorParams(rise_scale=rise_scale)
    assert np.array_equal(newsvendor_machines(obs, p), _reference_machines(obs, p, 1.0, np.arange(n)))


def test_the_bound_still_finds_the_cheapest_candidate_and_the_smallest_on_a_tie():
    """`_cheapest` against a plain argmin over every candidate, for expected P(down) curves that fall with the
    fleet (a smooth fall, and flat stretches that make exact ties between fleets), penalties from none to
    extreme and a free machine: the same fleet always, the smallest of tied ones (the speed is measured by
    benchmarks/daemon_bench.py)."""
    from fleetpilot.policies.newsvendor import _cheapest, _distinct

    rng = np.random.default_rng(5)
    r, k = 300, 90
    fleet = _distinct(rng.integers(1, 400, size=(r, k)).astype(np.float64))
    knee = rng.uniform(1, 400, size=(r, 1))
    width = rng.uniform(0.5, 60, size=(r, 1))

    def curve(rows: np.ndarray, f: np.ndarray) -> np.ndarray:
        smooth = ndtr((knee[rows, 0] - f) / width[rows, 0])
        # flat stretches: the share only falls every 16 machines on every third row, so whole runs of fleets tie
        # on downtime and the smallest of them is strictly the cheapest unless the machine cost is zero
        stepped = ndtr((knee[rows, 0] - 16 * np.floor(f / 16)) / width[rows, 0])
        return np.where(rows % 3 == 0, stepped, smooth)

    priced: list[int] = []

    def share(rows: np.ndarray, f: np.ndarray) -> np.ndarray:  # as _cheapest asks: one price per (group, fleet)
        priced.append(rows.size)
        return curve(rows, f)

    # every candidate, and the first k distinct ones of each row (k below, at and just above the coarse step, and
    # rows whose few distinct values are padded with repeats of their largest)
    few = _distinct(np.minimum(fleet[:, :9], rng.integers(1, 40, size=(r, 1)).astype(np.float64)))
    cases = [fleet, *(fleet[:, :k] for k in (1, 2, 4, 5, 15, 16, 17, 33)), few, fleet[:5]]  # 5 rows: no bound
    for machine_cost in (0.05, 0.0):
        penalty = rng.choice([0.0, 20.0, 200.0, 20_000.0], size=r)
        for f in cases:
            priced.clear()
            got = _cheapest(f, share, penalty[: f.shape[0]], machine_cost)
            rows = np.repeat(np.arange(f.shape[0])[:, None], f.shape[1], axis=1)
            cost = machine_cost * f + penalty[: f.shape[0], None] * curve(rows, f)
            least = cost.min(axis=1, keepdims=True)
            want = np.where(cost == least, f, np.inf).min(axis=1)  # the smallest of the cheapest
            assert np.array_equal(got, want), (machine_cost, f.shape)
            # each distinct candidate priced at most once, never a row's padding
            distinct = int((f[:, 1:] != f[:, :-1]).sum()) + f.shape[0]
            assert sum(priced) <= distinct
            if f is fleet and machine_cost > 0:
                assert sum(priced) < distinct / 2  # the bound rules most out


def _day_and_night(days: int = 3, burst: float = 1500.0) -> np.ndarray:
    """A daily cycle between 1,000 and 5,000 tpm with a burst of `burst` tpm (a step for 20 minutes) every 200
    minutes, at any hour: the burst adds the same amount at night as at the peak."""
    t = np.arange(days * 1440)
    x = 3000.0 - 2000.0 * np.cos(2 * np.pi * t / 1440)
    for s in range(100, t.size - 120, 200):
        x[s : s + 20] += burst
    return x


def test_at_the_peak_the_day_scale_covers_a_burst_without_pricing_a_night_share_of_the_peak():
    """Bursts that add 1,500 tpm at any hour: the hour tail records the night ones as 150% of a quiet hour and
    prices that share of the peak's hour; the day tail records every one as 30% of the daily maximum. At the
    peak (about 4,980 tpm, no burst in the last hour) the day scale covers one burst at 3 standard deviations of
    the capacity noise and buys far less than the hour scale; the mixture prices both and lies between. At
    night all three cover a burst."""
    x = _day_and_night(4)
    peak = _obs(x[: 3 * 1440 + 690])
    hour, day, mix = (newsvendor_machines(peak, NewsvendorParams(rise_scale=s))[0] for s in ("hour", "day", "mixture"))
    assert 0.995 * (float(peak.load_tpm[0]) + 1500) / (300 - 3 * 30) <= day
    assert day + 5 <= hour and day <= mix <= hour  # 31 against 40 machines (each minute's rise weighing 1/5)
    night = _obs(x)
    for s in ("hour", "day", "mixture"):
        assert newsvendor_machines(night, NewsvendorParams(rise_scale=s))[0] >= 0.995 * (1000 + 1500) / 300, s


@pytest.mark.parametrize("rise_scale", ["day", "mixture"])
def test_the_chosen_fleet_is_near_the_cheapest_of_all_fleets_on_either_scale(rise_scale):
    """As above, for the day scale and for the mixture: scenarios of both tails, each with half the weight."""
    rng = np.random.default_rng(5)
    p = NewsvendorParams(rise_scale=rise_scale)
    for trial in range(3):
        load = _day_and_night(burst=float(rng.uniform(500, 3000))) * rng.lognormal(0, 0.05, 3 * 1440)
        obs = _obs(load[: int(rng.integers(3000, 4320))])
        chosen = newsvendor_machines(obs, p)[0]
        x, cap = max(float(obs.load_tpm[0]), float(obs.history.window_mean(0, 2)[0])), 300.0
        hour = max(float(obs.history.lags(0, SCALE_MINUTES - 1).max()), 1.0)
        day = max(float(obs.day_max_tpm[0]), 1.0)
        if rise_scale == "day":
            loads, probs = x + UPPER * day, obs.rise.probabilities(day=True)[0]
        else:
            loads = np.concatenate([x + UPPER * hour, x + UPPER * day])
            probs = np.concatenate([obs.rise.probabilities()[0], obs.rise.probabilities(day=True)[0]]) / 2
        fleets = np.arange(1, 400, dtype=np.float64)
        costs = _cost(np.append(fleets, chosen), loads, probs, cap)
        assert costs[-1] <= costs[:-1].min() * 1.02 + 1e-9, trial


def test_a_group_without_rises_holds_the_cold_utilization():
    obs = _obs(np.full(MIN_MINUTES, 900.0))  # too short to have priced anything
    assert newsvendor_machines(obs, NewsvendorParams(cold_utilization=0.5))[0] == pytest.approx(900 / 300 / 0.5)
    out = NewsvendorPolicy().decide(obs)
    assert out.desired[0] == 6


def test_registry_makes_it_and_refuses_a_bad_parameter():
    assert make_policy("newsvendor", {"risk": 2}).params.risk == 2
    with pytest.raises(PolicyError, match="newsvendor.*risk"):
        make_policy("newsvendor", {"risk": -1})
    with pytest.raises(PolicyError, match="newsvendor.*surge"):
        make_policy("newsvendor", {"surge": 1})
    assert make_policy("newsvendor", {"rise_scale": "mixture"}).params.rise_scale == "mixture"
    with pytest.raises(PolicyError, match="newsvendor.*rise_scale"):
        make_policy("newsvendor", {"rise_scale": "week"})


def test_backtest_command_runs_it_next_to_target_tracking(tmp_path):
    out = tmp_path / "bt.json"
    r = subprocess.run(
        FLEETPILOT
        + ["backtest", "--synthetic", "--seeds", "0..1", "--minutes", "600", "--json", str(out)]
        + ["--policy", "newsvendor", "--policy", "target-tracking", "--policy", "oracle"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    summary = {s["policy"]: s for s in json.loads(out.read_text())["summary"]}
    assert summary["newsvendor"]["pct_of_oracle"] > 80 and summary["newsvendor"]["downtime_minutes"] <= 5


def test_a_mapping_with_newsvendor_actions_prices_risk_after_the_grid():
    from fleetpilot.policies.actions import ActionMapping

    plain = ActionMapping()
    m = ActionMapping(newsvendor_risk=(0.25, 1.0, 4.0))
    assert m.n == plain.n + 3 and m.n_grid == plain.n
    assert ActionMapping.from_json(m.to_json()) == m
    assert "newsvendor_risk" not in plain.to_json()  # older readers see the manifests they know
    assert m.describe(m.n_grid + 2) == "newsvendor risk=4"
    rng = np.random.default_rng(3)
    loads = np.stack([1500 * rng.lognormal(0, 0.1, 4000) + steps(4000, 300, 0.8, 600) for _ in range(4)])
    obs = feed(loads).observation()
    k = np.array([m.n_grid, m.n_grid + 1, m.n_grid + 2, 5])
    got = m.desired(k, obs)
    for i, risk in enumerate((0.25, 1.0, 4.0)):
        rule = NewsvendorPolicy(NewsvendorParams(risk=risk)).decide(obs).desired
        assert got[i] == rule[i]
    assert got[3] == plain.desired(np.full(4, 5), obs)[3]  # grid actions are unchanged
    assert got[0] <= got[1] <= got[2]
    with pytest.raises(ValueError, match="newsvendor_risk"):
        ActionMapping(newsvendor_risk=(0.0,))


def test_a_mapping_prices_its_newsvendor_actions_on_its_rise_scale():
    from fleetpilot.policies.actions import ActionMapping
    from fleetpilot.policies.onnx_policy import ActionMappingSpec

    m = ActionMapping(utilization=(0.45,), cushion_day_max_share=(0.3,), newsvendor_risk=(1.0,),
                      newsvendor_rise_scale="mixture")  # fmt: skip
    assert m.to_json()["newsvendor_rise_scale"] == "mixture" and ActionMapping.from_json(m.to_json()) == m
    assert "newsvendor_rise_scale" not in ActionMapping(newsvendor_risk=(1.0,)).to_json()  # hour: as before
    assert ActionMapping.from_json(ActionMapping(newsvendor_risk=(1.0,)).to_json()).newsvendor_rise_scale == "hour"
    assert m.describe(1) == "newsvendor risk=1 scale=mixture"
    obs = _obs(_day_and_night())
    rule = NewsvendorPolicy(NewsvendorParams(rise_scale="mixture")).decide(obs).desired
    assert m.desired(np.array([1]), obs)[0] == rule[0]
    assert (
        m.desired(np.array([1]), obs)[0]
        != ActionMapping(utilization=(0.45,), cushion_day_max_share=(0.3,), newsvendor_risk=(1.0,)).desired(
            np.array([1]), obs
        )[0]
    )
    with pytest.raises(ValueError, match="newsvendor_rise_scale"):
        ActionMapping(newsvendor_risk=(1.0,), newsvendor_rise_scale="week")
    spec = dict(m.to_json(), newsvendor_rise_scale="week")
    with pytest.raises(ValueError, match="newsvendor_rise_scale"):
        ActionMappingSpec.model_validate(spec)


def test_training_with_newsvendor_actions_exports_a_model_that_uses_them(tmp_path):
    from fleetpilot.policies.actions import ActionMapping
    from fleetpilot.policies.onnx_policy import OnnxPolicy, verify

    mapping = ActionMapping(
        utilization=(0.6, 0.7), cushion_day_max_share=(0.0, 0.2), newsvendor_risk=(0.5, 1.0, 2.0)
    ).to_json()
    cfg = tmp_path / "ppo.yaml"
    cfg.write_text(
        json.dumps(
            {
                "num_envs": 8,
                "num_steps": 32,
                "episode_minutes": 400,
                "eval_seeds": [500],
                "eval_minutes": 300,
                "eval_every_updates": 2,
                "init_loads": 4,
                "mapping": mapping,
            }
        )
    )
    out = tmp_path / "m"
    r = subprocess.run(
        FLEETPILOT + ["train", "--config", str(cfg), "--steps", "512", "--seed", "2", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    manifest, _ = verify(out)
    assert manifest["action_mapping"]["newsvendor_risk"] == [0.5, 1.0, 2.0]
    assert manifest["action_mapping"]["newsvendor_tail"] == TAIL_VERSION  # the tail it was trained on
    pol = OnnxPolicy.load(out)
    assert pol.mapping.n == 4 + 3
    obs = feed(np.stack([steps(3000, 250, 0.7)])).observation()
    assert pol.decide(obs).desired[0] >= 1


def test_the_recorded_experiment_config_is_a_valid_training_config():
    """docs/experiments/ppo-broad-newsvendor.yaml (README, "What was tried") loads as the train command reads it."""
    import argparse
    from pathlib import Path

    from fleetpilot.policies.actions import ActionMapping
    from fleetpilot.training.cli import _train_config

    path = Path(__file__).resolve().parents[1] / "docs" / "experiments" / "ppo-broad-newsvendor.yaml"
    cfg, _ = _train_config(str(path), argparse.Namespace(steps=None, seed=None))
    mapping = ActionMapping.from_json(cfg.mapping)
    assert mapping.newsvendor_risk == (0.25, 0.5, 1.0, 2.0, 4.0) and mapping.n == mapping.n_grid + 5


def test_the_served_share_is_the_simulators_a_minute_is_down_below_that_share_of_the_load():
    """Down when capacity < share x load (sim/fleet.py): 900 tpm at a 90% share and exact 100-tpm machines
    needs 9 machines (810 tpm), not the 10 that dividing by the share would buy."""
    obs = _obs(np.full(400, 900.0), cap=100.0)
    p = NewsvendorParams(downtime_served_share=0.9, capacity_sigma_share=0.0)
    assert newsvendor_machines(obs, p)[0] == 9


def test_one_zero_reading_does_not_shrink_the_fleet():
    load = np.full(600, 1200.0)
    load[-1] = 0.0
    got = newsvendor_machines(_obs(load), NewsvendorParams())[0]
    assert got >= 0.995 * (2 * 1200 / 3) / 300  # sized from the 3-minute mean at least


def test_an_action_outside_the_mapping_is_refused():
    from fleetpilot.policies.actions import ActionMapping

    obs = _obs(np.full(200, 1000.0))
    m = ActionMapping(newsvendor_risk=(1.0,))
    for k in (-1, m.n):
        with pytest.raises(ValueError, match="action outside"):
            m.desired(np.array([k]), obs)


def test_many_fleets_targets_are_each_rows_target_whatever_their_machines():
    """`ActionMapping.targets` prices each distinct (action, load) once for F fleets on the same loads (the
    rollouts of policy iteration): each fleet gets what it would alone, on any fleet's observation; alone, each
    load gets the grid's formula or the newsvendor rule at its price."""
    from fleetpilot.policies.actions import ActionMapping

    m = ActionMapping((0.5, 0.8), (0.0, 0.2), 3, 1.1, (0.25, 1.0, 4.0), "mixture")
    rng = np.random.default_rng(8)
    loads = np.stack([1500 * rng.lognormal(0, 0.2, 2000) + steps(2000, 170 + 40 * i, 0.8, 600) for i in range(5)])
    obs = feed(loads).observation()
    k = rng.integers(0, m.n, (6, 5))
    k[1] = k[0]  # fleets that take the same actions
    k[2, :] = m.n_grid + 1  # every load at one price
    got = m.targets(k, obs.with_machines(np.full(5, 3), np.full(5, 2)))
    assert got.shape == (6, 5) and got.dtype == np.int64
    for f in range(6):
        assert np.array_equal(got[f], m.target(k[f], obs)), f
    for i in range(5):  # one load alone (its own observation)
        alone = feed(loads[i : i + 1]).observation()
        for a in range(m.n):
            if a < m.n_grid:
                u, c = m.utilization[a // 2], m.cushion_day_max_share[a % 2]
                want = np.ceil((m.base_load(alone)[0] + c * alone.day_max_tpm[0]) / (300.0 * u) - 1e-9)
            else:
                risk = m.newsvendor_risk[a - m.n_grid]
                want = NewsvendorPolicy(NewsvendorParams(risk=risk, rise_scale="mixture")).decide(alone).desired[0]
            assert m.target(np.array([a]), alone)[0] == want, (i, a)
            if (k[:, i] == a).any():
                assert got[k[:, i] == a, i][0] == want, (i, a)
    assert len(set(got[:, 0])) > 1  # the actions ask for different fleets (the check compares something)
    with pytest.raises(ValueError, match="action outside"):
        m.targets(np.full((2, 5), m.n), obs)
    with pytest.raises(ValueError, match="expected"):
        m.targets(np.zeros(5, dtype=np.int64), obs)


def test_a_model_whose_outputs_disagree_with_its_action_mapping_is_refused(tmp_path):
    """A manifest naming newsvendor actions the graph does not have (or the reverse) is refused at load, not
    met tick by tick as an out-of-range action."""
    import shutil

    from fleetpilot.policies.onnx_policy import ModelError, OnnxPolicy
    from fleetpilot.policies.registry import MODELS_DIR

    d = tmp_path / "m"
    shutil.copytree(MODELS_DIR / "synthetic", d)
    manifest = json.loads((d / "manifest.json").read_text())
    manifest["action_mapping"].update(newsvendor_risk=[1.0], newsvendor_tail=TAIL_VERSION)
    (d / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelError, match="108 actions.*109"):
        OnnxPolicy.load(d)


@pytest.mark.parametrize("tail", [None, 1, TAIL_VERSION + 1])
def test_a_model_trained_on_another_rise_tail_is_refused_by_name(tmp_path, tail):
    """Newsvendor actions price the rise tail; a model trained when the tail meant something else (no field: the
    first tail) would take other risks than it learned, so it is refused at load, naming the field and what to
    do, and the CLI says so in one line with exit 2."""
    import shutil

    from fleetpilot.policies.onnx_policy import ModelError, OnnxPolicy
    from fleetpilot.policies.registry import MODELS_DIR

    d = tmp_path / "m"
    shutil.copytree(MODELS_DIR / "default", d)
    manifest = json.loads((d / "manifest.json").read_text())
    assert manifest["action_mapping"]["newsvendor_tail"] == TAIL_VERSION  # the shipped one is current
    OnnxPolicy.load(d)
    if tail is None:
        del manifest["action_mapping"]["newsvendor_tail"]
    else:
        manifest["action_mapping"]["newsvendor_tail"] = tail
    (d / "manifest.json").write_text(json.dumps(manifest))
    said = "absent" if tail is None else str(tail)
    with pytest.raises(
        ModelError,
        match=rf"manifest.json: action_mapping.newsvendor_tail: {said}.*v{tail or 1};.*tail is v{TAIL_VERSION}.*retrain",
    ):
        OnnxPolicy.load(d)
    r = subprocess.run(
        FLEETPILOT + ["backtest", "--synthetic", "--seeds", "1..1", "--minutes", "100", "--policy", str(d)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert "newsvendor_tail" in r.stderr and str(d) in r.stderr


def test_a_shadow_observation_reuses_the_minutes_pricing_and_a_new_minute_does_not(monkeypatch):
    """The pricing does not read the machines: asked again this minute with the same parameters, risk and rows
    on an observation that is this one with other machines (a shadow's), it is not computed again; another
    risk, other rows or the next minute's observation are. Each answer is the caller's own copy."""
    from fleetpilot.policies import newsvendor

    calls: list[int] = []
    inner = newsvendor._machines

    def counted(obs, p, risk, rows):
        calls.append(obs.n)
        return inner(obs, p, risk, rows)

    monkeypatch.setattr(newsvendor, "_machines", counted)
    loads = np.stack([steps(3000, 200, r) for r in (0.5, 1.0, 2.0)])
    b = feed(loads)
    obs, p = b.observation(), NewsvendorParams(rise_scale="mixture")
    first = newsvendor_machines(obs, p, np.array([1.0, 2.0, 1.0]))
    first[:] = -1  # the caller's copy
    shadow = obs.with_machines(np.array([3, 40, 7]), np.array([1, 0, 0]))
    again = newsvendor_machines(shadow, NewsvendorParams(rise_scale="mixture"), np.array([1.0, 2.0, 1.0]))
    assert len(calls) == 1 and np.array_equal(again, inner(obs, p, np.array([1.0, 2.0, 1.0]), None))
    newsvendor_machines(shadow, p, np.array([1.0, 1.0, 1.0]))  # another risk
    newsvendor_machines(shadow, p, np.array([1.0, 2.0]), rows=np.array([0, 1]))  # other rows
    newsvendor_machines(shadow, NewsvendorParams(rise_scale="hour"), np.array([1.0, 2.0, 1.0]))  # other params
    assert len(calls) == 4
    b.update(loads[:, -1] * 3, np.full(3, 20), np.zeros(3, dtype=np.int64), np.full(3, T0 + 3000))
    later = b.observation()
    assert not np.array_equal(newsvendor_machines(later, p, np.array([1.0, 2.0, 1.0])), again)  # priced anew
    assert len(calls) == 5
