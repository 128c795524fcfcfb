"""Paper 003's experiment on the real CheXpert layout: the sections and their shared runs, up-sampling only in the
training split, the leaky protocol's data root, paper 003's table layout and parameter counts, on tiny real runs."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from layouts import write_chexpert, write_nih
from sklearn.metrics import roc_auc_score

from cxrcore import make_settings
from cxrcore.experiments import paper003, source_models
from cxrcore.experiments.tables import all_positive_f1, certain_labels, scored_findings
from cxrcore.manifest import copies, load_manifest
from cxrcore.metrics import AVERAGES, averaged_f1, precision_recall_f1
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


def test_counted_averaged_f1_agrees_with_sklearn_and_leaves_uncertain_labels_out(tiny_runs) -> None:
    """With every label known it is `metrics.averaged_f1`; with uncertain labels (NaN) left out, its micro F1 pools
    the counted decisions and its macro F1 is the mean of the per-finding F1."""
    predictions = tiny_runs[("leak", "correct protocol")].predictions
    scores = predictions[[f"{f}_score" for f in paper003.FINDINGS]].to_numpy()
    known = predictions[paper003.FINDINGS].fillna(0)
    ours, sklearn = paper003.counted_averaged_f1(known, scores, 0.5), averaged_f1(known, scores, 0.5)
    assert np.allclose(ours.to_numpy(dtype=float), sklearn.to_numpy(dtype=float), equal_nan=True)
    truth = known.mask(np.arange(known.size).reshape(known.shape) % 3 == 0)  # a third of the labels not scored
    table = paper003.counted_averaged_f1(truth, scores, 0.5)
    counted, called, positive = truth.notna().to_numpy(), scores >= 0.5, truth.to_numpy() == 1
    hits = (called & positive & counted).sum()
    assert table.loc["micro", "f1"] == pytest.approx(2 * hits / ((called & counted).sum() + positive.sum()))
    per_finding = precision_recall_f1(truth, scores, 0.5, names=paper003.FINDINGS)["f1"].fillna(0)
    assert table.loc["macro", "f1"] == pytest.approx(per_finding.mean())


def test_certain_labels_make_supports_the_manifests_certain_positives(settings, tiny_runs) -> None:
    """Scored on certain labels (as `paper003.runs` scores), a finding's support is its count of label 1 among the
    test images, uncertain ones left out; the trivial all-positive F1 and the share called positive follow them."""
    result = certain_labels(tiny_runs[("leak", "correct protocol")], paper003.FINDINGS)
    manifest = load_manifest(result.config["run"]["manifest"])
    test = manifest[manifest["split"] == "test"]
    report = paper003.f1_report(result)
    assert report.loc[paper003.FINDINGS, "support"].tolist() == (test[paper003.FINDINGS] == 1).sum().tolist()
    assert result.predictions[paper003.FINDINGS].isna().sum().sum() == (test[paper003.FINDINGS] == -1).sum().sum()
    everything = paper003.f1_report(result, 0.0).loc[paper003.FINDINGS, "f1"].fillna(0)  # every film called positive
    assert np.allclose(all_positive_f1(result.predictions, paper003.FINDINGS).fillna(0), everything)
    assert (paper003.called_positive(result, 0.0).dropna() == 1).all()
    assert (paper003.called_positive(result, 1.01).dropna() == 0).all()


def test_leak_test_pairs_the_untouched_set_and_subtracts(settings, tiny_runs) -> None:
    """The inflation is the own splits' mean AUROC difference of `leak_table`, the untouched difference is paired on
    the same valid.csv images, and the leak is the first minus the second, each with an interval around it."""
    clean = paper003.clean_predictions(settings, tiny_runs)
    own = {v: tiny_runs[("leak", v)].predictions for v in paper003.SECTIONS["leak"]}
    table = paper003.leak_table(settings, tiny_runs, clean).set_index(["protocol", "test set"])
    test = paper003.leak_test(own, clean, 50)
    mean = table["mean_auroc"]
    assert test.loc["inflation", "value"] == pytest.approx(mean.loc[("leaky protocol", "own test split")]
                                                           - mean.loc[("correct protocol", "own test split")])
    untouched = "radiologists' test set (valid.csv)"
    assert test.loc["untouched", "value"] == pytest.approx(mean.loc[("leaky protocol", untouched)]
                                                           - mean.loc[("correct protocol", untouched)])
    assert test.loc["leak", "value"] == pytest.approx(test.loc["inflation", "value"] - test.loc["untouched", "value"])
    assert (test["low"] <= test["high"]).all()
    assert table["prevalence"].between(0, 1).all()
    same = paper003.paired_difference(clean["leaky protocol"], clean["leaky protocol"], 50)
    assert same == {"value": 0.0, "low": 0.0, "high": 0.0}  # a model against itself: paired draws cancel
    assert isinstance(paper003.leak_reading(test), str)


def test_auroc_draws_start_from_the_plain_auroc(tiny_runs) -> None:
    predictions = tiny_runs[("leak", "correct protocol")].predictions
    findings = scored_findings(predictions, paper003.FINDINGS, 2)
    draws = paper003.auroc_draws([predictions], findings, 20)
    assert draws.shape == (1, 21, len(findings))
    for k, finding in enumerate(findings):
        known = predictions[finding].notna()
        assert draws[0, 0, k] == pytest.approx(roc_auc_score(predictions.loc[known, finding],
                                                             predictions.loc[known, f"{finding}_score"]))
    with pytest.raises(ValueError, match="same images"):
        paper003.auroc_draws([predictions, predictions.iloc[::-1]], findings, 5)


def test_leak_by_finding_compares_each_finding_and_the_up_sampled_mean(tiny_runs) -> None:
    own = {v: tiny_runs[("leak", v)].predictions for v in paper003.SECTIONS["leak"]}
    both = [f for f in scored_findings(own["correct protocol"], paper003.FINDINGS)
            if f in scored_findings(own["leaky protocol"], paper003.FINDINGS)]
    table = paper003.leak_by_finding(own, both[:1], 30)
    assert list(table.index) == [*both, "mean, up-sampled", "mean, others", "up-sampled minus others"]
    rows = table.loc[both]
    assert np.allclose(rows["value"], rows["leaky protocol"] - rows["correct protocol"])
    assert table.loc["mean, up-sampled", "value"] == pytest.approx(rows["value"].iloc[0])
    assert isinstance(paper003.upsampled_leak_reading(table), str)


def test_readings_follow_their_numbers() -> None:
    """Each sentence is chosen by its interval: below, across or above chance; a leak or none; within noise."""
    assert paper003.signed(-0.001) == "0.00" and paper003.signed(0.004) == "0.00" and paper003.signed(0.02) == "+0.02"
    rows = pd.DataFrame({"ci_low": [0.40, 0.45, 0.55], "ci_high": [0.48, 0.52, 0.60]}, index=["a", "b", "c"])
    reading = paper003.chance_reading(rows)
    assert "a's interval lies wholly below 0.5" in reading and "b's interval lies across 0.5" in reading
    assert "c's interval lies wholly above 0.5" in reading

    def test(inflation: tuple, untouched: tuple, leak: tuple) -> pd.DataFrame:
        return pd.DataFrame([inflation, untouched, leak], index=["inflation", "untouched", "leak"],
                            columns=["value", "low", "high"])
    assert "excess is the leak" in paper003.leak_reading(test((0.1, 0.07, 0.14), (0, -0.02, 0.02),
                                                              (0.1, 0.06, 0.15)))
    assert "worse on the untouched" in paper003.leak_reading(test((0.1, 0.07, 0.14), (-0.05, -0.08, -0.02),
                                                                  (0.15, 0.1, 0.2)))
    assert "also better" in paper003.leak_reading(test((0.1, 0.07, 0.14), (0.05, 0.02, 0.08), (0.05, 0.01, 0.1)))
    assert "too small to tell" in paper003.leak_reading(test((0.1, 0.0, 0.2), (0.05, -0.1, 0.2), (0.05, -0.2, 0.3)))
    assert "not higher" in paper003.leak_reading(test((-0.01, -0.05, 0.03), (0, -0.02, 0.02), (0, -0.05, 0.05)))
    by_finding = pd.DataFrame({"value": [0.09], "low": [-0.01], "high": [0.2]}, index=["up-sampled minus others"])
    assert "do not differ beyond noise" in paper003.upsampled_leak_reading(by_finding)
    remedies = paper003.remedy_reading({"pos_weight": 0.08, "up-sampling": -0.001},
                                       {"pos_weight": {"value": -0.03, "low": -0.05, "high": -0.01},
                                        "up-sampling": {"value": 0.0, "low": -0.02, "high": 0.02}})
    assert "pos_weight changed the macro F1 at 0.5 by +0.08" in remedies and ": lower)" in remedies
    assert "up-sampling changed the macro F1 at 0.5 by 0.00" in remedies and ": within noise)" in remedies


def test_threshold_and_calibration_readings_cover_ties_and_no_gain() -> None:
    assert "neither" in paper003.threshold_reading(0.004, -0.02)
    assert "same amount" in paper003.threshold_reading(0.101, 0.099)
    assert paper003.threshold_reading(0.12, 0.0).startswith("choosing each finding's threshold")
    assert paper003.threshold_reading(0.0, 0.12).startswith("up-sampling lifts")
    verdict = paper003.calibration_verdict({"nothing": 0.101, "pos_weight": 0.215, "up-sampling": 0.104})
    assert "pos_weight's scores should not be read as probabilities" in verdict and "2.1 times" in verdict
    assert "up-sampling's scores are about as calibrated as the plain model's" in verdict
    assert "better calibrated" in paper003.calibration_verdict({"nothing": 0.2, "pos_weight": 0.1})


def test_training_images_name_the_runs_that_train_on_other_images(settings) -> None:
    configs = paper003.configs(settings)
    trained = paper003.training_images(configs)
    assert set(trained) == set(configs)
    common = trained[("imbalance", "nothing")]
    assert trained[("imbalance", "up-sampling")] == trained[("bases", "ResNet-50, frozen")] == common  # copies once
    assert trained[("bases", "VGG-16, full")] < common  # the quick profile's share for VGG-16
    reading = paper003.training_reading(trained)
    assert f"the same {common:,} training images" in reading and "VGG-16 runs" in reading
    assert f"{trained[('leak', 'leaky protocol')]:,} distinct images" in reading
    rows = pd.DataFrame({"ci_low": [0.40, 0.45], "ci_high": [0.48, 0.52]}, index=["VGG-16 frozen", "VGG-16 full"])
    assert "source model" in paper003.vgg_reading(rows, 10, 80, from_source=True)
    assert "source model" not in paper003.vgg_reading(rows, 80, 80, from_source=False)
    assert "less data" in paper003.vgg_reading(rows, 10, 80, from_source=False)
