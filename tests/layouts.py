"""Write tiny dataset trees in the real on-disk layouts, from REAL metadata rows, with small real image files.

Import from tests as `from layouts import ...` (pytest puts tests/ on sys.path: there is no tests/__init__.py).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from data_prep.reference import chexpert_table, iu_reports, nih_table

IMAGE_KINDS = ("jpeg", "png8", "png16", "rgb", "rgba")


@functools.cache
def chexpert_reference() -> pd.DataFrame:
    """The real CheXpert train.csv (cached: it takes seconds to read), with a patient column added."""
    table = chexpert_table()
    table["_patient"] = table["Path"].str.split("/").str[2]
    return table


@functools.cache
def nih_reference() -> pd.DataFrame:
    """The real ChestX-ray14 Data_Entry_2017_v2020.csv (cached)."""
    return nih_table()


@functools.cache
def iu_reference() -> pd.DataFrame:
    """The real Indiana University reports (cached)."""
    return iu_reports()


def radiograph_like(shape: tuple[int, int], seed: int) -> np.ndarray:
    """(H, W) float64 in [0, 1]: a bright mediastinum column between two darker lung fields, plus noise."""
    height, width = shape
    x = np.linspace(-1, 1, width)[None, :]
    y = np.linspace(0, 1, height)[:, None]
    image = 0.25 + 0.5 * np.exp(-(x / 0.25) ** 2) + 0.15 * y
    image = image + np.random.default_rng(seed).normal(0, 0.03, size=shape)
    return np.clip(image, 0, 1)


def write_image(path: Path, kind: str = "png8", shape: tuple[int, int] = (40, 32), seed: int = 0) -> Path:
    """A small real image file of one kind: jpeg, png8, png16 (16-bit gray), rgb, rgba."""
    pixels = radiograph_like(shape, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    gray8 = np.rint(pixels * 255).astype(np.uint8)
    if kind == "jpeg":
        Image.fromarray(gray8).save(path, format="JPEG", quality=95)
    elif kind == "png8":
        Image.fromarray(gray8).save(path, format="PNG")
    elif kind == "png16":
        Image.fromarray(np.rint(pixels * 65535).astype(np.uint16)).save(path, format="PNG")
    elif kind in ("rgb", "rgba"):
        channels = [gray8] * 3 + ([np.full_like(gray8, 255)] if kind == "rgba" else [])
        Image.fromarray(np.stack(channels, axis=-1)).save(path, format="PNG")
    else:
        raise ValueError(f"kind must be one of {IMAGE_KINDS}")
    return path


def _sample(values: np.ndarray, n: int, seed: int) -> np.ndarray:
    """n distinct values drawn with a seeded generator, sorted."""
    return np.sort(np.random.default_rng(seed).choice(values, size=n, replace=False))


@dataclass
class CheXpertTree:
    """What write_chexpert wrote: the root and the real rows in its train.csv and valid.csv."""

    root: Path
    train: pd.DataFrame
    valid: pd.DataFrame


def write_chexpert(root: Path, n_train_patients: int = 8, n_valid_patients: int = 3, seed: int = 0) -> CheXpertTree:
    """DATA_ROOT/CheXpert-v1.0-small with train.csv = every real row of sampled patients, their JPEG images.

    valid.csv holds real rows of other patients moved to valid/patient645NN (the real valid.csv's id range) and
    given 0/1 labels only, as the real radiologist-labeled valid.csv has (blank and uncertain -> 0).
    """
    table = chexpert_reference()
    patients = _sample(table["_patient"].unique(), n_train_patients + n_valid_patients, seed)
    columns = [c for c in table.columns if c != "_patient"]
    train = table[table["_patient"].isin(patients[:n_train_patients])][columns].reset_index(drop=True)
    valid = table[table["_patient"].isin(patients[n_train_patients:])][columns].reset_index(drop=True)
    renamed = {p: f"patient{64541 + i}" for i, p in enumerate(patients[n_train_patients:])}
    parts = valid["Path"].str.split("/", expand=True)
    valid["Path"] = parts[0] + "/valid/" + parts[2].map(renamed) + "/" + parts[3] + "/" + parts[4]
    findings = columns[5:]
    valid[findings] = valid[findings].fillna(0.0).replace(-1.0, 0.0)
    folder = root / "CheXpert-v1.0-small"
    folder.mkdir(parents=True, exist_ok=True)
    train.to_csv(folder / "train.csv", index=False)
    valid.to_csv(folder / "valid.csv", index=False)
    for i, path in enumerate([*train["Path"], *valid["Path"]]):
        write_image(root / path, "jpeg", shape=(40, 32), seed=i)
    return CheXpertTree(root, train, valid)


@dataclass
class NIHTree:
    """What write_nih wrote: the root, the real Data_Entry rows, and the official-style test list."""

    root: Path
    table: pd.DataFrame
    test_images: list[str]


def write_nih(root: Path, n_patients: int = 10, n_test_patients: int = 3, seed: int = 0) -> NIHTree:
    """DATA_ROOT/ChestX-ray14: real Data_Entry rows of sampled patients, PNGs split over images_001 and images_002,
    and patient-wise train_val_list.txt / test_list.txt (as the official lists are)."""
    table = nih_reference()
    patients = _sample(table["Patient ID"].unique(), n_patients, seed)
    rows = table[table["Patient ID"].isin(patients)].reset_index(drop=True)
    folder = root / "ChestX-ray14"
    folder.mkdir(parents=True, exist_ok=True)
    rows.to_csv(folder / "Data_Entry_2017_v2020.csv", index=False)
    half = len(rows) // 2
    for i, name in enumerate(rows["Image Index"]):
        write_image(folder / ("images_001" if i < half else "images_002") / "images" / name, "png8", seed=i)
    is_test = rows["Patient ID"].isin(patients[:n_test_patients])
    test_images = rows.loc[is_test, "Image Index"].tolist()
    (folder / "test_list.txt").write_text("\n".join(test_images) + "\n")
    (folder / "train_val_list.txt").write_text("\n".join(rows.loc[~is_test, "Image Index"]) + "\n")
    return NIHTree(root, rows, test_images)


def write_hospital(root: Path, n_studies: int = 12, seed: int = 0) -> pd.DataFrame:
    """DATA_ROOT/hospital/reports.csv (this project's layout) with real IU report texts and PNG images.

    Patients have 1-2 studies, each a PA (or AP) frontal and every third study also a lateral (LL) image; sex and
    age are drawn with the seed (the IU reports carry none). Returns the reports.csv table.
    """
    reports = iu_reference()
    chosen = _sample(np.arange(len(reports)), n_studies, seed)
    rng = np.random.default_rng(seed)
    rows = []
    for s, index in enumerate(chosen):
        report = reports.iloc[int(index)]
        text = f"FINDINGS: {report['findings']} IMPRESSION: {report['impression']}"
        patient, study = f"P{s // 2:06d}", f"S{s:06d}"
        if s % 2 == 0:  # a new patient: draw sex and age once
            sex, age = ("M", "F")[int(rng.integers(2))], float(rng.integers(18, 90))
        views = ["PA" if s % 4 else "AP"] + (["LL"] if s % 3 == 0 else [])
        for v, view in enumerate(views, start=1):
            kind = "frontal" if view != "LL" else "lateral"
            path = f"images/{patient}/{study}/view{v}_{kind}.png"
            rows.append({"Path": path, "PatientID": patient, "StudyID": study, "View": view, "Sex": sex,
                         "Age": age, "Report": text})
            write_image(root / "hospital" / path, "png8", seed=s * 10 + v)
    table = pd.DataFrame(rows)
    table.to_csv(root / "hospital" / "reports.csv", index=False)
    return table
