"""The library's import graph: no cycle, no layer breach, no Prefect, and lazy imports only where they pay.

Reads every module of `cocu_core` with `ast` (nothing is imported), top-level *and* function-level imports, so a
cycle hidden behind a function-level import fails here too. Layers, top to bottom (DESIGN_STAGES.md 4.5):

- `cli`, `ablation`, `stages` (the registry) import anything in the library;
- `stages.<name>` import `stages.base`, the libraries, the base modules and other stage modules;
- libraries (toyworld, data, encoder, embeddings, index, concepts, curation, model, train, evaluation) import
  each other and the base modules, never a stage, the command line or the ablation;
- base modules (config, layout, errors, env, io, ...) import only base modules.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LIB = ROOT / "cocu_core"

BASE = {"cocu_core", "cocu_core.config", "cocu_core.layout", "cocu_core.errors", "cocu_core.env", "cocu_core.io",
        "cocu_core.proc", "cocu_core.runtime", "cocu_core.compat", "cocu_core.templates", "cocu_core.plot",
        "cocu_core.versions", "cocu_core.wordnet_data", "cocu_core.doctor", "cocu_core.lock", "cocu_core.storage"}
LIBRARIES = ("toyworld", "data", "encoder", "embeddings", "index", "concepts", "curation", "model", "train",
             "evaluation")
TOP = ("cocu_core.cli", "cocu_core.ablation")
# Third-party packages whose import costs seconds (or starts CUDA/processes): a function-level import of one, or of
# a library module that imports one at its top, keeps `import cocu_core.stages` and the command line fast.
HEAVY = {"torch", "torchvision", "faiss", "autofaiss", "open_clip", "img2dataset", "clip_retrieval", "transformers",
         "timm", "webdataset", "matplotlib", "nltk", "textblob", "sklearn", "dask", "distributed", "ray", "pandas",
         "cv2", "scipy"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in LIB.rglob("*.py") if "_deathsig" not in p.parts}


def _resolve(name: str) -> str | None:
    """The deepest module of the library that `name` (a module or a name inside one) refers to."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


class _Imports(ast.NodeVisitor):
    """Every import of one module: (target, line, at top level?, has a comment on or above its line)."""

    def __init__(self, module: str, is_pkg: bool, lines: list[str]):
        self.pkg = module if is_pkg else module.rpartition(".")[0]
        self.lines, self.depth, self.found = lines, 0, []

    def _commented(self, node: ast.AST) -> bool:
        lines = self.lines[node.lineno - 1:node.end_lineno]
        above = self.lines[node.lineno - 2] if node.lineno > 1 else ""
        return any("#" in line for line in lines) or above.strip().startswith("#")

    def _add(self, node: ast.AST, names: list[str]) -> None:
        for n in names:
            self.found.append((n, node.lineno, self.depth == 0, self._commented(node)))

    def visit_Import(self, node: ast.Import) -> None:
        self._add(node, [a.name for a in node.names])

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            base = self.pkg.split(".")[: len(self.pkg.split(".")) - (node.level - 1)]
            mod = ".".join(base + ([node.module] if node.module else []))
        else:
            mod = node.module or ""
        self._add(node, [mod] + [f"{mod}.{a.name}" for a in node.names])

    def _nested(self, node: ast.AST) -> None:
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = visit_ClassDef = _nested

    def visit_If(self, node: ast.If) -> None:
        if isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            return  # imports for annotations only: never executed
        self.generic_visit(node)


def _imports() -> dict[str, list[tuple[str, int, bool, bool]]]:
    out = {}
    for mod, path in MODULES.items():
        text = path.read_text()
        v = _Imports(mod, path.name == "__init__.py", text.splitlines())
        v.visit(ast.parse(text, str(path)))
        out[mod] = v.found
    return out


IMPORTS = _imports()


def _edges() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {m: set() for m in MODULES}
    for mod, found in IMPORTS.items():
        for name, _, _, _ in found:
            t = _resolve(name) if name.startswith("cocu_core") else None
            if t and t != mod:
                edges[mod].add(t)
    return edges


