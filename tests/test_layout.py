"""lib/ shows the engine: one package per stage, imports only downward, no import cycle."""

from __future__ import annotations

import ast
from pathlib import Path

LIB = Path(__file__).resolve().parent.parent / "lib"
# the stages, lowest first; lib's top modules and lib/config are the vocabulary every stage shares
STAGES = ["vocabulary", "ledger", "source", "target", "plan", "check", "run"]


def _module(path: Path) -> str:
    parts = path.relative_to(LIB.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _stage(module: str) -> int:
    parts = module.split(".")
    return STAGES.index(parts[1]) if len(parts) > 1 and parts[1] in STAGES else 0


def _imports() -> dict[str, set[str]]:
    modules = {_module(p): p for p in LIB.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):  # function-level imports count too
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                         for a in node.names]
            graph[module] |= {n for n in names if n in modules and n != module}
    return graph


def test_every_import_runs_downward_from_run_to_the_vocabulary() -> None:
    upward = [f"{a} imports {b}" for a, targets in _imports().items() for b in targets if _stage(b) > _stage(a)]
    assert not upward, upward


def test_no_module_imports_itself_back_through_others() -> None:
    graph = _imports()
    cycles = []
    state: dict[str, int] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                cycles.append(" -> ".join([*path[path.index(target):], target]))
            elif target not in state:
                visit(target, [*path, target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, cycles


def test_every_stage_says_what_it_owns_and_what_it_may_import() -> None:
    for stage in ("config", *STAGES[1:]):
        face = (LIB / stage / "__init__.py").read_text()
        assert face.startswith('"""') and "import" in face.split('"""')[1].lower(), stage


def test_the_readme_lists_every_package() -> None:
    readme = (LIB.parent / "README.md").read_text()
    section = readme.split("## Where things are", 1)[1]
    for package in sorted(p.name for p in LIB.iterdir() if (p / "__init__.py").exists()):
        assert f"`lib/{package}/`" in section, package
