"""The architecture, read from the code's own imports: the layers of ``core/`` import one way only,
``core/`` has no import cycle and no hidden (function-level) imports of itself, and plugins reach the
core only through ``core.api`` and never import another plugin."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: core's packages from the bottom up; a module may import its own package and lower ranks only.
#: entry points (python -m core.<x>) and the plugin API sit on top; nothing in core imports them.
RANKS: dict[str, int] = {
    "core.errors": 0,
    "core.util": 1,
    "core.audio": 2,
    "core.config": 2,
    "core.tracking": 2,
    "core.registry": 3,
    "core.data": 4,
    "core.engine": 5,
    "core.stages": 6,
    "core.tasks": 7,
    "core.run": 8,
    "core.list": 8,
    "core.doctor": 8,
    "core.sync": 8,
    "core.api": 8,
}


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> list[tuple[str, int, bool]]:
    """``(imported module, line, at module level)`` for every import of ``path``."""
    tree = ast.parse(path.read_text(), str(path))
    top = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            found.append((name, node.lineno, id(node) in top))
    return found


def layer(module: str) -> str | None:
    return next((p for p in sorted(RANKS, key=len, reverse=True) if module == p or module.startswith(p + ".")), None)


def core_edges(root: Path = ROOT) -> dict[str, set[str]]:
    """Module -> the core modules it imports (``from core.x import y`` counts ``core.x.y`` when it is a module)."""
    modules = {module_name(p, root): p for p in (root / "core").rglob("*.py")}
    edges: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        for imported, _, _ in imports(path):
            if imported in modules and imported != name:
                edges[name].add(imported)
    return edges


def test_every_core_module_has_a_layer():
    assert [m for m in core_edges() if m != "core" and layer(m) is None] == []


def upward_imports(root: Path = ROOT) -> list[str]:
    wrong = []
    for module, targets in core_edges(root).items():
        mine = layer(module)
        for target in targets:
            theirs = layer(target)
            if mine is None or theirs is None or theirs == mine:
                continue
            if RANKS[theirs] >= RANKS[mine]:
                wrong.append(f"{module} ({mine}) imports {target} ({theirs})")
    return wrong


def test_core_imports_flow_one_way():
    assert upward_imports() == []


def import_cycles(root: Path = ROOT) -> list[list[str]]:
    edges = core_edges(root)
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)
    return cycles


def test_core_has_no_import_cycle():
    assert import_cycles() == []


def test_core_imports_itself_at_module_level_only():
    hidden = [
        f"{p.relative_to(ROOT)}:{line} {name}"
        for p in (ROOT / "core").rglob("*.py")
        for name, line, top in imports(p)
        if not top and name.split(".")[0] == "core" and not p.name == "api.py"
    ]  # api.py's docstring example is no import
    assert hidden == []


@pytest.mark.parametrize("path", sorted((ROOT / "plugins").rglob("*.py")), ids=lambda p: str(p.relative_to(ROOT)))
def test_plugins_use_the_core_only_through_the_api_and_never_import_another_plugin(path):
    unit = module_name(path).split(".")[:3]  # plugins.<kind>.<plugin>: one module or one package
    for name, line, _ in imports(path):
        parts = name.split(".")
        if parts[0] == "core":
            assert parts[:2] == ["core", "api"], f"{path.relative_to(ROOT)}:{line} imports {name}"
        elif parts[0] == "plugins" and len(parts) >= 3:
            allowed = parts[:3] == unit or parts[:3] == ["plugins", unit[1], "common"]  # the family's helpers
            assert allowed, f"{path.relative_to(ROOT)}:{line} imports another plugin's {name}"


def test_the_checks_catch_an_upward_import_and_a_cycle(tmp_path):
    """The checks above can fail: on a small tree where the engine imports a stage, and a stage
    imports the engine back, both are reported."""
    for name, text in {
        "core/__init__.py": "",
        "core/engine/__init__.py": "",
        "core/stages/__init__.py": "",
        "core/engine/loop.py": "from core.stages.prune import schedule\n",
        "core/stages/prune.py": "from core.engine.loop import train\n",
    }.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert upward_imports(tmp_path) == ["core.engine.loop (core.engine) imports core.stages.prune (core.stages)"]
    assert import_cycles(tmp_path) == [["core.engine.loop", "core.stages.prune", "core.engine.loop"]]


#: what a machine with only torch (a lent GPU box) lacks: the tracking and config stack
NOT_ON_A_TORCH_ONLY_MACHINE = ("mlflow", "hydra", "omegaconf")


def module_level_closure(start: list[str], root: Path = ROOT) -> dict[str, set[str]]:
    """Every core module that importing ``start`` runs (their parent packages included), with the
    third-party top-level names each imports at module level."""
    paths = {module_name(p, root): p for p in (root / "core").rglob("*.py")}
    paths.update({module_name(p, root): p for p in (root / "benchmarks").rglob("*.py")})
    seen: dict[str, set[str]] = {}
    todo = list(start)
    while todo:
        module = todo.pop()
        if module in seen or module not in paths:
            continue
        seen[module] = set()
        parts = module.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]  # parent packages run first
        for name, _, top in imports(paths[module]):
            if not top:
                continue
            if name in paths:
                todo.append(name)
            elif name.split(".")[0] not in ("core", "benchmarks"):
                seen[module].add(name.split(".")[0])
    return seen


def test_the_engine_and_the_synthetic_benchmark_import_without_mlflow_or_hydra():
    """The engine (Trainer, loop, model, data path) and ``benchmarks.synthetic`` must import on a
    machine that has only torch and its usual companions, so the GPU path can be measured there."""
    start = [module_name(p) for p in (ROOT / "core" / "engine").glob("*.py")] + ["benchmarks.synthetic"]
    closure = module_level_closure(start)
    assert "core.engine.trainer" in closure and "core.data.logmel" in closure  # the walk follows imports
    heavy = sorted(
        f"{m} imports {n}" for m, names in closure.items() for n in names if n in NOT_ON_A_TORCH_ONLY_MACHINE
    )
    assert heavy == []
    # and the walk does see such an import where there is one
    assert "omegaconf" in module_level_closure(["core.config"])["core.config"]
