"""The layers import only downwards, and no module imports itself back through others.

    chimed.py (command line, the loop)  >  app  >  preference_store  >  training

Every import is read from the source, function-local ones included, so a lazy import cannot hide a loop.
preference_store may read the config, the user-error type and the stage registry of training (declarations)
and the readers of the packaged sources (de-identification protects CMeKG's names), never its training code.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = {"training": 0, "preference_store": 1, "app": 2, "chimed": 3}
STORE_MAY_READ = {"training.config", "training.errors", "training.stages.registry", "training.data.sources"}


def project_modules() -> dict[str, Path]:
    files = {"chimed": ROOT / "chimed.py"}
    for package in ("training", "preference_store", "app"):
        for path in (ROOT / package).rglob("*.py"):
            if "migrations" in path.parts:  # Alembic's scripts, run by Alembic only
                continue
            parts = path.relative_to(ROOT).with_suffix("").parts
            files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return files


def imports_of(path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules ``path`` imports anywhere in its source (``from a import b``: ``a.b`` if a module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [
                f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in modules else node.module
                for alias in node.names
            ]
        else:
            continue
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name and name.split(".")[0] in LAYERS and modules[name].name != "__init__.py":
                found.add(name)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {name: imports_of(path, modules) - {name} for name, path in modules.items()}


def test_imports_only_point_down():
    wrong = []
    for module, imported in import_graph().items():
        layer = LAYERS[module.split(".")[0]]
        for target in imported:
            target_layer = LAYERS[target.split(".")[0]]
            if target_layer > layer:
                wrong.append(f"{module} imports {target} (a higher layer)")
            elif module.startswith("preference_store") and target_layer == 0 and target not in STORE_MAY_READ:
                wrong.append(f"{module} imports {target} (training code)")
    assert not wrong, "\n".join(sorted(wrong))


def test_no_module_imports_itself_back():
    graph = import_graph()
    cycles = [component for component in strongly_connected(graph) if len(component) > 1]
    assert not cycles, "import loops: " + "; ".join(" <-> ".join(sorted(c)) for c in cycles)


def test_the_layer_check_would_see_a_lazy_import_upwards(tmp_path):
    """The checker itself: a function-local import of the store inside training is found."""
    path = tmp_path / "module.py"
    path.write_text("def f():\n    from preference_store.export import export_pairs\n", encoding="utf-8")
    assert imports_of(path, project_modules()) == {"preference_store.export"}


def strongly_connected(graph: dict[str, set[str]]) -> list[set[str]]:
    """Tarjan's strongly connected components."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            out.append(component)

    for node in graph:
        if node not in index:
            visit(node)
    return out
