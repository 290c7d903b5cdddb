"""The house's shape, read from the source with `ast`: which top-level part imports which (each part only
looks down, no cycles), and what the service reaches inside `nanochat/` (the engine core, never training,
data, evaluation or the CLI)."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PARTS = (
    "app", "nanochat", "tracks", "bench", "infra", "modules", "alerts", "dashboards", "loadtest", "design",
)  # fmt: skip
# part -> the parts it may import. `app.contract` (plain constants) is what infra, modules, alerts,
# dashboards and loadtest read of the app; `tracks` reads the service's classifier registry.
ALLOWED = {
    "app": {"nanochat"},
    "nanochat": set(),
    "tracks": {"nanochat", "app"},
    "bench": {"nanochat", "app"},
    "infra": {"modules", "app"},
    "modules": {"app"},
    "alerts": {"app", "loadtest", "modules"},
    "dashboards": {"alerts", "app", "loadtest"},
    "loadtest": {"app"},
    "design": {"alerts", "loadtest"},
}
# what the service may use of `nanochat/` at run time: the engine core
NOT_CORE = ("nanochat.train", "nanochat.data", "nanochat.eval", "nanochat.cli", "nanochat.bench")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Absolute module names `path` imports (at any depth: lazy imports count too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def source_files() -> dict[str, Path]:
    return {module_name(f): f for part in PARTS for f in (ROOT / part).rglob("*.py")}


def part_graph(files: dict[str, Path]) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in files.items():
        part = name.split(".")[0]
        for imported in imports(path):
            top = imported.split(".")[0]
            if top in PARTS and top != part:
                graph[part].add(top)
    return graph


def reachable(start: set[str], files: dict[str, Path]) -> set[str]:
    """Every project module `start` reaches through imports (a module also reaches its packages)."""
    seen: set[str] = set()
    todo = [m for m in start if m in files]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for imported in imports(files[name]):
            parts = imported.split(".")
            for i in range(1, len(parts) + 1):  # nanochat.engine.Engine -> nanochat, nanochat.engine
                candidate = ".".join(parts[:i])
                if candidate in files and candidate not in seen:
                    todo.append(candidate)
    return seen


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path, node, nxt]
            if nxt not in state and (found := visit(nxt, [*path, node])):
                return found
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node, [])):
            return found
    return None


@pytest.fixture(scope="module")
def files() -> dict[str, Path]:
    return source_files()


def test_each_part_imports_only_the_parts_below_it(files) -> None:
    graph = part_graph(files)
    unexpected = {part: sorted(graph[part] - ALLOWED[part]) for part in PARTS if graph[part] - ALLOWED[part]}
    assert not unexpected, f"imports across the layout that the architecture does not allow: {unexpected}"
    assert cycle(graph) is None, f"an import cycle between parts: {' -> '.join(cycle(graph) or [])}"


def test_the_service_reaches_only_the_engine_core(files) -> None:
    served = reachable({name for name in files if name.split(".")[0] == "app"}, files)
    outside = sorted(
        m for m in served if any(m == p or m.startswith(f"{p}.") for p in NOT_CORE) or m.startswith("tracks")
    )
    assert not outside, f"the service imports training, data, evaluation, CLI or track code: {outside}"
    assert {"nanochat.backend", "nanochat.engine", "nanochat.checkpoint"} <= served  # the check sees imports


def test_the_checks_see_a_forbidden_import(tmp_path) -> None:
    """The graph and the cycle finder on a made-up case: an edge the table forbids, and a cycle."""
    graph = {"nanochat": {"app"}, "app": {"nanochat"}}
    assert graph["nanochat"] - ALLOWED["nanochat"] == {"app"}
    assert cycle(graph) == ["app", "nanochat", "app"]
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from nanochat.train import base\n")
    assert "nanochat.train" in imports(module)  # a lazy import counts
