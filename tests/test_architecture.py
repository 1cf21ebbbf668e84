"""The layout holds (README: Architecture): arrows point down the layers, no import
cycle, no module reaches for another's private names, and files and functions stay small enough to read."""

import ast
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Each room of the package, and the rooms it may import from (besides itself and the shared `auralm.errors`,
# `auralm.files`, `auralm.distributed`, `auralm.devices`). Anything not listed may import only those.
ROOMS = {
    "kernels": set(),
    "checkpoints": set(),
    "tokenizer": {"kernels", "checkpoints"},
    "lm": {"tokenizer", "kernels", "checkpoints"},
    "data": {"tokenizer", "checkpoints"},
    "training": {"data", "tokenizer", "lm", "kernels", "checkpoints"},
    "quality_report": {"data", "tokenizer"},
    "evaluation": {"quality_report", "data", "tokenizer", "lm", "checkpoints"},
    "apps": {"auralm", "data", "training", "evaluation", "quality_report", "tokenizer", "lm", "kernels", "checkpoints"},
    "auralm": {"tokenizer", "lm", "kernels", "checkpoints"},  # the package's front door re-exports the public API
    "__main__": {"apps"},  # python -m auralm
}
SHARED = {"errors", "files", "distributed", "devices"}
FOLDERS = {"kernels": "kernels", "checkpoints": "checkpoints", "tokenizer": "tokenizer", "lm": "lm",
           "training": "training", "data": "auralm/data", "apps": "auralm/apps"}  # fmt: skip
MAX_FILE_LINES, MAX_FUNCTION_LINES = 500, 80


def package_files() -> dict[str, Path]:
    """Module name (auralm.x.y) → file, for every module of the package as installed (setup.py's package_dir)."""
    modules = {}
    for room, folder in FOLDERS.items():
        for path in (ROOT / folder).rglob("*.py"):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            modules[".".join(("auralm", room, *parts)).removesuffix(".__init__")] = path
    for path in (ROOT / "auralm").glob("*.py"):
        modules[f"auralm.{path.stem}".removesuffix(".__init__")] = path
    return modules


MODULES = package_files()


def room(module: str) -> str:
    """auralm.tokenizer.audio → tokenizer; auralm.evaluation → evaluation; auralm → auralm."""
    return module.split(".")[1] if module.count(".") else module


def imports(path: Path, module: str) -> list[tuple[str, list[str]]]:
    """(imported auralm module, the names taken from it) for every import in the file, lazy ones included."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names if alias.name.startswith("auralm")]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("auralm"):
            names = [alias.name for alias in node.names]
            if f"{node.module}.{names[0]}" in MODULES:  # `from auralm.data import voices`: a module
                found += [(f"{node.module}.{name}", []) for name in names]
            else:
                found.append((node.module, names))
    return found


def test_arrows_point_down():
    upward = []
    for module, path in MODULES.items():
        here = room(module)
        for target, _ in imports(path, module):
            there = room(target)
            allowed = ROOMS.get(here, set()) | {here} | SHARED
            if there not in allowed:
                upward.append(f"{module} imports {target}")
    assert not upward, "\n".join(upward)


def test_no_import_cycle():
    graph = defaultdict(set)
    for module, path in MODULES.items():
        for target, _ in imports(path, module):
            target = next((t for t in (target, target.rsplit(".", 1)[0]) if t in MODULES), None)
            if target and target != module and not target.startswith(module + "."):  # a package's own modules
                graph[module].add(target)
    # the strongly connected components (Tarjan), where a package's __init__ only re-exports its own modules
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = set()
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.add(top)
                if top == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in list(graph):
        if node not in index:
            visit(node)
    assert not cycles, cycles


@pytest.mark.parametrize("folder", ["", "tests", "benchmarks"])
def test_no_private_names_across_modules(folder):
    files = MODULES.items() if not folder else [(None, p) for p in (ROOT / folder).rglob("*.py")]
    private = []
    for module, path in files:
        for target, names in imports(path, module or ""):
            private += [
                f"{path.relative_to(ROOT)}: {target}.{n}"
                for n in names
                if n.startswith("_") and not n.startswith("__") and target != module
            ]
    assert not private, "\n".join(private)


def test_files_and_functions_stay_small():
    too_long = []
    for module, path in MODULES.items():
        if room(module) == "kernels":  # Triton kernels are long by nature: one op per file, unrolled
            continue
        lines = path.read_text().count("\n")
        if lines > MAX_FILE_LINES:
            too_long.append(f"{path.relative_to(ROOT)}: {lines} lines")
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    too_long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}: {length} lines")
    assert not too_long, "\n".join(too_long)
