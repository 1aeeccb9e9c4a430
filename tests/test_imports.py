"""The import structure of implicitnet: no cycles, no private imports across packages.

Three checks, over every module of ``implicitnet`` and ``implicitnet.backends`` (found on
disk, so a module nothing imports is checked too):

* **Each module imports alone, in a fresh interpreter.** A module that only imports
  when some other module happened to be imported first (the symptom of an import
  cycle) fails here.
* **The module-level import graph is acyclic** (a static check: every file is parsed
  with :mod:`ast`, nothing is imported).
* **Function-local imports say why**, and **no module imports a private name of another
  package**.

The rules, as the static checks apply them:

* An edge ``A -> B`` of the graph is an import statement of ``A`` at module level
  (including those inside a module-level ``if`` or ``try``, but not under ``if
  TYPE_CHECKING:``, which never runs) that names module ``B``: ``import B``, ``from B
  import name``, or ``from A_pkg import B`` when ``B`` is a submodule. The parent
  packages that Python imports on the way are not edges (every module would otherwise
  sit in a cycle with the ``implicitnet/__init__.py`` that imports it).
* An import inside a function (or a class body) is allowed only to defer an optional or
  slow-to-import dependency, or to break a real import cycle, and must say so in a
  comment on its line or on the line above that contains ``optional``, ``defer`` or
  ``cycle``.
* A private name is a module or an attribute whose name starts with one underscore
  (``implicitnet.solvers._base``, ``implicitnet.backends.host._x``). It belongs to the
  package that contains it, and may be imported only from inside that package (its
  modules and subpackages). ``from .._xp import namespace`` in ``implicitnet/nn`` is
  fine (``_xp`` belongs to ``implicitnet``); ``from ..solvers._base import X`` in
  ``implicitnet/linalg`` is not (``_base`` belongs to ``implicitnet.solvers``). Public
  helpers get public names instead (as :mod:`implicitnet.backends.host` does for the
  backends' host-side NumPy helpers).

Known offenders in code that is being refactored elsewhere are listed, with a comment,
in the ``KNOWN_*`` allow-lists below; an entry that no longer applies fails the test, so
the lists only shrink.
"""

from __future__ import annotations

import ast
import concurrent.futures
import json
import os
import pathlib
import subprocess
import sys
import time

import implicitnet
from implicitnet import backends

ROOTS = {
    "implicitnet": pathlib.Path(implicitnet.__file__).parent,
    "implicitnet.backends": pathlib.Path(backends.__file__).parent,
}

# -- Allow-lists: known offenders ------------------------------------------------------
# Empty: every rule holds for the whole package. Should a refactoring ever need an
# exception for a while, it goes here, naming the import exactly and saying why; an entry
# that no longer matches anything fails test_allow_lists_are_current.

#: Module-level import edges ``(importer, imported)`` that close a known cycle.
KNOWN_CYCLE_EDGES: set[tuple[str, str]] = set()

#: Function-local imports without a reason: ``(module, imported module)``.
KNOWN_LOCAL_IMPORTS: set[tuple[str, str]] = set()

#: Private imports across packages: ``(importer, private name)``, the name up to its
#: first private part (``implicitnet.autodiff._ops`` for ``from .autodiff._ops import abs``).
KNOWN_PRIVATE_IMPORTS: set[tuple[str, str]] = set()


# -- Reading the modules -----------------------------------------------------------------


def _modules() -> dict[str, pathlib.Path]:
    """Every module of implicitnet on disk: dotted name -> file."""
    out = {}
    for prefix, root in ROOTS.items():
        for path in sorted(root.rglob("*.py")):
            rel = path.relative_to(root).with_suffix("")
            parts = list(rel.parts)
            if prefix == "implicitnet" and parts[0] == "backends":
                continue  # a folder of the source tree only if backends/ lives there
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join([prefix, *parts])] = path
    return out


MODULES = _modules()


def _is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def _resolve(importer: str, node: ast.ImportFrom) -> str:
    """The absolute module name of a ``from ... import`` in module `importer`."""
    if node.level == 0:
        return node.module or ""
    package = importer if _is_package(importer) else importer.rpartition(".")[0]
    parts = package.split(".")
    base = parts[: len(parts) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


class _Import:
    """One import statement's targets: module names and imported attribute names."""

    def __init__(self, node, importer: str, lines: list[str], local: bool):
        self.lineno = node.lineno
        self.local = local
        self.modules: list[str] = []  # the modules it names (graph edges)
        self.names: list[str] = []  # every dotted name it touches (privacy check)
        if isinstance(node, ast.Import):
            for alias in node.names:
                self.modules.append(alias.name)
                self.names.append(alias.name)
        else:
            base = _resolve(importer, node)
            for alias in node.names:
                full = f"{base}.{alias.name}"
                self.names.append(full)
                self.modules.append(full if full in MODULES else base)
        here = lines[node.lineno - 1]
        above = lines[node.lineno - 2] if node.lineno >= 2 else ""
        comment = (here.partition("#")[2] + " " + above.strip()).lower()
        self.reason = any(w in comment for w in ("optional", "defer", "cycle")) and (
            "#" in here or above.strip().startswith("#")
        )


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(name: str) -> list[_Import]:
    """The import statements of module `name`, marked local or module-level."""
    source = MODULES[name].read_text(encoding="utf-8")
    lines = source.splitlines()
    found = []

    def visit(node, local: bool):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import | ast.ImportFrom):
                found.append(_Import(child, name, lines, local))
            elif isinstance(child, ast.If) and _is_type_checking(child.test):
                for stmt in child.orelse:
                    visit(stmt, local)
            elif isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                visit(child, True)
            else:
                visit(child, local)

    visit(ast.parse(source, filename=str(MODULES[name])), False)
    return found


