"""The `sora2` command's layout: `sora2.cli` is a leaf, and the package has no import cycle."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import sora2

PACKAGE_ROOT = Path(sora2.__file__).parent


def _import_graph() -> dict[str, set[str]]:
    """Module → the package's modules it imports, at module level or inside functions alike."""
    modules = {}
    for path in PACKAGE_ROOT.rglob("*.py"):
        parts = path.relative_to(PACKAGE_ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for alias in node.names:
                    submodule = f"{node.module}.{alias.name}"
                    target = submodule if submodule in modules else node.module
                    if target in modules:
                        graph[name].add(target)
            elif isinstance(node, ast.Import):
                graph[name].update(alias.name for alias in node.names if alias.name in modules)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_only_the_entry_point_imports_the_cli() -> None:
    graph = _import_graph()
    assert sorted(name for name, targets in graph.items() if "sora2.cli" in targets) == [
        "sora2.__main__"
    ]


def test_the_package_has_no_import_cycle() -> None:
    assert _cycles(_import_graph()) == []


def _sora2(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sora2", *args], capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize("value", ["0", "-2", "many"])
def test_serve_refuses_a_worker_count_that_is_not_a_positive_number(value: str) -> None:
    result = _sora2("serve", "api", "--workers", value)
    assert result.returncode == 2
    assert "--workers" in result.stderr


def test_serve_worker_explains_that_workers_are_separate_processes() -> None:
    result = _sora2("serve", "worker", "--workers", "2")
    assert result.returncode == 2
    assert "once per worker process" in result.stderr
