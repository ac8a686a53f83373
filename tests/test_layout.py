"""The package's shape, checked from its source: no import cycle, small functions, one model seam."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "search"
MAX_FUNCTION_LINES = 60


def _modules() -> dict[str, Path]:
    return {".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__"): p
            for p in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    return isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


def _top_level_imports(path: Path, module: str, known: set[str]) -> set[str]:
    """Modules of the package that ``module`` imports when it is imported (not inside functions)."""
    found: set[str] = set()
    tree = ast.parse(path.read_text())
    body = [n for n in tree.body if not (isinstance(n, ast.If) and _is_type_checking(n))]
    for node in body:
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            base = node.module if node.level == 0 else ".".join(module.split(".")[: -node.level] + [node.module])
            names = [base, *(f"{base}.{alias.name}" for alias in node.names)]
        else:
            continue
        found |= {name for name in names if name in known}
    # Importing a submodule imports its packages first; a module's own packages are already being
    # imported when it runs, so an edge back to them is no cycle.
    found |= {".".join(name.split(".")[:i]) for name in found for i in range(2, name.count(".") + 1)}
    return {name for name in found if name != module and not module.startswith(name + ".")}


def test_the_package_has_no_import_cycle():
    modules = _modules()
    graph = {name: _top_level_imports(path, name, set(modules)) for name, path in modules.items()}
    cycles = []

    def visit(node, stack, on_stack, done):
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt in on_stack:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in done:
                visit(nxt, stack, on_stack, done)
        on_stack.discard(node)
        stack.pop()
        done.add(node)

    done: set[str] = set()
    for name in sorted(graph):
        if name not in done:
            visit(name, [], set(), done)
    assert not cycles, f"import cycles: {cycles[:3]}"


def test_no_function_is_longer_than_a_screen():
    long = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, long


def test_only_the_model_families_name_a_network():
    # Everything a network family is (anchors, heads, layer names, Darknet layout) lives in its
    # package under search/models; the rest of the code asks the family. (Space files keep their names.)
    def names_a_network(path: Path) -> bool:
        return "yolov4" in path.read_text().lower().replace("spaces/yolov4_tiny", "")

    outside = [str(p.relative_to(PACKAGE.parent)) for p in PACKAGE.rglob("*.py")
               if p.relative_to(PACKAGE).parts[0] != "models" and names_a_network(p)]
    assert not outside, f"modules outside search/models that name YOLOv4: {outside}"
