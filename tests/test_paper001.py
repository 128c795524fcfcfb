"""Paper 001's experiments (depth, resolution, patient data; resampling; the drain shortcut) on a small generated
synthetic tree with drain counterfactuals, on tiny real runs."""
from __future__ import annotations

import argparse
import shutil

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from cxrcore import make_settings
from cxrcore.experiments import explore, paper001, resampling, shortcut
from cxrcore.manifest import assert_patient_disjoint, load_manifest
from cxrcore.runner import RunConfig, run
from data_prep.synth import add_arguments, main


def tiny(config: dict) -> dict:
    """A run config made tiny (ResNet-18 for the image models; 64 px for "-large", which needs twice the minimum),
    and the run it starts from too."""
    weights = config.get("weights")
    large = RunConfig.from_dict(config).uses_large
    changes = {"overrides": {**config["overrides"], "image_size": 64 if large else 32, "epochs": 1, "batch_size": 8},
               "weights": {"run": tiny(weights["run"])} if isinstance(weights, dict) else weights}
    return {**config, **changes, **({} if config["arch"] == "metadata" else {"arch": "resnet18"})}


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("paper001") / "data"
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    arguments = ["--out", str(root), "--per-site", "1000", "--size", "48", "--workers", "2",
                 "--counterfactual", "remove=drain"]
    assert main(parser.parse_args(arguments)) == 0
    return make_settings("quick", root, tmp_path_factory.mktemp("paper001_runs"))


@pytest.fixture(scope="module")
def model_runs(settings):
    return {key: run(tiny(config), runs_dir=settings.runs_dir) for key, config in paper001.configs(settings).items()}


def test_every_arm_shares_the_recipe_and_the_resnet50_is_one_run(settings) -> None:
    configs = paper001.configs(settings)
    assert set(configs) == {(section, arm) for section, arms in paper001.SECTIONS.items() for arm in arms}
    base = configs[("depth", paper001.BASE)]
    assert configs[("resolution", paper001.BASE)] is base and configs[("patient data", paper001.BASE)] is base
    assert [configs[("depth", name)]["arch"] for name in paper001.DEPTHS] == ["resnet38", "resnet50", "resnet101"]
    assert RunConfig.from_dict(configs[("resolution", "ResNet-50-large")]).uses_large
    assert configs[("patient data", "ResNet-50-meta")]["meta"] and not base["meta"]
    assert configs[("patient data", "age, sex, projection")]["findings"] == ["age", "sex", "projection"]
    targets = configs[("patient data", "age, sex, projection")]
    assert targets["weights"] == {"run": base} and targets["freeze_backbone"] and targets["feature_cache"]
    for config in configs.values():  # one recipe: one channel, the same images and epochs for every arm
        assert (config["channels"], config["max_train_images"], config["overrides"]["epochs"]) == (
            1, paper001.QUICK_TRAIN_IMAGES, paper001.QUICK_EPOCHS)
    assert [len(stage) for stage in paper001.stages(settings)] == [6, 1]


def test_input_sides_stored_width_and_learning_summary(settings, model_runs) -> None:
    # what the chapter's text reads instead of the quick profile's values: sides per profile, the films' own width
    assert paper001.input_sides(paper001.configs(settings)) == (64, 128)
    gpu = make_settings("gpu", settings.data_root, settings.runs_dir)
    assert paper001.input_sides(paper001.configs(gpu)) == (224, 448)
    official = load_manifest(paper001.configs(settings)[("depth", paper001.BASE)]["manifest"])
    assert paper001.stored_width(official, settings.data_root) == 48  # the fixture's --size
    history = pd.DataFrame({"epoch": [1, 2, 3], "mean_auroc": [0.52, 0.71, 0.66]})
    summary = paper001.learning_summary({"a": history, "real": model_runs[("depth", "ResNet-38")].history})
    assert summary.loc["a"].to_dict() == {"best validation AUROC": 0.71, "best epoch": 2,
                                          "last epoch's validation AUROC": 0.66}
    assert summary.loc["real", "best epoch"] == 1  # the tiny run's one epoch


