"""The import graph of the product modules (``hbfp_hw`` and the folders mapped into it).

A fresh interpreter imports every product module (which also proves that each one imports on
its own); the imports of each are then read from its source, at module level and inside
functions, relative imports resolved. The rules:

(a) no cycle among product modules, counting imports inside functions too, except through
    one listed in :data:`CYCLE_BREAKERS` with its reason; and an import inside a function
    must defer a heavy dependency (:data:`HEAVY`: the target loads one that the importer does
    not) or be listed in :data:`FUNCTION_LEVEL` with its reason;
(b) no product module imports from ``tests``;
(c) no product module imports a private name (``_x``) from another package (the package
    of a module is its folder: ``hbfp_hw.torch``, ``hbfp_hw.fpga.host`` ...);
(d) host code (``hbfp_hw.fpga.host``, except ``hbfp_hw.fpga.host.simboard``, which builds
    gateware) imports no gateware (``hbfp_hw.fpga.system``, ``hbfp_hw.rtl_gen``) and not the
    board build (``hbfp_hw.fpga.boards``). tests/fpga/test_config.py checks the same at run
    time (which modules ``import``-ing the host code loads).
"""

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: Third-party packages that are slow to import or optional: a product module may import a
#: product module inside a function to keep these out of its own import.
HEAVY = {
    "torch": "the optional [torch] extra, seconds to import",
    "sklearn": "the optional [torch] extra",
    "matplotlib": "plots only",
    "cocotb": "simulation only",
    "cocotb_tools": "simulation only",
    "amaranth": "elaboration: kept out of `hbfp-hw --help` and the host driver's start-up",
    "amaranth_boards": "board builds only",
    "numpy": "kept out of `hbfp-hw --help`",
}

#: Function-level imports of product modules that load nothing heavier than the importer
#: does, each with its reason: (importer, imported) -> reason, where a name also covers the
#: modules below it, so that a new one is a decision and not an accident.
FUNCTION_LEVEL = {
    ("hbfp_hw.cli", "hbfp_hw"):
        "a subcommand imports what it runs when it runs: `hbfp-hw --help` and the parsers load "
        "no command code (tests/cli/test_parser.py)",
    ("hbfp_hw.fpga.host.driver", "hbfp_hw.fpga.host.simboard"):
        "the simulated board (it reads its C++ harness at import) only for sim:// devices",
    ("hbfp_hw.fpga.host.transport", "hbfp_hw.fpga.host.simboard"):
        "the simulated board only for sim:// devices",
}


#: Function-level imports that break a cycle, each with its reason: (importer, imported) ->
#: reason. None today: hbfp_hw.torch.backends and hbfp_hw.torch.config used to import each
#: other; the backend now reads the roles from the config object (HBFPConfig.role_formats).
CYCLE_BREAKERS = {}


def _listed(importer, target):
    def under(module, prefix):
        return module == prefix or module.startswith(prefix + ".")

    return any(under(importer, i) and under(target, t) for i, t in FUNCTION_LEVEL)

_LIST_MODULES = r"""
import importlib, json, pkgutil, sys
found = {}
def visit(name):
    mod = importlib.import_module(name)
    found[name] = [mod.__file__, hasattr(mod, "__path__")]
    for info in pkgutil.iter_modules(getattr(mod, "__path__", []), name + "."):
        # __main__ runs the command line when imported.
        if not info.name.endswith(".__main__") and info.name not in found:
            visit(info.name)
for root in sys.argv[1:]:
    visit(root)
print(json.dumps(found))
"""


def _roots():
    tomllib = pytest.importorskip("tomllib")
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return list(meta["tool"]["setuptools"]["package-dir"])