IMPORTS = {name: _imports(name) for name in MODULES}


def _graph() -> dict[str, set[str]]:
    """Module-level import edges between implicitnet's modules."""
    graph: dict[str, set[str]] = {name: set() for name in MODULES}
    for name, imports in IMPORTS.items():
        for imp in imports:
            if not imp.local:
                graph[name].update(m for m in imp.modules if m in MODULES and m != name)
    return graph


def _strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components with more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return out


def _cycle_in(component: list[str], graph: dict[str, set[str]]) -> list[str]:
    """One cycle through the first module of a strongly connected `component`."""
    start = component[0]
    members = set(component)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & members):
                if w == start:
                    return [*paths[v], start]
                if w not in paths:
                    paths[w] = [*paths[v], w]
                    nxt.append(w)
        frontier = nxt
    return component


def _private(dotted: str) -> tuple[str, str] | None:
    """``(private name, owning package)`` of a dotted name, ``None`` when it is public.

    The private name is the name up to its first private part (``implicitnet.solvers._base``
    for ``implicitnet.solvers._base.Problem``); it belongs to the package that contains it
    (``implicitnet.solvers``; for a private attribute of a module, that module's package).
    """
    parts = dotted.split(".")
    for i, part in enumerate(parts):
        if part.startswith("_") and not part.startswith("__"):
            owner = ".".join(parts[:i])
            while owner in MODULES and not _is_package(owner):
                owner = owner.rpartition(".")[0]
            return ".".join(parts[: i + 1]), owner
    return None


def _within(importer: str, package: str) -> bool:
    return importer == package or importer.startswith(package + ".")


def _local_import_offenders() -> set[tuple[str, str, int]]:
    out = set()
    for name, imports in IMPORTS.items():
        for imp in imports:
            if imp.local and not imp.reason:
                out.update((name, m, imp.lineno) for m in imp.modules)
    return out


def _private_offenders() -> set[tuple[str, str, int]]:
    out = set()
    for name, imports in IMPORTS.items():
        for imp in imports:
            for dotted in imp.names:
                found = _private(dotted)
                if found is None or found[1].split(".")[0] != "implicitnet":
                    continue
                if not _within(name, found[1]):
                    out.add((name, found[0], imp.lineno))
    return out


# -- The static checks -------------------------------------------------------------------


def test_the_module_list_is_complete():
    """The checks see the package, its subpackages and the backends."""
    assert {"implicitnet", "implicitnet.backends", "implicitnet.solvers"} <= set(MODULES)
    assert "implicitnet.backends._numpy" in MODULES
    assert all(imports is not None for imports in IMPORTS.values())


def test_import_graph_is_acyclic():
    graph = _graph()
    for edge in KNOWN_CYCLE_EDGES:
        graph[edge[0]].discard(edge[1])
    cycles = [" -> ".join(_cycle_in(c, graph)) for c in _strongly_connected(graph)]
    assert not cycles, "import cycles (module-level imports):\n  " + "\n  ".join(cycles)


def test_function_local_imports_say_why():
    offenders = sorted(
        f"{name} (line {line}) imports {target}"
        for name, target, line in _local_import_offenders()
        if (name, target) not in KNOWN_LOCAL_IMPORTS
    )
    assert not offenders, (
        "function-local imports need a comment saying they defer an optional (or slow) "
        "dependency or break an import cycle; otherwise import at module level:\n  "
        + "\n  ".join(offenders)
    )


def test_no_private_imports_across_packages():
    first = {}
    for name, target, line in sorted(_private_offenders()):
        first.setdefault((name, target), line)
    offenders = [
        f"{name} (line {line}) imports {target}"
        for (name, target), line in sorted(first.items())
        if (name, target) not in KNOWN_PRIVATE_IMPORTS
    ]
    assert not offenders, (
        "private names imported from another package (give the helper a public name):\n  "
        + "\n  ".join(offenders)
    )


