"""The leakage experiment's comparisons: the images a run trained on, the test images with a training sibling, the
difference of two independent test sets' mean AUROCs and the sentences that read it (real CheXpert labels)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from layouts import chexpert_reference, write_chexpert

from cxrcore import make_settings
from cxrcore.experiments import leakage
from cxrcore.experiments.tables import predictions_auroc_table
from cxrcore.metrics import score_column
from cxrcore.runner import training_rows


def test_trained_patients_are_those_of_the_capped_training_rows(tmp_path: Path) -> None:
    root = tmp_path / "data"
    write_chexpert(root, n_train_patients=12)
    tables = leakage.split_tables(root)
    image_wise = tables["image-wise"]
    config = leakage.configs(make_settings("quick", root, tmp_path / "runs"), tables)["image-wise"]
    every = set(image_wise.loc[image_wise["split"] == "train", "real_patient"])
    assert leakage.trained_patients(config, image_wise) == every  # the quick cap (600) keeps these few images
    capped = {**config, "max_train_images": 5}
    trained = leakage.trained_patients(capped, image_wise)
    paths = training_rows(capped)["path"]
    assert len(paths) <= 5 and trained == set(image_wise.set_index("path").loc[paths, "real_patient"])
    assert trained < every
    assert leakage.sibling_share(image_wise, trained) <= leakage.sibling_share(image_wise)


def predictions(n: int, informative: bool, seed: int) -> pd.DataFrame:
    """A test predictions table on real CheXpert labels (uncertain and blank not scored): scores that follow the
    label (informative) or not."""
    rows = chexpert_reference().iloc[seed * n:(seed + 1) * n].reset_index(drop=True)
    rng = np.random.default_rng(seed)
    table = pd.DataFrame({"path": rows["Path"], "patient_id": rows["_patient"]})
    for finding in leakage.FINDINGS:
        labels = rows[finding].where(rows[finding].isin([0.0, 1.0]))
        table[finding] = labels
        noise = rng.normal(0, 1, n)
        table[score_column(finding)] = (2 * labels.fillna(0) + noise) if informative else noise
    return table


def test_mean_auroc_difference_resamples_both_sets() -> None:
    good, chance = predictions(600, True, 0), predictions(600, False, 1)
    difference = leakage.mean_auroc_difference(chance, good, leakage.FINDINGS, n_boot=200)
    means = {name: predictions_auroc_table(t, leakage.FINDINGS, 1).loc["Mean", "auroc"]
             for name, t in (("good", good), ("chance", chance))}
    assert difference["difference"] == pytest.approx(means["good"] - means["chance"])
    assert 0 < difference["low"] < difference["difference"] < difference["high"]
    same = leakage.mean_auroc_difference(good, good, leakage.FINDINGS, n_boot=200)
    assert same["difference"] == 0 and same["low"] < 0 < same["high"]  # the two draws resample separately
    assert "includes zero" in leakage.verdict(same) and leakage.verdict(difference).endswith("estimate is higher.")


def test_sibling_groups_split_the_test_patients() -> None:
    table = predictions(300, True, 2)
    trained = set(table["patient_id"].iloc[:100])
    groups = leakage.sibling_groups(table, trained)
    assert groups["with a training sibling"]["patient_id"].isin(trained).all()
    assert not groups["without"]["patient_id"].isin(trained).any()
    assert len(groups["with a training sibling"]) + len(groups["without"]) == len(table)


def test_readings_follow_the_interval() -> None:
    def reading(value: float, low: float, high: float) -> str:
        return leakage.sibling_reading({"difference": value, "low": low, "high": high})

    assert reading(0.05, 0.01, 0.09).startswith("it scores higher")
    assert reading(-0.05, -0.09, -0.01).startswith("it scores lower")
    assert reading(0.01, -0.03, 0.05).startswith("it scores no differently")
    lower = {"difference": -0.05, "low": -0.09, "high": -0.01}
    assert leakage.verdict(lower).endswith("estimate is lower.")
