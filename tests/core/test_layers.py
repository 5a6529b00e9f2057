"""The layers import only downwards, and no module imports itself back through others.

    chimed.py (command line, the loop)  >  app  >  training, preference_store  >  core

training and preference_store share a floor: neither imports the other (the store's exports reach training as
files). Inside every package the same holds for its rooms (its modules and subpackages): the graph between
them has no circle, so they stack in floors with no arrow running back up. Every import is read from the
source, function-local ones included, so a lazy import cannot hide a loop; an import of a package counts as an
import of that package (its ``__init__``), and a package's ``__init__`` may import its own rooms.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LAYERS = {"core": 0, "training": 1, "preference_store": 1, "app": 2, "chimed": 3}


def project_modules() -> dict[str, Path]:
    files = {"chimed": ROOT / "chimed.py"}
    for package in ("core", "training", "preference_store", "app"):
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
            if name and name.split(".")[0] in LAYERS:
                found.add(name)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {name: imports_of(path, modules) - {name} for name, path in modules.items()}


def test_imports_only_point_down():
    wrong = []
    for module, imported in import_graph().items():
        package = module.split(".")[0]
        for target in imported:
            other = target.split(".")[0]
            if other != package and LAYERS[other] >= LAYERS[package]:
                wrong.append(
                    f"{module} imports {target} ({'the same floor' if LAYERS[other] == LAYERS[package] else 'a higher floor'})"
                )
    assert not wrong, "\n".join(sorted(wrong))


def rooms(graph: dict[str, set[str]], package: str) -> dict[str, set[str]]:
    """The imports between the rooms of ``package`` (its direct modules and subpackages), its own
    ``__init__`` left out (a package's front door may import its rooms)."""
    depth = package.count(".") + 1
    out: dict[str, set[str]] = {}
    for module, imported in graph.items():
        if not module.startswith(package + "."):
            continue
        room = module.split(".")[depth]
        for target in imported:
            if target.startswith(package + ".") and target.split(".")[depth] != room:
                out.setdefault(room, set()).add(target.split(".")[depth])
    return out


def packages(graph: dict[str, set[str]]) -> list[str]:
    return sorted({".".join(m.split(".")[:i]) for m in graph for i in range(1, m.count(".") + 1)})


def test_the_rooms_of_every_package_stack_in_floors():
    """No circle between the rooms of any package, at any depth (no arrow back up inside a package)."""
    graph = import_graph()
    circles = []
    for package in packages(graph):
        links = rooms(graph, package)
        for component in strongly_connected(links):
            if len(component) > 1:
                arrows = sorted(f"{a} -> {b}" for a in component for b in links.get(a, ()) if b in component)
                circles.append(f"{package}: " + ", ".join(arrows))
    assert not circles, "rooms that import each other:\n" + "\n".join(circles)


def test_the_room_check_would_see_a_circle():
    graph = {"p.a.x": {"p.b"}, "p.b": {"p.a.y"}, "p.a.y": set(), "p.c": {"p.a.x"}}
    assert rooms(graph, "p") == {"a": {"b"}, "b": {"a"}, "c": {"a"}}
    assert [c for c in strongly_connected(rooms(graph, "p")) if len(c) > 1] == [{"a", "b"}]


def test_no_module_imports_itself_back():
    graph = import_graph()
    cycles = [component for component in strongly_connected(graph) if len(component) > 1]
    assert not cycles, "import loops: " + "; ".join(" <-> ".join(sorted(c)) for c in cycles)


def test_the_layer_check_would_see_a_lazy_import_upwards(tmp_path):
    """The checker itself: a function-local import of the store inside training is found."""
    path = tmp_path / "module.py"
    path.write_text("def f():\n    from preference_store.exports.pairs import export_pairs\n", encoding="utf-8")
    assert imports_of(path, project_modules()) == {"preference_store.exports.pairs"}


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
