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
