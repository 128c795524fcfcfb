"""Patient-wise, seeded splits on the real ChestX-ray14 table (112,120 images of 30,805 patients)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from layouts import nih_reference

from cxrcore.manifest import assert_patient_disjoint
from data_prep.splits import VIEW_ARMS, kfold_patient_resampling, nih_official_split, split_patients, view_arms
from data_prep.stats import chexpert_raw


@pytest.fixture(scope="module")
def nih() -> pd.DataFrame:
    """The real table reduced to what splits need: patient_id per image."""
    table = nih_reference()
    return pd.DataFrame({"patient_id": table["Patient ID"].map("{:08d}".format).to_numpy()}, index=table["Image Index"])


def patient_fraction(df: pd.DataFrame, split: pd.Series, name: str) -> float:
    """Fraction of patients assigned to one split."""
    return df.loc[split == name, "patient_id"].nunique() / df["patient_id"].nunique()


def test_split_patients_disjoint_reproducible(nih: pd.DataFrame) -> None:
    fractions = {"train": 0.85, "valid": 0.10, "test": 0.05}  # paper 000's hospital site
    split = split_patients(nih, fractions, seed=3)
    assert_patient_disjoint(nih.assign(split=split))
    for name, fraction in fractions.items():
        assert patient_fraction(nih, split, name) == pytest.approx(fraction, abs=1e-4)
    pd.testing.assert_series_equal(split, split_patients(nih, fractions, seed=3))
    assert (split != split_patients(nih, fractions, seed=4)).mean() > 0.1
    shuffled = nih.sample(frac=1.0, random_state=0)  # row order must not matter
    pd.testing.assert_series_equal(split_patients(shuffled, fractions, seed=3).loc[nih.index], split)


def test_chexpert_style_95_5(nih: pd.DataFrame) -> None:
    split = split_patients(nih, {"train": 0.95, "valid": 0.05}, seed=0)
    assert set(split) == {"train", "valid"}
    assert patient_fraction(nih, split, "valid") == pytest.approx(0.05, abs=1e-4)
    assert_patient_disjoint(nih.assign(split=split))


def test_assert_patient_disjoint_names_the_patient(nih: pd.DataFrame) -> None:
    df = nih.head(50).assign(split="train").reset_index(drop=True)
    leaking = df["patient_id"].iloc[5]
    df.loc[5, "split"] = "test"
    assert (df["patient_id"] == leaking).sum() > 1  # the real table: this patient has several images
    with pytest.raises(ValueError, match=f"patient '{leaking}' has images in splits \\['test', 'train'\\]"):
        assert_patient_disjoint(df)


def test_bad_fractions(nih: pd.DataFrame) -> None:
    with pytest.raises(ValueError, match="sum to 1"):
        split_patients(nih, {"train": 0.8, "valid": 0.1}, seed=0)
    with pytest.raises(ValueError, match="positive"):
        split_patients(nih, {"train": 1.1, "valid": -0.1}, seed=0)


def test_nih_official_split_keeps_test_and_carves_valid(nih: pd.DataFrame) -> None:
    raw = split_patients(nih, {"trainval": 0.8, "test": 0.2}, seed=9)  # patient-wise, like the official lists
    df = nih.assign(split=raw)
    split = nih_official_split(df, valid_fraction=0.1, seed=1)
    assert (split[raw == "test"] == "test").all()
    assert set(split[raw == "trainval"]) == {"train", "valid"}
    assert_patient_disjoint(df.assign(split=split))
    pd.testing.assert_series_equal(split, nih_official_split(df, valid_fraction=0.1, seed=1))
    carved = df.loc[split == "valid", "patient_id"].nunique() / df.loc[raw == "trainval", "patient_id"].nunique()
    assert carved == pytest.approx(0.1, abs=1e-3)
    leaky = df.copy()
    leaky.iloc[0, leaky.columns.get_loc("split")] = "test" if raw.iloc[0] == "trainval" else "trainval"
    with pytest.raises(ValueError, match="in splits"):
        nih_official_split(leaky, valid_fraction=0.1, seed=1)


def test_kfold_patient_resampling(nih: pd.DataFrame) -> None:
    folds = kfold_patient_resampling(nih, n_folds=5, fractions=(0.7, 0.1, 0.2), seed=0)
    assert list(folds.columns) == [f"split_{k}" for k in range(5)]
    for column in folds:
        assert_patient_disjoint(nih.assign(split=folds[column]))
        assert patient_fraction(nih, folds[column], "test") == pytest.approx(0.2, abs=1e-4)
    assert (folds["split_0"] != folds["split_1"]).mean() > 0.1  # independent re-samples
    pd.testing.assert_frame_equal(folds, kfold_patient_resampling(nih, 5, (0.7, 0.1, 0.2), seed=0))
    assert not np.array_equal(folds.to_numpy(), kfold_patient_resampling(nih, 5, (0.7, 0.1, 0.2), 1).to_numpy())


def test_view_arms_replace_laterals_with_frontals_of_further_patients_or_repeats() -> None:
    """Paper 002's arms on real CheXpert rows: the same patient order, whole patients, valid and test untouched."""
    real = chexpert_raw("all")
    table = real[real["patient_id"].isin(real["patient_id"].unique()[:400])].reset_index(drop=True)
    table["split"] = split_patients(table, {"train": 0.7, "valid": 0.1, "test": 0.2}, seed=0)
    arms = view_arms(table, n_images=300, seed=0)
    assert list(arms) == list(VIEW_ARMS)
    train = {name: arm[arm["split"] == "train"] for name, arm in arms.items()}
    both, repeated, same, fewer = (train[name] for name in VIEW_ARMS)
    most_per_patient = table.groupby("patient_id").size().max()
    assert len(both) <= 300 and (both["view"] == "lateral").any()
    assert set(same["view"]) == set(fewer["view"]) == {"frontal"}
    assert len(both) - most_per_patient < len(same) <= len(both)  # as many images, up to one patient
    assert set(fewer.index) == set(both.index[both["view"] == "frontal"]) and len(fewer) < len(both)
    assert set(both["patient_id"]) < set(same["patient_id"])  # the same first patients, then further ones
    # paper 002's substitution: the same patients' frontal images, each lateral replaced by a repeat of one of them
    assert set(repeated.index) == set(fewer.index) and repeated["copies"].min() == 1
    drawn = repeated.groupby("patient_id")["copies"].sum()
    has_frontal = both.groupby("patient_id")["view"].apply(lambda v: (v == "frontal").any())
    assert drawn.to_dict() == both.groupby("patient_id").size()[has_frontal].to_dict()
    assert (arms["frontal, repeated"].loc[arms["frontal, repeated"]["split"] != "train", "copies"] == 1).all()
    for arm in arms.values():
        assert_patient_disjoint(arm)
        pd.testing.assert_frame_equal(arm[arm["split"] != "train"].drop(columns="copies", errors="ignore"),
                                      table[table["split"] != "train"])
    assert view_arms(table, 300, seed=0)["frontal, same count"].equals(arms["frontal, same count"])
    with pytest.raises(ValueError, match="no lateral images"):
        view_arms(table[table["view"] == "frontal"], 300, seed=0)
