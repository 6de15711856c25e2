"""The house's shape, read from its imports (``ast``, nothing imported): no import circle, no import that runs
up the layers, and no internal import hidden inside a function (outside the allow-list below).

Layers, from the ground up (README, "The task contract"); a module may import its own layer or any below::

    cli            cli, shard_command, experiments.cli, __main__
    pipelines      pipelines/*, pipeline_registry, settings, hooks/*, experiments.sweep, experiments.dvc_sync
    stages ...     stages, tracking/*, serving/*, io/*, experiments (integrity, ownership, reproduce)
    tasks          tasks/*
    engine         engine/*, run_record, plots, models/*
    data           data/*, config
    ground         visionpipe, errors, console, files, project, ranking
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "visionpipe"

# module prefix -> layer (the longest matching prefix wins)
LAYERS = {
    "visionpipe": 0, "visionpipe.errors": 0, "visionpipe.console": 0, "visionpipe.files": 0, "visionpipe.project": 0,
    "visionpipe.ranking": 0,
    "visionpipe.plots": 2,  # a leaf: draws the arrays and COCOeval objects it is handed (matplotlib)
    "visionpipe.data": 1, "visionpipe.config": 1,
    "visionpipe.engine": 2, "visionpipe.run_record": 2,
    "visionpipe.models": 2,  # network definitions the tasks build (issue 21's detector): below tasks
    "visionpipe.tasks": 3,
    "visionpipe.stages": 4, "visionpipe.tracking": 4, "visionpipe.serving": 4, "visionpipe.io": 4,
    "visionpipe.experiments": 4,
    "visionpipe.pipelines": 5, "visionpipe.pipeline_registry": 5, "visionpipe.settings": 5, "visionpipe.hooks": 5,
    "visionpipe.experiments.sweep": 5, "visionpipe.experiments.sweep_point": 5, "visionpipe.experiments.dvc_sync": 5,
    "visionpipe.cli": 6, "visionpipe.shard_command": 6, "visionpipe.experiments.cli": 6, "visionpipe.__main__": 6,
}
LAYER_NAMES = ("ground", "data", "engine", "tasks", "stages/tracking/serving", "pipelines/hooks", "cli")

# (importing module or package, imported module or "*"): internal imports that stay inside a function, and why
ALLOWED_IN_FUNCTIONS: dict[tuple[str, str], str] = {
    ("visionpipe.cli", "*"): "a command imports what it runs when it runs: `visionpipe --help` loads no torch or MLflow",
    ("visionpipe.shard_command", "*"): "as cli: the command's work (torch, the task modules) loads when it runs",
    ("visionpipe.experiments.cli", "*"): "as cli: dvc-sync, sweep and reproduce load their machinery when they run",
    ("visionpipe.tasks", "visionpipe.plots"): "matplotlib takes seconds to import: only the plot node pays it, not "
                                              "serving or training",
}


def allowed_in_function(src: str, dst: str) -> bool:
    """Whether the import of ``dst`` inside a function of ``src`` is on the allow-list."""
    return any((src == a or src.startswith(a + ".")) and b in ("*", dst) for a, b in ALLOWED_IN_FUNCTIONS)


def modules() -> dict[str, Path]:
    """Every module of the package by dotted name."""
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(SRC).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def layer_of(module: str) -> int:
    """The layer of ``module``: its longest prefix in LAYERS."""
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in LAYERS:
            return LAYERS[".".join(parts[:n])]
    raise AssertionError(f"{module} has no layer: add it to LAYERS in tests/test_layers.py")


def internal_imports(known: dict[str, Path]) -> list[tuple[str, str, bool, int]]:
    """(importer, imported, inside a function, line) for every import of a visionpipe module."""
    edges = []
    for name, path in known.items():
        tree = ast.parse(path.read_text(), str(path))
        in_function = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                       for n in ast.walk(f)}
        is_package = path.name == "__init__.py"
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    here = name.split(".") if is_package else name.split(".")[:-1]
                    here = here[:len(here) - node.level + 1]
                    base = ".".join(here + ([node.module] if node.module else []))
                # `from a import b` imports module a.b when there is one, else the name b of module a
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
            else:
                continue
            for target in targets:
                while target not in known and "." in target:
                    target = target.rsplit(".", 1)[0]
                if target.startswith("visionpipe") and target in known and target != name:
                    edges.append((name, target, id(node) in in_function, node.lineno))
    return sorted(set(edges))


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
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

    for v in list(graph):
        if v not in index:
            visit(v)
    return out


def _graph():
    known = modules()
    edges = internal_imports(known)
    graph: dict[str, set[str]] = defaultdict(set)
    for name in known:
        graph[name]
    for src, dst, _, _ in edges:
        # importing a.b.c runs a and a.b first: a package importing its own submodule is no circle
        if not src.startswith(dst + "."):
            graph[src].add(dst)
    return known, edges, graph


def test_every_module_has_a_layer():
    known = modules()
    for name in known:
        layer_of(name)


def test_no_import_circles():
    _, _, graph = _graph()
    circles = _cycles(graph)
    assert not circles, "import circles:\n" + "\n".join(" <-> ".join(c) for c in circles)


def test_no_import_runs_up_the_layers():
    _, edges, _ = _graph()
    up = [f"{src}:{line} imports {dst} ({LAYER_NAMES[layer_of(src)]} -> {LAYER_NAMES[layer_of(dst)]})"
          for src, dst, _, line in edges if layer_of(dst) > layer_of(src)]
    assert not up, "imports running up the layers:\n" + "\n".join(up)


def test_no_internal_import_inside_a_function():
    _, edges, _ = _graph()
    hidden = [f"{src}:{line} imports {dst}" for src, dst, inside, line in edges
              if inside and not allowed_in_function(src, dst)]
    assert not hidden, ("internal imports inside functions (import at the top; a slow optional library goes in "
                        "ALLOWED_IN_FUNCTIONS with the reason):\n" + "\n".join(hidden))


def test_the_checker_sees_circles_and_back_arrows(tmp_path):
    """The checks above are not vacuous: a planted circle and an upward import are found."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]
    assert layer_of("visionpipe.data.formats") < layer_of("visionpipe.tasks.detection")
