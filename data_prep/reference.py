"""The real reference tables that torchxrayvision ships, read from the installed package (no network)."""
from __future__ import annotations

import importlib.util
import io
import tarfile
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

_FILES = {
    "chexpert": "chexpert_train.csv.gz",
    "nih": "Data_Entry_2017_v2020.csv.gz",
    "iu_reports": "NLMCXR_reports.tgz",
    "lung_masks": "semantic_masks_v7labs_lungs.zip",
}


def reference_file(key: str) -> Path:
    """Path of one shipped reference file ('chexpert', 'nih', 'iu_reports', 'lung_masks')."""
    if key not in _FILES:
        raise KeyError(f"unknown reference file {key!r}; known: {sorted(_FILES)}")
    # find_spec locates the package without importing it (importing it would import torch: ~4 s)
    spec = importlib.util.find_spec("torchxrayvision")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("torchxrayvision is not installed: run `make venv` or `pip install -e .`")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / _FILES[key]
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the installed torchxrayvision package")
    return path


def chexpert_table() -> pd.DataFrame:
    """The real CheXpert-v1.0-small train.csv (223,414 rows, source label values 1/0/-1/empty)."""
    return pd.read_csv(reference_file("chexpert"))


def nih_table() -> pd.DataFrame:
    """The real ChestX-ray14 Data_Entry_2017_v2020.csv (112,120 rows)."""
    return pd.read_csv(reference_file("nih"))


def _report_row(name: str, root: ET.Element) -> dict:
    """One report's sections, MeSH terms and image ids from its XML tree."""
    sections = {el.get("Label", "").lower(): (el.text or "").strip() for el in root.iter("AbstractText")}
    mesh = root.find("MeSH")
    return {
        "report_id": Path(name).stem,
        "comparison": sections.get("comparison", ""),
        "indication": sections.get("indication", ""),
        "findings": sections.get("findings", ""),
        "impression": sections.get("impression", ""),
        "mesh_major": ";".join(el.text or "" for el in mesh.iter("major")) if mesh is not None else "",
        "mesh_automatic": ";".join(el.text or "" for el in mesh.iter("automatic")) if mesh is not None else "",
        "image_ids": ";".join(el.get("id", "") for el in root.iter("parentImage")),
    }


def iu_reports() -> pd.DataFrame:
    """The 3,955 real Indiana University reports: sections, MeSH major/automatic terms (';'-joined), image ids."""
    rows = []
    with tarfile.open(reference_file("iu_reports")) as archive:
        for member in archive.getmembers():
            if member.isfile() and member.name.endswith(".xml"):
                root = ET.parse(archive.extractfile(member)).getroot()
                rows.append(_report_row(member.name, root))
    table = pd.DataFrame(rows)
    table["_n"] = table["report_id"].astype(int)
    return table.sort_values("_n").drop(columns="_n").reset_index(drop=True)


def lung_masks() -> list[tuple[str, np.ndarray]]:
    """The 517 real lung masks as (file name, boolean array of shape (H, W))."""
    masks = []
    with zipfile.ZipFile(reference_file("lung_masks")) as archive:
        for name in sorted(archive.namelist()):
            if name.endswith("/"):
                continue
            image = Image.open(io.BytesIO(archive.read(name))).convert("L")
            masks.append((Path(name).name, np.asarray(image) > 127))
    return masks
