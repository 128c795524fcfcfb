"""The packages' one-way import layers, checked over `ast`; `python -m cxrcore.layers` prints them as Mermaid.

Layers, top to bottom (a module imports only its own layer and the layers below it): the chapters (book/),
`cxrcore.experiments`, `data_prep`, the `cxrcore` engine, and the bottom: finding names, label policies and the
manifest schema. Only the standard library is imported here, so the check runs without the project's dependencies.
"""
from __future__ import annotations

import ast
import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

PACKAGES = ("cxrcore", "data_prep")
BOTTOM = ("cxrcore.atomic", "cxrcore.findings", "cxrcore.manifest")  # finding names, policies, manifest schema
# `python -m cxrcore` runs the experiments (`experiment NAME`): an entry point, so it sits in their layer
ENTRY_POINTS = ("cxrcore.__main__",)
CHECKER = "cxrcore.layers"  # names modules of every layer as data (this file), not to import them
LAYERS = ("bottom", "cxrcore engine", "data_prep", "cxrcore.experiments", "chapters")  # index = layer_of(...)


class Import(NamedTuple):
    """One import of a project module: the file and line it is written on, the importer and the imported module."""

    path: str
    line: int
    importer: str
    imported: str


def layer_of(module: str) -> int:
    """The module's layer, an index of LAYERS: 0 bottom, 1 engine, 2 data_prep, 3 cxrcore.experiments."""
    if module in BOTTOM:
        return 0
    if module in ENTRY_POINTS or module == "cxrcore.experiments" or module.startswith("cxrcore.experiments."):
        return 3
    package = module.partition(".")[0]
    if package not in PACKAGES:
        raise ValueError(f"{module} is in neither {' nor '.join(PACKAGES)}")
    return 2 if package == "data_prep" else 1


def modules(root: Path) -> dict[str, Path]:
    """Every module of the packages under `root`, by dotted name (a package by its own name)."""
    found = {}
    for path in sorted(p for package in PACKAGES for p in (Path(root) / package).rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imported_modules(tree: ast.AST, module: str, package: bool, names: Iterable[str],
                     by_name: bool = True) -> list[tuple[int, str]]:
    """(line, project module) of each import in `tree`, function bodies and relative imports included, and each
    string that is exactly a project module's name (a module imported by name through importlib, as cli.dispatch
    does)."""
    names, found = set(names), []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif by_name and isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in names:
            targets = [node.value]
        elif isinstance(node, ast.ImportFrom):
            here = module.split(".") if package else module.split(".")[:-1]  # `from .x`: x in this package
            anchor = here[: len(here) - node.level + 1]
            base = ".".join(anchor + [node.module] if node.module else anchor) if node.level else node.module
            submodules = [f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in names]
            targets = submodules if len(submodules) == len(node.names) else [base, *submodules]
        else:
            continue
        for target in targets:
            while target and target not in names:  # `a.b.attr` -> the module a.b; outside modules -> ""
                target = target.rpartition(".")[0]
            if target and target != module and not module.startswith(target + "."):  # own packages run anyway
                found.append((node.lineno, target))
    return sorted(set(found))


def imports(root: Path) -> list[Import]:
    """Every import of a project module by a module of the packages under `root`."""
    found = []
    for module, path in (names := modules(root)).items():
        tree = ast.parse(path.read_text(), str(path))
        is_package = path.name == "__init__.py"
        found += [Import(str(path.relative_to(root)), line, module, target)
                  for line, target in imported_modules(tree, module, is_package, names, by_name=module != CHECKER)]
    return found


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module -> the project modules it imports, for every module of the packages under `root`."""
    graph: dict[str, set[str]] = {module: set() for module in modules(root)}
    for found in imports(root):
        graph[found.importer].add(found.imported)
    return graph


def violations(found: Iterable[Import]) -> list[str]:
    """`file:line: importer imports module` for each import of a higher layer's module."""
    return [
        f"{i.path}:{i.line}: {i.importer} ({LAYERS[layer_of(i.importer)]}) imports {i.imported} "
        f"({LAYERS[layer_of(i.imported)]}), a higher layer"
        for i in found
        if layer_of(i.imported) > layer_of(i.importer)
    ]


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Import cycles, each a list of modules that ends with its first (at least one per circle of modules)."""
    found: list[list[str]] = []
    done: set[str] = set()
    stack: list[str] = []

    def visit(module: str) -> None:
        if module in stack:
            found.append(stack[stack.index(module):] + [module])
        elif module not in done:
            stack.append(module)
            for imported in sorted(graph.get(module, ())):
                visit(imported)
            stack.pop()
            done.add(module)

    for module in sorted(graph):
        visit(module)
    return found


def chapter_imports(root: Path, names: Iterable[str]) -> set[str]:
    """Project modules the chapters' code cells import (IPython magics and shell lines skipped)."""
    found = set()
    for notebook in sorted((Path(root) / "book").glob("*.ipynb")):
        for cell in json.loads(notebook.read_text())["cells"]:
            if cell["cell_type"] == "code":
                lines = "".join(cell["source"]).splitlines()
                code = "\n".join(line for line in lines if not line.lstrip().startswith(("%", "!")))
                found |= {target for _, target in imported_modules(ast.parse(code), "book", False, names)}
    return found


def short(module: str, packages: Iterable[str]) -> str:
    """The module's name in its layer's package: `manifests`, `__init__`, `synth.*` for a subpackage's modules; an
    entry point's full name."""
    if module in ENTRY_POINTS:
        return module
    outer = next(p for p in ("cxrcore.experiments", *PACKAGES) if module == p or module.startswith(p + "."))
    name = module.removeprefix(outer).removeprefix(".") or "__init__"
    return name.split(".")[0] + ".*" if "." in name or f"{outer}.{name}" in packages else name


def mermaid(root: Path) -> str:
    """A Mermaid flowchart: a node per layer with its modules, an arrow per pair of layers naming what is imported."""
    graph, chapters = import_graph(root), len(LAYERS) - 1
    packages = {module for module, path in modules(root).items() if path.name == "__init__.py"}
    arrows: dict[tuple[int, int], set[str]] = {}
    edges = [(layer_of(m), t) for m, targets in graph.items() for t in targets]
    for layer, target in edges + [(chapters, t) for t in chapter_imports(root, graph)]:
        if layer != layer_of(target):
            arrows.setdefault((layer, layer_of(target)), set()).add(short(target, packages))
    members: list[list[str]] = [[] for _ in LAYERS]
    for module in graph:
        members[layer_of(module)].append(short(module, packages))
    members[chapters] = ["book/*.ipynb"]
    lines = ["flowchart TD"]
    for layer in reversed(range(len(LAYERS))):
        names = list(dict.fromkeys(members[layer]))
        rows = "<br>".join(", ".join(names[i:i + 6]) for i in range(0, len(names), 6))
        lines.append(f'  L{layer}["<b>{LAYERS[layer]}</b><br>{rows}"]')
    for (source, target), names in sorted(arrows.items(), reverse=True):
        arrow = "-->" if target < source else "-. UPWARD .->"
        lines.append(f'  L{source} {arrow}|"{", ".join(sorted(names))}"| L{target}')
    return "\n".join(lines)


def main() -> int:
    """Print the Mermaid drawing of the repository's layers; exit 1 (with the reasons) if the layering is broken."""
    root = Path(__file__).resolve().parents[1]
    print(mermaid(root))
    problems = violations(imports(root)) + [" -> ".join(c) for c in cycles(import_graph(root))]
    print(*problems, sep="\n", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
