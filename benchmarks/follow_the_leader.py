"""A diagnostic, not a policy: could the price of risk be chosen per group from the group's own past?

On the leave-one-trace-out windows of `benchmarks/generalization.py` (each long development trace, 10,000-minute
windows after a day of history, rescaled to a 10,000 tpm peak), the actions of the rollout policy iteration
family (`docs/experiments/rollout-pi-broad.yaml`: the newsvendor rule at seven prices of risk and one cautious
fixed headroom) are each replayed as a fixed rule over the whole window, history included. Then a
follow-the-leader rule replays the window: at each hour it takes the action whose fixed replay earned most
(expected profit) over the trailing minutes before that hour (the past only: what a daemon could replay from
its own history). `--conservative-days D` is the cautious variant: an action other than the newsvendor rule
(risk 1) is taken only if its replay earned at least as much as the rule's on each of the last D days.
`--lookahead-minutes M` is clairvoyant, not a rule: at each hour it takes the action whose fixed replay earns most
over the NEXT M minutes (the future, known to no policy). Replayed on its own fleet, it is what one such hourly
choice does earn: a lower bound on what the best hourly choice among these actions could earn, to set against
the best single action per window chosen in hindsight. `--lookahead-delay-minutes D` chooses by the M minutes
that start D minutes after the hour instead: how fast the value of knowing the future fades with its distance.
Each look-ahead column's gain over the rule is split by what it held: a cheaper price than the rule's
(`_gain_cheaper`), a costlier one or the cautious headroom (`_gain_cautious`), the rule's own (`_gain_at_rule`).
`--same-hour-days D` chooses by the time of day, causally: at each hour, the action that earned most over the same
`--same-hour-minutes` W around that hour of day on the last D days (a day whose window starts before the history
is left out; the rule until one is in it). `--surge
RATIO:HOLD:RISK` is not a choice among fixed replays but a reaction within the hour: the rule, except for the HOLD
minutes after a minute whose load exceeded RATIO times the mean of the 10 minutes before it, when the newsvendor
rule runs at price RISK instead. `--rise-scale mixture` prices the newsvendor actions on both rise scales, as the
shipped `default` does (default: hour, as the recipe above).

Printed, per trace: the newsvendor rule (risk 1), the best fixed action chosen in hindsight per window and each
follow-the-leader variant, as % of the oracle's expected profit (windows summed), and the oracle's in dollars.
Each window has --lead-minutes of history before it (a day, as in generalization.py): a look-back longer than
the history so far is cut to it (a daemon would have up to a week).

    .venv/bin/python benchmarks/follow_the_leader.py --trailing-minutes 360,1440,4320 --conservative-days 2,3,5 \\
        --json ftl.json
"""

from __future__ import annotations

import argparse
import json
import sys
import types
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import generalization as gen  # noqa: E402  (the sibling benchmark: its traces and windows)

RISKS = (0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 10.0)  # ascending: a price below the rule's (1) is a cheaper one
assert list(RISKS) == sorted(RISKS)


