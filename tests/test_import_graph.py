"""The import graph of dtkd, dtkd_ops, steps and pipelines: no cycle between modules or between
folders, and every folder imports only what docs/architecture.md allows it to.

The graph is read from the source (``ast``), imports inside functions included: a cycle hidden
behind a lazy import is still a cycle.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("dtkd", "dtkd_ops", "steps", "pipelines")
CORE = {"dtkd.registry", "dtkd.fsutil", "dtkd.host", "dtkd.config_io", "dtkd.data", "dtkd.models", "dtkd.eval",
        "dtkd.engine", "dtkd.distill", "dtkd.config", "dtkd.config_reference", "dtkd.assemble", "dtkd.launch"}

# Folder (unit) -> the units it may import. The table of docs/architecture.md, enforced here.
ALLOWED = {
    "dtkd.registry": set(),
    "dtkd.fsutil": set(),
    "dtkd.host": set(),
    "dtkd.config_io": set(),
    "dtkd.data": {"dtkd.registry", "dtkd.fsutil"},
    "dtkd.models": {"dtkd.data", "dtkd.registry", "dtkd.fsutil"},
    "dtkd.eval": {"dtkd.data"},
    "dtkd.engine": {"dtkd.data", "dtkd.eval", "dtkd.fsutil"},
    "dtkd.distill": {"dtkd.data", "dtkd.models", "dtkd.engine", "dtkd.registry", "dtkd.fsutil"},
    "dtkd.config": {"dtkd.config_io", "dtkd.data", "dtkd.models", "dtkd.engine", "dtkd.distill"},
    "dtkd.config_reference": {"dtkd.config", "dtkd.data", "dtkd.engine", "dtkd.distill"},
    "dtkd.assemble": {"dtkd.data", "dtkd.models", "dtkd.eval", "dtkd.engine", "dtkd.distill", "dtkd.config",
                      "dtkd.registry"},
    "dtkd.launch": {"dtkd.assemble", "dtkd.config", "dtkd.data", "dtkd.engine"},
    "dtkd_ops": CORE - {"dtkd.launch"},
    "steps": (CORE - {"dtkd.launch"}) | {"dtkd_ops"},
    "pipelines": (CORE - {"dtkd.launch"}) | {"dtkd_ops", "steps"},
}
# Third-party packages a unit must never import (the core runs on a GPU box with torch alone;
# dtkd_ops is the MLOps library usable without ZenML).
FORBIDDEN = {
    **{unit: {"zenml", "mlflow", "dvc", "great_expectations", "kubernetes"} for unit in CORE},
    "dtkd_ops": {"zenml"},
}


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def unit_of(module: str) -> str:
    """The folder a module belongs to: dtkd's subpackages and top-level modules, or a whole
    top-level package (dtkd_ops, steps, pipelines)."""
    parts = module.split(".")
    if parts[0] != "dtkd":
        return parts[0]
    return ".".join(parts[:2]) if len(parts) > 1 else "dtkd"


def imports_of(path: Path, module: str, is_package: bool, modules: set[str]) -> set[str]:
    """Every absolute module name ``path`` imports (relative imports resolved), at any depth.
    ``from pkg import sub`` counts as importing the module ``pkg.sub`` when there is one (the
    package's own __init__ running first is not an edge), else as importing ``pkg``."""
    out: set[str] = set()
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                out.add(sub if sub in modules else base)
    return out


def build_graph(root: Path = REPO, packages=PACKAGES) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(module -> project modules it imports, module -> third-party top-level packages it imports)."""
    files = {}
    for pkg in packages:
        for path in sorted((root / pkg).rglob("*.py")):
            files[module_name(path, root)] = path
    graph: dict[str, set[str]] = {}
    external: dict[str, set[str]] = {}
    for module, path in files.items():
        names = imports_of(path, module, path.name == "__init__.py", set(files))
        graph[module] = {n for n in names if n in files and n != module}
        external[module] = {n.split(".")[0] for n in names if n.split(".")[0] not in packages and n}
    return graph, external


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as [a, b, ..., a], or None (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    for start in sorted(graph):
        if state.get(start):
            continue
        path, stack = [start], [iter(sorted(graph[start]))]
        state[start] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph.get(nxt, ()))))
    return None


def unit_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    units: dict[str, set[str]] = {}
    for module, targets in graph.items():
        units.setdefault(unit_of(module), set()).update(unit_of(t) for t in targets if unit_of(t) != unit_of(module))
    return units


def test_the_cycle_finder_finds_cycles_and_only_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "d"}, "b": set(), "d": {"e"}, "e": {"d"}}) == ["d", "e", "d"]


def test_the_graph_sees_imports_hidden_in_functions(tmp_path):
    (tmp_path / "dtkd").mkdir()
    (tmp_path / "dtkd" / "__init__.py").write_text("")
    (tmp_path / "dtkd" / "a.py").write_text("def f():\n    from dtkd import b\n")
    (tmp_path / "dtkd" / "b.py").write_text("from .a import f\nimport numpy\n")
    graph, external = build_graph(tmp_path, ("dtkd",))
    assert graph["dtkd.a"] == {"dtkd.b"} and graph["dtkd.b"] == {"dtkd.a"}
    assert find_cycle(graph) == ["dtkd.a", "dtkd.b", "dtkd.a"]
    assert external["dtkd.b"] == {"numpy"}


@pytest.fixture(scope="module")
def graph():
    return build_graph()


def test_no_cycle_between_modules(graph):
    # A package's __init__ importing its own submodules is a module importing its parts, not a
    # cycle; it becomes one when a part imports a name from the package back.
    cycle = find_cycle(graph[0])
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_cycle_between_folders(graph):
    cycle = find_cycle(unit_graph(graph[0]))
    assert cycle is None, "folder-level import cycle: " + " -> ".join(cycle)


def test_every_folder_imports_only_what_it_may(graph):
    units = unit_graph(graph[0])
    assert set(units) - {"dtkd"} == set(ALLOWED), "a folder the table does not know"
    bad = {u: sorted(t - ALLOWED[u]) for u, t in units.items() if u in ALLOWED and t - ALLOWED[u]}
    assert not bad, f"imports docs/architecture.md does not allow: {bad}"


def test_no_folder_imports_a_package_it_must_not(graph):
    bad = {}
    for module, packages in graph[1].items():
        refused = packages & FORBIDDEN.get(unit_of(module), set())
        if refused:
            bad[module] = sorted(refused)
    assert not bad, bad


def test_the_data_stages_start_without_torch():
    """The DVC data stages that read YAML, validate a data section, probe videos or run the quality
    gate import neither torch nor torchvision (about 7 s of start-up each): they are on the
    critical path of a first `make run` (docs/runs.md). Only generating frames and the clip store
    need torch, and import it when they run."""
    code = ("import sys\n"
            "from dtkd_ops.stages import data_config\n"
            "data_config('datasets/default/params.yaml')\n"
            "import dtkd.data.synthetic, dtkd.data.prepare, dtkd_ops.quality, dtkd_ops.dvc_stages\n"
            "print(sorted(m for m in ('torch', 'torchvision') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == "[]"
