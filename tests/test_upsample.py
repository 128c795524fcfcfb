"""Up-sampling rare findings on real CheXpert label rows: training rows only, the stated numbers of draws."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cxrcore.manifest import assert_patient_disjoint, copies
from data_prep.splits import split_patients
from data_prep.stats import chexpert_raw
from data_prep.upsample import positives_drawn, upsample_rare

FINDINGS = ["Cardiomegaly", "Edema", "Pleural Effusion", "Pneumonia", "Pleural Other", "Fracture"]


@pytest.fixture(scope="module")
def table() -> pd.DataFrame:
    """2,000 real CheXpert training rows split patient-wise 80/10/10, as paper 003 splits."""
    real = chexpert_raw("all").iloc[:2000].reset_index(drop=True)
    return real.assign(split=split_patients(real, {"train": 0.8, "valid": 0.1, "test": 0.1}, seed=0))


def test_rare_positives_are_drawn_as_stated_and_nothing_else_changes(table: pd.DataFrame) -> None:
    up = upsample_rare(table, FINDINGS, share=0.5, max_copies=5)
    train = up["split"] == "train"
    positives = (table.loc[train, FINDINGS] == 1).sum()
    target = 0.5 * positives.max()
    assert (copies(up[~train]) == 1).all()  # validation and test images are scored once
    assert_patient_disjoint(up)
    wanted = pd.Series(1, index=up.index)
    for finding, count in positives.items():
        if 0 < count < target:
            rows = train & (up[finding] == 1)
            wanted[rows] = np.maximum(wanted[rows], min(int(np.ceil(target / count)), 5))
    pd.testing.assert_series_equal(copies(up), wanted, check_names=False)
    drawn = positives_drawn(up, FINDINGS)
    assert (drawn["positive images"] == positives).all()
    rare = positives[(positives > 0) & (positives < target)].index
    assert len(rare) >= 2 and (drawn.loc[rare, "positive draws"] >= drawn.loc[rare, "positive images"] * 2).all()
    assert copies(up).max() <= 5 and not (copies(up[train & (up[FINDINGS] != 1).all(axis=1)]) > 1).any()
    assert upsample_rare(table, FINDINGS, share=1.0, max_copies=1).equals(table.assign(copies=1))  # cap 1: none


def test_bad_arguments_are_named(table: pd.DataFrame) -> None:
    with pytest.raises(ValueError, match=r"share=0: expected a number in \(0, 1\]"):
        upsample_rare(table, FINDINGS, share=0)
    with pytest.raises(ValueError, match="max_copies=0"):
        upsample_rare(table, FINDINGS, share=0.5, max_copies=0)
    with pytest.raises(ValueError, match=r"missing columns \['Effusion'\]"):
        upsample_rare(table, ["Effusion"], share=0.5)
    with pytest.raises(ValueError, match="no positive training image"):
        upsample_rare(table.assign(**{f: 0.0 for f in FINDINGS}), FINDINGS, share=0.5)