def test_tables_of_depth_resolution_and_patient_data(model_runs) -> None:
    depth = paper001.depth_table(model_runs, n_boot=20)
    assert list(depth.index) == list(paper001.DEPTHS)
    assert depth["parameters (M)"].is_monotonic_increasing  # ResNet-38 < 50 < 101
    assert ((depth["low"] <= depth["mean AUROC"]) & (depth["mean AUROC"] <= depth["high"])).all()
    resolution = paper001.resolution_table(model_runs, n_boot=20)
    np.testing.assert_allclose(resolution["gain"], resolution["ResNet-50-large"] - resolution["ResNet-50"])
    assert "Mean" not in resolution.index  # findings only: the chapter counts its rows as findings
    targets = paper001.patient_target_table(model_runs[("patient data", "age, sex, projection")], n_boot=20)
    assert list(targets.index) == ["sex", "projection", "age"]
    assert targets.loc["age", "metric"] == "MAE (years)" and targets.loc["age", "value"] > 0
    assert targets.loc["age", "low"] <= targets.loc["age", "value"] <= targets.loc["age", "high"]
    assert paper001.metadata_only_auroc(model_runs).between(0, 1).all()


def test_difference_direction_and_below_chance_readings() -> None:
    assert paper001.difference_reading(0.02, half=0.05).startswith("within half an interval")
    assert paper001.difference_reading(-0.09, half=0.05) == "more than half an interval worse"
    assert paper001.direction_reading(0.02, reported=0.002, half=0.05).startswith("so its sign says nothing")
    assert paper001.direction_reading(0.09, reported=0.002, half=0.05) == "the paper's direction"
    assert paper001.direction_reading(-0.09, reported=0.002, half=0.05) == "against the paper's direction"
    table = pd.DataFrame({"auroc": [0.33, 0.35, 0.7, 0.46], "low": [0.12, 0.2, 0.6, 0.4],
                          "high": [0.57, 0.48, 0.8, 0.5], "n_pos": [7, 6, 30, 50]},
                         index=["Cardiomegaly", "Pneumonia", "Atelectasis", "Mean"])
    text = paper001.below_chance_reading(table)
    assert "Cardiomegaly 0.330 (0.120-0.570, 7 test positives)" in text and "Atelectasis" not in text
    assert "Cardiomegaly: its interval reaches 0.5" in text and "Pneumonia: its interval lies wholly below" in text
    assert f"would be {0.7:.3f}" in text  # the mean over the other findings, not over the "Mean" row
    assert paper001.below_chance_reading(table.drop(index=["Cardiomegaly", "Pneumonia"])) == ""
    assert "quick profile" in paper001.profile_note("quick") and "input sides" in paper001.profile_note("gpu")
    assert paper001.profile_note("full") == ""


def test_resamplings_are_five_patient_wise_splits_of_every_image(settings) -> None:
    tables = [load_manifest(path) for path in resampling.fold_manifests(settings)]
    assert len(tables) == resampling.N_FOLDS and len({len(t) for t in tables}) == 1
    for table in tables:
        assert_patient_disjoint(table)
        shares = table.groupby("patient_id")["split"].first().value_counts(normalize=True)  # of the patients
        assert shares["train"] == pytest.approx(0.7, abs=0.02) and shares["test"] == pytest.approx(0.2, abs=0.02)
    assert len({tuple(t["split"]) for t in tables}) == resampling.N_FOLDS  # five different resamplings


