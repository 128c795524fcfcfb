"""Paper 000's multi-site experiment on a small generated synthetic tree (all three sites in their real layouts):
the chain's configs, labels from each labeler and from the drawn signs, evaluation without retraining (cached, and
redone when the test manifest changes), the cross-site matrix and its paired tests, on tiny real runs."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cxrcore import make_settings
from cxrcore.experiments import multisite, source_models
from cxrcore.experiments.evaluation import evaluate, evaluation_file
from cxrcore.experiments.tables import scored_findings
from cxrcore.experiments.training import evaluate_all
from cxrcore.manifest import load_manifest
from cxrcore.runner import Result, run
from data_prep.synth import add_arguments, main
from data_prep.synth.truth import drawn_labels, with_drawn_labels

BASELINE = multisite.BASELINE
TINY = {"arch": "resnet18", "overrides": {"image_size": 32, "epochs": 1, "batch_size": 8}}


def tiny(config: dict) -> dict:
    """A run config made tiny, and the run it starts from too (the chain's weights name whole configs)."""
    weights = config.get("weights")
    return {**config, **TINY, "weights": {"run": tiny(weights["run"])} if isinstance(weights, dict) else weights}


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("multisite") / "data"
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert main(parser.parse_args(["--out", str(root), "--per-site", "90", "--size", "48", "--workers", "2"])) == 0
    return make_settings("quick", root, tmp_path_factory.mktemp("multisite_runs"))


@pytest.fixture(scope="module")
def tiny_runs(settings) -> dict[str, Result]:
    return {name: run(tiny(config), runs_dir=settings.runs_dir) for name, config in
            multisite.configs(settings).items()}


def test_drawn_labels_follow_the_sign_tables(settings) -> None:
    truth = drawn_labels(settings.data_root, "hospital", multisite.FINDINGS)
    signs = pd.read_csv(settings.data_root / "_synth" / "hospital_signs.csv")
    drawn = set(signs.loc[(signs["sign"] == "effusion") & (signs["drawn"] == 1), "path"])
    assert set(truth.index[truth["Pleural Effusion"] == 1]) == drawn
    assert len(truth) == len(pd.read_csv(settings.data_root / "_synth" / "hospital_images.csv"))
    table = pd.DataFrame({"path": ["hospital/images/nowhere.png"], "Pneumonia": [0.0]})
    with pytest.raises(ValueError, match="nowhere.png"):
        with_drawn_labels(table, settings.data_root, "hospital", ["Pneumonia"])
    with pytest.raises(ValueError, match="Hernia"):
        drawn_labels(settings.data_root, "hospital", ["Hernia"])


def test_the_chain_its_labels_and_the_pool(settings) -> None:
    configs = multisite.configs(settings)
    assert list(configs)[:4] == ["NIH baseline", "CheXpert-NET", "Hospital-NET", "pooled"]
    assert configs["NIH baseline"] == source_models.configs(settings)["DenseNet-121"]
    assert configs["CheXpert-NET"]["weights"] == {"run": configs["NIH baseline"]}
    for labeler in multisite.LABELERS:  # every labeler's last stage starts from CheXpert-NET
        assert configs[multisite.labeler_model(labeler)]["weights"] == {"run": configs["CheXpert-NET"]}
    paths = multisite.manifests(settings)
    tables = {name: load_manifest(path) for name, path in paths.items()}
    hospital = [tables[f"hospital: {labeler}"] for labeler in multisite.LABELERS]
    assert all(t["path"].tolist() == hospital[0]["path"].tolist() for t in hospital)
    test = [t[t["split"] == "test"][multisite.FINDINGS] for t in hospital]
    assert all(t.equals(test[0]) for t in test)  # one test set, labelled by the drawn signs
    truth = drawn_labels(settings.data_root, "hospital", multisite.FINDINGS)
    drawn = hospital[2].set_index("path")[multisite.FINDINGS]
    assert np.array_equal(drawn.to_numpy(), truth.loc[drawn.index].to_numpy())
    pooled = tables["pooled"]
    for split in ("train", "valid", "test"):
        parts = [table.loc[table["split"] == split, "path"] for table in (tables["CheXpert"], hospital[0])]
        assert set(pooled.loc[pooled["split"] == split, "path"]) == {*parts[0], *parts[1]}
    assert (tables["CheXpert"]["view"] == "frontal").all() and (hospital[0]["view"] == "frontal").all()


def test_evaluation_is_cached_and_redone_for_a_changed_manifest(settings, tiny_runs, tmp_path: Path) -> None:
    result = tiny_runs["CheXpert-NET"]
    manifest = multisite.test_manifests(settings)["hospital"]
    first = evaluate(result, manifest)
    cached = evaluation_file(result, manifest)
    stamp = cached.stat().st_mtime_ns
    os.utime(manifest)  # touching the manifest changes nothing: the key is its content
    again = evaluate(result, manifest)
    pd.testing.assert_frame_equal(first, again)
    assert cached.stat().st_mtime_ns == stamp
    assert len(first) == len(load_manifest(manifest)) and set(first["path"]) == set(load_manifest(manifest)["path"])
    changed = tmp_path / "fewer.csv"
    load_manifest(manifest).iloc[:-1].to_csv(changed, index=False)
    fewer = evaluate(result, changed)
    assert evaluation_file(result, changed) != cached and len(fewer) == len(first) - 1
    with pytest.raises(FileNotFoundError, match="missing.csv"):
        evaluate(result, tmp_path / "missing.csv")


def test_the_command_tests_every_model_on_every_site_two_at_a_time(settings, tiny_runs, tmp_path: Path) -> None:
    assert len(multisite.evaluations(settings)) == len(multisite.configs(settings)) * len(multisite.SITES)
    copies = []
    for site, path in multisite.test_manifests(settings).items():  # new contents: nothing cached for them yet
        copies.append(tmp_path / f"{site}.csv")
        load_manifest(path).iloc[:-2].to_csv(copies[-1], index=False)
    pairs = [(result.config["run"], copy) for result in list(tiny_runs.values())[:2] for copy in copies]
    evaluate_all(pairs, settings.runs_dir, jobs=2)
    for config, manifest in pairs:
        result = run(config, runs_dir=settings.runs_dir)
        stamp = evaluation_file(result, manifest).stat().st_mtime_ns
        assert len(evaluate(result, manifest)) == len(load_manifest(manifest))  # read back, not predicted again
        assert evaluation_file(result, manifest).stat().st_mtime_ns == stamp


def test_matrix_paired_tests_and_delong(settings, tiny_runs) -> None:
    predictions = multisite.cross_site_predictions(settings, tiny_runs)
    assert set(predictions) == {(m, s) for m in tiny_runs for s in multisite.SITES}
    baseline = predictions[("NIH baseline", "hospital")]
    assert "Infiltration_score" in baseline.columns  # the NIH baseline scores its 14 findings on every site
    long = multisite.matrix(predictions, n_boot=20)
    means = multisite.mean_matrix(long)
    assert list(means.index) == list(tiny_runs) and list(means.columns) == list(multisite.SITES)
    scored = long[long["finding"] != "Mean"]
    assert not scored.empty and scored["auroc"].between(0, 1).all() and (scored["positives"] >= 5).all()
    models = ["CheXpert-NET", "Hospital-NET", "CheXpert-Hospital-NET"]
    delong = multisite.delong_table(predictions, models)
    assert set(delong["model"]) <= set(models) and (delong["q (BH)"] >= delong["p"] - 1e-12).all()
    readings = multisite.paired_readings(predictions, n_boot=20)
    assert list(readings["reading"].unique()) == ["forgetting", "gain on the new site", "chain vs pooled"]
    assert (readings.dropna()["low"] <= readings.dropna()["high"]).all()
    for _, row in readings.iterrows():  # the paired difference is the difference of the two models' site means
        a, b = row["models"].split(" vs ")
        expected = means.loc[a, row["tested on"]] - means.loc[b, row["tested on"]]
        assert row["difference"] == pytest.approx(expected, nan_ok=True)
    assert readings["difference"].notna().any()
    everywhere = multisite.paired_difference(predictions, "CheXpert-Hospital-NET", BASELINE, list(multisite.SITES), 20)
    cells = long[(long["finding"] != "Mean") & long["model"].isin(["CheXpert-Hospital-NET", BASELINE])]
    by_model = cells.groupby("model")["auroc"].mean()
    assert everywhere["difference"] == pytest.approx(by_model["CheXpert-Hospital-NET"] - by_model[BASELINE])
    shifts = multisite.site_shifts(means)
    assert list(shifts["model"]) == [BASELINE, "CheXpert-NET", "Hospital-NET"]  # the others saw every site
    hospital_net = shifts.set_index("model").loc["Hospital-NET"]
    assert hospital_net["unseen sites"] == "CheXpert" and hospital_net["last trained on"] == "hospital"
    assert hospital_net["difference"] == pytest.approx(means.loc["Hospital-NET", "CheXpert"]
                                                       - means.loc["Hospital-NET", "hospital"], nan_ok=True)
    by_test = multisite.delong_table(predictions, ["CheXpert-Hospital-NET"], baseline="pooled", sites=["hospital"])
    assert set(by_test["site"]) <= {"hospital"} and set(by_test["model"]) <= {"CheXpert-Hospital-NET"}
    table, finding = next((t, f) for (model, _), t in predictions.items() if model == "CheXpert-Hospital-NET"
                          for f in scored_findings(t, multisite.FINDINGS))  # a site where a finding is scored
    borrowed = multisite.borrowed_scores(table, finding)
    assert list(borrowed.index) == multisite.FINDINGS and np.isnan(borrowed.loc[finding, "p against its own score"])
    assert borrowed["AUROC"].between(0, 1).all() and borrowed["p against its own score"].dropna().between(0, 1).all()
    matches = multisite.keyword_matches(settings, "Atelectasis")
    keyword = multisite.hospital_tables(settings)["keyword"]
    assert len(matches) == int(((keyword["split"] == "train") & (keyword["Atelectasis"] == 1)).sum())
    assert matches["keywords"].str.len().gt(0).all() and matches["drawn"].isin([0, 1]).all()
    noise = multisite.labeler_noise(settings)
    assert set(noise["labeler"]) == {"keyword", "negation-aware"} and noise["wrong labels"].between(0, 1).all()
    scores, shown = multisite.site_localisation(tiny_runs["CheXpert-Hospital-NET"], multisite.test_manifests(settings),
                                                settings.data_root, "Cardiomegaly", 3)
    assert set(scores.index.get_level_values("map")) == {"CAM", "Grad-CAM"}
    assert list(scores.index.unique("site")) == shown["sites"] and set(shown["sites"]) <= set(multisite.SITES)
    share = scores["sign's share of the image"]  # over the images whose map is not all zero (NaN: none is)
    assert scores["images"].between(1, 3).all() and share.dropna().between(0, 1).all()
    assert share.xs("CAM", level="map").notna().all()
    assert scores["peak inside (pointing game)"].between(0, 1).all()
    assert (scores.xs("CAM", level="map")["all-zero maps"] == 0).all()  # CAM is min-max scaled: never empty
    side = shown["images"].shape[-1]
    assert shown["images"].shape == shown["maps"]["CAM"].shape == (len(shown["sites"]), side, side)
    assert all(mask.shape == (side, side) and mask.any() for mask in shown["masks"])
    assert (scores["energy / area low"].dropna() <= scores["energy / area high"].dropna()).all()
    assert multisite.localisation_chance(scores)
    ranges, zero = multisite.localisation_reading(scores)
    assert ranges.startswith("Cardiomegaly, CAM: ") and "Cardiomegaly, Grad-CAM: " in ranges
    grad_zero = int(scores.xs("Grad-CAM", level="map")["all-zero maps"].sum())
    assert (zero == "") == (grad_zero == 0) and (grad_zero == 0 or f"all zero on {grad_zero} of" in zero)


def test_the_paired_tests_reproduce_paper_000s_p_values() -> None:
    from cxrcore.experiments.reported import read_reported

    reported = read_reported(Path(__file__).resolve().parents[1] / "book" / "reported.csv")
    table = multisite.reported_matrix(reported)
    assert table.loc["CheXpert-Hospital-NET", "hospital"] == pytest.approx(0.842)
    assert table.loc["NIH baseline", "average"] == pytest.approx(0.795)
    cells = reported[(reported["paper"] == "000") & (reported["source"] == "Table 7") & (reported["arm"] != "average")
                     & (reported["metric"] == "auroc")]
    long = cells.rename(columns={"arm": "site", "value": "auroc"})[["model", "site", "finding", "auroc"]]
    models = ["CheXpert-Shifa-NET", "Shifa-NET", "CheXpert-NET"]
    paired = multisite.paired_table(long, models, baseline="NIH Baseline").set_index("model")
    assert (paired["cells"] == 12).all()
    printed = reported[(reported["source"] == "Section 4.4 text") & (reported["metric"] == "wilcoxon_p")]
    for row in printed.itertuples():  # section 4.4: one-sided tests over Table 7's 12 cells
        assert paired.loc[row.model.split(" vs ")[0], "Wilcoxon p (one-sided)"] == pytest.approx(row.value, abs=5e-4)
    one_sided = paired["t-test p (one-sided)"].to_numpy()
    assert paired["t-test p"].to_numpy() == pytest.approx(2 * one_sided)  # every mean difference is a gain


def test_without_a_hospital_folder_the_error_names_the_missing_file(tmp_path: Path) -> None:
    from layouts import write_chexpert, write_nih

    root = tmp_path / "data"
    write_chexpert(root, n_train_patients=12)
    write_nih(root)
    settings = make_settings("full", root, tmp_path / "runs")
    with pytest.raises(FileNotFoundError, match=r"hospital/reports\.csv not found"):
        multisite.configs(settings)


def test_readings_follow_the_paired_interval_not_the_point() -> None:
    """Each reading is chosen by where the paired interval lies against zero, whatever the point difference."""
    up, down, level = ({"difference": d, "low": lo, "high": hi} for d, lo, hi in
                       ((0.05, 0.01, 0.09), (-0.05, -0.09, -0.01), (0.05, -0.01, 0.11)))
    assert [multisite.verdict(r) for r in (up, down, level)] == ["higher", "lower", "within"]
    assert multisite.interval_text(level) == "+0.050 (-0.010 to +0.110)"
    assert "gains on CheXpert" in multisite.stage_reading("CheXpert-NET", "CheXpert", up, 499, True)
    assert "only 499 training images" in multisite.stage_reading("CheXpert-NET", "CheXpert", down, 499, True)
    assert "includes zero" in multisite.stage_reading("CheXpert-NET", "CheXpert", level, 499, False)
    rows = pd.DataFrame([{**down, "tested on": "CheXpert"}, {**level, "tested on": "ChestX-ray14"}])
    assert multisite.forgetting_reading(rows).startswith("the paired interval lies below zero on CheXpert (not on "
                                                         "ChestX-ray14)")
    assert "does not show" in multisite.forgetting_reading(rows.assign(low=-1.0, high=1.0))
    assert multisite.pool_reading(rows) == "pooling beats the chain on CheXpert (paired intervals that exclude zero)"
    assert "does not show" in multisite.pool_reading(rows.assign(low=-1.0, high=1.0))
    assert "cost" in multisite.label_reading(up) and "includes zero" in multisite.label_reading(level)
    assert multisite.chain_reading(level, "pooled").endswith("the best average of all models is pooled's")
    assert multisite.chain_reading(up, "CheXpert-Hospital-NET") == ("the chain beat the baseline, its paired interval "
                                                                    "above zero, as in the paper")


def test_the_wilcoxon_floor_over_12_pairs() -> None:
    """Exact: 1 / 2^12; the normal approximation that reproduces paper 000's p-values cannot go below 0.0011."""
    floor = multisite.wilcoxon_floor(12)
    assert floor["exact"] == pytest.approx(1 / 4096) and floor["approx"] == pytest.approx(0.00111, abs=1e-5)


def test_site_shift_compares_unseen_sites_with_the_last_trained_one() -> None:
    assert multisite.unseen_sites("CheXpert-NET") == ["hospital"] and multisite.last_trained_site("CheXpert-NET") == \
        "CheXpert"
    assert multisite.unseen_sites("pooled") == [] and multisite.unseen_sites(BASELINE) == ["CheXpert", "hospital"]


def test_label_sentences_follow_the_direction_and_the_q_value() -> None:
    """The pneumonia lesson, the borrowed scores and the DeLong survivors are read by direction, not only by p."""
    assert multisite.label_lesson(0.011, 0.71, 0.04).startswith("On pneumonia it did not show")
    assert multisite.label_lesson(0.08, 0.01, 0.04).startswith("On pneumonia it shows: drawn signs minus keyword "
                                                                "labels +0.080")
    assert multisite.label_lesson(-0.08, 0.01, 0.04).startswith("On pneumonia the test shows the opposite")
    borrowed = pd.DataFrame({"AUROC": [0.80, 0.70, 0.90, 0.85], "p against its own score": [0.5, 0.01, 0.02, np.nan]},
                            index=["Atelectasis", "Cardiomegaly", "Pleural Effusion", "Pneumonia"])
    assert "puts Pleural Effusion above it and Cardiomegaly below it" in multisite.borrowed_reading(borrowed,
                                                                                                    "Pneumonia")
    below = borrowed.assign(AUROC=[0.80, 0.70, 0.60, 0.85])
    assert "puts Cardiomegaly and Pleural Effusion below it" in multisite.borrowed_reading(below, "Pneumonia")
    assert "learned something of its own" in multisite.borrowed_reading(below, "Pneumonia")
    assert "separates none" in multisite.borrowed_reading(below.assign(**{"p against its own score": 0.5}),
                                                          "Pneumonia")
    significant = pd.DataFrame({"model": ["A", "A", "A", "B"], "site": ["x", "y", "z", "x"],
                                "difference": [0.1, -0.1, -0.2, -0.1]})
    assert multisite.significant_reading(significant) == ("A better than the baseline in 1 (x), worse in 2 (y, z); "
                                                          "B better than the baseline in 0, worse in 1 (x)")
    assert multisite.significant_reading(significant.iloc[:0]) == "none"
