"""The project's modules import one another without circles, lazy and type-only imports
included: each module can be read knowing only the modules it imports."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("common", "data", "models", "inference", "evaluation", "training", "web")
# Each layer imports only from the layers before it; utils.py (losses and metrics) sits on
# common/, the entry points on everything.
LAYERS = ("common", "utils", "data", "models", "inference", "evaluation", "training", "web")
ENTRY_POINTS = ("train", "predict", "app", "hubconf")


def module_files() -> dict[str, Path]:
    files = {path.stem: path for path in ROOT.glob("*.py")}
    for package in PACKAGES:
        for path in (ROOT / package).glob("*.py"):
            files[package if path.stem == "__init__" else f"{package}.{path.stem}"] = path
    return files


def imports(path: Path, modules: set[str]) -> set[str]:
    """The project modules ``path`` imports anywhere in it (top level, functions,
    ``TYPE_CHECKING`` blocks)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for alias in node.names:
                name = f"{node.module}.{alias.name}"
                found.add(name if name in modules else node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found & modules


def cycle_from(start: str, graph: dict[str, set[str]]) -> list[str] | None:
    """A path of imports from ``start`` back to it, or ``None``."""
    stack, seen = [(start, [start])], set()
    while stack:
        node, path = stack.pop()
        for nxt in graph[node]:
            if nxt == start:
                return [*path, start]
            if nxt not in seen:
                seen.add(nxt)
                stack.append((nxt, [*path, nxt]))
    return None


def test_no_import_circles() -> None:
    files = module_files()
    graph = {name: imports(path, set(files)) - {name} for name, path in files.items()}
    circles = [" -> ".join(cycle) for name in sorted(graph)
               if (cycle := cycle_from(name, graph)) is not None]
    assert not circles, circles


def test_the_check_finds_a_circle() -> None:
    assert cycle_from("a", {"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert cycle_from("a", {"a": {"b"}, "b": set()}) is None


def layer_of(module: str) -> int | None:
    """The place of ``module``'s package in :data:`LAYERS`; ``None`` for an entry point."""
    package = module.split(".")[0]
    return LAYERS.index(package) if package in LAYERS else None


def test_no_module_imports_from_a_layer_above_it_or_from_an_entry_point() -> None:
    files = module_files()
    upward = []
    for name, path in files.items():
        if layer_of(name) is None:
            continue
        for imported in imports(path, set(files)) - {name}:
            above = layer_of(imported)
            if above is None or above > layer_of(name):
                upward.append(f"{name} -> {imported}")
    assert not upward, upward


def test_entry_points_do_not_import_one_another() -> None:
    files = module_files()
    crossing = [f"{name} -> {imported}" for name in ENTRY_POINTS
                for imported in imports(files[name], set(files)) & set(ENTRY_POINTS) - {name}]
    assert crossing == [], crossing