def test_the_resamplings_spread_beside_the_models_differences(settings, model_runs) -> None:
    folds = {fold: run(tiny(config), runs_dir=settings.runs_dir) for fold, config in
             resampling.configs(settings).items()}
    summary = resampling.summary(folds)
    assert summary.loc["Mean", "folds"] == resampling.N_FOLDS
    assert summary.loc["Mean", "min"] <= summary.loc["Mean", "mean"] <= summary.loc["Mean", "max"]
    means = resampling.fold_means(folds, n_boot=20)
    folded = resampling.fold_table(folds)
    np.testing.assert_allclose(means["auroc"], folded[folded["finding"] == "Mean"].set_index("fold")["auroc"])
    assert ((means["low"] <= means["auroc"]) & (means["auroc"] <= means["high"])).all()
    common = resampling.common_findings(folds)
    assert set(folded["finding"]) == {*common, "Mean"}  # one set of findings for every fold's mean
    rows = resampling.fold_results(folds, n_boot=20)  # the CLI's table: the same means
    np.testing.assert_allclose(rows["mean_auroc"], means.loc[list(folds), "auroc"])
    kinds = resampling.sd_kinds(summary)
    assert kinds["SD of the mean AUROC"] == summary.loc["Mean", "std"]
    assert kinds["mean of the per-finding SDs"] == pytest.approx(summary.loc[common, "std"].mean())
    table = resampling.spread_against_differences(model_runs, folds, n_boot=20)
    assert "ResNet-101 - ResNet-50" in table.index and "ResNet-50 - ResNet-50" not in table.index
    width = summary.loc["Mean", "max"] - summary.loc["Mean", "min"]
    np.testing.assert_allclose(table["split_range"], width)
    assert (table["within_spread"] == (table["difference"].abs() < width)).all()



def test_the_resamplings_learned_reading_uses_the_chapters_line() -> None:
    means = pd.DataFrame({"auroc": [0.522, 0.509, 0.607, 0.531, 0.609], "low": [0.49, 0.45, 0.56, 0.51, 0.55],
                          "high": [0.56, 0.55, 0.65, 0.56, 0.66]}, index=list(resampling.FOLDS))
    text = resampling.learned_reading(means)
    assert text.startswith("On split 1 and split 2 the mean interval reaches 0.5")
    assert "Only split 3 and split 5 reach 0.6" in text
    assert "Every split reaches" in resampling.learned_reading(means.assign(auroc=0.7, low=0.6))
    assert "No split reaches" in resampling.learned_reading(means.assign(auroc=0.55))


def test_drain_free_development_films_are_the_counterfactuals(settings) -> None:
    original = load_manifest(paper001.official_manifest(settings))
    cleaned = load_manifest(shortcut.drain_free_manifest(settings))
    replaced = shortcut.counterfactual_paths(settings.data_root)
    drains = shortcut.drain_paths(settings.data_root)
    assert set(replaced.index) >= {p for p in original["path"] if p in drains}  # every drain film has one
    development = original["split"] != "test"
    changed = original["path"] != cleaned["path"]
    assert changed.any() and (changed == (development & original["path"].isin(drains))).all()
    assert cleaned.loc[changed, "path"].str.endswith("_no-drain.png").all()
    assert all((settings.data_root / path).is_file() for path in cleaned["path"])
    pd.testing.assert_frame_equal(original.drop(columns="path"), cleaned.drop(columns="path"))  # labels unchanged
    test = load_manifest(shortcut.counterfactual_test_manifest(settings))
    assert ((test["path"] != original["path"]) == (~development & original["path"].isin(drains))).all()


