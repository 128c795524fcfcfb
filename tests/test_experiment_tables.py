"""The chapters' statistics tables (cxrcore.experiments.tables): pairwise DeLong with BH q values, thresholds, F1."""
from __future__ import annotations

import warnings
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from cxrcore.experiments.tables import (
    above_chance,
    all_positive_f1,
    best_by_finding,
    bootstrap_cells,
    called_positive,
    clustering_reading,
    delong_cells,
    f1_by_arm,
    gradient_steps,
    interval,
    mean_rows,
    p_text,
    pairwise_delong,
    patient_bootstrap_pairs,
    recipe_table,
    significant_differences,
    threshold_tables,
    within_pairs,
    worse_arm,
    youden_thresholds,
)
from cxrcore.metrics import score_column

FINDINGS = ["Cardiomegaly", "Edema"]


def predictions_of(scores: dict[str, np.ndarray]) -> pd.DataFrame:
    """A predictions table: one score column per finding."""
    return pd.DataFrame({score_column(f): s for f, s in scores.items()})


@pytest.fixture
def arms() -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """60 images, labels with one unlabelled image; a near-perfect arm, a noisy one and a random one."""
    rng = np.random.default_rng(0)
    truth = pd.DataFrame({f: rng.integers(0, 2, 60).astype(float) for f in FINDINGS})
    truth.loc[3, "Edema"] = np.nan  # uncounted: no label
    labels = truth.fillna(0).to_numpy()
    scores = {"good": predictions_of({f: labels[:, k] + 0.1 * rng.random(60) for k, f in enumerate(FINDINGS)}),
              "noisy": predictions_of({f: labels[:, k] + 1.5 * rng.random(60) for k, f in enumerate(FINDINGS)}),
              "random": predictions_of({f: rng.random(60) for f in FINDINGS}),
              "other": predictions_of({f: rng.random(60) for f in FINDINGS})}
    return truth, scores


def test_pairwise_delong_pairs_directions_and_bh(arms) -> None:
    truth, scores = arms
    groups = {"net": ["good", "noisy", "random"], "solo": ["other"]}  # a group of one arm has no pair
    table = pairwise_delong(truth, scores, groups, FINDINGS)
    assert list(table.columns) == ["model", "A", "B", "finding", "AUROC A", "AUROC B", "A - B", "z", "p", "q (BH)",
                                   "pair"]
    assert list(zip(table["A"], table["B"], strict=True))[::2] == [("good", "noisy"), ("good", "random"),
                                                                   ("noisy", "random")]
    assert set(table["model"]) == {"net"} and list(table["finding"][:2]) == FINDINGS
    edema = truth["Edema"].notna()
    row = table[(table["pair"] == "good vs random") & (table["finding"] == "Edema")].iloc[0]
    assert row["AUROC A"] == pytest.approx(roc_auc_score(truth["Edema"][edema],
                                                         scores["good"][score_column("Edema")][edema]))
    assert row["AUROC A"] == pytest.approx(1.0) and row["A - B"] > 0.3 and row["z"] > 0 and row["p"] < 0.001
    assert (table.loc[table["A"] == "good", "A - B"] > 0).all()  # the near-perfect arm is A: positive differences
    assert (table["q (BH)"] >= table["p"] - 1e-12).all() and (table["q (BH)"] <= 1).all()
    by_p = table.sort_values("p")
    assert by_p["q (BH)"].is_monotonic_increasing  # BH keeps the order of the p values
    smallest = table["p"].idxmin()
    assert table.loc[smallest, "q (BH)"] == pytest.approx(table.loc[smallest, "p"] * len(table))