class Graph:
    """Product modules and their imports: ``edges`` holds ``(importer, target, names,
    function_level, line)`` with ``target`` a product module, ``external[m]`` the top-level
    third-party packages ``m`` imports at module level."""

    def __init__(self):
        out = subprocess.run([sys.executable, "-c", _LIST_MODULES, *_roots()], cwd=ROOT,
                             capture_output=True, text=True, check=True, timeout=600)
        self.modules = {name: (Path(f), pkg) for name, (f, pkg) in json.loads(out.stdout).items()}
        self.edges = []
        self.external = {m: set() for m in self.modules}
        self.raw = []                   # (importer, module, names, function_level, line)
        for name, (path, is_pkg) in self.modules.items():
            package = name if is_pkg else name.rpartition(".")[0]
            self._read(name, package, ast.parse(path.read_text(), str(path)), False)
        self.module_level = {m: set() for m in self.modules}
        for imp, target, _, fn, _ in self.edges:
            if not fn and target != imp:
                self.module_level[imp].add(target)

    def _read(self, name, package, node, in_function):
        for child in ast.iter_child_nodes(node):
            fn = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                   ast.Lambda))
            if (isinstance(child, ast.If) and isinstance(child.test, ast.Name)
                    and child.test.id == "TYPE_CHECKING"):
                continue                # annotations only, never run
            if isinstance(child, ast.Import):
                for alias in child.names:
                    self._add(name, alias.name, [], fn, child.lineno)
            elif isinstance(child, ast.ImportFrom):
                module = child.module
                if child.level:
                    base = package.split(".")[:len(package.split(".")) - child.level + 1]
                    module = ".".join(base + ([module] if module else []))
                self._add(name, module, [a.name for a in child.names], fn, child.lineno)
            self._read(name, package, child, fn)

    def _add(self, importer, module, names, fn, line):
        self.raw.append((importer, module, names, fn, line))
        if module.split(".")[0] != "hbfp_hw":
            if not fn:
                self.external[importer].add(module.split(".")[0])
            return
        # ``from pkg import sub`` imports the module pkg.sub; ``from pkg import name`` pkg.
        targets = {f"{module}.{n}" if f"{module}.{n}" in self.modules else module
                   for n in names} or {module}
        for target in targets:
            assert target in self.modules, f"{importer}:{line} imports unknown {target}"
            self.edges.append((importer, target, names, fn, line))

    def loads(self, module):
        """Product modules that importing ``module`` runs: its module-level imports and the
        packages above each, transitively."""
        seen, todo = set(), [module]
        while todo:
            m = todo.pop()
            parts = m.split(".")
            for nxt in [*self.module_level[m],
                        *(".".join(parts[:i]) for i in range(1, len(parts)))]:
                if nxt not in seen and nxt in self.modules:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen | {module}

    def heavy(self, module):
        return set().union(*(self.external[m] for m in self.loads(module))) & set(HEAVY)


@pytest.fixture(scope="module")
def graph():
    return Graph()


def _cycles(nodes, edges):
    """The strongly connected components of more than one node (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in nodes:
        if v not in index:
            visit(v)
    return out


def test_every_module_imports_and_the_graph_is_complete(graph):
    names = set(graph.modules)
    assert {"hbfp_hw.tools.process", "hbfp_hw.rtl_gen.generate", "hbfp_hw.sim.runner",
            "hbfp_hw.fpga.host.simboard.simboard", "hbfp_hw.torch.backends"} <= names
    assert len(graph.edges) > 100


def test_no_cycle_at_module_level(graph):
    assert _cycles(graph.modules, graph.module_level) == []


def test_function_level_imports_defer_something_or_say_why(graph):
    unexplained = []
    for imp, target, _, fn, line in graph.edges:
        if not fn or target == imp or _listed(imp, target):
            continue
        if not graph.heavy(target) - graph.heavy(imp):
            unexplained.append(f"{imp}:{line} -> {target}")
    assert unexplained == []
    used = {key for key in FUNCTION_LEVEL for i, t, _, fn, _ in graph.edges
            if fn and (i == key[0] or i.startswith(key[0] + "."))
            and (t == key[1] or t.startswith(key[1] + "."))}
    assert set(FUNCTION_LEVEL) - used == set(), "FUNCTION_LEVEL lists imports that are gone"


def test_no_cycle_through_an_unlisted_function_level_import(graph):
    edges = {m: set(t) for m, t in graph.module_level.items()}
    for imp, target, _, fn, _ in graph.edges:
        if fn and target != imp and (imp, target) not in CYCLE_BREAKERS:
            edges[imp].add(target)
    assert _cycles(graph.modules, edges) == []


def test_product_code_does_not_import_tests(graph):
    bad = [f"{imp}:{line} imports {module}" for imp, module, _, _, line in graph.raw
           if module.split(".")[0] == "tests"]
    assert bad == []


def _package(graph, module):
    return module if graph.modules[module][1] else module.rpartition(".")[0]


def test_no_private_names_across_packages(graph):
    bad = []
    for imp, module, names, _, line in graph.raw:
        if module.split(".")[0] != "hbfp_hw":
            continue
        for n in names:
            target = f"{module}.{n}" if f"{module}.{n}" in graph.modules else module
            def private(x):
                return x.startswith("_") and not x.endswith("__")

            private = private(n) or any(private(p) for p in target.split("."))
            if private and _package(graph, target) != _package(graph, imp):
                bad.append(f"{imp}:{line} imports {n} from {module}")
    assert bad == []


GATEWARE = ("hbfp_hw.fpga.system", "hbfp_hw.rtl_gen", "hbfp_hw.fpga.boards")
#: The host code and what it shares with the gateware (the configuration, the wire spec).
HOST = ("hbfp_hw.fpga.host", "hbfp_hw.fpga.config", "hbfp_hw.fpga.protocol")
#: Gateware modules that host code may import, with the reason.
SHARED = {"hbfp_hw.rtl_gen.layout": "the one bit layout of a BFP block: the wire payloads are "
                                    "packed with it (docs/protocol.md)"}


def test_host_code_imports_no_gateware(graph):
    def under(module, prefix):
        return module == prefix or module.startswith(prefix + ".")

    bad = []
    for imp, target, _, _, line in graph.edges:
        host = any(under(imp, h) for h in HOST) and not under(imp, "hbfp_hw.fpga.host.simboard")
        if host and target not in SHARED and any(under(target, g) for g in GATEWARE):
            bad.append(f"{imp}:{line} -> {target}")
    assert bad == []
