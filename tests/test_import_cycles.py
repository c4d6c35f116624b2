"""evomerge's modules and folders import each other without cycles.

The graph is read from the source (ast), not from running imports, so a function-level import
counts: it runs at call time and ties the two modules together just the same. Imports under
`if TYPE_CHECKING:` never run, so they are not edges (they only name types for annotations).
An import of `evomerge.a.b` depends on `evomerge.a.b` and on the packages above it
(`evomerge.a`), because Python runs each `__init__` on the way down.

The folder graph folds every module into its top-level part (`evomerge/spaces/x.py` ->
`spaces`, `evomerge/loop.py` -> `loop`); a cycle there (spaces -> fw -> spaces) means two folders
cannot be read, tested or moved one without the other, even when no two modules form a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "evomerge"

# Cycles tolerated only while another branch finishes removing them; nothing else may join these
# lists, and each entry must go when its cycle does (test_allowed_cycles_still_exist fails until
# it is). Empty: the package has no import cycle.
ALLOWED_MODULE_CYCLES: set[frozenset[str]] = set()
ALLOWED_FOLDER_CYCLES: set[frozenset[str]] = set()


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_imports(tree: ast.AST):
    """Every Import/ImportFrom node, except those under `if TYPE_CHECKING:` (never run)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def _resolve(node: ast.ImportFrom, importer: str, packages: set[str]) -> str:
    if node.level == 0:
        return node.module or ""
    base = importer if importer in packages else importer.rpartition(".")[0]
    for _ in range(node.level - 1):
        base = base.rpartition(".")[0]
    return f"{base}.{node.module}" if node.module else base


def _ancestors(name: str) -> set[str]:
    parts = name.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts))}


def _targets(
    node: ast.Import | ast.ImportFrom, importer: str, modules: set[str], packages: set[str]
) -> set[str]:
    """The evomerge modules an import runs: the module named, the packages Python runs on the
    way to it, and for `from pkg import name` the submodule `pkg.name` when there is one (else
    `pkg` itself, whose `__init__` defines the name). The importer's own packages are left out:
    they have already started when the importer runs, so an edge to them is no dependency."""
    if isinstance(node, ast.Import):
        named = {a.name for a in node.names}
    else:
        base = _resolve(node, importer, packages)
        subs = {f"{base}.{a.name}" for a in node.names} & modules
        named = subs if len(subs) == len(node.names) else subs | {base}
    found = set()
    for name in named:
        found |= ({name} | _ancestors(name)) & modules
    return found - _ancestors(importer) - {importer}


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """module -> the package's modules it imports at run time (module level or in a function)."""
    files = sorted(root.rglob("*.py"))
    modules = {module_name(f, root) for f in files}
    packages = {module_name(f, root) for f in files if f.name == "__init__.py"}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for f in files:
        me = module_name(f, root)
        for node in _runtime_imports(ast.parse(f.read_text(), str(f))):
            graph[me] |= _targets(node, me, modules, packages)
    return graph


def folder_of(module: str) -> str:
    """`evomerge.spaces.parameter` -> `spaces`; `evomerge.loop` -> `loop`."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def folder_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """The same graph with each module folded into its top-level part. The package root
    (`evomerge/__init__.py`) sits above every folder and is none of them, so it is left out."""
    folders: dict[str, set[str]] = {}
    for me, targets in graph.items():
        if "." not in me:
            continue
        mine = folder_of(me)
        folders.setdefault(mine, set())
        folders[mine] |= {folder_of(t) for t in targets if "." in t} - {mine}
    return folders


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm: the groups of nodes that reach each other (only groups of 2+)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                group.append(top)
                if top == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(groups)


def a_cycle(graph: dict[str, set[str]], group: list[str]) -> list[str]:
    """One concrete loop through a strongly connected group (breadth-first back to its start)."""
    members = set(group)
    start = group[0]
    came_from = {start: None}
    frontier = [start]
    while frontier:
        nxt_frontier = []
        for node in frontier:
            for nxt in sorted(graph[node] & members):
                if nxt == start:
                    path = [node]
                    while came_from[path[-1]] is not None:
                        path.append(came_from[path[-1]])
                    return list(reversed(path)) + [start]
                if nxt not in came_from:
                    came_from[nxt] = node
                    nxt_frontier.append(nxt)
        frontier = nxt_frontier
    return group


def describe(graph: dict[str, set[str]], groups: list[list[str]]) -> str:
    return "\n".join(f"  {{{', '.join(g)}}}: e.g. {' -> '.join(a_cycle(graph, g))}" for g in groups)


def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)


def test_walker_reads_every_kind_of_import(tmp_path):
    # Guards the walker itself: a blind graph would let the cycle tests below pass vacuously.
    root = tmp_path / "pkg"
    _write(
        root,
        {
            "__init__.py": "",
            "a.py": "def f():\n    from pkg import b\n",  # function level: an edge
            "b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import pkg.a\n",
            "sub/__init__.py": "from pkg.sub import leaf\n",  # a package runs its submodule
            "sub/leaf.py": "from pkg.sub import other\n",  # own package: no edge to it
            "sub/other.py": "from ..a import f\n",  # relative import
            "c.py": "import pkg.sub.leaf\n",  # runs pkg.sub's __init__ on the way
        },
    )
    graph = import_graph(root)
    assert graph == {
        "pkg": set(),
        "pkg.a": {"pkg.b"},
        "pkg.b": set(),
        "pkg.sub": {"pkg.sub.leaf"},
        "pkg.sub.leaf": {"pkg.sub.other"},
        "pkg.sub.other": {"pkg.a"},
        "pkg.c": {"pkg.sub", "pkg.sub.leaf"},
    }
    assert folder_graph(graph) == {"a": {"b"}, "b": set(), "sub": {"a"}, "c": {"sub"}}
    graph["pkg.b"].add("pkg.sub.other")  # b -> sub.other -> a -> b
    assert strongly_connected(graph) == [["pkg.a", "pkg.b", "pkg.sub.other"]]
    assert strongly_connected(folder_graph(graph)) == [["a", "b", "sub"]]
    assert a_cycle(graph, ["pkg.a", "pkg.b", "pkg.sub.other"]) == [
        "pkg.a",
        "pkg.b",
        "pkg.sub.other",
        "pkg.a",
    ]


def _check(graph: dict[str, set[str]], allowed: set[frozenset[str]], what: str) -> None:
    groups = [g for g in strongly_connected(graph) if frozenset(g) not in allowed]
    assert not groups, f"{what} that import each other in a cycle:\n" + describe(graph, groups)


def test_no_module_import_cycles():
    _check(import_graph(), ALLOWED_MODULE_CYCLES, "modules")


def test_no_folder_import_cycles():
    _check(folder_graph(import_graph()), ALLOWED_FOLDER_CYCLES, "folders")


@pytest.mark.parametrize(
    "allowed,folders",
    [(sorted(a), False) for a in ALLOWED_MODULE_CYCLES]
    + [(sorted(a), True) for a in ALLOWED_FOLDER_CYCLES],
)
def test_allowed_cycles_still_exist(allowed, folders):
    # An allow-list entry whose cycle is gone must be deleted, so it cannot hide a new one.
    graph = import_graph()
    groups = strongly_connected(folder_graph(graph) if folders else graph)
    assert sorted(allowed) in groups, f"{allowed} no longer form a cycle: delete the entry"