def test_pairwise_delong_clustered_by_patient_keeps_the_films_independent_p(arms) -> None:
    truth, scores = arms
    copies = np.repeat(np.arange(60), 3)  # each film three times within its patient: 60 films' worth of evidence
    same = truth.iloc[copies].reset_index(drop=True)
    same_scores = {name: table.iloc[copies].reset_index(drop=True) for name, table in scores.items()}
    groups = {"m": ["noisy", "random"]}
    clustered = pairwise_delong(same, same_scores, groups, FINDINGS, patients=copies)
    original = pairwise_delong(truth, scores, groups, FINDINGS)
    assert list(clustered.columns) == ["model", "A", "B", "finding", "AUROC A", "AUROC B", "A - B", "z", "p",
                                       "p (films independent)", "q (BH)", "pair"]
    assert clustered["p"].to_numpy() == pytest.approx(original["p"].to_numpy(), rel=1e-6)  # copies add nothing
    assert (clustered["p (films independent)"] < clustered["p"]).all()  # counted as 180 films, p shrinks
    assert clustered["q (BH)"].to_numpy() == pytest.approx(original["q (BH)"].to_numpy(), rel=1e-6)
    reading = clustering_reading(clustered)
    films = int((clustered["p (films independent)"] < 0.05).sum())
    assert reading.startswith(f"Counting every film as independent, {films} of the 2 tests have p < 0.05; "
                              f"clustered by patient, {int((clustered['p'] < 0.05).sum())}. In 2 of the 2")
    alike = clustered.assign(**{"p (films independent)": clustered["p"] + 0.01})
    assert "smaller one in only 0 of the 2: clustering by patient gave most tests a smaller p" in clustering_reading(
        alike)
    mixed = pd.concat([clustered, alike.iloc[:1]], ignore_index=True)  # the films' p smaller in 2 of 3: stricter
    assert "In 2 of the 3 the films-as-independent p is the smaller one" in clustering_reading(mixed)
    mixed = pd.concat([clustered, alike], ignore_index=True)  # 2 of 4: both ways
    assert "smaller one in only 2 of the 4: clustering moved the p-values both ways" in clustering_reading(mixed)


def test_delong_cells_and_worse_arm(arms) -> None:
    truth, scores = arms
    table = pairwise_delong(truth, scores, {"net": ["random", "good"]}, FINDINGS)
    cells = delong_cells(table)
    assert list(cells.index) == ["random vs good"] and list(cells.columns) == FINDINGS
    assert cells.loc["random vs good", "Edema"].startswith("-0.")  # random minus good: negative
    assert list(worse_arm(table)) == ["random", "random"]
    ties = pd.DataFrame({"A": ["x", "y", "z"], "B": ["u", "v", "w"], "A - B": [0.1, -0.2, 0.0]})
    assert list(worse_arm(ties)) == ["u", "y", ""]
    assert worse_arm(table.iloc[:0]).empty


def test_within_pairs_reads_only_pairs_inside_a_group() -> None:
    names = ["a1", "a2", "a3", "b1", "b2"]
    matrix = pd.DataFrame(np.arange(25.0).reshape(5, 5), index=names, columns=names)
    pairs = within_pairs(matrix, {"a": ["a1", "a2", "a3"], "b": ["b1", "b2"]})
    assert pairs.to_dict() == {"a1 vs a2": 1.0, "a1 vs a3": 2.0, "a2 vs a3": 7.0, "b1 vs b2": 19.0}


def test_youden_thresholds_on_validation_without_warning() -> None:
    valid = pd.DataFrame({"Cardiomegaly": [0, 0, 0, 1, 1, 1], "Edema": [0, 0, 0, 0, 0, 0]})
    valid[score_column("Cardiomegaly")] = [0.1, 0.2, 0.3, 0.6, 0.7, 0.8]
    valid[score_column("Edema")] = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the one-label finding's warning is silenced
        cuts = youden_thresholds(valid, FINDINGS)
    assert list(cuts.index) == FINDINGS and np.isnan(cuts["Edema"])
    assert 0.3 < cuts["Cardiomegaly"] <= 0.6


def test_threshold_tables_and_macro_f1() -> None:
    truth = pd.DataFrame({"Cardiomegaly": [0.0, 0.0, 1.0, 1.0], "Edema": [0.0, 1.0, 0.0, 1.0]})
    low = predictions_of({"Cardiomegaly": [0.1, 0.2, 0.3, 0.4], "Edema": [0.1, 0.9, 0.1, 0.9]})
    scores = {"low": low, "same": low.copy()}
    at_half = threshold_tables(truth, scores, FINDINGS, 0.5)
    assert list(at_half) == ["low", "same"]
    assert at_half["low"].loc["Cardiomegaly", "recall"] == 0  # every score below 0.5: no positive predicted
    assert at_half["low"].loc["Edema", "f1"] == 1
    chosen = threshold_tables(truth, scores, FINDINGS, {"low": pd.Series({"Cardiomegaly": 0.25, "Edema": 0.5}),
                                                        "same": pd.Series({"Cardiomegaly": 0.15, "Edema": 0.5})})
    assert chosen["low"].loc["Cardiomegaly", "f1"] == 1
    assert chosen["same"].loc["Cardiomegaly", "precision"] == pytest.approx(2 / 3)
    f1 = f1_by_arm(chosen)
    assert list(f1.columns) == [*FINDINGS, "macro F1"] and list(f1.index) == ["low", "same"]
    assert f1.loc["low", "macro F1"] == 1 and f1.loc["same", "macro F1"] == pytest.approx((0.8 + 1) / 2)


