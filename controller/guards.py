"""Safety guards and the decision: small pure functions, in the manner of Kubernetes' `horizontal.go`.

Each guard takes a proposed desired capacity and returns `(value, reason or None)`; the reason is set only when
the guard changed the value. `decide()` chains them and is a pure function of (memory, group, proposal,
limits, now): the same inputs always give the same final capacity and reasons.

Order of the chain (see docs/configuration.md):

| step | guard | reason |
|---|---|---|
| 1 | the action: policy, or fallback rule, or hold (a negative proposal is no proposal) | `fallback:<cause>`, `hold:<status>` |
| 2 | clamp to [min_machines, max_machines] -> the recommendation | `min-machines`, `max-machines` |
| 3 | scale-in stabilization: highest recommendation over the window | `stabilization` |
| 4 | no scale-in while machines warm up | `warming` |
| 5 | bad data: never scale in | `bad-data-no-scale-in` |
| 6 | per-tick step limits against active + warming | `scale-out-limit`, `scale-in-limit` |
| 7 | hard bounds: [min, max] again, then the group's own min/max | `min-machines`, `max-machines`, `group-min/max` |
| 8 | paused: nothing is written | `paused` |
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum


class DataStatus(StrEnum):
    """Data status of a tick's reading; only OK is good data."""

    OK = "ok"
    ERROR = "error"  #: the source could not be read
    EMPTY = "empty"  #: the source has no sample
    NAN = "nan"  #: the source said NaN
    STALE = "stale"  #: the last sample is older than `stale_after_seconds`
    INVALID = "invalid"  #: a negative load
    REPEAT = "repeat"  #: older than the history already seen (the clock or the source went back)
    IMPLAUSIBLE = "implausible"  #: beyond any plausible fleet (`max_load_tpm`): bad data, never a scale-in


class Action(StrEnum):
    """How a decision's capacity was made."""

    POLICY = "policy"
    FALLBACK = "fallback"
    HOLD = "hold"


class Cause(StrEnum):
    """Why a group's policy answer is not used (the `cause` label of the fallback counter)."""

    MODEL_UNAVAILABLE = "model_unavailable"  #: the policy could not be loaded
    MODEL_ERROR = "model_error"  #: the policy raised or answered in the wrong shape
    NON_FINITE = "non_finite"  #: the answer was not finite or negative
    BAD_DATA = "bad_data"  #: the load reading has been bad for `bad_data_ticks_before_fallback` ticks


DATA_OK = DataStatus.OK
DATA_STATUSES = tuple(DataStatus)


@dataclass(frozen=True)
class Limits:
    """A group's guard settings (from its config)."""

    min_machines: int
    max_machines: int
    max_scale_out_per_tick: int
    max_scale_in_per_tick: int
    scale_in_stabilization_minutes: int = 0
    block_scale_in_while_warming: bool = True
    bad_data_ticks_before_fallback: int = 3
    paused: bool = False
    max_load_tpm: float = math.inf  #: readings above are bad data (`implausible`), see GroupConfig.load_ceiling_tpm


@dataclass(frozen=True)
class GroupNow:
    """The group as read from the backend this tick."""

    active: int
    warming: int
    desired: int  #: the desired capacity the group is set to now
    min_size: int = 0  #: the group's own bounds (EC2: the ASG's MinSize/MaxSize)
    max_size: int = 2**31 - 1

    @property
    def total(self) -> int:
        return self.active + self.warming


@dataclass(frozen=True)
class Proposal:
    """What the policies said for this group this tick.

    policy_desired: the primary policy's desired capacity; None on a model error or an unavailable model
    (then `model_cause` says why). fallback_desired: the fallback rule's, when it was asked (None otherwise or
    when there was no good data ever). data_status: DATA_OK or why this tick's reading is bad.
    """

    policy_desired: int | None
    fallback_desired: int | None
    data_status: str = DataStatus.OK  #: a DataStatus
    model_cause: str | None = None  #: a Cause


@dataclass(frozen=True)
class Memory:
    """What a group remembers between ticks: consecutive bad-data ticks and recent recommendations."""

    bad_ticks: int = 0
    recommendations: tuple[tuple[int, int], ...] = ()  #: (minute, recommendation), oldest first


@dataclass(frozen=True)
class Decision:
    final: int
    action: Action
    reasons: tuple[str, ...]
    recommendation: int | None  #: after the min/max clamp (what stabilization remembers)
    fallback_cause: str | None = None  #: a Cause
    write: bool = False  #: final differs from the group's desired and the group is not paused

    @property
    def reason(self) -> str:
        """The one reason for the metrics label: the last guard that bound, else how the action was made."""
        for r in reversed(self.reasons):
            if r != "paused":
                return r.split(":", 1)[0]
        return "paused" if "paused" in self.reasons else self.action


# --- the guards --------------------------------------------------------------------------------------------
def clamp_bounds(
    value: int, lo: int, hi: int, names: tuple[str, str] = ("min-machines", "max-machines")
) -> tuple[int, str | None]:
    """Clamp to [lo, hi]; lo wins when they cross (the group can never go below its minimum)."""
    if value > hi:
        value, why = hi, names[1]
        if value < lo:
            return lo, names[0]
        return value, why
    if value < lo:
        return lo, names[0]
    return value, None


