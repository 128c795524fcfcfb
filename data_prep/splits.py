"""Seeded, reproducible, patient-wise splits: no patient ever has images in two splits.

Fractions are fractions of *patients*; image fractions follow in expectation (patients have different numbers
of images). The same table and seed always give the same split, whatever the row order, because patients are
sorted by id before the seeded permutation.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from cxrcore.manifest import assert_patient_disjoint


def _check_fractions(fractions: Mapping[str, float]) -> None:
    """Fractions must be positive and sum to 1."""
    values = np.array(list(fractions.values()), dtype=float)
    if len(values) == 0 or (values <= 0).any() or not np.isclose(values.sum(), 1.0, atol=1e-6):
        raise ValueError(f"split fractions must be positive and sum to 1, got {dict(fractions)}")


def split_patients(df: pd.DataFrame, fractions: Mapping[str, float], seed: int) -> pd.Series:
    """Split name per row (index of df) from a seeded patient-wise split, e.g. {'train': .95, 'valid': .05}."""
    _check_fractions(fractions)
    if df["patient_id"].isna().any():
        raise ValueError(f"missing patient_id at rows {df.index[df['patient_id'].isna()].tolist()[:10]}")
    patients = np.sort(df["patient_id"].astype(str).unique())
    order = np.random.default_rng(seed).permutation(len(patients))
    # cumulative boundaries over the shuffled patients; the last split takes the remainder
    bounds = np.rint(np.cumsum(list(fractions.values())) * len(patients)).astype(int)
    starts = np.concatenate([[0], bounds[:-1]])
    name_of = {}
    for name, start, stop in zip(fractions, starts, bounds, strict=True):
        name_of.update(dict.fromkeys(patients[order[start:stop]], name))
    return pd.Series(df["patient_id"].astype(str).map(name_of).to_numpy(), index=df.index, name="split")


def nih_official_split(df: pd.DataFrame, valid_fraction: float, seed: int) -> pd.Series:
    """Official ChestX-ray14 test list kept as 'test'; a patient-wise validation carve-out of 'trainval' rows."""
    if not 0 < valid_fraction < 1:
        raise ValueError(f"valid_fraction must be in (0, 1), got {valid_fraction}")
    unknown = sorted(set(df["split"].astype(str)) - {"trainval", "test"})
    if unknown:
        raise ValueError(f"expected splits 'trainval'/'test' from the official lists, found {unknown}")
    assert_patient_disjoint(df)  # the official lists are patient-wise; a file that is not is refused
    split = df["split"].astype(str).copy().rename("split")
    trainval = split == "trainval"
    fractions = {"train": 1 - valid_fraction, "valid": valid_fraction}
    split[trainval] = split_patients(df[trainval], fractions, seed)
    return split


def fold_seed(seed: int, fold: int) -> int:
    """Independent seed of one re-sampling fold, derived from (seed, fold)."""
    return int(np.random.SeedSequence([seed, fold]).generate_state(1)[0])


def kfold_patient_resampling(
    df: pd.DataFrame, n_folds: int = 5, fractions: Sequence[float] = (0.7, 0.1, 0.2), seed: int = 0
) -> pd.DataFrame:
    """Paper 001's 5-times patient-wise re-sampling: columns split_0..split_{n-1}, each a train/valid/test split.

    Each fold is an independent seeded 70/10/20 split of the patients (re-sampling, as Baltruschat et al. did),
    so a patient can be in the test set of more than one fold.
    """
    if n_folds < 1:
        raise ValueError(f"n_folds must be >= 1, got {n_folds}")
    if len(fractions) != 3:
        raise ValueError(f"fractions are (train, valid, test), got {tuple(fractions)}")
    named = dict(zip(("train", "valid", "test"), fractions, strict=True))
    folds = {f"split_{k}": split_patients(df, named, fold_seed(seed, k)).to_numpy() for k in range(n_folds)}
    return pd.DataFrame(folds, index=df.index)


VIEW_ARMS = ("frontal+lateral", "frontal, repeated", "frontal, same count", "frontal, fewer")  # paper 002 §5.2.1


def view_arms(table: pd.DataFrame, n_images: int, seed: int) -> dict[str, pd.DataFrame]:
    """Paper 002's lateral-view training sets from one manifest's train split, whole patients in one seeded order:

    - "frontal+lateral": every view of the first patients, up to n_images images;
    - "frontal, repeated": paper 002's own substitution: the same patients, each lateral image replaced by one of
      the same patient's frontal images drawn at random (a repeat, in the manifest's `copies` column); a patient
      with laterals but no frontal image keeps none of them, so the count can be a little lower;
    - "frontal, same count": frontal images only, patients in the same order, up to as many images (the laterals
      replaced by the frontal images of further patients; whole patients, so a few fewer at most);
    - "frontal, fewer": the frontal images of the "frontal+lateral" patients.

    Each arm is the table without the train images it does not use (valid and test rows are all kept)."""
    missing = [c for c in ("patient_id", "view", "split") if c not in table.columns]
    if missing:
        raise ValueError(f"view_arms needs the manifest columns {missing}")
    train = table[table["split"] == "train"]
    if not (train["view"] == "lateral").any():
        raise ValueError("the train split has no lateral images: the view arms would all be the same")
    patients = np.sort(train["patient_id"].astype(str).unique())
    order = patients[np.random.default_rng(seed).permutation(len(patients))]
    frontal = train[train["view"] == "frontal"]

    def first_patients(rows: pd.DataFrame, limit: int) -> pd.Index:
        per_patient = rows.groupby(rows["patient_id"].astype(str)).size().reindex(order).dropna()
        keep = per_patient.index[per_patient.cumsum() <= limit]
        return rows.index[rows["patient_id"].astype(str).isin(keep)]

    both = first_patients(train, n_images)
    fewer = frontal.index.intersection(both)
    chosen = {"frontal+lateral": both, "frontal, repeated": fewer,
              "frontal, same count": first_patients(frontal, len(both)), "frontal, fewer": fewer}
    arms = {name: table.drop(index=train.index.difference(rows)) for name, rows in chosen.items()}
    repeats = _substitute_laterals(train.loc[both], np.random.default_rng(seed))
    arms["frontal, repeated"] = arms["frontal, repeated"].assign(
        copies=repeats.reindex(arms["frontal, repeated"].index, fill_value=1))
    return {name: arms[name] for name in VIEW_ARMS}


def _substitute_laterals(train: pd.DataFrame, rng: np.random.Generator) -> pd.Series:
    """Copies of each frontal training image when each patient's lateral images are replaced by frontal images of
    the same patient drawn at random with replacement (paper 002 section 5.2.1)."""
    counts = pd.Series(1, index=train.index[train["view"] == "frontal"])
    for _, rows in train.groupby(train["patient_id"].astype(str), sort=True):
        frontal = rows.index[rows["view"] == "frontal"]
        laterals = int((rows["view"] == "lateral").sum())
        if laterals and len(frontal):
            drawn = rng.choice(len(frontal), size=laterals, replace=True)
            counts = counts.add(pd.Series(1, index=frontal[drawn]).groupby(level=0).sum(), fill_value=0)
    return counts.astype(int)
