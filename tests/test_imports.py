"""Import discipline between the package's rooms: no cycle between them, and report/ stays torch-free.

A room is a top-level package of othink_mr1 (data, models, methods, rewards, evaluation, report, jobs,
utils), a top-level module (runner, config_checks, preflight, budget, config, naming, grid, ...), or the
Hydra plugins under src/hydra_plugins (one room). The layering they keep is utils/data/rewards at the
bottom, models and evaluation above them, methods above those, jobs above methods, and runner/preflight on
top. A cycle between rooms means one of them reaches up: it is found statically here (every `import` /
`from ... import` in a file, module-level or inside a function, relative or absolute, and every
`importlib.import_module` of a name the code spells out, `f"{__package__}.methods.{name}"` included), so
neither a function-level import nor a load by name can hide it the way they hide from Python.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "othink_mr1"
NAME = PACKAGE.name
PLUGINS = PACKAGE.parent / "hydra_plugins"
PLUGIN_ROOM = "hydra_plugins"

# Known cycles tolerated while they are being removed: (importing room, imported room) -> why. The
# cycle test drops these edges and fails on any other cycle; the stale test fails once an entry no
# longer closes a cycle, so the list only shrinks. Empty: the committed rooms form no cycle (the last
# one, models <-> methods through the tiny_base build, went with its move to jobs/).
ALLOWED_EDGES: dict[tuple[str, str], str] = {}

Edges = dict[tuple[str, str], list[str]]


def room_of(parts: list[str]) -> str | None:
    """The room of a dotted module path inside the project (None outside it, or for the package itself)."""
    if parts and parts[0] == PLUGIN_ROOM:
        return PLUGIN_ROOM
    return parts[1] if len(parts) > 1 and parts[0] == NAME else None


def imported_modules(node: ast.AST, package: list[str]) -> list[list[str]]:
    """The dotted paths an import statement (or an importlib.import_module call) names, relative ones
    resolved against `package`."""
    if isinstance(node, ast.Call):
        return [loaded] if (loaded := loaded_by_name(node, package)) else []
    if isinstance(node, ast.Import):
        return [alias.name.split(".") for alias in node.names]
    if not isinstance(node, ast.ImportFrom):
        return []
    base = package[:len(package) - node.level + 1] if node.level else []
    module = base + (node.module.split(".") if node.module else [])
    # `from . import config` / `from othink_mr1 import jobs`: the names are the modules.
    return [module + [alias.name] for alias in node.names] if module == [NAME] else [module]


def loaded_by_name(call: ast.Call, package: list[str]) -> list[str] | None:
    """The module path an `importlib.import_module(...)` call names, as far as the code spells it out: a
    string, or an f-string's text up to its first value other than `__package__` (which is `package`)."""
    func = call.func
    name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
    if name != "import_module" or not call.args:
        return None
    arg, text = call.args[0], ""
    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
        text = arg.value
    elif isinstance(arg, ast.JoinedStr):
        for part in arg.values:
            if isinstance(part, ast.Constant):
                text += str(part.value)
            elif isinstance(part, ast.FormattedValue) and isinstance(part.value, ast.Name) and part.value.id == "__package__":
                text += ".".join(package)
            else:
                text = text.rsplit(".", 1)[0] if "." in text else ""  # the spelled-out part: whole names only
                break
    return [p for p in text.split(".") if p] or None


def room_edges(package_dir: Path = PACKAGE, plugins_dir: Path | None = PLUGINS) -> Edges:
    """(importing room, imported room) -> the `file:line`s of the imports that make that edge."""
    edges: Edges = defaultdict(list)
    paths = sorted(package_dir.rglob("*.py")) + (sorted(plugins_dir.rglob("*.py")) if plugins_dir else [])
    for path in paths:
        parts = list(path.relative_to(package_dir.parent).with_suffix("").parts)  # the plugins sit beside the package
        package = parts[:-1]  # for __init__.py too: its own package is the one it initialises
        source = room_of(parts) or "__init__"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            for target in imported_modules(node, package):
                room = room_of(target)
                if room is not None and room != source:
                    edges[(source, room)].append(f"{path.relative_to(package_dir.parent.parent)}:{node.lineno}")
    return dict(edges)