EDGES = _edges()


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components of more than one module (or a module importing itself)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges[v]:
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

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def layer(mod: str) -> str:
    """Which layer a library module is in."""
    if mod in BASE:
        return "base"
    if mod == "cocu_core.stages":
        return "top"
    if mod.startswith("cocu_core.stages."):
        return "stage"
    if any(mod == t or mod.startswith(t + ".") for t in TOP):
        return "top"
    if mod.split(".")[1] in LIBRARIES:
        return "library"
    return "unclassified"


ALLOWED = {"base": {"base"}, "library": {"base", "library"}, "stage": {"base", "library", "stage"},
           "top": {"base", "library", "stage", "top"}}


def test_the_checks_see_a_cycle_and_the_graph_is_real():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []
    assert len(MODULES) > 80 and "cocu_core.config" in EDGES["cocu_core.layout"]


def test_no_import_cycle_counting_function_level_imports():
    assert _cycles(EDGES) == []


def test_every_module_is_in_a_layer():
    assert [m for m in MODULES if layer(m) == "unclassified"] == []


def test_no_layer_breach():
    breaches = [f"{m} ({layer(m)}) imports {t} ({layer(t)})" for m, ts in EDGES.items() for t in sorted(ts)
                if layer(t) not in ALLOWED[layer(m)]]
    assert breaches == []


def test_stage_modules_do_not_import_the_registry():
    # a stage module reaches another stage through its module, never through `stages/__init__` (that would be a cycle)
    assert [m for m, ts in EDGES.items() if layer(m) == "stage" and "cocu_core.stages" in ts] == []


def test_no_prefect_or_flows_in_the_library():
    bad = [f"{m}:{line} {n}" for m, found in IMPORTS.items() for n, line, _, _ in found
           if n.split(".")[0] in ("prefect", "flows")]
    assert bad == []


def _parents(mod: str) -> list[str]:
    """`a.b.c` -> [`a`, `a.b`]: importing a module runs its packages' `__init__` first."""
    parts = mod.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def _heavy_at_top(mod: str, seen: set[str] | None = None) -> bool:
    """Does importing `mod` import a heavy third-party package through top-level imports (its packages' too)?"""
    seen = seen if seen is not None else set()
    if mod in seen:
        return False
    seen.add(mod)
    if any(p in MODULES and _heavy_at_top(p, seen) for p in _parents(mod)):
        return True
    for name, _, top, _ in IMPORTS[mod]:
        if not top:
            continue
        if name.split(".")[0] in HEAVY:
            return True
        t = _resolve(name) if name.startswith("cocu_core") else None
        if t and t != mod and _heavy_at_top(t, seen):
            return True
    return False


def test_function_level_imports_are_heavy_or_say_why():
    bad = []
    for mod, found in IMPORTS.items():
        for name, line, top, commented in found:
            if top or commented or not name.startswith("cocu_core"):
                continue  # third-party function-level imports: stdlib and heavy packages alike are fine
            t = _resolve(name)
            if t is None or t == mod or _heavy_at_top(t):
                continue
            bad.append(f"{mod}:{line} imports {t} inside a function with no reason (it is cheap: import it at the top)")
    assert sorted(set(bad)) == []


@pytest.mark.parametrize("mod", sorted(m for m in MODULES if layer(m) == "stage"))
def test_stage_modules_import_no_heavy_package_at_top(mod):
    # `import cocu_core.stages` must stay cheap for `cocu run` and `cocu status`: statically, through every module
    # and package a stage module imports at its top
    assert not _heavy_at_top(mod)


def test_importing_the_registry_loads_no_heavy_package():
    # and at run time: the registry, every stage module and the library's command line
    code = ("import sys, cocu_core.stages, cocu_core.cli; "
            "print(sorted(m for m in ('torch', 'faiss', 'open_clip', 'nltk', 'img2dataset', 'clip_retrieval', "
            "'matplotlib', 'transformers') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "[]"
