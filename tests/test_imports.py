"""The package's import structure: no import circle among lcf modules (module-level and lazy imports alike),
no private name taken from another module, and a runtime that imports nothing of training, evaluation or
the CLI."""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from tests.conftest import REPO

PACKAGE = REPO / "lcf"
#: what `import lcf.runtime` must not load: lcf's training/evaluation/CLI code and the heavy packages
FORBIDDEN_PACKAGES = ("lcf.training", "lcf.eval", "lcf.cli", "lightning", "pytorch_lightning", "deepspeed",
                      "omegaconf", "peft", "torchmetrics", "matplotlib", "rich", "gguf")


@dataclass
class Module:
    name: str
    path: Path
    imports: dict[str, int] = field(default_factory=dict)  # lcf module -> first line importing it
    private: list[str] = field(default_factory=list)  # "line: what" for each private name used across modules


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def scan(path: Path, known: set[str], name: str | None = None) -> Module:
    """Every import of an lcf module in ``path`` (at any depth: functions, classes, TYPE_CHECKING blocks) and
    every private name it takes from another lcf module (``from m import _x`` or ``m._x``)."""
    mod = Module(name or module_name(path), path)
    package = mod.name if path.name == "__init__.py" else mod.name.rpartition(".")[0]
    aliases: dict[str, str] = {}  # local name bound to an lcf module -> that module
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in known:
                    mod.imports.setdefault(alias.name, node.lineno)
                    aliases[alias.asname or alias.name] = alias.name
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            source = ".".join(base + ([node.module] if node.module else []))
            if source.split(".")[0] != "lcf":
                continue
            for alias in node.names:
                target = f"{source}.{alias.name}"
                if target in known:  # a submodule
                    mod.imports.setdefault(target, node.lineno)
                    aliases[alias.asname or alias.name] = target
                    continue
                mod.imports.setdefault(source, node.lineno)
                if is_private(alias.name) and source != mod.name:
                    mod.private.append(f"{node.lineno}: from {source} import {alias.name}")
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and is_private(node.attr):
            owner = aliases.get(ast.unparse(node.value))
            if owner is not None and owner != mod.name:
                mod.private.append(f"{node.lineno}: {ast.unparse(node)} ({owner})")
    return mod


def lcf_modules() -> dict[str, Module]:
    paths = sorted(PACKAGE.rglob("*.py"))
    known = {module_name(p) for p in paths}
    return {m.name: m for m in (scan(p, known) for p in paths)}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (or a module importing itself), by
    Tarjan's algorithm (iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root), on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child), on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1 or node in graph[node]:
                    found.append(sorted(component))
    return found


def describe(component: list[str], modules: dict[str, Module]) -> str:
    inside = set(component)
    edges = [f"  {m} (line {line}) imports {target}" for m in component
             for target, line in sorted(modules[m].imports.items()) if target in inside]
    return " <-> ".join(component) + "\n" + "\n".join(edges)


def test_no_import_circle_among_lcf_modules():
    modules = lcf_modules()
    graph = {name: set(m.imports) & set(modules) for name, m in modules.items()}
    found = cycles(graph)
    assert not found, ("import circles in lcf/ (move what both sides need into a module neither imports, or pass "
                       "it in as an argument):\n" + "\n".join(describe(c, modules) for c in found))


def test_no_private_name_is_taken_from_another_lcf_module():
    bad = [f"{m.path.relative_to(REPO)}:{use}" for m in lcf_modules().values() for use in m.private]
    assert not bad, ("private names used outside their module (make the name public in the module that owns it, "
                     "or move the caller's code there):\n" + "\n".join(bad))


def test_the_checks_see_lazy_imports_cycles_and_private_names(tmp_path):
    """The scanner itself: an import inside a function counts, and so do `from x import _y` and `x._y`."""
    (tmp_path / "a.py").write_text("def f():\n    from lcf.b import _hidden\n    import lcf.b as b\n    b._x\n")
    module = scan(tmp_path / "a.py", {"lcf.a", "lcf.b"}, name="lcf.a")
    assert module.imports == {"lcf.b": 2}
    assert module.private == ["2: from lcf.b import _hidden", "4: b._x (lcf.b)"]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"a"}, "b": set()}) == [["a"]]


def test_runtime_import_loads_no_training_evaluation_cli_or_heavy_package():
    code = "import json, sys, lcf.runtime; print(json.dumps(sorted(sys.modules)))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    loaded = json.loads(proc.stdout)
    bad = [m for m in loaded if any(m == p or m.startswith(p + ".") for p in FORBIDDEN_PACKAGES)]
    assert not bad, f"`import lcf.runtime` loaded {bad}; the runtime must not depend on them"


#: old import path -> its new home (thin modules kept for one release; CONTRIBUTING.md, what moved where)
MOVED = {"lcf.data.crosscontext": "lcf.data.xc.features", "lcf.data.xcdata": "lcf.data.xc.dataset",
         "lcf.data.xc_qa": "lcf.data.xc.qa", "lcf.data.xc_mix": "lcf.data.xc.mix",
         "lcf.runtime.xcontext": "lcf.runtime.xc", "lcf.eval.crosscontext": "lcf.eval.xc"}
#: names that changed with the move: old module -> {old name: new name}
RENAMED = {"lcf.data.crosscontext": {"CrossContextError": "XCError"},
           "lcf.runtime.xcontext": {"CrossContextMixin": "XCMixin"}}


def test_old_import_paths_warn_and_give_the_new_objects():
    import importlib
    import warnings

    for old, new in MOVED.items():
        sys.modules.pop(old, None)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            module = importlib.import_module(old)
        messages = [str(w.message) for w in caught if w.category is DeprecationWarning]
        assert any(m.startswith(f"{old} is deprecated") and new in m for m in messages), (old, messages)
        home = importlib.import_module(new)
        public = getattr(home, "__all__", None) or [n for n in vars(home) if not n.startswith("_")]
        for name in public:
            assert getattr(module, name) is getattr(home, name), (old, name)
        for was, now in RENAMED.get(old, {}).items():
            assert getattr(module, was) is getattr(home, now)


def test_nothing_in_the_repository_imports_an_old_path():
    """Only the deprecated modules themselves name their new home; everything else imports it directly."""
    roots = [REPO / d for d in ("lcf", "tests", "benchmarks", "experiments")]
    known = {module_name(p) for p in PACKAGE.rglob("*.py")}
    bad = []
    for path in sorted(p for r in roots for p in r.rglob("*.py")):
        rel = path.relative_to(REPO).as_posix()
        if rel.startswith("lcf/") and module_name(path) in MOVED:
            continue
        name = module_name(path) if rel.startswith("lcf/") else "outside." + path.stem
        bad += [f"{rel}:{line} imports {m} (now {MOVED[m]})" for m, line in scan(path, known, name).imports.items()
                if m in MOVED]
    assert not bad, "old import paths:\n" + "\n".join(bad)