def test_gradient_steps_counts_batches_per_epoch() -> None:
    result = SimpleNamespace(history=pd.DataFrame({"epoch": [1, 2, 3]}), metrics={"images": {"train": 10}},
                             config={"preset": {"batch_size": 4}})
    assert gradient_steps(result) == 9  # 3 epochs of 3 batches (the last one partial)


def _one_image_per_patient(path, train_images: int):
    """A manifest in the project's schema: one frontal image per patient, train_images of them in the train split."""
    rows = [{"path": f"p/P{i:05d}/s1/view1_frontal.png", "site": "chexpert", "patient_id": f"{i:05d}",
             "study_id": f"{i:05d}/s1", "view": "frontal", "projection": "PA", "sex": "F", "age": 50,
             "split": "train" if i < train_images else "test", "Cardiomegaly": i % 2, "Edema": 0}
            for i in range(train_images + 10)]
    pd.DataFrame(rows).to_csv(path, index=False)
    return str(path)


def test_recipe_table_puts_each_paper_beside_this_run(tmp_path) -> None:
    """The quick profile's changes show in "this run"; the training images are the runs' own counts, or all."""
    manifest = _one_image_per_patient(tmp_path / "m.csv", 2_000)
    run = {"manifest": manifest, "findings": FINDINGS, "profile": "quick", "overrides": {"epochs": 8}}
    configs = [{**run, "preset": "paper000", "max_train_images": 600},
               {**run, "preset": "paper000", "max_train_images": 100},
               {**run, "preset": "paper003", "max_train_images": None}]
    table = recipe_table(configs, 2_000)
    assert list(table.columns.get_level_values(2)) == ["reported", "this run"] * 2
    paper000 = table.xs("paper000", axis=1, level=0).droplevel(0, axis=1)
    assert paper000.loc["image_size"].tolist() == ["320", "64"] and paper000.loc["epochs"].tolist() == ["30", "8"]
    assert paper000.loc["lr"].tolist() == ["0.001", "0.001"]  # the quick profile keeps the paper's rate
    assert paper000.loc["training images"].tolist() == ["n/a", "100 or 600"]  # not the site's count as the paper's
    paper003 = table.xs("paper003", axis=1, level=0).droplevel(0, axis=1)
    assert paper003.loc["training images"].tolist() == ["n/a", "2,000 (all)"]
    assert paper003.loc["lr"].tolist() == ["0.0001", "0.0001"]  # reported by paper 003
    assert paper003.loc["epochs", "reported"] == "not reported (ours: 10)"  # Preset.chosen: not the paper's
    assert paper003.loc["batch_size", "reported"] == "not reported (ours: 32)"
    given = recipe_table(configs, 2_000, {"paper000": "about 190,000"}).xs("paper000", axis=1, level=0)
    assert given.loc["training images"].tolist() == ["about 190,000", "100 or 600"]
    smoke = recipe_table([{**configs[0], "profile": "smoke"}], 2_000).droplevel([0, 1], axis=1)  # an eighth, 1 epoch
    assert smoke.loc[["epochs", "training images"], "this run"].tolist() == ["1", "75"]


def test_mean_rows_and_their_sentences() -> None:
    """Each model's "Mean" row, written as value (interval); a sentence for the intervals clear of chance."""
    tables = {name: pd.DataFrame({"auroc": [0.7, auroc], "low": [0.6, low], "high": [0.8, high]},
                                 index=["Edema", "Mean"])
              for name, (auroc, low, high) in {"A": (0.8, 0.75, 0.85), "B": (0.55, 0.45, 0.65)}.items()}
    means = mean_rows(tables)
    assert means.loc["B", "auroc"] == 0.55 and interval(means.loc["A"]) == "0.800 (0.750-0.850)"
    assert above_chance(means) == "Mean intervals that lie wholly above 0.5 (chance): A."
    assert above_chance(means.drop("A")) == "No arm's mean interval lies wholly above 0.5 (chance)."


def test_significant_differences_name_the_better_arm(arms) -> None:
    truth, scores = arms
    delong = pairwise_delong(truth, scores, {"m": ["good", "noisy", "random"]}, FINDINGS)
    text = significant_differences(delong)
    assert "good > random on Cardiomegaly (q = " in text  # A is written first, with the sign of A - B
    assert len(text.split("; ")) == int((delong["q (BH)"] < 0.05).sum())
    assert significant_differences(delong, q=0.0) == "none"


def test_p_text_never_shows_a_value_below_the_bound_as_the_bound() -> None:
    assert p_text(0.0123) == "= 0.012" and p_text(0.71, 2) == "= 0.71"
    assert p_text(0.04996) == "< 0.05" and p_text(0.046, 2) == "< 0.05"  # would print 0.050 and 0.05
    assert p_text(0.05) == "= 0.050"  # at the bound it is not below it


