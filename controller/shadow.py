"""Shadow mode: what other policies would have done, on the same load, never written.

A group's `shadow_policies` are computed every tick on the observations of the live decision (the same load
history and features), each against its OWN fleet: a tiny fleet model per shadow (active machines, and orders
joining after the group's `warmup_minutes`, as in `sim.fleet.FleetCore`) started from the live fleet at the
first tick and then moved only by the shadow's decisions. The observation a shadow sees is the live one with the
machine features (active, warming, utilization) replaced by its own fleet's (`Observation.with_machines`).

A shadow's answer goes through the group's guards, vectorized here: min/max, scale-in stabilization, no scale-in
while its machines warm up, per-tick step limits, min/max again and the group's own bounds (the live chain of
`controller.guards.decide` for good data; a test holds the two equal). On a tick without a good reading, or
when the shadow policy raises or answers nothing usable, the shadow holds its desired capacity (the error is
counted, never raised: shadows run after the live decision and cannot change it).

Economics: each minute with a good current load reading, the expected reward of the minute under the simulator's
economics (`sim.fleet.expected_minute`: revenue of the served load, machine cost, downtime penalty and its
probability over the capacity noise) is added up for every shadow on its own active machines, and for the live
fleet (`policy="live"`) on the active machines the backend reported, so the sums cover the same minutes. A
simulated group's capacity noise is its backend's `capacity_sigma_tpm`; a real group's is taken as 10% of its
capacity per machine. Totals since start are exported as counters (a custom collector: nothing per tick), the
last 24 hours (hour buckets) as gauges and on the status page.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from fleetpilot.controller.backends.base import GroupState
from fleetpilot.controller.runtime import Batch, GroupRuntime, Reading
from fleetpilot.policies.base import MAX_FLEET_MACHINES, Policy
from fleetpilot.policies.observation import Observation
from fleetpilot.sim.fleet import expected_minute
from fleetpilot.sim.params import FleetParams

log = logging.getLogger("fleetpilot.shadow")

#: The `policy` label of the live fleet's economics.
LIVE = "live"
#: The window of the gauges and the status page, in hours (hour buckets).
WINDOW_HOURS = 24
#: A real group's capacity noise, as a share of its capacity per machine (a simulated group has its own).
REAL_SIGMA_SHARE = 0.1


class Fleet:
    """N small fleets: machines removed at once, orders joining `warmup_minutes` later (`sim.fleet.FleetCore`'s
    order: remove, join, order), at most `max_out` / `max_in` machines a minute (the world's rates)."""

    def __init__(self, n: int, warmup_minutes: int, max_out: np.ndarray, max_in: np.ndarray):
        self.warmup = int(warmup_minutes)
        self.active = np.zeros(n, dtype=np.int64)
        self.queue = np.zeros((n, max(self.warmup, 1)), dtype=np.int64)
        self.head = 0
        self.max_out, self.max_in = max_out, max_in

    @property
    def warming(self) -> np.ndarray:
        return self.queue.sum(axis=1)

    def start(self, rows: np.ndarray, active: np.ndarray, warming: np.ndarray) -> None:
        """Rows (bool mask) start as the live fleet is: its active machines, its warming ones joining next minute."""
        self.active[rows] = active[rows]
        self.queue[rows] = 0
        self.queue[rows, self.head] = warming[rows]

    def step(self, desired: np.ndarray) -> None:
        """One minute toward `desired` (total machines)."""
        delta = np.clip(desired - (self.active + self.warming), -self.max_in, self.max_out)
        removed = np.minimum(np.maximum(-delta, 0), self.active)
        self.active -= removed
        ordered = np.maximum(delta, 0)
        if self.warmup > 0:
            self.active += self.queue[:, self.head]
            self.queue[:, self.head] = ordered
            self.head = (self.head + 1) % self.queue.shape[1]
        else:
            self.active += ordered


@dataclass
class GuardArrays:
    """A batch's guard settings as arrays (see controller.guards.Limits)."""

    lo: np.ndarray
    hi: np.ndarray
    max_out: np.ndarray
    max_in: np.ndarray
    block_warming: np.ndarray
    window: np.ndarray  #: scale-in stabilization minutes

    @classmethod
    def of(cls, groups: Sequence[GroupRuntime]) -> GuardArrays:
        lim = [g.limits for g in groups]
        arr = lambda f: np.array([f(x) for x in lim], dtype=np.int64)  # noqa: E731
        return cls(
            lo=arr(lambda x: x.min_machines),
            hi=arr(lambda x: x.max_machines),
            max_out=arr(lambda x: x.max_scale_out_per_tick),
            max_in=arr(lambda x: x.max_scale_in_per_tick),
            block_warming=np.array([x.block_scale_in_while_warming for x in lim], dtype=bool),
            window=arr(lambda x: x.scale_in_stabilization_minutes),
        )


class Stabilizer:
    """The recommendations of the last `window` minutes (a ring of the largest window, one slot a minute)."""

    def __init__(self, n: int, window: np.ndarray):
        self.window = window
        self.size = max(int(window.max(initial=0)), 1)
        self.recs = np.full((n, self.size), -1, dtype=np.int64)
        self.minutes = np.full(self.size, np.iinfo(np.int64).min // 2, dtype=np.int64)

    def highest(self, now_minute: int) -> np.ndarray:
        """(N,) the highest recommendation within each group's window (-1: none)."""
        recent = self.minutes[None, :] > now_minute - self.window[:, None]
        return np.where(recent, self.recs, -1).max(axis=1)

    def record(self, now_minute: int, rec: np.ndarray, rows: np.ndarray) -> None:
        slot = now_minute % self.size
        if self.minutes[slot] != now_minute:
            self.minutes[slot] = now_minute
            self.recs[:, slot] = -1
        self.recs[rows, slot] = rec[rows]


def guard(
    answer: np.ndarray,
    active: np.ndarray,
    warming: np.ndarray,
    g: GuardArrays,
    stab: Stabilizer,
    now_minute: int,
    own_lo: np.ndarray,
    own_hi: np.ndarray,
    rows: np.ndarray,
) -> np.ndarray:
    """The guard chain of `controller.guards.decide` for good data and a usable answer, for all groups at once;
    the recommendations of `rows` are remembered for stabilization."""
    v = np.maximum(np.minimum(answer, g.hi), g.lo)
    rec = v
    current = active + warming
    if stab.size > 0:
        best = np.minimum(current, np.maximum(v, stab.highest(now_minute)))
        v = np.where((v < current) & (g.window > 0), best, v)
    v = np.where(g.block_warming & (warming > 0) & (v < current), current, v)
    v = np.minimum(v, current + g.max_out)
    v = np.where(v < current - g.max_in, np.maximum(current - g.max_in, 0), v)
    v = np.maximum(np.minimum(v, g.hi), g.lo)
    v = np.maximum(np.minimum(v, own_hi), own_lo)
    stab.record(now_minute, rec, rows)
    return v


@dataclass
class Shadow:
    """One shadow policy over one batch (every row computed; `rows` are the groups that list it)."""

    spec: str
    policy: Policy | None
    error: str | None  #: why the policy could not be made
    rows: np.ndarray  #: (n,) bool
    entries: np.ndarray  #: (n,) index into the book's entries (-1: not listed)
    fleet: Fleet
    stab: Stabilizer
    desired: np.ndarray
    started: np.ndarray


@dataclass
class _BatchShadows:
    batch: Batch
    shadows: list[Shadow]
    guards: GuardArrays
    params: list[tuple[FleetParams, np.ndarray]]  #: economics and the rows (bool mask) it applies to
    live_rows: np.ndarray  #: (n,) bool: groups with shadows
    live_entries: np.ndarray  #: (n,) index into entries (-1: none)


PolicyLoader = Callable[[str, dict[str, Any]], tuple[Policy | None, str | None]]


class ShadowBook:
    """Every shadow of every group, its fleet and its economics; one `tick` call per daemon tick. Also a
    Prometheus collector (register it on the daemon's registry): the totals are read at scrape time."""

    def __init__(self, groups: Sequence[GroupRuntime], loader: PolicyLoader | None = None):
        from fleetpilot.controller.assembly import load_policy

        loader = loader or load_policy
        self.entries: list[tuple[int, str]] = []  #: (group index, policy label)
        self.by_group: dict[int, list[int]] = {}  #: group index -> its entries, live first then its shadows
        self._batches: list[_BatchShadows] = []
        self._lock = threading.Lock()
        for batch in dict.fromkeys(g.batch for g in groups if g.cfg.shadow_policies and g.batch is not None):
            assert batch is not None
            self._batches.append(self._make(batch, loader))
        e = len(self.entries)
        self.revenue = np.zeros(e)
        self.cost = np.zeros(e)
        self.down = np.zeros(e)
        self.minutes = np.zeros(e, dtype=np.int64)
        self.errors = np.zeros(e, dtype=np.int64)
        self.desired = np.full(e, -1, dtype=np.int64)
        self.hour_reward = np.zeros((e, WINDOW_HOURS))
        self.hour_down = np.zeros((e, WINDOW_HOURS))
        self.hour_minutes = np.zeros((e, WINDOW_HOURS), dtype=np.int64)
        self.hour_of = np.full(WINDOW_HOURS, -(10**9), dtype=np.int64)
        self._failing: set[str] = set()

    def _entry(self, group_index: int, label: str) -> int:
        self.entries.append((group_index, label))
        self.by_group.setdefault(group_index, []).append(len(self.entries) - 1)
        return len(self.entries) - 1

    def _make(self, batch: Batch, loader: PolicyLoader) -> _BatchShadows:
        gs = batch.groups
        n = len(gs)
        live_rows = np.array([bool(g.cfg.shadow_policies) for g in gs])
        live_entries = np.array([self._entry(g.index, LIVE) if live_rows[i] else -1 for i, g in enumerate(gs)])
        sims = [g.cfg.backend if g.cfg.backend.kind == "simulated" else None for g in gs]
        max_out = np.array([getattr(b, "max_scale_out_per_minute", MAX_FLEET_MACHINES) for b in sims], dtype=np.int64)
        max_in = np.array([getattr(b, "max_scale_in_per_minute", MAX_FLEET_MACHINES) for b in sims], dtype=np.int64)
        econ: dict[FleetParams, list[int]] = {}
        for i, g in enumerate(gs):
            cap = g.cfg.capacity_tpm_per_machine
            sigma = getattr(sims[i], "capacity_sigma_tpm", REAL_SIGMA_SHARE * cap)
            p = FleetParams(capacity_tpm_per_machine=cap, capacity_sigma_tpm=sigma, initial_machines=0)
            econ.setdefault(p, []).append(i)
        params = [(p, np.isin(np.arange(n), rows)) for p, rows in econ.items()]
        ga = GuardArrays.of(gs)
        shadows = []
        for spec in dict.fromkeys(s for g in gs for s in g.cfg.shadow_policies):
            rows = np.array([spec in g.cfg.shadow_policies for g in gs])
            entries = np.array([self._entry(g.index, spec) if rows[i] else -1 for i, g in enumerate(gs)])
            try:
                policy, error = loader(spec, {})
            except Exception as exc:  # a shadow that cannot be made is reported, never fatal
                policy, error = None, f"{type(exc).__name__}: {exc}"
            if policy is not None:
                policy.reset(n)
            else:
                log.error("shadow policy cannot be loaded", extra={"policy": spec, "error": error})
            shadows.append(
                Shadow(
                    spec,
                    policy,
                    error,
                    rows,
                    entries,
                    Fleet(n, batch.warmup_minutes, max_out, max_in),
                    Stabilizer(n, ga.window),
                    np.zeros(n, dtype=np.int64),
                    np.zeros(n, dtype=bool),
                )
            )
        return _BatchShadows(batch, shadows, ga, params, live_rows, live_entries)

    @property
    def active(self) -> bool:
        return bool(self._batches)

    # --- one tick ----------------------------------------------------------------------------------------
    def tick(
        self,
        now_minute: int,
        observed: Iterable[tuple[Batch, Observation]],
        readings: Sequence[Reading],
        states: Sequence[GroupState | None],
        finals: Sequence[int | None],
    ) -> dict[int, tuple[int | None, ...]]:
        """Step every shadow one minute, add up the economics of the minute just observed, decide. Returns, per
        group with shadows, each shadow's desired capacity in its `shadow_policies` order (None: no answer yet)."""
        if not self._batches:
            return {}
        obs_of = {id(b): o for b, o in observed}
        out: dict[int, tuple[int | None, ...]] = {}
        with self._lock:
            self._roll_hour(now_minute)
            for bs in self._batches:
                obs = obs_of.get(id(bs.batch))
                if obs is None:
                    continue
                self._tick_batch(bs, now_minute, obs, readings, states, finals)
                for i, g in enumerate(bs.batch.groups):
                    if bs.live_rows[i]:
                        got = {s.spec: int(s.desired[i]) for s in bs.shadows if s.started[i] and s.policy is not None}
                        out[g.index] = tuple(got.get(spec) for spec in g.cfg.shadow_policies)
        return out

    def _roll_hour(self, now_minute: int) -> None:
        hour = now_minute // 60
        slot = hour % WINDOW_HOURS
        if self.hour_of[slot] != hour:
            self.hour_of[slot] = hour
            self.hour_reward[:, slot] = 0.0
            self.hour_down[:, slot] = 0.0
            self.hour_minutes[:, slot] = 0
        self._slot = slot

    def _add(self, entries: np.ndarray, rows: np.ndarray, active: np.ndarray, load: np.ndarray, bs) -> None:
        """The expected economics of the minute for `rows` (bool) with `active` machines, into `entries`."""
        for p, prow in bs.params:
            r = rows & prow
            if not r.any():
                continue
            n_act, lo = active[r], load[r]
            revenue, p_down = expected_minute(n_act, lo, p)
            cost = n_act * p.machine_cost_usd_per_minute + p_down * p.downtime_cost_usd_per_minute
            e = entries[r]
            self.revenue[e] += revenue
            self.cost[e] += cost
            self.down[e] += p_down
            self.minutes[e] += 1
            self.hour_reward[e, self._slot] += revenue - cost
            self.hour_down[e, self._slot] += p_down
            self.hour_minutes[e, self._slot] += 1

    def _tick_batch(
        self,
        bs: _BatchShadows,
        now_minute: int,
        obs: Observation,
        readings: Sequence[Reading],
        states: Sequence[GroupState | None],
        finals: Sequence[int | None],
    ) -> None:
        gs = bs.batch.groups
        n = len(gs)
        st = [states[g.index] for g in gs]
        have = np.array([s is not None for s in st])
        live_active = np.array([s.active if s else 0 for s in st], dtype=np.int64)
        live_warming = np.array([s.warming if s else 0 for s in st], dtype=np.int64)
        own_lo = np.array([s.min_size if s else 0 for s in st], dtype=np.int64)
        own_hi = np.array([s.max_size if s else MAX_FLEET_MACHINES for s in st], dtype=np.int64)
        rs = [readings[g.index] for g in gs]
        ok = np.array([r.ok for r in rs]) & have
        current = ok & np.array([r.sample is not None and r.sample.minute == now_minute - 1 for r in rs])
        load = np.array([r.sample.load_tpm if current[i] and r.sample else 0.0 for i, r in enumerate(rs)])
        fin = [finals[g.index] for g in gs]
        live = bs.live_rows & current
        self._add(bs.live_entries, live, live_active, load, bs)
        e_live = bs.live_entries[bs.live_rows]
        self.desired[e_live] = [-1 if fin[i] is None else fin[i] for i in np.nonzero(bs.live_rows)[0]]
        for s in bs.shadows:
            if s.policy is None:
                continue
            s.fleet.step(np.where(s.started, s.desired, s.fleet.active + s.fleet.warming))
            new = s.rows & have & ~s.started
            if new.any():  # start from the live fleet as it is now (after this minute's step)
                s.fleet.start(new, live_active, live_warming)
                s.desired[new] = np.array([x.desired if x else 0 for x in st], dtype=np.int64)[new]
                s.started |= new
            self._add(s.entries, s.rows & s.started & current, s.fleet.active, load, bs)
            listed = s.rows & s.started
            self.desired[s.entries[listed]] = s.desired[listed]  # what it holds, unless it answers below
            active, warming = s.fleet.active, s.fleet.warming
            try:
                answer = np.asarray(s.policy.decide(obs.with_machines(active, warming)).desired)
                if answer.shape != (n,):
                    raise ValueError(f"shadow policy returned shape {answer.shape} for {n} groups")
                values = answer.astype(np.float64)
                usable = np.isfinite(values) & (values >= 0)
                answer = np.where(usable, values, 0).astype(np.int64)
            except Exception as exc:  # a shadow's error never reaches the live decision
                self.errors[s.entries[s.rows]] += 1
                if s.spec not in self._failing:  # logged when it starts failing, and when it recovers
                    self._failing.add(s.spec)
                    log.warning(
                        "shadow policy failed; it holds until it answers again",
                        extra={"policy": s.spec, "error": f"{type(exc).__name__}: {exc}"},
                    )
                continue
            if s.spec in self._failing:
                self._failing.discard(s.spec)
                log.info("shadow policy answers again", extra={"policy": s.spec})
            use = s.rows & s.started & ok & usable
            self.errors[s.entries[s.rows & s.started & ok & ~usable]] += 1
            guarded = guard(answer, active, warming, bs.guards, s.stab, now_minute, own_lo, own_hi, use)
            s.desired = np.where(use, guarded, s.desired)
            self.desired[s.entries[listed]] = s.desired[listed]

    # --- reading -----------------------------------------------------------------------------------------
    def window(self) -> dict[str, np.ndarray]:
        """Per entry: profit, downtime minutes and minutes counted over the last WINDOW_HOURS hours."""
        with self._lock:
            hours = self.hour_of
            latest = hours.max(initial=-(10**9))
            keep = hours > latest - WINDOW_HOURS
            return {
                "profit": self.hour_reward[:, keep].sum(axis=1),
                "down": self.hour_down[:, keep].sum(axis=1),
                "minutes": self.hour_minutes[:, keep].sum(axis=1),
            }

    def group_summary(self, group_index: int, names: dict[int, str] | None = None) -> list[dict[str, Any]]:
        """The live fleet and each shadow of a group: desired now, window and total economics, errors."""
        idx = self.by_group.get(group_index, [])
        if not idx:
            return []
        w = self.window()
        errors = self._errors_of()
        out = []
        for e in idx:
            _, label = self.entries[e]
            out.append(
                {
                    "policy": label,
                    "live": label == LIVE,
                    "desired": None if self.desired[e] < 0 else int(self.desired[e]),
                    "window_hours": WINDOW_HOURS,
                    "window_expected_profit_usd": round(float(w["profit"][e]), 2),
                    "window_downtime_minutes": round(float(w["down"][e]), 3),
                    "window_minutes": int(w["minutes"][e]),
                    "expected_profit_usd": round(float(self.revenue[e] - self.cost[e]), 2),
                    "downtime_minutes": round(float(self.down[e]), 3),
                    "minutes": int(self.minutes[e]),
                    "errors": int(self.errors[e]),
                    "unavailable": errors.get(e),
                }
            )
        return out

    def _errors_of(self) -> dict[int, str]:
        out = {}
        for bs in self._batches:
            for s in bs.shadows:
                if s.policy is None:
                    for e in s.entries[s.rows]:
                        out[int(e)] = s.error or "unavailable"
        return out

    # --- Prometheus ----------------------------------------------------------------------------------------
    def bind(self, group_names: Sequence[str]) -> ShadowBook:
        self._names = list(group_names)
        return self

    def describe(self):  # no samples at registration
        return []

    def collect(self):
        names = getattr(self, "_names", None)
        if not self.entries or names is None:
            return
        labels = [(names[g], p) for g, p in self.entries]
        w = self.window()
        with self._lock:
            rows = {
                "revenue": self.revenue.copy(),
                "cost": self.cost.copy(),
                "down": self.down.copy(),
                "minutes": self.minutes.copy(),
                "errors": self.errors.copy(),
                "desired": self.desired.copy(),
            }
        lab = ["group", "policy"]
        fams: list[tuple[GaugeMetricFamily | CounterMetricFamily, np.ndarray, np.ndarray | None]] = [
            (
                GaugeMetricFamily(
                    "fleetpilot_shadow_desired_machines",
                    "Desired capacity each shadow policy would have set this tick (policy=live: the live decision)",
                    labels=lab,
                ),
                rows["desired"],
                rows["desired"] >= 0,
            ),
            (
                CounterMetricFamily(
                    "fleetpilot_shadow_expected_revenue_usd",
                    "Expected revenue of the served load on the fleet's own machines, simulator economics",
                    labels=lab,
                ),
                rows["revenue"],
                None,
            ),
            (
                CounterMetricFamily(
                    "fleetpilot_shadow_expected_cost_usd",
                    "Expected cost: machine minutes plus the downtime penalty times its probability",
                    labels=lab,
                ),
                rows["cost"],
                None,
            ),
            (
                CounterMetricFamily(
                    "fleetpilot_shadow_downtime_minutes",
                    "Expected downtime minutes (sum of each minute's downtime probability)",
                    labels=lab,
                ),
                rows["down"],
                None,
            ),
            (
                CounterMetricFamily(
                    "fleetpilot_shadow_minutes",
                    "Minutes with a good load reading, counted in the economics",
                    labels=lab,
                ),
                rows["minutes"],
                None,
            ),
            (
                CounterMetricFamily(
                    "fleetpilot_shadow_errors",
                    "Ticks a shadow policy failed or answered nothing usable (it held)",
                    labels=lab,
                ),
                rows["errors"],
                None,
            ),
            (
                GaugeMetricFamily(
                    "fleetpilot_shadow_window_expected_profit_usd",
                    f"Expected profit (revenue - cost) over the last {WINDOW_HOURS} hours",
                    labels=lab,
                ),
                w["profit"],
                None,
            ),
            (
                GaugeMetricFamily(
                    "fleetpilot_shadow_window_downtime_minutes",
                    f"Expected downtime minutes over the last {WINDOW_HOURS} hours",
                    labels=lab,
                ),
                w["down"],
                None,
            ),
        ]
        for fam, values, mask in fams:
            for e, (g, p) in enumerate(labels):
                if mask is None or mask[e]:
                    fam.add_metric([g, p], float(values[e]))
            yield fam
