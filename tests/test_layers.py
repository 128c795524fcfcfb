"""The packages' one-way layers (cxrcore.layers): no import of a higher layer, no import cycle."""
from __future__ import annotations

from pathlib import Path

from cxrcore.layers import BOTTOM, cycles, import_graph, imports, layer_of, mermaid, violations

ROOT = Path(__file__).resolve().parents[1]


def write_tree(root: Path, files: dict[str, str]) -> Path:
    """Write `files` (relative path -> source) under root, with an empty __init__.py in every package folder."""
    for name, source in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source)
        for folder in path.relative_to(root).parents[:-1]:
            (root / folder / "__init__.py").touch()
    return root


def test_layer_of() -> None:
    """Bottom modules, the engine, data_prep and the experiments are numbered from the bottom up."""
    modules = ("cxrcore.findings", "cxrcore.runner", "cxrcore", "data_prep.synth.write")
    assert [layer_of(m) for m in modules] == [0, 1, 1, 2]
    assert layer_of("cxrcore.experiments") == layer_of("cxrcore.experiments.transfer") == 3
    assert layer_of("cxrcore.__main__") == 3  # `python -m cxrcore experiment NAME` runs the experiments


def test_no_module_imports_a_higher_layer() -> None:
    """No module of cxrcore or data_prep imports a module of a higher layer (its file and line are named)."""
    graph = import_graph(ROOT)
    assert set(BOTTOM) <= set(graph), "a bottom-layer module was renamed: update cxrcore.layers.BOTTOM"
    assert violations(imports(ROOT)) == []


def test_no_import_cycles() -> None:
    """The modules of the two packages import one another without a cycle."""
    assert cycles(import_graph(ROOT)) == []


def test_checker_catches_violations_and_cycles(tmp_path: Path) -> None:
    """On a small tree: upward imports (in functions, relative, `from a import b`) are named with file and line."""
    root = write_tree(tmp_path, {
        "cxrcore/findings.py": "from cxrcore import metrics\n",
        "cxrcore/metrics.py": "import numpy\n\n\ndef f():\n    from data_prep.stats import table\n",
        "cxrcore/models.py": "from .experiments import run\nfrom . import metrics\n",
        "cxrcore/experiments/run.py": "from ..models import build\nfrom data_prep import stats\n",
        "data_prep/stats.py": "from cxrcore.experiments.run import go\nfrom cxrcore.findings import NAMES\n",
    })
    assert violations(imports(root)) == [
        "cxrcore/findings.py:1: cxrcore.findings (bottom) imports cxrcore.metrics (cxrcore engine), a higher layer",
        "cxrcore/metrics.py:5: cxrcore.metrics (cxrcore engine) imports data_prep.stats (data_prep), a higher layer",
        "cxrcore/models.py:1: cxrcore.models (cxrcore engine) imports cxrcore.experiments.run (cxrcore.experiments), "
        "a higher layer",
        "data_prep/stats.py:1: data_prep.stats (data_prep) imports cxrcore.experiments.run (cxrcore.experiments), "
        "a higher layer",
    ]
    assert import_graph(root)["cxrcore.models"] == {"cxrcore.experiments.run", "cxrcore.metrics"}
    assert ["cxrcore.experiments.run", "cxrcore.models", "cxrcore.experiments.run"] in cycles(import_graph(root))


def test_modules_imported_by_name_count_as_imports(tmp_path: Path) -> None:
    """A module named in a string (for importlib, as cli.dispatch imports commands) is an import like any other."""
    root = write_tree(tmp_path, {
        "cxrcore/cli.py": "COMMANDS = {'experiment': ('cxrcore.experiments.run', 'help')}\n",
        "cxrcore/__main__.py": "COMMANDS = {'experiment': ('cxrcore.experiments.run', 'help')}\n",
        "cxrcore/experiments/run.py": "'''Named in a docstring: cxrcore.cli'''\nNAME = 'cxrcore'\n",
    })
    assert violations(imports(root)) == [
        "cxrcore/cli.py:1: cxrcore.cli (cxrcore engine) imports cxrcore.experiments.run (cxrcore.experiments), "
        "a higher layer",
    ]


def test_drawing_arrows_point_down() -> None:
    """The Mermaid drawing of the real tree has one node per layer and no upward arrow."""
    drawing = mermaid(ROOT)
    assert drawing.startswith("flowchart TD") and "UPWARD" not in drawing
    assert all(f"L{layer}[" in drawing for layer in range(5))


def test_the_readmes_drawing_is_the_trees() -> None:
    """README's layer drawing is what `python -m cxrcore.layers` prints for this tree (paste it there when it fails)."""
    readme = (ROOT / "README.md").read_text()
    drawn = readme.split("```mermaid\n", 1)[1].split("\n```", 1)[0]
    assert drawn == mermaid(ROOT).rstrip("\n"), "README.md's drawing is stale: paste `python -m cxrcore.layers` there"
