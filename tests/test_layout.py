"""The layout by role (docs/architecture.md): each folder imports only those below it, and the
package has no import cycle. Read from the source with ``ast``: nothing is imported."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "batchnorm"

# Lower numbers are lower layers; a module may import its own layer and the layers below.
LAYERS = {"reference": 0, "core": 1, "nn": 2, "tools": 3, "experiments": 4, "cli": 5}
FACADES = {
    "__init__",
    "__main__",
    "functional",
    "func",
    "kernels",
}  # the public surface: anything below


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[str, bool]]:
    """``(imported module, at module level)`` for every import of the package in ``path``."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    tree = ast.parse(path.read_text())
    top = set(map(id, tree.body))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [target] + [f"{target}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        for n in names:
            if n == "batchnorm" or n.startswith("batchnorm."):
                out.append((n, id(node) in top))
    return out


def _layer(module: str) -> int | None:
    parts = module.split(".")
    if len(parts) < 2:
        return None
    return LAYERS.get(parts[1])


def _existing(module: str, modules: set[str]) -> str | None:
    """The longest prefix of ``module`` that is a module of the package."""
    while module and module not in modules:
        module = module.rpartition(".")[0]
    return module or None


SOURCES = sorted(PACKAGE.rglob("*.py"))
MODULES = {_module_name(p) for p in SOURCES}


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_go_only_downwards(path):
    name = _module_name(path)
    if name == "batchnorm" or (name.split(".")[-1] in FACADES and name.count(".") == 1):
        return
    own = _layer(name)
    assert own is not None, f"{name} is outside the layout of docs/architecture.md"
    for target, _ in _imports(path):
        layer = _layer(target)
        if layer is None:
            continue  # the package's facades are not imported from inside
        assert layer <= own, f"{name} (layer {own}) imports {target} (layer {layer})"
    if own == LAYERS["reference"]:
        assert not _imports(path), "the oracle imports nothing of the package"


def test_the_reader_sees_imports():
    # The check above could pass vacuously if imports went unseen: a known file's are seen.
    found = {t for t, _ in _imports(PACKAGE / "tools" / "fold.py")}
    assert {"batchnorm.core.functional", "batchnorm.nn.frozen.FrozenBatchNorm"} <= found


def test_no_import_cycle_at_module_level():
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for path in SOURCES:
        name = _module_name(path)
        for target, top in _imports(path):
            dep = _existing(target, MODULES)
            # A package imports its submodules at load: `from . import x` inside x's package
            # __init__ is not an edge back to the package.
            if top and dep is not None and dep != name and not name.startswith(dep + "."):
                graph[name].add(dep)
    seen: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        seen[m] = 1
        stack.append(m)
        for d in graph[m]:
            if seen.get(d) == 1:
                cycle = stack[stack.index(d) :] + [d]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if d not in seen:
                visit(d)
        stack.pop()
        seen[m] = 2

    for m in sorted(graph):
        if m not in seen:
            visit(m)