class Surge:
    """`--surge`: the newsvendor rule at price `base`, and at price `risk` for `hold` minutes after a surge (a
    minute's load above `ratio` x the mean of the 10 minutes before it; a rise from no load at all counts)."""

    name = "surge"

    def __init__(self, mapping, base: int, risk: int, ratio: float, hold: int):
        self.mapping, self.base, self.risk, self.ratio, self.hold = mapping, base, risk, ratio, hold

    def reset(self, n: int) -> None:
        self.since = np.full(n, np.iinfo(np.int64).max // 2)

    def decide(self, obs):
        from fleetpilot.policies.base import PolicyOutput

        before = obs.history.window_mean(1, 10)
        surge = obs.history.available(10) & (obs.load_tpm > self.ratio * before)
        self.since = np.where(surge, 0, self.since + 1)
        k = np.where(self.since < self.hold, self.risk, self.base)
        return PolicyOutput(self.mapping.desired(k, obs), k)


def parse_surge(text: str) -> tuple[float, int, float]:
    """One `--surge` item, RATIO:HOLD:RISK (a price of risk of the family)."""
    try:
        ratio, hold, risk = text.split(":")
        out = float(ratio), int(hold), float(risk)
    except ValueError:
        raise ValueError(f"--surge {text!r}: expected RATIO:HOLD:RISK, e.g. 1.5:15:4") from None
    if not (out[0] >= 1 and out[1] >= 1 and out[2] in RISKS):
        raise ValueError(f"--surge {text!r}: RATIO >= 1, HOLD >= 1 minutes, RISK one of {', '.join(map(str, RISKS))}")
    return out


class Leader:
    """The follow-the-leader rule as a `Policy` for `training.backtest.simulate` (which asks it once a minute):
    at each hour, the action `choose(cum, t)` picks from the fixed replays' cumulative expected rewards
    `cum` (K, N, T + 1) up to minute t; `start_action` until the first hour has passed."""

    name = "follow-the-leader"

    def __init__(self, mapping, rewards: np.ndarray, choose, start_action: int):
        self.mapping, self.choose, self.start_action = mapping, choose, start_action
        self.cum = np.concatenate([np.zeros(rewards.shape[:2] + (1,)), np.cumsum(rewards, axis=2)], axis=2)

    def reset(self, n: int) -> None:
        self.t, self.k = 0, np.full(n, self.start_action)
        self.taken: list[np.ndarray] = []  #: the action of each minute served

    def decide(self, obs):
        from fleetpilot.policies.base import PolicyOutput

        self.t += 1  # the minute about to be served
        if (self.t - 1) % 60 == 0 and self.t > 60:
            self.k = self.choose(self.cum, self.t - 1)  # rewards of the minutes served so far only
        self.taken.append(self.k)
        return PolicyOutput(self.mapping.desired(self.k, obs), self.k)


def follow(mapping, runs, rewards: np.ndarray, choose, start_action: int) -> float:
    """Expected profit (scored minutes, runs summed) of replaying `runs` with the `Leader` rule."""
    return float(replay_minutes(Leader(mapping, rewards, choose, start_action), runs).sum())


def follow_split(mapping, runs, rewards: np.ndarray, choose, rule: int) -> dict[str, float]:
    """`follow`, and where its gain over the rule (`rewards[rule]`, minute by minute) was made: in the minutes it
    held a cheaper price than the rule's, in those it held a costlier one or the fixed cautious headroom, and in
    those it held the rule's own (where it differs only by the fleet an earlier choice left)."""
    leader = Leader(mapping, rewards, choose, rule)
    mine = replay_minutes(leader, runs)
    lead = runs[0].lead
    k = np.stack(leader.taken, axis=1)[:, lead:]
    gain = mine - rewards[rule][:, lead:]
    cheaper = (k >= mapping.n_grid) & (k < rule)
    return {
        "": float(mine.sum()),
        "_gain_cheaper": float(gain[cheaper].sum()),
        "_gain_cautious": float(gain[~cheaper & (k != rule)].sum()),
        "_gain_at_rule": float(gain[k == rule].sum()),
    }


def replay(policy, runs) -> float:
    """Expected profit (scored minutes, runs summed) of replaying `runs` with `policy`."""
    return float(replay_minutes(policy, runs).sum())


def replay_minutes(policy, runs) -> np.ndarray:
    """(N, scored minutes) expected reward of replaying `runs` with `policy`."""
    from fleetpilot.sim.fleet import expected_reward
    from fleetpilot.sim.params import FleetParams
    from fleetpilot.training.backtest import simulate

    p, lead = FleetParams(), runs[0].lead
    loads = np.stack([r.load_tpm for r in runs])
    starts = np.array([r.start_minute for r in runs])
    keys = np.array([r.noise_key for r in runs], dtype=np.uint64)
    traj = simulate(policy, loads, starts, keys, p)
    return expected_reward(traj.active[:, lead:], loads[:, lead + 1 :], p)


def main(argv: list[str] | None = None) -> int:
    from fleetpilot.policies.actions import RISE_SCALES, ActionMapping
    from fleetpilot.policies.cushion import RuleActions
    from fleetpilot.sim.fleet import expected_reward
    from fleetpilot.sim.params import FleetParams
    from fleetpilot.training.backtest import backtest, simulate

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--traces", default=",".join(gen.TRACES), help="comma-separated (default: the six)")
    ap.add_argument("--trailing-minutes", default="1440", help="follow-the-leader windows, comma-separated")
    ap.add_argument("--conservative-days", default="", help="cautious variants' D, comma-separated")
    ap.add_argument("--lookahead-minutes", default="", help="the hindsight bound's look-ahead M, comma-separated")
    ap.add_argument(
        "--lookahead-delay-minutes",
        default="0",
        help="look-ahead windows start this many minutes after the hour, comma-separated (0: the next M minutes)",
    )
    ap.add_argument("--same-hour-days", default="", help="time-of-day variants' D, comma-separated")
    ap.add_argument("--same-hour-minutes", default="180", help="their W around the hour, comma-separated")
    ap.add_argument("--surge", default="", help="surge reactions RATIO:HOLD:RISK, comma-separated")
    ap.add_argument(
        "--rise-scale",
        choices=RISE_SCALES,
        default="hour",
        help="the newsvendor actions' rise scale (default hour; the shipped default prices on mixture)",
    )
    ap.add_argument("--windows", type=int, default=None, help="at most this many windows per trace")
    ap.add_argument("--window-minutes", type=int, default=10_000, help="scored minutes per window (10000)")
    ap.add_argument("--lead-minutes", type=int, default=1440, help="history before each window (a day)")
    ap.add_argument("--json", metavar="PATH", help="write the figures as one flat JSON object (TRACE_COLUMN_...)")
    args = ap.parse_args(argv)
    mapping = ActionMapping(
        utilization=(0.45,), cushion_day_max_share=(0.3,), newsvendor_risk=RISKS, newsvendor_rise_scale=args.rise_scale
    )
    rule = mapping.n_grid + RISKS.index(1.0)
    win = types.SimpleNamespace(
        window_minutes=args.window_minutes, lead_minutes=args.lead_minutes, windows=args.windows, peak_tpm=10_000.0
    )

    def minutes(option: str, text: str, least: int, most: int | None = None) -> list[int]:
        """A comma-separated list of whole numbers in [least, most], or exit 2 naming the option."""
        try:
            values = [int(x) for x in text.split(",") if x]
        except ValueError:
            ap.error(f"{option} {text!r}: expected whole numbers, comma-separated")
        bad = [v for v in values if v < least or (most is not None and v > most)]
        if bad:
            ap.error(f"{option} {bad[0]}: expected {least}" + (f"..{most}" if most is not None else " or more"))
        return values

    trailing = minutes("--trailing-minutes", args.trailing_minutes, 1)
    cautious = minutes("--conservative-days", args.conservative_days, 1)
    ahead = minutes("--lookahead-minutes", args.lookahead_minutes, 1)
    delays = minutes("--lookahead-delay-minutes", args.lookahead_delay_minutes, 0)
    same_days = minutes("--same-hour-days", args.same_hour_days, 1)
    # a window centred on the coming hour a day ago ends W / 2 + 30 minutes after that hour: at most this hour
    same_widths = minutes("--same-hour-minutes", args.same_hour_minutes, 1, 2 * (1440 - 30))
    unknown = [t for t in args.traces.split(",") if t not in gen.TRACES]
    if unknown:
        ap.error(f"--traces {unknown[0]!r}: expected some of {', '.join(gen.TRACES)}")
    try:
        surges = [parse_surge(x) for x in args.surge.split(",") if x]
    except ValueError as e:
        ap.error(str(e))
    p, out = FleetParams(), {}
    for name in args.traces.split(","):
        runs = gen.windows(name, gen.TRACE_DIR / gen.TRACES[name], win)
        n, lead, k_n = len(runs), runs[0].lead, mapping.n
        loads = np.stack([r.load_tpm for r in runs])
        starts = np.array([r.start_minute for r in runs])
        keys = np.array([r.noise_key for r in runs], dtype=np.uint64)
        acts = np.repeat(np.arange(k_n), n)
        traj = simulate(
            RuleActions(mapping, acts), np.tile(loads, (k_n, 1)), np.tile(starts, k_n), np.tile(keys, k_n), p
        )
        rewards = expected_reward(traj.active, np.tile(loads[:, 1:], (k_n, 1)), p).reshape(k_n, n, -1)
        fixed = rewards[:, :, lead:].sum(axis=2)
        oracle = sum(r["results"][0]["expected_profit_usd"] for r in backtest(runs, {"oracle": None}).runs)
        row = {"oracle": oracle, "newsvendor": float(fixed[rule].sum()), "best_fixed": float(fixed.max(axis=0).sum())}
        for m in trailing:
            row[f"trailing_{m}"] = follow(
                mapping, runs, rewards, lambda c, t, m=m: np.argmax(c[:, :, t] - c[:, :, max(0, t - m)], axis=0), rule
            )
        for d in cautious:

            def choose(c, t, d=d):
                days = np.stack([c[:, :, max(0, t - 1440 * i)] - c[:, :, max(0, t - 1440 * (i + 1))] for i in range(d)])
                ok = (days >= days[:, rule : rule + 1, :]).all(axis=0)
                return np.argmax(np.where(ok, days.sum(axis=0), -np.inf), axis=0)

            row[f"cautious_{d}_days"] = follow(mapping, runs, rewards, choose, rule)
        for m in ahead:
            for d in delays:

                def ahead_of(c, t, m=m, d=d):
                    last = c.shape[2] - 1
                    return np.argmax(c[:, :, min(last, t + d + m)] - c[:, :, min(last, t + d)], axis=0)

                col = f"lookahead_{m}" + (f"_after_{d}" if d else "")
                for part, v in follow_split(mapping, runs, rewards, ahead_of, rule).items():
                    row[col + part] = v
        for d in same_days:
            for w in same_widths:

                def same_hour(c, t, d=d, w=w):
                    # W minutes centred on the coming hour, on each of the last D days the history reaches
                    first = [a for a in (t - 1440 * i - w // 2 + 30 for i in range(1, d + 1)) if a >= 0]
                    if not first:
                        return np.full(c.shape[1], rule)
                    return np.argmax(sum(c[:, :, min(a + w, t)] - c[:, :, a] for a in first), axis=0)

                row[f"same_hour_{d}d_{w}m"] = follow(mapping, runs, rewards, same_hour, rule)
        for ratio, hold, risk in surges:
            surge = Surge(mapping, rule, mapping.n_grid + RISKS.index(risk), ratio, hold)
            row[f"surge_{ratio:g}_{hold}m_risk_{risk:g}".replace(".", "p")] = replay(surge, runs)
        key = name.replace("-", "_")
        out[f"{key}_windows"] = n
        for col, v in row.items():
            out[f"{key}_{col}_expected_profit_usd"] = round(v, 2)
            if oracle > 0:  # a share of a loss would flip the order
                out[f"{key}_{col}_pct_of_oracle"] = round(100 * v / oracle, 2)
        pct = {k: f"{100 * v / oracle:.1f}" if oracle > 0 else f"${v:,.0f}" for k, v in row.items() if k != "oracle"}
        print(f"{name} ({n} windows; oracle ${oracle:,.0f}), % of the oracle's expected profit: {pct}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