def stabilize_scale_in(
    value: int, current: int, window: tuple[tuple[int, int], ...], now_minute: int, window_minutes: int
) -> tuple[int, str | None]:
    """Scale in only to the highest recommendation of the last `window_minutes` (value included), never up.

    HPA's `stabilizeRecommendationWithBehaviors` for scale-down: min(current, max(window)).
    """
    if value >= current or window_minutes <= 0:
        return value, None
    recent = [rec for minute, rec in window if minute > now_minute - window_minutes]
    best = min(current, max([value, *recent]))
    return (best, "stabilization") if best != value else (value, None)


def block_scale_in_while_warming(value: int, current: int, warming: int, enabled: bool) -> tuple[int, str | None]:
    """No scale-in while machines are warming up: they are capacity the policy already counted on."""
    if enabled and warming > 0 and value < current:
        return current, "warming"
    return value, None


def hold_on_bad_data(value: int, desired_now: int, data_ok: bool) -> tuple[int, str | None]:
    """While the load reading is bad, never lower the group's desired capacity."""
    if not data_ok and value < desired_now:
        return desired_now, "bad-data-no-scale-in"
    return value, None


def limit_step(value: int, current: int, max_out: int, max_in: int) -> tuple[int, str | None]:
    """At most `max_out` machines more and `max_in` fewer than active + warming in one tick."""
    if value > current + max_out:
        return current + max_out, "scale-out-limit"
    if value < current - max_in:
        return max(current - max_in, 0), "scale-in-limit"
    return value, None


def valid_action(value: int | None) -> int | None:
    """A proposed capacity, or None when there is none or it is impossible (negative: a policy's "no answer",
    or an overflow that wrapped around). An impossible answer is never clamped up to `min_machines`: that
    would turn an overflow into a scale-in. The group is held (or decided by the fallback) instead."""
    if value is None or int(value) < 0:
        return None
    return int(value)


def usable_load(load_tpm: float, limits: Limits) -> bool:
    """A load reading the decision may use: finite, not negative, and not beyond any plausible fleet
    (`limits.max_load_tpm`). Anything else is bad data: held, never a scale-in."""
    return math.isfinite(load_tpm) and 0 <= load_tpm <= limits.max_load_tpm


def needs_fallback(memory: Memory, data_status: str, limits: Limits) -> bool:
    """True when this tick's data is bad and has been for `bad_data_ticks_before_fallback` ticks."""
    return data_status != DATA_OK and memory.bad_ticks + 1 >= limits.bad_data_ticks_before_fallback


# --- the decision ------------------------------------------------------------------------------------------
def decide(
    memory: Memory, group: GroupNow, proposal: Proposal, limits: Limits, now_minute: int
) -> tuple[Decision, Memory]:
    """The final desired capacity and its reasons, and the group's memory for the next tick."""
    reasons: list[str] = []
    data_ok = proposal.data_status == DATA_OK
    bad_ticks = 0 if data_ok else memory.bad_ticks + 1
    fallback_cause: str | None = None
    policy_desired, fallback_desired = valid_action(proposal.policy_desired), valid_action(proposal.fallback_desired)
    if data_ok and policy_desired is not None:
        action, value = Action.POLICY, policy_desired
    elif data_ok or bad_ticks >= limits.bad_data_ticks_before_fallback:
        fallback_cause = proposal.model_cause if data_ok else Cause.BAD_DATA
        if data_ok and fallback_cause is None and proposal.policy_desired is not None:
            fallback_cause = Cause.NON_FINITE  # a negative (wrapped-around) answer is no answer
        if fallback_desired is not None:
            action, value = Action.FALLBACK, fallback_desired
            reasons.append(f"fallback:{fallback_cause or 'unknown'}")
        else:
            action, value = Action.HOLD, group.desired
            reasons.append(f"hold:{proposal.data_status if not data_ok else 'no-fallback'}")
    else:
        action, value = Action.HOLD, group.desired
        reasons.append(f"hold:{proposal.data_status}")

    recommendation: int | None = None
    window = memory.recommendations
    if action != Action.HOLD:
        value, why = clamp_bounds(value, limits.min_machines, limits.max_machines)
        reasons += [why] if why else []
        recommendation = value
        current = group.total
        value, why = stabilize_scale_in(value, current, window, now_minute, limits.scale_in_stabilization_minutes)
        reasons += [why] if why else []
        value, why = block_scale_in_while_warming(value, current, group.warming, limits.block_scale_in_while_warming)
        reasons += [why] if why else []
        value, why = hold_on_bad_data(value, group.desired, data_ok)
        reasons += [why] if why else []
        value, why = limit_step(value, current, limits.max_scale_out_per_tick, limits.max_scale_in_per_tick)
        reasons += [why] if why else []
    value, why = clamp_bounds(value, limits.min_machines, limits.max_machines)
    reasons += [why] if why else []
    value, why = clamp_bounds(value, group.min_size, group.max_size, ("group-min", "group-max"))
    reasons += [why] if why else []
    if limits.paused:
        reasons.append("paused")
    if recommendation is not None and limits.scale_in_stabilization_minutes > 0:
        keep = now_minute - limits.scale_in_stabilization_minutes
        window = tuple((m, r) for m, r in window if m > keep) + ((now_minute, recommendation),)
    elif limits.scale_in_stabilization_minutes <= 0:
        window = ()
    decision = Decision(
        final=int(value),
        action=action,
        reasons=tuple(reasons),
        recommendation=recommendation,
        fallback_cause=fallback_cause if action != Action.POLICY else None,
        write=(not limits.paused) and int(value) != group.desired,
    )
    return decision, Memory(bad_ticks=bad_ticks, recommendations=window)


def direction(final: int, group: GroupNow) -> str:
    """up | down | none, against the group's current desired capacity."""
    return "up" if final > group.desired else "down" if final < group.desired else "none"
