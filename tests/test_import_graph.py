"""The package's import graph, read from the source (every import, also those inside functions): no cycle
between packages or modules, and the dependencies the layout promises (README, "Layout")."""
from __future__ import annotations

import ast
import os
from collections import defaultdict
from typing import Dict, List, Set

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# installed name -> folder (setup.py's package_dir)
FOLDERS = {"fastkd": "fastkd", "fastkd.pipelines": "pipelines", "fastkd.converters": "converters"}


def _modules() -> Dict[str, tuple]:
    """module name -> (path, is a package __init__)."""
    out = {}
    for package, folder in FOLDERS.items():
        for dirpath, _, files in os.walk(os.path.join(ROOT, folder)):
            for name in files:
                if not name.endswith(".py"):
                    continue
                rel = os.path.relpath(os.path.join(dirpath, name), os.path.join(ROOT, folder))[:-3]
                parts = [p for p in rel.split(os.sep) if p != "__init__"]
                out[".".join([package, *parts])] = (os.path.join(dirpath, name), name == "__init__.py")
    return out


def _imports(module: str, path: str, is_init: bool, known: Set[str]) -> Set[str]:
    """The fastkd modules ``module`` imports anywhere in its file (a name imported from a package counts as
    its submodule when there is one)."""
    package = module if is_init else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for name in names:
            while name and name not in known:  # "fastkd.x.y.attr" -> the module that defines it
                name = name.rpartition(".")[0]
            if name and name != module:
                found.add(name)
    return found


def _graph() -> Dict[str, Set[str]]:
    mods = _modules()
    return {m: _imports(m, path, init, set(mods)) for m, (path, init) in mods.items()}


def _unit(module: str) -> str:
    """A top-level package (fastkd.train) or root module (fastkd.atomic) of ``module``."""
    return ".".join(module.split(".")[:2])


def _cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """The strongly connected components with more than one node (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _package_graph(graph):
    units = defaultdict(set)
    for a, targets in graph.items():
        for b in targets:
            if _unit(a) != _unit(b) and _unit(a) != "fastkd" and _unit(b) != "fastkd":
                units[_unit(a)].add(_unit(b))
    return units


def test_no_cycle_between_packages():
    assert _cycles(_package_graph(_graph())) == []


def test_no_cycle_between_modules():
    # a package's __init__ re-exporting its modules, which import the package's registry, is the usual Python
    # layout: edges from a module to its own package's __init__ are not counted
    graph = {a: {b for b in targets if not a.startswith(b + ".")} for a, targets in _graph().items()}
    assert _cycles(graph) == []


def test_layers():
    units = _package_graph(_graph())
    assert "fastkd.train" not in units["fastkd.cache"], "the cache must not import the training package"
    for unit, targets in units.items():
        if unit != "fastkd.cli":
            assert "fastkd.experiments" not in targets, f"{unit} imports the multi-run drivers"
        if unit not in ("fastkd.cli", "fastkd.experiments", "fastkd.__main__"):
            assert "fastkd.cli" not in targets, f"{unit} imports the command line"


def test_graph_sees_imports_inside_functions():
    # the walker reads function-local imports: the cycles such imports used to hide (cache <-> train) count
    graph = _graph()
    assert "fastkd.train.build" in graph["fastkd.experiments.grid"]  # inside _evaluate_teacher
    assert "fastkd.train.trainer" in graph["fastkd.cli.train"]  # inside the train command
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
