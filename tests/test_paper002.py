"""Paper 002's experiment definitions on the real layouts: the sections' variants, their shared baseline, the view
manifests, the test set of radiologist-labelled valid.csv, and a finished run's model scored on another site."""
from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import pytest
from layouts import write_chexpert, write_nih
from PIL import Image

from cxrcore import make_settings
from cxrcore.experiments import BOOK_EXPERIMENTS, EXPERIMENTS, explore, localisation, paper002, source_models
from cxrcore.experiments.reported import read_reported
from cxrcore.manifest import copies, load_manifest
from cxrcore.metrics import score_column
from cxrcore.runner import Result, predict_split, run, run_key
from data_prep.splits import VIEW_ARMS

TINY = {"image_size": 32, "epochs": 1, "batch_size": 8}
TINY_MODEL = {"arch": "resnet18", "weights": None, "overrides": TINY}  # a variant's config, made tiny


@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A DATA_ROOT with a CheXpert tree (enough real patients for some laterals) and a ChestX-ray14 tree."""
    root = tmp_path_factory.mktemp("paper002_sites")
    write_chexpert(root, n_train_patients=40, n_valid_patients=40)
    write_nih(root)
    return root


@pytest.fixture(scope="module")
def tiny_baseline(sites: Path, tmp_path_factory: pytest.TempPathFactory) -> Result:
    """The baseline variant (every view, ImageNet statistics, U-Ones) as a tiny real run, trained once."""
    settings = make_settings("quick", sites, tmp_path_factory.mktemp("paper002_runs"))
    return run({**paper002.configs(settings)[("uncertainty", "u-ones")], **TINY_MODEL}, runs_dir=settings.runs_dir)


def test_every_section_has_its_variants_and_the_baseline_is_one_run(sites: Path, tmp_path: Path) -> None:
    settings = make_settings("quick", sites, tmp_path / "runs")
    configs = paper002.configs(settings)
    assert {(s, v) for s, variants in paper002.SECTIONS.items() for v in variants} == set(configs)
    baseline = [configs[(section, variant)] for section, variant in paper002.BASELINE.items()]
    assert baseline[0] == baseline[1] == baseline[2]
    stages = paper002.stages(settings)
    assert stages[0] == [source_models.configs(settings)["DenseNet-121"]]
    assert len({run_key(c, runs_dir=settings.runs_dir) for c in stages[1]}) == len(configs) - 2  # baseline once
    multiclass = configs[("uncertainty", "u-multiclass")]
    assert (multiclass["head"], multiclass["loss_weighting"]) == ("multiclass3", "paper002")
    assert {configs[("normalization", n)]["normalization"] for n in paper002.SECTIONS["normalization"]} == {
        "imagenet", "dataset", "none"}
    assert all(c["preset"] == "paper002" and c["findings"] == paper002.FINDINGS for c in configs.values())
    assert "paper002" in EXPERIMENTS and "paper002" in BOOK_EXPERIMENTS  # `make runs` trains what the chapter reads


def test_view_manifests_share_validation_and_the_radiologists_test_set(sites: Path, tmp_path: Path) -> None:
    settings = make_settings("quick", sites, tmp_path / "runs")
    tables = {name: load_manifest(path) for name, path in paper002.view_manifests(settings).items()}
    assert list(tables) == list(VIEW_ARMS)
    train = {name: t[t["split"] == "train"] for name, t in tables.items()}
    assert (train["frontal+lateral"]["view"] == "lateral").any()
    assert set(train["frontal, same count"]["view"]) == set(train["frontal, fewer"]["view"]) == {"frontal"}
    assert len(train["frontal, fewer"]) < len(train["frontal+lateral"])
    assert len(train["frontal, same count"]) <= len(train["frontal+lateral"])
    repeated = train["frontal, repeated"]  # paper 002's substitution: the same patients' frontal images, repeated
    assert set(repeated["view"]) == {"frontal"} and set(repeated["path"]) == set(train["frontal, fewer"]["path"])
    assert len(repeated) < copies(repeated).sum() <= len(train["frontal+lateral"])
    held_out = [t[t["split"] != "train"].drop(columns="copies", errors="ignore").reset_index(drop=True)
                for t in tables.values()]
    for other in held_out[1:]:
        pd.testing.assert_frame_equal(held_out[0], other)
    test = held_out[0][held_out[0]["split"] == "test"]
    assert len(test) > 0 and test["path"].str.contains("/valid/").all()  # valid.csv: radiologists' labels
    assert set(np.unique(test[paper002.FINDINGS].to_numpy())) <= {0.0, 1.0}
    for table in tables.values():
        assert (table.groupby("patient_id")["split"].nunique() == 1).all()


def test_full_profile_trains_on_as_many_images_as_the_frontal_training_set(sites: Path) -> None:
    table = paper002.site_table(sites)
    frontal_train = int(((table["split"] == "train") & (table["view"] == "frontal")).sum())
    assert paper002.train_images(table, "full") == frontal_train
    assert paper002.train_images(table, "quick") == paper002.QUICK_TRAIN_IMAGES


@pytest.mark.slow
def test_a_run_scored_on_its_own_manifest_matches_its_test_predictions_and_on_another_site(
        sites: Path, tmp_path: Path) -> None:
    settings = make_settings("quick", sites, tmp_path / "runs")
    config = paper002.configs(settings)[("normalization", "dataset")]  # statistics of the run's training images
    config = {**config, **TINY_MODEL}
    result = run(config, runs_dir=settings.runs_dir)
    own = predict_split(result, "test", manifest=config["manifest"])
    columns = [score_column(f) for f in paper002.FINDINGS]
    assert own["path"].tolist() == result.predictions["path"].tolist()
    np.testing.assert_allclose(own[columns].to_numpy(), result.predictions[columns].to_numpy(), atol=1e-5)
    other_manifest = source_models.source_manifest(sites, tmp_path / "manifests")
    other = predict_split(result, "test", manifest=other_manifest)
    nih_test = load_manifest(other_manifest).query("split == 'test'")
    assert other["path"].tolist() == nih_test["path"].tolist()
    assert np.isfinite(other[columns].to_numpy()).all()
    without_test = tmp_path / "no_test.csv"
    load_manifest(other_manifest).query("split != 'test'").to_csv(without_test, index=False)
    with pytest.raises(ValueError, match="no images in split 'test'"):
        predict_split(result, "test", manifest=without_test)


@pytest.mark.slow
def test_variants_of_a_section_are_compared_finding_by_finding_with_bh_q_values(sites: Path, tmp_path: Path) -> None:
    settings = make_settings("quick", sites, tmp_path / "runs")
    configs = paper002.configs(settings)
    finished = {key: run({**configs[key], **TINY_MODEL}, runs_dir=settings.runs_dir)
                for key in [("normalization", "imagenet"), ("normalization", "none"), ("uncertainty", "u-zeros")]}
    results, groups = paper002.labelled(finished)
    assert groups == {"normalization": ["normalization: imagenet", "normalization: none"],
                      "uncertainty": ["uncertainty: u-zeros"]}
    table = paper002.comparisons(finished)
    assert set(table["pair"]) == {"normalization: imagenet vs normalization: none"}  # within sections only
    assert len(table) == table["finding"].nunique() > 0
    assert ((table["q (BH)"] >= table["p"]) & (table["q (BH)"] <= 1)).all()
    other_test = {**configs[("normalization", "none")], **TINY_MODEL, "max_test_images": 2}
    with pytest.raises(ValueError, match="not tested on the same images"):
        paper002.comparisons({**finished, ("normalization", "fewer"): run(other_test, runs_dir=settings.runs_dir)})


def test_pixel_statistics_of_each_site_present_and_of_imagenet(sites: Path) -> None:
    """Measured on every image of the small CheXpert tree, its mean and std are those of all its grey pixels at the
    variants' input side; the tree has no hospital site, so no row for it."""
    settings = make_settings("quick", sites, sites / "runs")
    table = paper002.pixel_statistics(settings, n=10_000)
    assert list(table.index) == ["CheXpert", "ChestX-ray14", "ImageNet (mean of R, G, B)"]
    chexpert = paper002.site_table(sites)
    assert table.loc["CheXpert", "images"] == table.loc["CheXpert", "measured on"] == len(chexpert)
    side = paper002.input_side("quick")
    pixels = np.concatenate([np.asarray(Image.open(sites / path).convert("L").resize((side, side)), np.float64).ravel()
                             for path in chexpert["path"]]) / 255
    assert table.loc["CheXpert", "mean"] == pytest.approx(pixels.mean(), abs=0.01)
    assert table.loc["CheXpert", "std"] == pytest.approx(pixels.std(), abs=0.01)
    assert table.loc["ImageNet (mean of R, G, B)", ["mean", "std"]].tolist() == pytest.approx([0.449, 0.226])