def test_the_shortcut_lab_on_tiny_runs(settings, model_runs) -> None:
    finished = {name: run(tiny(config), runs_dir=settings.runs_dir) for name, config in
                shortcut.configs(settings).items()}
    configs = shortcut.configs(settings)
    base = paper001.configs(settings)[("depth", paper001.BASE)]
    assert configs["as published"] == {**base, "max_train_images": None,  # every training film
                                       "overrides": {**base["overrides"], "epochs": shortcut.QUICK_EPOCHS}}
    assert configs["drain-free training"] == {**configs["as published"],
                                              "manifest": str(shortcut.drain_free_manifest(settings))}
    drains = shortcut.drain_paths(settings.data_root)
    predictions = finished["as published"].predictions
    groups = shortcut.subgroup_table(predictions, drains, n_boot=20)
    positives = predictions[predictions[shortcut.FINDING] == 1]
    assert groups.loc["positives with a drain", "positives"] == positives["path"].isin(drains).sum()
    assert groups.loc["all positives", "positives"] == len(positives)
    assert (groups["negatives"] == (predictions[shortcut.FINDING] == 0).sum()).all()
    paired = shortcut.twin_against_published(finished, drains)
    twin_groups = shortcut.subgroup_table(finished["drain-free training"].predictions, drains, n_boot=20)
    np.testing.assert_allclose(paired["published"], groups["auroc"])  # the same films, the same AUROCs
    np.testing.assert_allclose(paired["twin"], twin_groups["auroc"])
    assert (paired["positives"] == groups["positives"]).all()
    with_drain = positives["path"].isin(drains)
    positive_patients = dict(zip(shortcut.GROUPS, (positives.loc[with_drain, "patient_id"].nunique(),
                                                   positives.loc[~with_drain, "patient_id"].nunique(),
                                                   positives["patient_id"].nunique()), strict=True))
    negative_patients = predictions.loc[predictions[shortcut.FINDING] == 0, "patient_id"].nunique()
    for group, row in paired.iterrows():  # a clustered p needs two patients with positives and two with negatives
        testable = positive_patients[group] >= 2 and negative_patients >= 2
        assert (0 <= row["p"] <= 1) if testable else np.isnan(row["p"]), (group, positive_patients)
    films = shortcut.paired_films(finished, drains, settings)
    assert len(films) == predictions[shortcut.FINDING].notna().sum()
    assert films["drain"].sum() == predictions.loc[predictions[shortcut.FINDING].notna(), "path"].isin(drains).sum()
    unchanged = ~films["drain"]  # a film without a drain is its own counterfactual
    np.testing.assert_allclose(films.loc[unchanged, "as published"],
                               films.loc[unchanged, "as published, drain removed"])
    comparison = shortcut.drain_comparison(films, n_boot=20)
    assert list(comparison.index) == [*shortcut.MODELS, shortcut.DIFFERENCE]
    np.testing.assert_allclose(comparison.loc["as published", "AUROC gap"],  # the subgroup table's gap
                               groups.loc["positives with a drain", "auroc"]
                               - groups.loc["positives without a drain", "auroc"])
    measures = ["AUROC gap", "logit change", "effect (SD)"]
    np.testing.assert_allclose(comparison.loc[shortcut.DIFFERENCE, measures].astype(float),
                               (comparison.loc["as published"] - comparison.loc["drain-free training"])[
                                   measures].astype(float))
    assert shortcut.cure_reading(paired, comparison, split_sd=0.06).startswith("Paired on the same test films")
    assert shortcut.gap_reading(comparison).startswith("The twin, which never saw a drain")
    assert "On the logit scale" in shortcut.effect_reading(comparison)
    scores = shortcut.counterfactual_scores(finished["as published"], settings)
    assert len(scores) == predictions["path"].isin(drains).sum() > 0
    np.testing.assert_allclose(scores["change"], scores["score without the drain"] - scores["score"])
    change = shortcut.mean_change(scores, n_boot=20)
    assert (change["low"] <= change["mean change"]).all() and (change["mean change"] <= change["high"]).all()
    both = shortcut.counterfactual_auroc(finished["as published"], settings, n_boot=20)
    assert list(both.index) == ["films as they are", "drains removed"]
    pairs = shortcut.counterfactual_pairs(finished, settings)
    assert list(pairs.columns) == ["counterfactual", shortcut.FINDING, "as published", "as published, drain removed",
                                   "drain-free training", "drain-free training, drain removed"]
    assert len(pairs) == len(scores) and pairs[shortcut.FINDING].is_monotonic_decreasing  # positives first
    manifest = str(shortcut.counterfactual_test_manifest(settings))
    figure = explore.counterfactual_figure(finished["as published"], manifest, pairs, pairs.index[0])
    assert len(figure.axes) == 3 and "->" in figure._suptitle.get_text()
    assert figure.axes[2].images[0].get_array().max() > 0  # the film and its counterfactual differ
    plt.close(figure)
    paths = shortcut.map_paths(finished["as published"], drains)
    energy = shortcut.cam_energy(finished, settings, paths)
    assert list(energy.index) == list(shortcut.MODELS)
    inside = energy.filter(like="energy inside").astype(float)
    assert (inside.isna() | ((inside >= 0) & (inside <= 1))).all().all()
    assert (energy["films"] == len(paths)).all() and (energy["all-zero maps"] <= len(paths)).all()
    assert energy["all-zero Grad-CAM maps"].between(0, len(paths)).all()


