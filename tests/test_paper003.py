"""Paper 003's experiment on the real CheXpert layout: the sections and their shared runs, up-sampling only in the
training split, the leaky protocol's data root, paper 003's table layout and parameter counts, on tiny real runs."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from layouts import write_chexpert, write_nih

from cxrcore import make_settings
from cxrcore.experiments import paper003, source_models
from cxrcore.manifest import copies, load_manifest
from cxrcore.metrics import AVERAGES
from cxrcore.runner import Result, run, run_key, train_image_count

TINY = {"arch": "resnet18", "weights": None, "overrides": {"image_size": 32, "epochs": 1, "batch_size": 8}}


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("paper003_site")
    write_chexpert(root, n_train_patients=60, n_valid_patients=20)
    write_nih(root)  # the source models' site (the bases start from them when no ImageNet weights are cached)
    return make_settings("quick", root, tmp_path_factory.mktemp("paper003_runs"))


@pytest.fixture(scope="module")
def tiny_runs(settings) -> dict[tuple[str, str], Result]:
    """The two leak runs, made tiny: the correct protocol (up-sampling after the split) and the leaky one."""
    configs = paper003.configs(settings)
    return {key: run({**configs[key], **TINY}, runs_dir=settings.runs_dir) for key in
            [("leak", v) for v in paper003.SECTIONS["leak"]]}


def test_sections_share_their_runs_and_up_sample_only_training_images(settings) -> None:
    configs = paper003.configs(settings)
    assert {(s, v) for s, variants in paper003.SECTIONS.items() for v in variants} == set(configs)
    key = {name: run_key(config, runs_dir=settings.runs_dir) for name, config in configs.items()}
    assert key[("imbalance", "nothing")] == key[("bases", "DenseNet-121, full")]
    assert key[("leak", "correct protocol")] == key[("imbalance", "up-sampling")]
    assert len(set(key.values())) == len(configs) - 2
    assert all(c["head"] == "paper003" and c["preset"] == "paper003" and len(c["findings"]) == 14
               for c in configs.values())
    frozen = [c for (s, v), c in configs.items() if v.endswith("frozen")]
    assert len(frozen) == 3 and all(c["freeze_backbone"] and c["feature_cache"] for c in frozen)
    assert configs[("imbalance", "pos_weight")]["loss_weighting"] == "pos_weight"
    plain = load_manifest(configs[("imbalance", "nothing")]["manifest"])
    upsampled = load_manifest(configs[("imbalance", "up-sampling")]["manifest"])
    assert upsampled["path"].tolist() == plain["path"].tolist()  # the same images, drawn more often
    assert (copies(upsampled[upsampled["split"] != "train"]) == 1).all() and copies(upsampled).max() > 1
    leaky = configs[("leak", "leaky protocol")]
    assert leaky["max_train_images"] == train_image_count(configs[("leak", "correct protocol")])
    plain_draws = train_image_count(configs[("imbalance", "nothing")])  # the same gradient steps for every variant
    assert plain_draws < leaky["max_train_images"] and configs[("imbalance", "nothing")].get("draws_per_epoch") is None
    assert configs[("imbalance", "up-sampling")]["draws_per_epoch"] == leaky["draws_per_epoch"] == plain_draws
    assert Path(leaky["data_root"]) == paper003.leaky_root(settings)
    assert paper003.stages(settings)[0] == source_models.stages(settings)[0]


def test_parameter_counts_match_paper_003_for_the_frozen_densenet() -> None:
    counts = paper003.parameter_counts().set_index(["base", "training"])
    assert counts.loc[("DenseNet-121", "frozen"), "trainable"] == 1_063_950  # paper 003, section 5.1
    assert counts.loc[("DenseNet-121", "frozen"), "keras total"] == 8_101_454  # with BatchNorm's moving averages
    full = counts.xs("full", level="training")
    assert (full["trainable"] == full["total"]).all()


def test_leaky_test_split_holds_copies_of_training_images(settings, tiny_runs) -> None:
    leaky = tiny_runs[("leak", "leaky protocol")]
    manifest = Path(paper003.configs(settings)[("leak", "leaky protocol")]["manifest"])
    seen = paper003.seen_in_training(leaky, manifest)
    assert seen["test images"] == len(leaky.predictions)
    assert 0 < seen["copies of a trained image"] <= seen["of a trained patient"] <= 1
    table = paper003.leak_table(settings, tiny_runs)
    assert list(table["protocol"].unique()) == list(paper003.SECTIONS["leak"])
    clean = table[table["test set"].str.startswith("radiologists")]
    assert clean["test_images"].nunique() == 1  # both protocols scored on the same untouched images
    correct = tiny_runs[("leak", "correct protocol")]
    test_patients = set(correct.predictions["patient_id"])
    trained = load_manifest(correct.config["run"]["manifest"]).query("split == 'train'")
    assert not test_patients & set(trained["patient_id"])  # the correct protocol: no patient on both sides


def test_f1_report_follows_paper_003s_tables(tiny_runs) -> None:
    result = tiny_runs[("leak", "correct protocol")]
    report = paper003.f1_report(result)
    assert list(report.index) == [*paper003.FINDINGS, *AVERAGES, "subset accuracy"]
    assert report.loc[paper003.FINDINGS, "support"].sum() == (result.predictions[paper003.FINDINGS] == 1).sum().sum()
    cuts = paper003.validation_cuts(result)
    assert list(cuts.index) == paper003.FINDINGS and cuts.notna().all()
    tuned = paper003.f1_report(result, cuts)
    assert not np.allclose(tuned.loc[paper003.FINDINGS, "f1"].fillna(0), report.loc[paper003.FINDINGS, "f1"].fillna(0))
    row = paper003.f1_at_half(result)
    assert row["f1_micro"] == pytest.approx(report.loc["micro", "f1"])
    assert 0 <= row["subset_accuracy"] <= 1


def test_calibration_reads_the_test_films_labels_and_scores(tiny_runs) -> None:
    """Per finding: the share positive, the mean score and the Brier score of the run's own test predictions; the
    reliability curve pools every known label into sklearn's bins and counts them all."""
    result = tiny_runs[("leak", "correct protocol")]
    table = paper003.calibration_table(result)
    predictions = result.predictions
    for finding, row in table.iterrows():
        known = predictions[finding].notna()
        labels, scores = predictions.loc[known, finding], predictions.loc[known, f"{finding}_score"]
        assert row["test prevalence"] == pytest.approx(labels.mean())
        assert row["mean score"] == pytest.approx(scores.mean())
        assert row["Brier score"] == pytest.approx(((scores - labels) ** 2).mean())
    one_valued = [f for f in paper003.FINDINGS if predictions[f].dropna().nunique() < 2]
    assert sorted(table.index) == sorted(set(paper003.FINDINGS) - set(one_valued))  # AUROC's rule: both values
    curve = paper003.reliability_curve(result)
    assert curve["labels"].sum() == predictions[paper003.FINDINGS].notna().sum().sum()
    assert curve["mean score"].is_monotonic_increasing and curve["share positive"].between(0, 1).all()


def test_top_class_maps_name_each_images_highest_finding(settings, tiny_runs) -> None:
    result = tiny_runs[("leak", "correct protocol")]
    images, maps, table = paper003.top_class_maps(result, settings.data_root, 4)
    assert images.shape == maps.shape == (4, 32, 32)
    scores = result.predictions.iloc[:4][[f"{f}_score" for f in paper003.FINDINGS]].to_numpy()
    assert table["top finding"].tolist() == [paper003.FINDINGS[k] for k in scores.argmax(axis=1)]
    assert not table["sign drawn"].any()  # the real layout's images have no drawn signs (the demo sites do)
    assert table["all-zero map"].tolist() == [bool(m.max() == 0) for m in maps]
