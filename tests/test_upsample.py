"""Up-sampling rare findings on real CheXpert label rows: training rows only, the stated numbers of draws."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from layouts import write_chexpert

from cxrcore.manifest import assert_patient_disjoint, copies, validate_manifest
from data_prep.manifests import read_chexpert
from data_prep.splits import split_patients
from data_prep.stats import chexpert_raw
from data_prep.upsample import leaky_upsample_then_split, positives_drawn, upsample_rare

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


def test_the_leaky_protocol_puts_copies_of_one_image_on_both_sides(tmp_path) -> None:
    """Paper 003's protocol on a real-layout CheXpert tree: it passes the manifest's checks, and it leaks."""
    tree = write_chexpert(tmp_path / "data", n_train_patients=40, n_valid_patients=3)
    table = read_chexpert(tree.root)
    table = table[table["split"] == "trainval"]
    leaky = leaky_upsample_then_split(table, FINDINGS, 0.5, {"train": 0.8, "valid": 0.1, "test": 0.1}, seed=0,
                                      data_root=tree.root, link_root=tmp_path / "links")
    validate_manifest(leaky)  # each copy passes as its own file and "patient": the checks cannot see the leak
    original = leaky["path"].str.replace(r"^leaky/copy\d+/", "", regex=True)
    assert len(leaky) == copies(upsample_rare(table.assign(split="train"), FINDINGS, 0.5)).sum()
    splits_per_image = leaky.groupby(original)["split"].agg(set)
    assert any({"train", "test"} <= s for s in splits_per_image)  # a test image the model also trains on
    patient = original.str.extract(r"(patient\d+)")[0]
    assert (leaky.groupby(patient)["split"].nunique() > 1).any()  # and patients on both sides
    for path, source in zip(leaky["path"], original, strict=True):
        assert (tmp_path / "links" / path).resolve() == (tree.root / source).resolve()
    valid = read_chexpert(tmp_path / "links")  # the site's own folders are linked too: its test set still reads
    assert (valid["split"] == "test").any() and (tmp_path / "links" / valid["path"].iloc[-1]).is_file()
    again = leaky_upsample_then_split(table, FINDINGS, 0.5, {"train": 0.8, "valid": 0.1, "test": 0.1}, seed=0,
                                      data_root=tree.root, link_root=tmp_path / "links")
    assert again.equals(leaky)  # the same links are reused
    users_file = tmp_path / "other" / leaky["path"].iloc[0]
    users_file.parent.mkdir(parents=True)
    users_file.write_text("not ours")
    with pytest.raises(FileExistsError, match="is not a link of ours"):
        leaky_upsample_then_split(table, FINDINGS, 0.5, {"train": 0.8, "valid": 0.1, "test": 0.1}, seed=0,
                                  data_root=tree.root, link_root=tmp_path / "other")
    assert users_file.read_text() == "not ours"
    correct = upsample_rare(table.assign(split=split_patients(table, {"train": 0.8, "valid": 0.1, "test": 0.1},
                                                              seed=0)), FINDINGS, 0.5)
    assert_patient_disjoint(correct)  # the correct protocol: patients split first, only training images repeated
    assert (copies(correct[correct["split"] != "train"]) == 1).all() and copies(correct).max() > 1