def comparison_table(gap: tuple[float, float, float], effect: tuple[float, float, float]) -> pd.DataFrame:
    """A `drain_comparison` table whose published-minus-twin row has the given (value, low, high) gap and effect."""
    model = {"AUROC gap": 0.29, "gap low": 0.2, "gap high": 0.37, "logit change": -0.5, "logit low": -0.6,
             "logit high": -0.4, "negatives' logit SD": 0.5, "effect (SD)": -1.0, "effect low": -1.2,
             "effect high": -0.8}
    learned = {**model, "AUROC gap": gap[0], "gap low": gap[1], "gap high": gap[2], "effect (SD)": effect[0],
               "effect low": effect[1], "effect high": effect[2]}
    return pd.DataFrame({shortcut.MODELS[0]: {**model, "effect (SD)": -1.0 + effect[0]}, shortcut.MODELS[1]: model,
                         shortcut.DIFFERENCE: learned}).T


def test_the_cure_reading_claims_only_what_the_test_set_detects() -> None:
    def paired(treated: tuple[float, float], untreated: tuple[float, float], everyone: tuple[float, float]):
        rows = {group: {"difference": d, "p": p, "positives": 20} for group, (d, p) in
                zip(shortcut.GROUPS, (treated, untreated, everyone), strict=True)}
        return pd.DataFrame(rows).T

    none, learned = comparison_table((0.0, -0.09, 0.08), (0.0, -0.4, 0.1)), comparison_table((0.1, 0.03, 0.2),
                                                                                               (-0.5, -0.8, -0.2))
    unclear = shortcut.cure_reading(paired((-0.02, 0.4), (0.05, 0.3), (-0.01, 0.6)), none, split_sd=0.06)
    assert "neither difference" in unclear and "came from the drain" not in unclear
    bought = shortcut.cure_reading(paired((-0.1, 0.001), (0.08, 0.01), (-0.04, 0.02)), learned, split_sd=0.06)
    assert "buys it back" in bought and "About 0.100 of its AUROC there came from the drain" in bought
    assert "smaller than that" in bought and "single training runs" in bought
    assert "(DeLong's test, clustered by patient), the headline difference has p = 0.02 and" in bought
    edge = shortcut.cure_reading(paired((0.0, 0.9), (0.02, 0.5), (-0.05, 0.0496)), none, split_sd=0.06)
    assert "has p < 0.05 and" in edge  # 0.0496 would round up to the bound
    one_patient = shortcut.cure_reading(paired((0.0, 0.9), (0.02, np.nan), (-0.05, 0.01)), none, split_sd=0.06)
    assert "untreated positives no p (its positives or negatives come from a single patient)" in one_patient
    assert "headline cost is one this test set can detect" in one_patient
    alike = shortcut.cure_reading(paired((-0.053, 0.002), (-0.055, 0.15), (-0.054, 0.006)), none, split_sd=0.06)
    assert "cannot tell it from zero" in alike and "a weaker model" in alike and "came from the drain" not in alike
    assert "no headline cost" in shortcut.cure_reading(paired((0.0, 0.9), (0.08, 0.01), (0.01, 0.5)), none, 0.06)
    assert "did worse" in shortcut.cure_reading(paired((0.0, 0.9), (-0.08, 0.01), (0.01, 0.5)), none, 0.06)
    assert "headline cost is one" in shortcut.cure_reading(paired((0.0, 0.9), (0.02, 0.5), (-0.05, 0.01)), none, 0.06)
    # "because the test set rewards the shortcut" only with the untreated positives no worse and a learned gap
    rewarded = paired((-0.1, 0.001), (0.01, 0.8), (-0.04, 0.02))
    assert "because the test set" in shortcut.headline_reading(rewarded, learned)
    assert "cannot be told from" in shortcut.headline_reading(rewarded, none)
    assert "lower on the untreated positives too" in shortcut.headline_reading(
        paired((-0.053, 0.002), (-0.055, 0.15), (-0.054, 0.006)), learned)
    assert shortcut.headline_reading(paired((0.0, 0.9), (0.0, 0.9), (-0.01, 0.5)), learned).startswith("Wherever")


