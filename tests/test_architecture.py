"""The package's shape (docs/ARCHITECTURE.md): no import cycle, lazy imports included; no private
name imported across modules; the method never imports the fast paths or the experiments; only the
CLI, among the core, reaches into the experiments."""

from __future__ import annotations

import ast
from pathlib import Path

LIB = Path(__file__).resolve().parents[1] / "lib"


def _modules() -> dict[str, Path]:
    out = {}
    for path in (LIB / "ctxstyle").rglob("*.py"):
        parts = list(path.relative_to(LIB).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(modules: dict[str, Path]) -> dict[str, set[tuple[str, str]]]:
    """Per module: (imported module, imported name) for every ctxstyle import, at any depth."""
    out = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
                target = ".".join(base + ([node.module] if node.module else [])) if node.level else node.module
                if target and target.split(".")[0] == "ctxstyle":
                    for alias in node.names:
                        sub = f"{target}.{alias.name}"
                        found.add((sub, "") if sub in modules else (target, alias.name))
            elif isinstance(node, ast.Import):
                found |= {(a.name, "") for a in node.names if a.name.split(".")[0] == "ctxstyle"}
        out[name] = {(m, n) for m, n in found if m != name}
    return out


def _graph():
    modules = _modules()
    return modules, {m: {t for t, _ in edges if t in modules} for m, edges in _imports(modules).items()}


def test_no_import_cycle_lazy_imports_included():
    _, graph = _graph()
    state: dict[str, int] = {}

    def visit(node, stack):
        state[node] = 1
        for nxt in graph[node]:
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for node in graph:
        if node not in state:
            visit(node, [node])


def test_no_private_name_imported_across_modules():
    modules = _modules()
    private = sorted((m, f"{t}.{n}") for m, edges in _imports(modules).items() for t, n in edges
                     if n.startswith("_") and n != "__version__")
    assert private == []


def test_layers_import_only_downwards():
    _, graph = _graph()

    def reaches(src_prefix, dst_prefix):
        return sorted((m, t) for m, ts in graph.items() if m.startswith(src_prefix)
                      for t in ts if t.startswith(dst_prefix))

    assert reaches("ctxstyle.method", "ctxstyle.fast") == []
    assert reaches("ctxstyle.method", "ctxstyle.experiments") == []
    assert reaches("ctxstyle.fast", "ctxstyle.experiments") == []
    assert reaches("ctxstyle.backbones", "ctxstyle.experiments") == []
    assert reaches("ctxstyle.data", "ctxstyle.experiments") == []
    assert reaches("ctxstyle.metrics", "ctxstyle.experiments") == []
    outside = {m for m, t in reaches("ctxstyle", "ctxstyle.experiments") if not m.startswith("ctxstyle.experiments")}
    assert outside == {"ctxstyle.cli"}
    assert {t for ts in graph["ctxstyle.method.function"] | graph["ctxstyle.method.net"] for t in [ts]} <= {
        "ctxstyle.errors", "ctxstyle.method.function"}
