"""The import graph (issue 11): no cycle between modules nor between the packages, and the daemon's side never
reaches the training stack. Read from the source with `ast` (imports inside functions count too)."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("controller", "policies", "sim", "training")


def _module_graph() -> dict[str, set[str]]:
    """fleetpilot module -> the fleetpilot modules it imports (a `from pkg import mod` counts as pkg.mod)."""
    files = {
        "fleetpilot." + ".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__"): p
        for pkg in PACKAGES
        for p in (REPO / pkg).rglob("*.py")
    }
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name in files}
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("fleetpilot."):
                for a in node.names:
                    sub = f"{node.module}.{a.name}"
                    deps.add(sub if sub in files else node.module)
        graph[name] = {d for d in deps if d in files and d != name}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m) :] + [m]
            if m not in state and (found := visit(m)):
                return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (found := visit(n)):
            return found
    return None


def _package(module: str) -> str:
    return module.split(".")[1]


def test_no_import_cycle_between_modules():
    graph = _module_graph()
    assert len(graph) > 40  # the walk found the code
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])


def test_no_import_cycle_between_packages():
    pkgs: dict[str, set[str]] = {p: set() for p in PACKAGES}
    for mod, deps in _module_graph().items():
        pkgs[_package(mod)] |= {_package(d) for d in deps} - {_package(mod)}
    assert _cycle(pkgs) is None, " -> ".join(_cycle(pkgs) or [])
    assert pkgs["policies"] == set()  # the bottom layer
    assert pkgs["sim"] <= {"policies"}


def test_the_daemon_imports_nothing_from_training():
    """Only the command line that assembles every subcommand knows the training side."""
    offenders = {
        (mod, dep)
        for mod, deps in _module_graph().items()
        for dep in deps
        if _package(mod) == "controller" and _package(dep) == "training" and mod != "fleetpilot.controller.cli"
    }
    assert offenders == set()


def test_one_list_of_rules():
    """Every list of rule names derives from the registry (issue 11, item 5)."""
    from fleetpilot.controller.cli import build_parser
    from fleetpilot.controller.config import RULE_POLICIES
    from fleetpilot.policies.registry import BACKTEST_BASELINES, RULE_NAMES, RULES, TRAIN_BASELINES
    from fleetpilot.training.tune import GRIDS

    assert RULE_POLICIES == RULE_NAMES == tuple(RULES)
    assert set(GRIDS) == set(RULES)
    assert set(BACKTEST_BASELINES) <= set(RULES) and set(TRAIN_BASELINES) <= set(RULES)
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    tune_policy = next(a for a in sub.choices["tune"]._actions if a.dest == "policy")
    assert tuple(tune_policy.choices) == RULE_NAMES


def test_feature_index_follows_the_names():
    """The builder writes every feature by name: feeding a load that only changes the active machines moves
    exactly the feature named `active` (and the utilization it divides)."""
    import numpy as np

    from fleetpilot.policies.observation import FEATURE_INDEX, FEATURE_NAMES, ObservationBuilder

    assert [FEATURE_INDEX[n] for n in FEATURE_NAMES] == list(range(len(FEATURE_NAMES)))
    obs = []
    for active in (10, 20):
        b = ObservationBuilder(1, 300.0, 5)
        for m in range(30):
            b.update(np.array([3000.0]), np.array([active]), np.array([0]), np.array([1000 + m]))
        obs.append(b.observation().features[0])
    moved = {FEATURE_NAMES[i] for i in np.nonzero(obs[0] != obs[1])[0]}
    assert moved == {"active", "util"}