def test_the_drain_readings_claim_a_learned_shortcut_only_beyond_the_twin() -> None:
    none, learned = comparison_table((0.0, -0.09, 0.08), (0.0, -0.4, 0.1)), comparison_table((0.1, 0.03, 0.2),
                                                                                               (-0.5, -0.8, -0.2))
    assert "cannot be told apart" in shortcut.gap_reading(none)
    assert "learned from the labels" in shortcut.gap_reading(learned)
    assert "finds no part of the drain's effect" in shortcut.effect_reading(none)
    assert "About 33% of the published-style model's drain effect is learned" in shortcut.effect_reading(learned)
    assert "no part of it shown" in shortcut.learned_summary(none)
    assert "about 33% of it learned" in shortcut.learned_summary(learned)
    groups = pd.DataFrame({"auroc": [0.9, 0.63, 0.78]}, index=list(shortcut.GROUPS))
    intervals = pd.DataFrame({"low": [0.8, 0.5, 0.7], "high": [0.95, 0.7, 0.85]}, index=list(shortcut.GROUPS))
    assert "positives with a drain from the negatives better" in shortcut.subgroup_gap_reading(intervals)
    assert "the other way round" in shortcut.subgroup_gap_reading(intervals.iloc[[1, 0, 2]].set_axis(intervals.index))
    assert "overlap: with this many" in shortcut.subgroup_gap_reading(intervals.assign(low=0.6))
    for low, high, said in ((-0.02, -0.01, "lowers"), (0.01, 0.02, "raises"), (-0.01, 0.01, "includes zero")):
        assert said in shortcut.counterfactual_reading(pd.Series({"low": low, "high": high}))
    assert "need not shrink" in shortcut.drain_rate_prediction(none, groups)
    assert "should shrink towards the twin's" in shortcut.drain_rate_prediction(learned, groups)


def test_without_counterfactuals_the_lab_says_how_to_make_them(settings, tmp_path) -> None:
    root = tmp_path / "data"
    shutil.copytree(settings.data_root / "_synth", root / "_synth", ignore=shutil.ignore_patterns("masks"))
    (root / "_synth" / "counterfactuals.csv").unlink()
    with pytest.raises(FileNotFoundError, match="--counterfactual remove=drain"):
        shortcut.counterfactual_paths(root)
    assert shortcut.has_counterfactuals(settings.data_root) and not shortcut.has_counterfactuals(root)
    assert shortcut.drain_rates(settings.data_root) == shortcut.drain_rates(root)  # the plan's, recorded or not
    assert shortcut.stages(make_settings("full", root, tmp_path / "runs")) == []  # nothing to train there
