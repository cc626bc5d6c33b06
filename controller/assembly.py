"""The assembly step: a config (plus anything injected by tests or embedders) becomes the daemon's groups, its
clock and its batches with their policies. Nothing here runs a tick."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from fleetpilot.controller import guards
from fleetpilot.controller.backends.base import Backend
from fleetpilot.controller.clock import Clock, SimulatedClock, WallClock
from fleetpilot.controller.config import ConfigError, DaemonConfig, GroupConfig
from fleetpilot.controller.runtime import Batch, GroupRuntime, fallback_key, params_key
from fleetpilot.controller.sources.base import MetricSource
from fleetpilot.policies.base import Policy

log = logging.getLogger("fleetpilot.daemon")


def limits_of(g: GroupConfig) -> guards.Limits:
    return guards.Limits(
        min_machines=g.min_machines,
        max_machines=g.max_machines,
        max_scale_out_per_tick=g.max_scale_out_per_tick,
        max_scale_in_per_tick=g.max_scale_in_per_tick,
        scale_in_stabilization_minutes=g.scale_in_stabilization_minutes,
        block_scale_in_while_warming=g.block_scale_in_while_warming,
        bad_data_ticks_before_fallback=g.bad_data_ticks_before_fallback,
        paused=g.paused,
        max_load_tpm=g.load_ceiling_tpm,
    )


def _made(factory: Callable[[GroupConfig], Any], g: GroupConfig, i: int, part: str) -> Any:
    """A source or backend, or a ConfigError naming the group's field (e.g. a trace that cannot be read)."""
    try:
        return factory(g)
    except (ValueError, OSError, RuntimeError, ImportError) as exc:
        kind = getattr(g, part).kind  # `part` is "source" or "backend"
        raise ConfigError(f"groups[{i}].{part} ({kind}): cannot be set up: {str(exc).splitlines()[0]}") from None


def make_groups(
    cfg: DaemonConfig, sources: list[MetricSource] | None = None, backends: list[Backend] | None = None
) -> list[GroupRuntime]:
    """The groups with their sources and backends: the injected ones, or made from the config."""
    from fleetpilot.controller.factory import make_backend, make_source

    if sources is None:
        sources = [_made(make_source, g, i, "source") for i, g in enumerate(cfg.groups)]
    if backends is None:
        backends = [_made(make_backend, g, i, "backend") for i, g in enumerate(cfg.groups)]
    return [
        GroupRuntime(g, s, b, limits_of(g), index=i)
        for i, (g, s, b) in enumerate(zip(cfg.groups, sources, backends, strict=False))
    ]


def default_clock(cfg: DaemonConfig, groups: list[GroupRuntime]) -> Clock:
    """The wall clock, or with simulator/CSV sources the simulated clock. All replays then run in lockstep
    from the first group's natural start (synthetic: a Monday 00:00 UTC; CSV: the trace's first timestamp); the
    other replays are re-timed to start there too."""
    if not cfg.simulated_clock:
        return WallClock()
    start = int(groups[0].source.start_minute)  # a replay source (the config checked it)
    for g in groups:
        g.source.start_minute = start
    return SimulatedClock(start)


def load_policy(spec: str, params: dict[str, Any]) -> tuple[Policy | None, str | None]:
    """The policy of a batch. `default` before the shipped model exists is the one tolerated failure: its groups
    run on their fallback rule (logged, counted as fallbacks with cause `model_unavailable`). Any other policy
    that cannot be made is a user error (PolicyError/ModelError: one line, exit 2)."""
    from fleetpilot.policies.registry import RULES, PolicyError, make_policy, shipped_models

    if spec not in RULES and spec != "default" and spec not in shipped_models() and not Path(spec).exists():
        # a model path that is not there: never let the registry fall back to its parent directory
        raise PolicyError(f"policy {spec}: no such model directory")
    if spec == "default" and "default" not in shipped_models():
        try:
            return make_policy(spec, params or None), None
        except PolicyError as exc:
            return None, str(exc)
    return make_policy(spec, params or None), None


def make_batches(
    groups: list[GroupRuntime], policies: Mapping[str, Policy] | None = None, directory: Path | None = None
) -> list[Batch]:
    """Groups sharing a policy spec, its parameters and the warm-up, each batch with its policy: the injected one
    for its spec (`policies`, by the groups' `policy` field), else loaded. Sets each group's batch and row.
    `directory`: where the batches keep their load history in files (see `Batch`); None: in memory."""
    from fleetpilot.policies.registry import make_policy

    members: dict[tuple, list[GroupRuntime]] = {}
    for g in groups:
        members.setdefault((g.cfg.policy, params_key(g.cfg.policy_params), g.cfg.warmup_minutes), []).append(g)
    injected = dict(policies or {})
    shared = [spec for spec in injected if sum(gs[0].cfg.policy == spec for gs in members.values()) > 1]
    if shared:
        raise ValueError(f"an injected policy would serve several batches: {shared}")
    batches = []
    for gs in members.values():
        fallbacks: dict[str, Policy] = {}
        for g in gs:
            if (key := fallback_key(g.cfg)) not in fallbacks:
                fallbacks[key] = make_policy(g.cfg.fallback_policy, g.cfg.fallback_policy_params)
                fallbacks[key].reset(len(gs))
        first = gs[0].cfg
        b = Batch(first.policy, dict(first.policy_params), first.warmup_minutes, gs, fallbacks, directory)
        for row, g in enumerate(gs):
            g.batch, g.row = b, row
        if b.spec in injected:
            b.set_policy(injected[b.spec])
        else:
            b.set_policy(*load_policy(b.spec, b.params))
        _log_policy(b)
        batches.append(b)
    return batches


def _log_policy(b: Batch) -> None:
    names = [g.name for g in b.groups]
    if b.policy is None:
        log.error(
            "policy cannot be loaded; its groups run on their fallback rule",
            extra={
                "policy": b.spec,
                "error": b.policy_error,
                "groups": names[:20],
                "fallback": sorted({g.cfg.fallback_policy for g in b.groups}),
            },
        )
    else:
        log.info(
            "policy loaded",
            extra={
                "policy": b.spec,
                "kind": type(b.policy).__name__,
                "providers": b.policy.providers,
                "groups": len(names),
            },
        )