@pytest.mark.slow
def test_cam_and_gradcam_of_one_run_on_the_same_images(tiny_baseline: Result) -> None:
    result = tiny_baseline
    paths = result.predictions["path"].head(3).tolist()
    shown, maps = localisation.cam_and_gradcam(result, paths, paper002.FINDINGS.index("Pleural Effusion"))
    assert tuple(shown.shape) == (3, 32, 32) and list(maps) == ["CAM", "Grad-CAM"]
    for name, found in maps.items():
        assert found.shape == (3, 32, 32), name
        assert np.isfinite(found).all() and found.min() >= 0 and found.max() <= 1 + 1e-6, name
    np.testing.assert_allclose(shown.numpy(), localisation.test_images(result, paths)[:, 0].numpy())


@pytest.mark.slow
def test_view_variants_scored_on_every_test_view_and_on_frontal_and_lateral_images_apart(
        sites: Path, tmp_path: Path) -> None:
    settings = make_settings("quick", sites, tmp_path / "runs")
    configs = paper002.configs(settings)
    finished = {key: run({**configs[key], **TINY_MODEL}, runs_dir=settings.runs_dir)
                for key in configs if key[0] == "views"}
    table = paper002.site_table(sites)
    views = paper002.by_test_view(finished, table, n_boot=20)
    assert set(views["variant"]) == set(VIEW_ARMS)
    test = table[table["split"] == "test"]
    everything = views[views["test views"] == "every view"].set_index("variant")
    assert (everything["test_images"] == len(test)).all()
    for variant, result in finished.items():
        mean = paper002.predictions_auroc_table(result.predictions, paper002.FINDINGS, 20).loc["Mean", "auroc"]
        assert everything.loc[variant[1], "mean_auroc"] == pytest.approx(mean)
    frontal = views[views["test views"] == "frontal"]
    assert (frontal["test_images"] == int((test["view"] == "frontal").sum())).all()
    assert views["test views"].isin(["every view", "frontal", "lateral"]).all()
    assert ((views["ci_low"] <= views["mean_auroc"]) & (views["mean_auroc"] <= views["ci_high"])).all()
    with pytest.raises(ValueError, match="is not in the site table"):
        paper002.by_test_view(finished, table.drop(index=test.index[:1]), n_boot=20)
    a, b = finished[("views", "frontal+lateral")], finished[("views", "frontal, fewer")]
    per_image = paper002.paired_difference(a, b, 50)
    assert per_image["difference"] == pytest.approx(everything.loc["frontal+lateral", "mean_auroc"]
                                                    - everything.loc["frontal, fewer", "mean_auroc"])
    assert per_image["low"] <= per_image["high"]
    for how in ("mean", "max"):  # per study: the difference of the two runs' per-study mean AUROCs
        per_study = paper002.paired_difference(a, b, 50, level="study", how=how)
        means = [paper002.study_means(r, 20)[f"study_mean_auroc_{how}"] for r in (a, b)]
        assert per_study["difference"] == pytest.approx(means[0] - means[1])
    itself = paper002.paired_difference(a, a, 20)
    assert (itself["difference"], itself["low"], itself["high"]) == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="level must be"):
        paper002.paired_difference(a, b, 20, level="patient")


