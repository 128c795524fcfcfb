"""Experiment "leakage": the same model trained and tested on a patient-wise and on an image-wise split.

The demo CheXpert site's training images are split 70/10/20 twice with the same seed, once by patient and once
image by image (every image its own "patient": what a pipeline that ignores the patient column produces). The
same ResNet-18 recipe trains on each; test intervals resample the real patients in both.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from cxrcore.experiments.tables import RESULT_COLUMNS, bootstrap_draws, result_row
from cxrcore.manifest import assert_patient_disjoint, write_derived_manifest
from cxrcore.runner import Result, run
from cxrcore.settings import Settings
from data_prep.manifests import read_chexpert
from data_prep.splits import split_patients

NAME = "leakage"
FINDINGS = ["Cardiomegaly", "Edema", "Consolidation", "Atelectasis", "Pleural Effusion"]
FRACTIONS = {"train": 0.7, "valid": 0.1, "test": 0.2}
SPLITS = ("patient-wise", "image-wise")
QUICK_TRAIN_IMAGES = 600


def split_tables(data_root: Path) -> dict[str, pd.DataFrame]:
    """The site's training images split by patient and image by image (real patient ids kept in `real_patient`)."""
    images = read_chexpert(data_root)
    images = images[images["split"] == "trainval"].reset_index(drop=True).assign(real_patient=lambda t: t["patient_id"])
    patient_wise = images.assign(split=split_patients(images, FRACTIONS, seed=0))
    assert_patient_disjoint(patient_wise)
    image_wise = images.assign(patient_id=images["path"])  # every image its own "patient"
    image_wise["split"] = split_patients(image_wise, FRACTIONS, seed=0)
    return {"patient-wise": patient_wise, "image-wise": image_wise}


def configs(settings: Settings, tables: dict[str, pd.DataFrame] | None = None) -> dict[str, dict]:
    """Split name -> run config (ResNet-18 from random weights, paper 000's recipe without augmentation)."""
    out = {}
    for name, table in (tables or split_tables(settings.data_root)).items():
        path = write_derived_manifest(table.drop(columns="real_patient"),
                                      settings.runs_dir / "manifests" / f"data_and_labels_{name}.csv")
        out[name] = {"manifest": str(path), "findings": FINDINGS, "data_root": str(settings.data_root),
                     "arch": "resnet18", "preset": "paper000", "policy": "u-ones", "seed": 0,
                     "profile": settings.profile, "overrides": {"augment": False},
                     "max_train_images": QUICK_TRAIN_IMAGES if settings.is_quick_profile else None}
    return out


def stages(settings: Settings) -> list[list[dict]]:
    """One stage: the two runs are independent."""
    return [list(configs(settings).values())]


def runs(settings: Settings) -> dict[str, Result]:
    """Split name -> finished run, its predictions' patient_id replaced by the real patient (for the bootstrap)."""
    tables = split_tables(settings.data_root)
    real = tables["patient-wise"].set_index("path")["real_patient"]
    finished = {name: run(config, runs_dir=settings.runs_dir) for name, config in configs(settings, tables).items()}
    for result in finished.values():
        result.predictions["patient_id"] = result.predictions["path"].map(real)
    return finished


def results(settings: Settings) -> pd.DataFrame:
    """One row per split (RESULT_COLUMNS); intervals resample real patients in both."""
    draws = bootstrap_draws(settings)
    rows = [result_row(NAME, "ResNet-18", name, result, FINDINGS, draws) for name, result in runs(settings).items()]
    return pd.DataFrame(rows, columns=RESULT_COLUMNS)


def sibling_share(image_wise: pd.DataFrame) -> float:
    """Share of the image-wise split's test images whose real patient also has images in its training split."""
    train_patients = set(image_wise.loc[image_wise["split"] == "train", "real_patient"])
    return float(image_wise.loc[image_wise["split"] == "test", "real_patient"].isin(train_patients).mean())


def verdict(patient_wise: pd.Series, image_wise: pd.Series) -> str:
    """A sentence on two mean AUROC rows (auroc, low, high): do their intervals overlap, and which is higher."""
    if image_wise["low"] <= patient_wise["high"] and patient_wise["low"] <= image_wise["high"]:
        return "The intervals overlap: this run cannot tell the two estimates apart."
    higher = "higher" if image_wise["auroc"] > patient_wise["auroc"] else "lower"
    return f"The intervals do not overlap: the image-wise estimate is {higher}."
