"""A decision journal row for tests: one group's decision at one minute, every field filled, any overridden."""

from __future__ import annotations

from fleetpilot.controller.journal import JournalRow


def journal_row(name: str, minute: int, load: float | None = 1000.0, final: int | None = 5, **over) -> JournalRow:
    d = dict(
        wall_time="2026-01-01T00:00:00+00:00",
        tick=0,
        minute=minute,
        group_name=name,
        policy="target-tracking",
        action="policy",
        data_status="ok" if load is not None else "nan",
        load_tpm=load,
        load_minute=minute - 1,
        active=4,
        warming=1,
        desired_before=5,
        raw_action=final,
        policy_desired=final,
        fallback_desired=None,
        recommendation=final,
        guards=[],
        final=final,
        outcome="unchanged",
    )
    d.update(over)
    return JournalRow(**d)
