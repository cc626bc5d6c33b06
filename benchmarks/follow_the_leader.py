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

RISKS = (0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 10.0)


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

    def decide(self, obs):
        from fleetpilot.policies.base import PolicyOutput

        self.t += 1  # the minute about to be served
        if (self.t - 1) % 60 == 0 and self.t > 60:
            self.k = self.choose(self.cum, self.t - 1)  # rewards of the minutes served so far only
        return PolicyOutput(self.mapping.desired(self.k, obs), self.k)


def follow(mapping, runs, rewards: np.ndarray, choose, start_action: int) -> float:
    """Expected profit (scored minutes, runs summed) of replaying `runs` with the `Leader` rule."""
    from fleetpilot.sim.fleet import expected_reward
    from fleetpilot.sim.params import FleetParams
    from fleetpilot.training.backtest import simulate

    p, lead = FleetParams(), runs[0].lead
    loads = np.stack([r.load_tpm for r in runs])
    starts = np.array([r.start_minute for r in runs])
    keys = np.array([r.noise_key for r in runs], dtype=np.uint64)
    traj = simulate(Leader(mapping, rewards, choose, start_action), loads, starts, keys, p)
    return float(expected_reward(traj.active[:, lead:], loads[:, lead + 1 :], p).sum())


def main(argv: list[str] | None = None) -> int:
    from fleetpilot.policies.actions import ActionMapping
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
    ap.add_argument("--windows", type=int, default=None, help="at most this many windows per trace")
    ap.add_argument("--window-minutes", type=int, default=10_000, help="scored minutes per window (10000)")
    ap.add_argument("--lead-minutes", type=int, default=1440, help="history before each window (a day)")
    ap.add_argument("--json", metavar="PATH", help="write the figures as one flat JSON object (TRACE_COLUMN_...)")
    args = ap.parse_args(argv)
    mapping = ActionMapping(utilization=(0.45,), cushion_day_max_share=(0.3,), newsvendor_risk=RISKS)
    rule = mapping.n_grid + RISKS.index(1.0)
    win = types.SimpleNamespace(
        window_minutes=args.window_minutes, lead_minutes=args.lead_minutes, windows=args.windows, peak_tpm=10_000.0
    )
    trailing = [int(x) for x in args.trailing_minutes.split(",") if x]
    cautious = [int(x) for x in args.conservative_days.split(",") if x]
    ahead = [int(x) for x in args.lookahead_minutes.split(",") if x]
    delays = [int(x) for x in args.lookahead_delay_minutes.split(",") if x]
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

                row[f"lookahead_{m}" + (f"_after_{d}" if d else "")] = follow(mapping, runs, rewards, ahead_of, rule)
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