def test_training_labels_count_classes_and_paper_002s_weights(tiny_baseline: Result) -> None:
    labels = paper002.training_labels(tiny_baseline)
    manifest = load_manifest(tiny_baseline.config["run"]["manifest"])
    train = manifest[manifest["split"] == "train"]
    assert list(labels.index) == paper002.FINDINGS
    assert (labels[["negative", "positive", "uncertain"]].sum(axis=1) == len(train)).all()
    assert labels["uncertain"].tolist() == [int((train[f] == -1).sum()) for f in paper002.FINDINGS]
    for finding, row in labels.iterrows():
        for kind in ("negative", "positive", "uncertain"):
            expected = len(train) / row[kind] if row[kind] else 0.0
            assert row[f"weight, {kind}"] == pytest.approx(expected), (finding, kind)
    assert labels["uncertain share"].tolist() == pytest.approx((labels["uncertain"] / len(train)).tolist())


@pytest.mark.slow
def test_the_cam_explorers_figure_shows_the_label_score_and_map_of_a_test_image(tiny_baseline: Result) -> None:
    result = tiny_baseline
    row = result.predictions.iloc[0]
    for method in ("CAM", "Grad-CAM"):
        figure = explore.cam_figure(result, row["path"], "Edema", method)
        image_ax, map_ax = figure.axes
        label = {1.0: "positive", 0.0: "negative"}[row["Edema"]]
        assert figure.texts[0].get_text().startswith(f"Edema: label {label}, score {row['Edema_score']:.2f}")
        assert map_ax.get_title() == method and map_ax.images[0].get_array().shape == (32, 32, 3)
        matplotlib.pyplot.close(figure)
    with pytest.raises(ValueError, match="expected 'CAM' or 'Grad-CAM'"):
        explore.cam_figure(result, row["path"], "Edema", "saliency")
    assert explore.sign_of("Pleural Effusion") == "effusion" and explore.sign_of("Cardiomegaly") == "cardiomegaly"
    assert explore.sign_of("No Finding") is None
    box = explore.cam_explorer({"tiny": result}, paper002.FINDINGS, n_images=3)
    assert box.children[1].children[1].max == 2  # the image slider spans the first three test images
    matplotlib.pyplot.close("all")


