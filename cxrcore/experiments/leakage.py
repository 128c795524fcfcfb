"""Experiment "leakage": the same model trained and tested on a patient-wise and on an image-wise split.

The demo CheXpert site's training images are split 70/10/20 twice with the same seed, once by patient and once
image by image (every image its own "patient": what a pipeline that ignores the patient column produces). The
same ResNet-18 recipe trains on each (frontal and lateral images, U-Ones) and is scored on its certain test labels
(`tables.certain_labels`); test intervals resample the real patients in both. Two comparisons: the two models'
mean AUROCs (each test set's patients bootstrapped separately), and, within the image-wise model's
test split, the images whose patient it trained on against the others.
"""
from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from cxrcore.experiments.tables import RESULT_COLUMNS, bootstrap_draws, certain_labels, result_row, scored_findings
from cxrcore.manifest import assert_patient_disjoint, write_derived_manifest
from cxrcore.metrics import WeightedAUROC, patient_weights, score_column
from cxrcore.runner import Result, run, training_rows
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
    """Split name -> finished run, scored on its certain test labels (`tables.certain_labels`), its predictions'
    patient_id replaced by the real patient (for the bootstrap)."""
    tables = split_tables(settings.data_root)
    real = tables["patient-wise"].set_index("path")["real_patient"]
    finished = {name: certain_labels(run(config, runs_dir=settings.runs_dir), FINDINGS)
                for name, config in configs(settings, tables).items()}
    for result in finished.values():
        result.predictions["patient_id"] = result.predictions["path"].map(real)
    return finished


def results(settings: Settings) -> pd.DataFrame:
    """One row per split (RESULT_COLUMNS); certain labels only, intervals resample real patients in both."""
    draws = bootstrap_draws(settings)
    rows = [result_row(NAME, "ResNet-18", name, result, FINDINGS, draws) for name, result in runs(settings).items()]
    return pd.DataFrame(rows, columns=RESULT_COLUMNS)


def trained_patients(config: dict, image_wise: pd.DataFrame) -> set:
    """The real patients of the images a run config trains on (`cxrcore.runner.training_rows`: its image cap)."""
    real = image_wise.set_index("path")["real_patient"]
    return set(real.loc[training_rows(config)["path"]])


def sibling_share(image_wise: pd.DataFrame, trained: set | None = None) -> float:
    """Share of the image-wise split's test images whose real patient is in `trained` (default: has images anywhere
    in the training split)."""
    if trained is None:
        trained = set(image_wise.loc[image_wise["split"] == "train", "real_patient"])
    return float(image_wise.loc[image_wise["split"] == "test", "real_patient"].isin(trained).mean())


def sibling_groups(predictions: pd.DataFrame, trained: set) -> dict[str, pd.DataFrame]:
    """Test predictions (patient_id: the real patient) split by whether the patient is in `trained` (disjoint)."""
    sibling = predictions["patient_id"].isin(trained)
    return {"with a training sibling": predictions[sibling], "without": predictions[~sibling]}


def _mean_auroc(predictions: pd.DataFrame, findings: Sequence[str], n_boot: int, rng: np.random.Generator
                ) -> np.ndarray:
    """Mean AUROC over `findings` (counted labels only): the point estimate, then n_boot patient-bootstrap draws."""
    counted = [predictions[f].notna().to_numpy() for f in findings]
    aucs = [WeightedAUROC(predictions.loc[c, f].to_numpy(), predictions.loc[c, score_column(f)].to_numpy())
            for f, c in zip(findings, counted, strict=True)]
    groups = predictions["patient_id"].to_numpy()
    weights = [np.ones(len(predictions)), *patient_weights(groups, n_boot, rng)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a draw without both label values of every finding
        return np.array([np.nanmean([auc(w[c]) for auc, c in zip(aucs, counted, strict=True)]) for w in weights])


def mean_auroc_difference(reference: pd.DataFrame, other: pd.DataFrame, findings: Sequence[str], n_boot: int,
                          seed: int = 0) -> dict[str, float]:
    """Mean AUROC of `other` minus `reference` over the findings both score, with a 95 % bootstrap interval that
    resamples each test set's patients separately, as sets of different patients need; for two splits' draws from
    the same images, the images they share make the interval, if anything, too wide."""
    scored = [f for f in scored_findings(reference, findings) if f in scored_findings(other, findings)]
    if not scored:
        raise ValueError("no finding has enough positives in both test sets: the difference is undefined")
    rng = np.random.default_rng(seed)
    difference = _mean_auroc(other, scored, n_boot, rng) - _mean_auroc(reference, scored, n_boot, rng)
    draws = difference[1:][~np.isnan(difference[1:])]
    low, high = np.percentile(draws, [2.5, 97.5])
    return {"difference": float(difference[0]), "low": float(low), "high": float(high), "findings": len(scored)}


def verdict(difference: Mapping[str, float]) -> str:
    """A sentence on the image-wise minus patient-wise difference (`mean_auroc_difference`): does its interval
    exclude zero, and which way."""
    interval = f"{difference['low']:+.3f} to {difference['high']:+.3f}"
    if difference["low"] <= 0 <= difference["high"]:
        return f"The 95 % interval of the difference, {interval}, includes zero: this run cannot tell them apart."
    higher = "higher" if difference["difference"] > 0 else "lower"
    return f"The 95 % interval of the difference, {interval}, excludes zero: the image-wise estimate is {higher}."


def sibling_reading(difference: Mapping[str, float]) -> str:
    """A sentence on the within-model difference (`mean_auroc_difference` of the test images without a training
    sibling against those with one): did the model score better on patients it had trained on?"""
    interval = f"{difference['difference']:+.3f}, 95 % interval {difference['low']:+.3f} to {difference['high']:+.3f}"
    if difference["low"] > 0:
        return (f"it scores higher on the images of patients it trained on ({interval}): it recognises patients, "
                "which is the leak")
    if difference["high"] < 0:
        return (f"it scores lower on the images of patients it trained on ({interval}), the opposite of a leak: the "
                "two groups differ in something else")
    return (f"it scores no differently on the images of patients it trained on ({interval}): within that precision, "
            "no sign that it recognises patients")
