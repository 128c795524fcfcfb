"""Subgroup AUROC on the real ChestX-ray14 metadata (projection, sex, age of real patients' films), scored by
constructed models whose quality per subgroup is known."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from layouts import nih_reference
from sklearn.metrics import roc_auc_score

from cxrcore.experiments.subgroups import (
    MIN_POSITIVES,
    UNKNOWN,
    gap_reading,
    patients_needed,
    split_findings,
    subgroup_aurocs,
    subgroup_columns,
)
from cxrcore.metrics import score_column

FINDINGS = ["Effusion", "Infiltration", "Atelectasis"]


@pytest.fixture(scope="module")
def films() -> tuple[pd.DataFrame, pd.DataFrame]:
    """(predictions without scores, manifest) for the real films of the first 700 patients of Data_Entry."""
    table = nih_reference()
    rows = table[table["Patient ID"].isin(table["Patient ID"].unique()[:700])].reset_index(drop=True)
    labels = {f: rows["Finding Labels"].str.split("|").map(lambda found, f=f: float(f in found)) for f in FINDINGS}
    predictions = pd.DataFrame({"path": rows["Image Index"], "patient_id": rows["Patient ID"].astype(str), **labels})
    manifest = pd.DataFrame({"path": rows["Image Index"], "patient_id": rows["Patient ID"].astype(str),
                             "projection": rows["View Position"], "sex": rows["Patient Gender"],
                             "age": rows["Patient Age"].astype(float)})
    return predictions, manifest


def _scored(predictions: pd.DataFrame, noise: np.ndarray, seed: int = 0) -> pd.DataFrame:
    """Scores = label + Gaussian noise of the given per-film size: more noise, lower AUROC."""
    rng = np.random.default_rng(seed)
    scores = {score_column(f): predictions[f] + noise * rng.normal(size=len(predictions)) for f in FINDINGS}
    return predictions.assign(**scores)


def test_a_model_worse_on_ap_films_shows_a_gap_below_zero_and_none_by_sex(films) -> None:
    predictions, manifest = films
    ap = (manifest["projection"] == "AP").to_numpy()
    table, gaps = subgroup_aurocs(_scored(predictions, np.where(ap, 2.0, 0.5)), manifest, FINDINGS, n_boot=100)
    gaps = gaps.set_index("split")
    assert gaps.loc["projection", "comparison"] == "AP - PA"
    assert gaps.loc["projection", "ci_high"] < 0 < gaps.loc["sex", "ci_high"] and gaps.loc["sex", "ci_low"] < 0
    by_group = table.set_index(["split", "subgroup"])
    assert by_group.loc[("projection", "AP"), "mean_auroc"] < by_group.loc[("projection", "PA"), "ci_low"]
    assert by_group.loc[("projection", "AP"), "images"] == ap.sum()
    pa = ~ap & (manifest["projection"] == "PA").to_numpy()
    scored = _scored(predictions, np.where(ap, 2.0, 0.5))
    expected = np.mean([roc_auc_score(scored.loc[pa, f], scored.loc[pa, score_column(f)]) for f in FINDINGS])
    assert by_group.loc[("projection", "PA"), "mean_auroc"] == pytest.approx(expected, abs=1e-12)  # sklearn's AUROC
    assert table["label"][0] == f"projection: PA ({(~ap).sum():,} films)"
    assert by_group.loc[("sex", "F"), "patients"] == manifest.loc[manifest["sex"] == "F", "patient_id"].nunique()
    # patients with AP and PA films count in both subgroups: one bootstrap draws them into both at once
    assert by_group.loc["projection", "patients"].sum() > manifest["patient_id"].nunique()
    assert "excludes zero for AP - PA (below zero)" in gap_reading(gaps.reset_index(), 700)


def test_a_model_alike_on_every_subgroup_shows_no_gap_and_says_how_many_patients_would(films) -> None:
    predictions, manifest = films
    _, gaps = subgroup_aurocs(_scored(predictions, np.full(len(predictions), 1.0)), manifest, FINDINGS, n_boot=100)
    assert ((gaps["ci_low"] < 0) & (gaps["ci_high"] > 0)).all()
    reading = gap_reading(gaps, 700)
    assert reading.startswith("No gap's interval excludes zero: on 700 test patients")
    assert "the side of its interval that faces zero reaches" in reading and "half the time" in reading
    assert "80 % of the time takes about" in reading and "2.0 times as many" in reading


def test_patients_needed_uses_the_side_that_faces_zero() -> None:
    above = pd.Series({"gap": 0.073, "ci_low": -0.056, "ci_high": 0.165})  # the lower side is 0.129 from the gap
    even, powered = patients_needed(above, 152)
    assert even == pytest.approx(152 * (0.129 / 0.073) ** 2)
    assert powered == pytest.approx(even * ((1.96 + 0.84) / 1.96) ** 2)
    below = pd.Series({"gap": -0.05, "ci_low": -0.2, "ci_high": 0.03})  # the upper side faces zero: 0.08
    assert patients_needed(below, 100)[0] == pytest.approx(100 * (0.08 / 0.05) ** 2)
    assert patients_needed(pd.Series({"gap": 0.0, "ci_low": -0.1, "ci_high": 0.1}), 100) == (np.inf, np.inf)


def test_unknown_sex_and_age_form_their_own_row_outside_the_comparisons(films) -> None:
    predictions, manifest = films
    manifest = manifest.assign(sex=manifest["sex"].where(manifest.index % 10 != 0, "U"),
                               age=manifest["age"].where(manifest.index % 7 != 0))
    members = subgroup_columns(predictions, manifest)
    assert (members["sex"] == UNKNOWN).sum() == (manifest["sex"] == "U").sum()
    assert (members["age band"] == UNKNOWN).sum() == manifest["age"].isna().sum()
    table, gaps = subgroup_aurocs(_scored(predictions, np.full(len(predictions), 1.0)), manifest, FINDINGS, n_boot=20)
    assert {("sex", UNKNOWN), ("age band", UNKNOWN)} <= set(zip(table["split"], table["subgroup"], strict=True))
    assert table["images"].groupby(table["split"]).sum().eq(len(predictions)).all()  # no film left out
    assert gaps["comparison"].tolist() == ["AP - PA", "F - M", "60 and over - under 40"]


def test_a_split_averages_only_findings_with_enough_positives_in_each_subgroup(films) -> None:
    predictions, manifest = films
    members = subgroup_columns(predictions, manifest)
    rare = predictions.assign(Effusion=np.where(members["sex"] == "F", 0.0, predictions["Effusion"]))
    rare.loc[rare.index[(members["sex"] == "F").to_numpy()][:MIN_POSITIVES - 1], "Effusion"] = 1.0
    assert split_findings(rare, members["sex"], FINDINGS) == ["Infiltration", "Atelectasis"]
    assert split_findings(rare, members["projection"], FINDINGS) == FINDINGS


def test_a_film_the_manifest_lacks_is_named(films) -> None:
    predictions, manifest = films
    with pytest.raises(ValueError, match=r"1 predicted films are not in the manifest, first \['00000001_000.png'\]"):
        subgroup_columns(predictions, manifest.iloc[1:])


def test_no_measured_gap_is_said(films) -> None:
    predictions, manifest = films
    few = predictions.iloc[:40]
    _, gaps = subgroup_aurocs(_scored(few, np.full(len(few), 1.0)), manifest, FINDINGS, n_boot=5)
    assert gaps["gap"].isna().all()
    assert gap_reading(gaps, 12).startswith(f"No split has a finding with at least {MIN_POSITIVES} positives")