def test_views_verdict_names_where_the_laterals_helped_were_not_shown_or_hurt() -> None:
    above, zero, below = {"low": 0.01, "high": 0.05}, {"low": -0.02, "high": 0.03}, {"low": -0.06, "high": -0.01}
    assert paper002.views_verdict({"a": above, "b": above}).startswith("Both per-image paired intervals lie above")
    verdict = paper002.views_verdict({"a": zero, "b": below})
    assert "against a the interval includes zero: there the lateral views' help is not shown" in verdict
    assert "against b the interval lies wholly below zero: there the lateral views hurt" in verdict
    assert "helped" not in verdict
    assert paper002.sections_named(["uncertainty", "views", "views"]) == "lateral views and uncertain labels"


def test_reported_views_drop_reads_both_the_printed_and_the_listed_mean() -> None:
    reported = read_reported(Path(__file__).resolve().parents[1] / "book" / "reported.csv")
    words = paper002.reported_views_drop(reported)
    assert words["r002_views_change"].startswith("lowered it by 0.0369, from 0.8236 to 0.7867 as printed; but the 13 "
                                                 "per-finding values its Table 2 lists average 0.8075")
    assert "the paper's own figure" in words["r002_views_change"]
    assert words["r002_views_gap_no_lesion"] == "+0.0091"
    assert words["r002_lesion_reading"].startswith("Whether most of the difference comes from that one finding "
                                                   "depends on which mean is right")
    assert "by the printed mean most of it comes from Lung Lesion" in words["r002_lesion_reading"]
    printed = (reported["source"] == "Table 2") & (reported["finding"] == "Mean") & (reported["paper"] == "002")
    fixed = reported.copy()
    fixed.loc[printed, "value"] = 0.8075  # a table whose printed mean is its values' mean
    words = paper002.reported_views_drop(fixed)
    assert words["r002_views_change"] == "lowered it by 0.0161, from 0.8236 to 0.8075 as printed"
    assert words["r002_lesion_reading"] == ("Set against the difference with it, most of the difference stays "
                                            "without that finding.")
