"""fastopt's modules form layers: each imports only from its own layer or those below, and no
module takes part in an import cycle. Read from the import statements of every module,
function-local ones included, so a lazy import cannot hide an upward dependency."""
import ast
import fnmatch
from pathlib import Path

import fastopt

PKG = Path(fastopt.__file__).resolve().parent

#: Lowest first. A module may import modules of its own layer and of the layers before it.
LAYERS = (
    # backend-free math and plain helpers: import nothing from fastopt
    ("core", ("fastopt._core", "fastopt._timing", "fastopt._mpi", "fastopt._torchdist")),
    # the rule declarations, the compact-precision definitions, and the one loader of the
    # compiled extensions
    ("declarations", ("fastopt._rules", "fastopt._rules.*", "fastopt._precision",
                      "fastopt._native", "fastopt._C", "fastopt._C_cuda")),
    ("registry", ("fastopt._registry",)),
    # device arrays and argument checks, which the backends share
    ("arrays", ("fastopt._device", "fastopt._validate")),
    # the backends: never a public module, never the dispatcher
    ("backends", ("fastopt._cpp", "fastopt._cuda", "fastopt._reference", "fastopt._reference.*",
                  "fastopt._numba", "fastopt._numba.*", "fastopt._numba_cuda",
                  "fastopt._numba_cuda.*")),
    ("dispatch", ("fastopt._dispatch",)),
    # the device step pipeline: drives whichever backend module it is handed
    ("pipeline", ("fastopt._pipeline",)),
    ("public", ("fastopt.functional", "fastopt.schedules", "fastopt.norm", "fastopt.monitor",
                "fastopt.optim", "fastopt.halton", "fastopt.search", "fastopt.distributed",
                "fastopt.torch", "fastopt.study", "fastopt.report", "fastopt.optuna")),
    ("entry points", ("fastopt", "fastopt.info", "fastopt.bench", "fastopt.__main__")),
)
EXTENSIONS = ("fastopt._C", "fastopt._C_cuda")


def modules() -> dict:
    """module name -> source path, for every .py file of the package."""
    out = {}
    for f in PKG.rglob("*.py"):
        parts = ("fastopt",) + f.relative_to(PKG).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return out


def imports(name: str, source: str, is_package: bool, known) -> set:
    """The fastopt modules that module ``name`` imports anywhere in ``source``."""
    package = name if is_package else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(source, name)):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([node.module] if node.module else []))
            # "from . import x" imports the module x when there is one
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base
                       for a in node.names]
        else:
            continue
        for t in targets:
            if t.split(".")[0] != "fastopt":
                continue
            while t not in known and "." in t:
                t = t.rpartition(".")[0]
            if t != name:
                found.add(t)
    return found


def graph() -> dict:
    mods = modules()
    known = set(mods) | set(EXTENSIONS)
    return {m: imports(m, p.read_text(), p.name == "__init__.py", known) for m, p in mods.items()}


def layer(name: str) -> int:
    hits = [i for i, (_, pats) in enumerate(LAYERS) if any(fnmatch.fnmatch(name, p) for p in pats)]
    assert len(hits) == 1, f"{name} must be in exactly one layer of LAYERS, is in {hits}"
    return hits[0]


def test_every_module_has_a_layer():
    for m in graph():
        layer(m)


def test_no_upward_import():
    bad = [f"{m} ({LAYERS[layer(m)][0]}) imports {d} ({LAYERS[layer(d)][0]})"
           for m, deps in graph().items() for d in deps if layer(d) > layer(m)]
    assert not bad, "\n".join(bad)


def test_no_import_cycle():
    found = cycles(graph())
    assert not found, "\n".join(" -> ".join(c) for c in found)


def test_only_the_loader_imports_the_extensions():
    users = sorted(m for m, deps in graph().items() if deps & set(EXTENSIONS))
    assert users == ["fastopt._native"]
    for m, path in modules().items():  # nor by name, through importlib
        if m != "fastopt._native":
            text = path.read_text()
            assert '"fastopt._C' not in text and "'fastopt._C" not in text, m


def test_core_imports_nothing_from_fastopt():
    assert graph()["fastopt._core"] == set()


def cycles(g) -> list:
    """Every cycle found by a depth-first walk of the import graph ``g``."""
    state, stack, found = {}, [], []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for d in sorted(g.get(m, ())):
            if state.get(d) == "open":
                found.append(stack[stack.index(d):] + [d])
            elif d not in state:
                visit(d)
        stack.pop()
        state[m] = "done"

    for m in sorted(g):
        if m not in state:
            visit(m)
    return found


def test_the_checks_see_function_local_imports():
    """A lazy import inside a function counts: one that would close a cycle is seen."""
    g = graph()
    source = "def late():\n    from .optim import SGD\n    from . import _core as c\n"
    found = imports("fastopt.functional", source, False, set(g))
    assert found == {"fastopt.optim", "fastopt._core"}
    assert cycles({**g, "fastopt.functional": found})  # optim imports functional
    assert not cycles(g)
    g["fastopt._core"] = {"fastopt.optim"}  # and an upward one is caught by its layers
    assert layer("fastopt.optim") > layer("fastopt._core")
