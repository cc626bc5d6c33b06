"""Grid search of a rule's parameters by expected profit on given loads (reproduces the shipped defaults).

`fleetpilot tune --policy target-tracking --synthetic --seeds 0..9 --minutes 10000` prints the best parameters
and their expected profit; the defaults in `policies/*.py` are the results of these commands (README).
Tuning seeds (0..9) are disjoint from the evaluation seeds (1000..1009, 2000..2009).
"""

from __future__ import annotations

import functools
import itertools
import math
from typing import Any

from fleetpilot.policies.registry import make_policy
from fleetpilot.training.backtest import Run, backtest
from fleetpilot.training.progress import Progress

GRIDS: dict[str, dict[str, list[Any]]] = {
    "static": {"machines": [20, 25, 30, 35, 40, 45, 50]},
    "target-tracking": {
        "target_utilization": [0.55, 0.6, 0.62, 0.65, 0.68, 0.7, 0.75],
        "scale_in_tolerance": [0.0, 0.05, 0.1, 0.2],
        "scale_in_cooldown_minutes": [0, 5, 15],
    },
    "predictive": {
        "target_utilization": [0.6, 0.62, 0.65, 0.68],
        "scale_in_tolerance": [0.0, 0.05],
        "scale_in_cooldown_minutes": [0],
        "trend_minutes": [30, 60],
    },
    "forecast": {
        "target_utilization": [0.6, 0.65, 0.7, 0.75, 0.8],
        "quantile": [0.5, 0.75, 0.9, 0.95],
        "scale_in_tolerance": [0.0, 0.05],
    },
    "cushion": {
        "utilization": [0.66, 0.68, 0.7, 0.72, 0.74, 0.76, 0.78, 0.8, 0.82, 0.84],
        "cushion_day_max_share": [0.06, 0.08, 0.1, 0.12, 0.14, 0.16, 0.18, 0.2, 0.22, 0.24],
    },
    # the newsvendor's other parameters are the business objective, not knobs: only its risk multiplier is tuned
    "newsvendor": {"risk": [0.25, 0.5, 1.0, 2.0, 4.0]},
    "step": {
        "scale_out_steps": [
            [(0.85, 50.0), (0.70, 25.0), (0.62, 10.0)],
            [(0.8, 40.0), (0.7, 20.0), (0.6, 10.0)],
            [(0.9, 60.0), (0.75, 30.0), (0.65, 10.0)],
        ],
        "scale_in_steps": [[(0.30, 30.0), (0.45, 10.0)], [(0.35, 20.0), (0.5, 5.0)], [(0.4, 20.0), (0.5, 10.0)]],
        "scale_in_cooldown_minutes": [0, 5, 10],
    },
}


def grid_points(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Every combination of the grid's values, as parameter dicts (the first key varies slowest)."""
    keys = list(grid)
    return [dict(zip(keys, v, strict=True)) for v in itertools.product(*(grid[k] for k in keys))]


#: Fleets (grid points x runs) one task replays together: `backtest` replays a task's points with one observation
#: builder for the runs (`training.backtest.simulate_many`), the most of a grid's cost for the simple rules.
FLEETS_PER_TASK = 512
#: A grid is split into at least this many tasks (when it has as many points), for the fan-out to share out.
MIN_TASKS = 4


def point_chunks(points: list[dict[str, Any]], runs: int) -> list[list[dict[str, Any]]]:
    """`points` in order, as the tasks that score them: at most FLEETS_PER_TASK // runs points a task, and at
    least MIN_TASKS tasks when there are as many points."""
    size = max(1, min(FLEETS_PER_TASK // max(runs, 1), math.ceil(len(points) / MIN_TASKS)))
    return [points[i : i + size] for i in range(0, len(points), size)]


def grid_scores(
    policy: str, runs: list[Run], grid: dict[str, list[Any]] | None = None, ray_address: str | None = None
) -> list[tuple[dict[str, Any], list[dict]]]:
    """Every point of `policy`'s grid (GRIDS, or `grid`) with its per-run results on `runs` (expected profit,
    downtime minutes...), for choosing per run or per subset of runs from one pass over the grid. The points are
    scored a few at a time (`point_chunks`), each chunk one task of `training.fanout.map_tasks` (Ray tasks with
    `ray_address`); the rows come back in the grid's order."""
    from fleetpilot.training.fanout import map_tasks, values

    chunks = point_chunks(grid_points(grid or GRIDS[policy]), len(runs))
    done = values(map_tasks(functools.partial(chunk_rows, policy, runs), chunks, ray_address), f"grid {policy}")
    return [row for chunk in done for row in chunk]


def chunk_rows(policy: str, runs: list[Run], chunk: list[dict[str, Any]]) -> list[tuple[dict[str, Any], list[dict]]]:
    """Grid points with their per-run results, replayed together: one fan-out task of `grid_scores`."""
    report = backtest(runs, {str(i): make_policy(policy, params) for i, params in enumerate(chunk)})
    return [(params, [dict(r["results"][i], policy=policy) for r in report.runs]) for i, params in enumerate(chunk)]


def score_chunk(policy: str, runs: list[Run], chunk: list[dict[str, Any]]) -> list[tuple[float, int, dict[str, Any]]]:
    """(expected profit, downtime minutes, params) of grid points summed over `runs`, replayed together: one
    fan-out task of `tune`."""
    summary = backtest(runs, {str(i): make_policy(policy, params) for i, params in enumerate(chunk)}).summary
    return [(s["expected_profit_usd"], s["downtime_minutes"], params) for s, params in zip(summary, chunk, strict=True)]


def tune(policy: str, runs: list[Run], ray_address: str | None = None, progress: bool = False) -> dict[str, Any]:
    """The grid point with the highest expected profit summed over `runs`, and the runner-up figures.
    The points are scored a few at a time (`point_chunks`), each chunk one task of `training.fanout.map_tasks`
    (Ray tasks with `ray_address`). `progress`: a progress bar (a terminal) or lines with an ETA (otherwise) on
    stderr, counting grid points as each chunk ends."""
    from fleetpilot.training.fanout import map_tasks, values

    points = grid_points(GRIDS[policy])
    chunks = point_chunks(points, len(runs))
    bar = Progress(len(points), f"tune {policy}", "points") if progress else None
    best: list[float] = []

    def on_done(i: int, outcome: Any) -> None:
        if bar is None:
            return
        if outcome.ok:
            best[:] = [max([*best, *(e for e, _, _ in outcome.value)])]
        bar.update(len(chunks[i]), postfix=f"best E[profit] ${best[0]:,.0f}" if best else None)

    try:
        done = values(map_tasks(functools.partial(score_chunk, policy, runs), chunks, ray_address, on_done), "tune")
        scored = [x for chunk in done for x in chunk]
    finally:
        if bar is not None:
            bar.close()
    scored.sort(key=lambda x: -x[0])
    best = scored[0]
    # the profit/downtime frontier: points no other point beats on both (most profitable first)
    frontier, fewest = [], None
    for e, d, p in scored:
        if fewest is None or d < fewest:
            frontier.append({"params": p, "expected_profit_usd": e, "downtime_minutes": d})
            fewest = d
    return {
        "policy": policy,
        "params": best[2],
        "expected_profit_usd": best[0],
        "downtime_minutes": best[1],
        "grid_points": len(scored),
        "top5": [{"params": p, "expected_profit_usd": e, "downtime_minutes": d} for e, d, p in scored[:5]],
        "frontier": frontier,
    }