def test_allow_lists_are_current():
    """Every allow-listed offender still exists: the lists only shrink."""
    graph = _graph()
    on_cycle = {v for c in _strongly_connected(graph) for v in c}
    stale = [
        f"KNOWN_CYCLE_EDGES {e}"
        for e in sorted(KNOWN_CYCLE_EDGES)
        if e[1] not in graph.get(e[0], ()) or not {e[0], e[1]} <= on_cycle
    ]
    local = {(n, t) for n, t, _ in _local_import_offenders()}
    stale += [f"KNOWN_LOCAL_IMPORTS {e}" for e in sorted(KNOWN_LOCAL_IMPORTS - local)]
    private = {(n, t) for n, t, _ in _private_offenders()}
    stale += [f"KNOWN_PRIVATE_IMPORTS {e}" for e in sorted(KNOWN_PRIVATE_IMPORTS - private)]
    assert not stale, "allow-list entries that no longer apply (remove them):\n  " + "\n  ".join(
        stale
    )


def test_the_checks_find_what_they_look_for(tmp_path, monkeypatch):
    """The graph, local-import and privacy checks on a made-up package of three modules."""
    pkg = tmp_path / "implicitnet"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from . import a\n")
    (pkg / "a.py").write_text(
        "from .sub._b import thing\n"
        "def f():\n"
        "    import json\n"
        "    import gzip  # deferred: an optional dependency\n"
    )
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "_b.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "from .. import a\n"
        "from . import _c\n"
        "if TYPE_CHECKING:\n"
        "    from .. import nothing\n"
    )
    (pkg / "sub" / "_c.py").write_text("")
    fake = {
        "implicitnet": pkg / "__init__.py",
        "implicitnet.a": pkg / "a.py",
        "implicitnet.sub": pkg / "sub" / "__init__.py",
        "implicitnet.sub._b": pkg / "sub" / "_b.py",
        "implicitnet.sub._c": pkg / "sub" / "_c.py",
    }
    monkeypatch.setattr(sys.modules[__name__], "MODULES", fake)
    monkeypatch.setattr(sys.modules[__name__], "IMPORTS", {n: _imports(n) for n in fake})
    graph = _graph()
    assert graph["implicitnet"] == {"implicitnet.a"}
    assert graph["implicitnet.sub._b"] == {"implicitnet.a", "implicitnet.sub._c"}
    assert _strongly_connected(graph) == [["implicitnet.a", "implicitnet.sub._b"]]
    assert {(n, t) for n, t, _ in _local_import_offenders()} == {("implicitnet.a", "json")}
    assert {(n, t) for n, t, _ in _private_offenders()} == {("implicitnet.a", "implicitnet.sub._b")}


# -- Each module alone, in a fresh interpreter ---------------------------------------------

_LIST_LOADED = """
import json, sys
import implicitnet
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] == "implicitnet")))
"""


def _fresh_import(name: str, cwd: pathlib.Path) -> tuple[str, int, str]:
    proc = subprocess.run(
        [sys.executable, "-c", f"import {name}"],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return name, proc.returncode, proc.stderr[-3000:]


def test_each_module_imports_alone_in_a_fresh_interpreter(tmp_path):
    """``python -c "import M"`` succeeds for every module M (``__main__`` aside: it runs
    the CLI, which ``tests/test_cli.py`` covers).

    Importing ``implicitnet.x.y`` first runs ``implicitnet/__init__.py`` (Python imports
    parent packages first), so for every module that ``import implicitnet`` itself
    loads, ``import implicitnet.x.y`` in a fresh interpreter executes exactly what
    ``import implicitnet`` does, in the same order. One fresh interpreter that imports
    ``implicitnet`` therefore checks all of those at once (and lists them); each other
    module gets its own fresh interpreter, several at a time. Set
    ``IMPLICITNET_IMPORT_EVERY_MODULE=1`` to start one interpreter for every module
    anyway (about a second each).
    """
    started = time.perf_counter()
    names = sorted(set(MODULES) - {"implicitnet.__main__"})
    proc = subprocess.run(
        [sys.executable, "-c", _LIST_LOADED], cwd=tmp_path, capture_output=True, text=True
    )
    assert proc.returncode == 0, f"`import implicitnet` fails:\n{proc.stderr[-3000:]}"
    loaded = set(json.loads(proc.stdout))
    assert loaded <= set(MODULES) | {"implicitnet.__main__"}, loaded - set(MODULES)
    if os.environ.get("IMPLICITNET_IMPORT_EVERY_MODULE") != "1":
        names = [n for n in names if n not in loaded]
    workers = max(2, os.cpu_count() or 2)
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        results = list(pool.map(lambda n: _fresh_import(n, tmp_path), names))
    failed = [f"{n} (exit {rc}):\n{err}" for n, rc, err in results if rc != 0]
    elapsed = time.perf_counter() - started
    assert not failed, "modules that do not import alone:\n" + "\n".join(failed)
    print(f"{len(names) + 1} fresh interpreters in {elapsed:.1f} s")