def test_patient_bootstrap_pairs_resample_patients_and_control_the_fdr(arms) -> None:
    truth, scores = arms
    delong = pairwise_delong(truth, scores, {"m": ["good", "noisy", "random"]}, FINDINGS)
    patients = np.repeat(np.arange(20), 3)  # three films per patient
    table = patient_bootstrap_pairs(delong, truth, scores, patients, n_boot=400)
    assert list(table.columns[-4:]) == ["boot low", "boot high", "p (patient bootstrap)", "q (patient BH)"]
    assert table[["A", "B", "finding", "A - B", "p"]].equals(delong[["A", "B", "finding", "A - B", "p"]])
    assert ((table["boot low"] <= table["A - B"]) & (table["A - B"] <= table["boot high"])).all()
    good_random = table[(table["A"] == "good") & (table["B"] == "random")]
    assert (good_random["p (patient bootstrap)"] == 2 / 401).all()  # no draw on the wrong side of zero
    assert (table["p (patient bootstrap)"].between(2 / 401, 1)).all()
    assert (table["q (patient BH)"] >= table["p (patient bootstrap)"]).all()
    copies = np.repeat(np.arange(20), 3)  # each patient's three films alike: 20 films' worth of evidence, not 60
    same = truth.iloc[copies].reset_index(drop=True)
    same_scores = {name: table_.iloc[copies].reset_index(drop=True) for name, table_ in scores.items()}
    widths = {name: patient_bootstrap_pairs(pairwise_delong(same, same_scores, {"m": ["noisy", "random"]}, FINDINGS),
                                            same, same_scores, ids, n_boot=400).eval("`boot high` - `boot low`").mean()
              for name, ids in {"patients": copies, "films": np.arange(60)}.items()}
    assert widths["patients"] > 1.3 * widths["films"]  # films counted as independent understate the uncertainty
    assert "good > random on Cardiomegaly" in significant_differences(table, column="q (patient BH)")
    cells = bootstrap_cells(table)
    assert cells.loc["good vs random", "Cardiomegaly"].startswith(f"{good_random['A - B'].iloc[0]:+.3f} (")


def test_all_positive_floor_and_what_each_arm_calls_positive() -> None:
    truth = pd.DataFrame({"Cardiomegaly": [0.0, 0.0, 0.0, 1.0], "Edema": [1.0, np.nan, 0.0, 1.0]})
    floor = all_positive_f1(truth, FINDINGS)
    assert floor["Cardiomegaly"] == pytest.approx(2 * 0.25 / 1.25) and floor["Edema"] == pytest.approx(0.8)
    everything = predictions_of({"Cardiomegaly": [1.0] * 4, "Edema": [1.0] * 4})
    called = threshold_tables(truth, {"all": everything}, FINDINGS, 0.5)["all"]
    assert called["f1"].tolist() == pytest.approx(floor.tolist())  # the floor is what calling all positive scores
    low = predictions_of({"Cardiomegaly": [0.1, 0.2, 0.3, 0.4], "Edema": [0.9, 0.9, 0.1, 0.2]})
    counts = called_positive(truth, {"all": everything, "low": low}, FINDINGS, 0.5)
    assert counts.loc["all"].tolist() == [4, 3] and counts.loc["low"].tolist() == [0, 1]  # NaN labels not counted
    tuned = called_positive(truth, {"low": low}, FINDINGS, {"low": pd.Series({"Cardiomegaly": 0.25, "Edema": 0.15})})
    assert tuned.loc["low"].tolist() == [2, 2]


def test_best_by_finding_names_the_winner_and_its_lead() -> None:
    """Per finding, the arm with the highest AUROC (an arm without a score ranks last) and its lead."""
    tables = {"u-ones": pd.DataFrame({"auroc": [0.80, 0.70, np.nan, 0.75]}, index=["A", "B", "C", "Mean"]),
              "u-zeros": pd.DataFrame({"auroc": [0.78, 0.74, np.nan, 0.76]}, index=["A", "B", "C", "Mean"]),
              "u-ignore": pd.DataFrame({"auroc": [np.nan, 0.60, np.nan, 0.60]}, index=["A", "B", "C", "Mean"])}
    table = best_by_finding(tables)
    assert list(table.index) == ["A", "B", "Mean"]  # C: no arm scores it
    assert table["best"].tolist() == ["u-ones", "u-zeros", "u-zeros"]
    assert table["lead"].tolist() == pytest.approx([0.02, 0.04, 0.01])
    with pytest.raises(ValueError, match="compares arms"):
        best_by_finding({"u-ones": tables["u-ones"]})

