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
    targets = paper001.patient_target_table(model_runs[("patient data", "age, sex, projection")], n_boot=20)
    assert list(targets.index) == ["sex", "projection", "age"]
    assert targets.loc["age", "metric"] == "MAE (years)" and targets.loc["age", "value"] > 0
    assert targets.loc["age", "low"] <= targets.loc["age", "value"] <= targets.loc["age", "high"]
    assert paper001.metadata_only_auroc(model_runs).between(0, 1).all()


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
    table = resampling.spread_against_differences(model_runs, folds, n_boot=20)
    assert "ResNet-101 - ResNet-50" in table.index and "ResNet-50 - ResNet-50" not in table.index
    width = summary.loc["Mean", "max"] - summary.loc["Mean", "min"]
    np.testing.assert_allclose(table["split_range"], width)
    assert (table["within_spread"] == (table["difference"].abs() < width)).all()


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
    assert ((paired["p"] >= 0) & (paired["p"] <= 1)).all() and (paired["positives"] == groups["positives"]).all()
    assert shortcut.cure_reading(paired).startswith("Paired on the same test films")
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


def test_the_cure_reading_claims_only_what_the_test_set_detects() -> None:
    def paired(treated: tuple[float, float], untreated: tuple[float, float], everyone: tuple[float, float]):
        rows = {group: {"difference": d, "p": p, "positives": 20} for group, (d, p) in
                zip(shortcut.GROUPS, (treated, untreated, everyone), strict=True)}
        return pd.DataFrame(rows).T

    unclear = shortcut.cure_reading(paired((-0.02, 0.4), (0.05, 0.3), (-0.01, 0.6)))
    assert "neither difference" in unclear and "drain." not in unclear
    bought = shortcut.cure_reading(paired((-0.1, 0.001), (0.08, 0.01), (-0.04, 0.02)))
    assert "buys it back" in bought and "0.100 lower" in bought
    assert "no headline cost" in shortcut.cure_reading(paired((0.0, 0.9), (0.08, 0.01), (0.01, 0.5)))
    assert "did worse" in shortcut.cure_reading(paired((0.0, 0.9), (-0.08, 0.01), (0.01, 0.5)))
    assert "headline cost is one" in shortcut.cure_reading(paired((0.0, 0.9), (0.02, 0.5), (-0.05, 0.01)))


def test_without_counterfactuals_the_lab_says_how_to_make_them(settings, tmp_path) -> None:
    root = tmp_path / "data"
    shutil.copytree(settings.data_root / "_synth", root / "_synth", ignore=shutil.ignore_patterns("masks"))
    (root / "_synth" / "counterfactuals.csv").unlink()
    with pytest.raises(FileNotFoundError, match="--counterfactual remove=drain"):
        shortcut.counterfactual_paths(root)
    assert shortcut.has_counterfactuals(settings.data_root) and not shortcut.has_counterfactuals(root)
    assert shortcut.stages(make_settings("full", root, tmp_path / "runs")) == []  # nothing to train there