def cyclic_groups(edges: Edges) -> list[set[str]]:
    """The strongly connected groups of rooms (Tarjan): every room in one reaches every other."""
    graph: dict[str, set[str]] = defaultdict(set)
    for a, b in edges:
        graph[a].add(b)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[set[str]] = []

    def visit(room: str) -> None:
        index[room] = low[room] = len(index)
        stack.append(room)
        for nxt in sorted(graph[room]):
            if nxt not in index:
                visit(nxt)
                low[room] = min(low[room], low[nxt])
            elif nxt in stack:
                low[room] = min(low[room], index[nxt])
        if low[room] == index[room]:
            group = set()
            while True:
                member = stack.pop()
                group.add(member)
                if member == room:
                    break
            if len(group) > 1:
                groups.append(group)

    for room in sorted(graph):
        if room not in index:
            visit(room)
    return groups


def describe(group: set[str], edges: Edges) -> str:
    """The group's rooms and every import edge inside it, with where it is made."""
    lines = ["cycle among " + ", ".join(sorted(group)) + ":"]
    for (a, b), where in sorted(edges.items()):
        if a in group and b in group:
            lines.append(f"  {a} -> {b}: " + ", ".join(where))
    return "\n".join(lines)


def test_the_rooms_import_each_other_without_cycles():
    edges = room_edges()
    kept = {edge: where for edge, where in edges.items() if edge not in ALLOWED_EDGES}
    found = cyclic_groups(kept)
    assert not found, "import cycles between rooms:\n" + "\n".join(describe(g, kept) for g in found)


def test_every_allowed_edge_still_closes_a_cycle():
    """The allow-list only shrinks: an entry whose cycle is gone must be deleted."""
    edges = room_edges()
    stale = [edge for edge in ALLOWED_EDGES
             if edge not in edges or not any(set(edge) <= group for group in cyclic_groups(edges))]
    assert not stale, f"no longer closing a cycle, delete from ALLOWED_EDGES: {stale}"


def test_the_scanner_sees_function_level_and_relative_imports(tmp_path):
    pkg = tmp_path / NAME
    (pkg / "low").mkdir(parents=True)
    (pkg / "high").mkdir()
    (pkg / "low" / "a.py").write_text("def f():\n    from ..high import b\n")
    (pkg / "high" / "b.py").write_text(f"import {NAME}.low.a\n")
    (pkg / "top.py").write_text("from . import low\n")
    edges = room_edges(pkg, None)
    assert edges[("low", "high")] == [f"{tmp_path.name}/{NAME}/low/a.py:2"]
    assert set(edges) == {("low", "high"), ("high", "low"), ("top", "low")}
    assert cyclic_groups(edges) == [{"high", "low"}]


def test_the_scanner_sees_loads_by_name_and_the_hydra_plugins(tmp_path):
    pkg = tmp_path / NAME
    (pkg / "methods").mkdir(parents=True)
    (pkg / "config.py").write_text("import importlib\n\ndef find(name):\n"
                                   "    return importlib.import_module(f'{__package__}.methods.{name}_method')\n")
    (pkg / "methods" / "a_method.py").write_text("from ..config import find\n")
    plugins = tmp_path / PLUGIN_ROOM / "sweeper"
    plugins.mkdir(parents=True)
    (plugins / "s.py").write_text(f"from {NAME}.methods import a_method\n")
    (pkg / "methods" / "b.py").write_text(f"def f():\n    import {PLUGIN_ROOM}.sweeper.s\n")
    edges = room_edges(pkg, tmp_path / PLUGIN_ROOM)
    assert edges[("config", "methods")] == [f"{tmp_path.name}/{NAME}/config.py:4"]
    assert set(edges) == {("config", "methods"), ("methods", "config"), (PLUGIN_ROOM, "methods"), ("methods", PLUGIN_ROOM)}
    assert sorted(map(sorted, cyclic_groups(edges))) == [["config", PLUGIN_ROOM, "methods"]]


def test_results_json_has_one_owner_below_its_readers():
    """results.py owns results.json: the runner writes through it, the report and the sweeper read through it.
    It imports none of them, the sweeper imports nothing of the report, and the report neither the sweeper
    nor Hydra's internals."""
    edges = room_edges()
    assert not [(a, b) for a, b in edges if a == "results" and b in ("runner", "report", PLUGIN_ROOM)]
    assert {("runner", "results"), ("report", "results"), (PLUGIN_ROOM, "results")} <= set(edges)
    assert (PLUGIN_ROOM, "report") not in edges, edges.get((PLUGIN_ROOM, "report"))
    assert ("report", PLUGIN_ROOM) not in edges, edges.get(("report", PLUGIN_ROOM))
    internal = []
    for path in sorted((PACKAGE / "report").rglob("*.py")):
        package = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)[:-1]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            internal += [f"{path.name}:{node.lineno}" for target in imported_modules(node, package)
                         if target[:2] == ["hydra", "_internal"]]
    assert not internal, f"the report imports Hydra's internals: {internal}"
