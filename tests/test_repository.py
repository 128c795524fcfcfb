"""Repository rules: chapters committed without outputs, a parameters cell first, a table of contents that resolves."""
from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def tracked_notebooks() -> list[Path]:
    """Notebooks tracked by git, or every notebook under book/ outside a checkout."""
    try:
        listed = subprocess.run(["git", "ls-files", "*.ipynb"], cwd=ROOT, capture_output=True, text=True, check=True)
        names = [line for line in listed.stdout.splitlines() if line]
    except (OSError, subprocess.CalledProcessError):
        names = []
    return [ROOT / n for n in names] or sorted((ROOT / "book").glob("*.ipynb"))


def toc_files(node) -> list[str]:
    """Every `file:` entry of a Jupyter Book _toc.yml, depth first."""
    if isinstance(node, dict):
        found = [node["file"]] if "file" in node else []
        return found + [f for value in node.values() for f in toc_files(value)]
    if isinstance(node, list):
        return [f for item in node for f in toc_files(item)]
    return []


@pytest.mark.parametrize("notebook", tracked_notebooks(), ids=lambda p: p.name)
def test_notebook_committed_without_outputs(notebook: Path) -> None:
    cells = json.loads(notebook.read_text())["cells"]
    code = [(i, c) for i, c in enumerate(cells) if c["cell_type"] == "code"]
    dirty = [i for i, c in code if c.get("outputs") or c.get("execution_count")]
    assert not dirty, f"{notebook.name}: cells {dirty} carry outputs; strip them (the book build executes chapters)"


@pytest.mark.parametrize("notebook", tracked_notebooks(), ids=lambda p: p.name)
def test_first_code_cell_is_parameters(notebook: Path) -> None:
    code_cells = [c for c in json.loads(notebook.read_text())["cells"] if c["cell_type"] == "code"]
    first = code_cells[0]
    assert "parameters" in first.get("metadata", {}).get("tags", []), f"{notebook.name}: first code cell not tagged"
    source = "".join(first["source"])
    assert "CXR_PROFILE" in source and "CXR_DATA_ROOT" in source, f"{notebook.name}: parameters cell ignores env vars"


def test_toc_entries_exist() -> None:
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    entries = [toc["root"], *toc_files(toc.get("parts", []))]
    missing = [e for e in entries if not any((ROOT / f"{e}{ext}").exists() for ext in ("", ".md", ".ipynb"))]
    assert not missing, f"_toc.yml names files that do not exist: {missing}"


def test_every_chapter_is_in_the_toc() -> None:
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    listed = {toc["root"], *toc_files(toc.get("parts", []))}
    chapters = [p for p in (ROOT / "book").glob("*") if p.suffix in {".md", ".ipynb"}]
    pages = {str(p.relative_to(ROOT).with_suffix("")) for p in chapters}
    assert pages <= listed, f"pages not in _toc.yml (they would not be built): {sorted(pages - listed)}"


def _package_name(requirement: str) -> str:
    """'scikit-learn>=1.4' -> 'scikit-learn' (lower case, '_' as '-')."""
    return re.split(r"[<>=!~\[ ;]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_conda_environment_lists_every_project_dependency() -> None:
    tomllib = pytest.importorskip("tomllib")  # standard library from Python 3.11
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {_package_name(r) for r in project["dependencies"]}
    wanted |= {_package_name(r) for extra in project["optional-dependencies"].values() for r in extra}
    conda = yaml.safe_load((ROOT / "environment.yml").read_text())["dependencies"]
    listed = {_package_name(d) for d in conda if isinstance(d, str)}
    listed |= {_package_name(d) for entry in conda if isinstance(entry, dict) for d in entry.get("pip", [])}
    listed = {"torch" if name == "pytorch" else name for name in listed}  # conda's name for the same package
    missing = sorted(wanted - listed)
    assert not missing, f"environment.yml lacks {missing}, which pyproject.toml's dependencies or extras name"
