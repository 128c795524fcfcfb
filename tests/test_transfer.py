"""The transfer experiment's definitions: manifests from the real layouts, the arms' configs, and real runs that
check what each arm trains (a frozen backbone stays exactly the source model's)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from layouts import write_chexpert, write_nih
from sklearn.metrics import roc_auc_score

from cxrcore.experiments import localisation, source_models, tables, transfer, transfer_sizes
from cxrcore.experiments.reported import read_reported
from cxrcore.experiments.training import dependencies, run_order
from cxrcore.manifest import load_manifest, write_derived_manifest
from cxrcore.models import imagenet_weights_file
from cxrcore.runner import Result, run, run_key

DENSENET = transfer.ARCHITECTURES[0]
VGG = next(a for a in transfer.ARCHITECTURES if a.arch == "vgg16")


@pytest.fixture(scope="module")
def both_sites(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One DATA_ROOT holding a CheXpert and a ChestX-ray14 tree (real rows, small real image files)."""
    root = tmp_path_factory.mktemp("two_sites")
    write_chexpert(root, n_train_patients=12)  # 70/10/20 of 12 patients leaves each split at least one
    write_nih(root)
    return root


def test_target_manifest(both_sites: Path, tmp_path: Path) -> None:
    path = transfer.target_manifest(both_sites, tmp_path)
    table = load_manifest(path)
    assert set(table["view"]) == {"frontal"} and set(table["site"]) == {"chexpert"}
    assert set(table["split"]) <= {"train", "valid", "test"} and "train" in set(table["split"])
    assert not table["path"].str.contains("/valid/").any()  # valid.csv is not part of the target site
    assert (table.groupby("patient_id")["split"].nunique() == 1).all()
    assert set(transfer.TARGET_FINDINGS) <= set(table.columns)


def test_uncertain_test_labels_are_not_scored(both_sites: Path, tmp_path: Path) -> None:
    table = load_manifest(transfer.target_manifest(both_sites, tmp_path))
    findings = transfer.TARGET_FINDINGS
    raw = table[findings].to_numpy(dtype=float)
    assert (raw == -1).any() and (raw == 1).any()  # the real label rows hold both
    trained_on = np.where(np.isnan(raw), 0.0, np.abs(raw))  # U-Ones: uncertain and positive both 1
    predictions = pd.DataFrame(trained_on, columns=findings).assign(path=table["path"].to_numpy()).iloc[::-1]
    scored = tables.uncertain_not_scored(predictions, table, findings)
    reordered = raw[::-1]
    assert np.array_equal(scored[findings].isna().to_numpy(), reordered == -1)  # exactly the uncertain cells
    kept = reordered != -1
    assert np.array_equal(scored[findings].to_numpy()[kept], predictions[findings].to_numpy()[kept])
    with pytest.raises(ValueError, match="not in the manifest.*nowhere.png"):
        tables.uncertain_not_scored(pd.concat([predictions, pd.DataFrame({"path": ["nowhere.png"]})]), table,
                                    findings)


def test_source_manifest_keeps_the_official_test_list(both_sites: Path, tmp_path: Path) -> None:
    table = load_manifest(source_models.source_manifest(both_sites, tmp_path))
    test_list = (both_sites / "ChestX-ray14" / "test_list.txt").read_text().split()
    assert sorted(table.loc[table["split"] == "test", "path"].str.rsplit("/", n=1).str[-1]) == sorted(test_list)
    assert set(source_models.SOURCE_FINDINGS) <= set(table.columns)


def test_derived_manifest_is_rewritten_only_when_it_changed(both_sites: Path, tmp_path: Path) -> None:
    path = transfer.target_manifest(both_sites, tmp_path)
    before = os.stat(path).st_mtime_ns
    os.utime(path, ns=(before - 10**9, before - 10**9))  # so that a rewrite would show in the mtime
    assert transfer.target_manifest(both_sites, tmp_path) == path
    assert os.stat(path).st_mtime_ns == before - 10**9
    table = load_manifest(path)
    write_derived_manifest(table.iloc[:-1], path)
    assert len(load_manifest(path)) == len(table) - 1


def test_arm_configs(both_sites: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch_home"))
    source = source_models.source_config(DENSENET, Path("source.csv"), both_sites, "quick")
    assert "weights" not in source and source["findings"] == source_models.SOURCE_FINDINGS  # random initialisation
    assert source["max_train_images"] == source_models.QUICK_SOURCE_IMAGES and source["channels"] == 3
    arms = {arm: transfer.arm_config(DENSENET, arm, Path("t.csv"), both_sites, "quick", source, 400)
            for arm in transfer.ARMS}
    assert arms["off-the-shelf"]["weights"] == {"run": source} and arms["off-the-shelf"]["freeze_backbone"]
    assert arms["off-the-shelf"]["feature_cache"]  # a frozen backbone's features are computed once
    assert arms["fine-tuned"]["weights"] == {"run": source} and not arms["fine-tuned"]["freeze_backbone"]
    assert {arm["max_train_images"] for arm in arms.values()} == {400} and source["profile"] == "quick"
    assert arms["from scratch"]["weights"] is None and arms["from scratch"]["channels"] == 1
    assert transfer.trainable_parameters(DENSENET, 5, "off-the-shelf") == 1024 * 5 + 5  # the linear head only
    assert transfer.trainable_parameters(DENSENET, 5, "fine-tuned") > 6_900_000
    assert transfer.train_images(DENSENET, "quick") == transfer.QUICK_TARGET_IMAGES
    assert transfer.train_images(VGG, "quick") < transfer.QUICK_TARGET_IMAGES
    assert transfer.train_images(VGG, "full") is None
    with pytest.raises(ValueError, match="VGG-16.*not 'from scratch'"):
        transfer.arm_config(VGG, "from scratch", Path("t.csv"), both_sites, "quick", source, None)


def test_runs_start_after_their_source_and_the_longest_chain_first(both_sites: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch_home"))
    source = source_models.source_config(DENSENET, source_models.source_manifest(both_sites, tmp_path), both_sites,
                                         "quick")
    target = transfer.target_manifest(both_sites, tmp_path)
    arms = {arm: transfer.arm_config(DENSENET, arm, target, both_sites, "quick", source, 400) for arm in transfer.ARMS}
    keys = {name: run_key(config, runs_dir=tmp_path) for name, config in [*arms.items(), ("source", source)]}
    pending = {keys[name]: config for name, config in [*arms.items(), ("source", source)]}
    needed = dependencies(pending, tmp_path)
    assert needed[keys["fine-tuned"]] == needed[keys["off-the-shelf"]] == {keys["source"]}
    assert needed[keys["from scratch"]] == set() and needed[keys["source"]] == set()
    order = run_order(pending, needed)
    # the source first (the arms wait for it), the off-the-shelf arm last (its head trains on cached features)
    assert order == [keys["source"], keys["fine-tuned"], keys["from scratch"], keys["off-the-shelf"]]


def test_imagenet_weights_are_preferred_when_cached(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    assert transfer.pretrained_weights(DENSENET, {"manifest": "x"}) == {"run": {"manifest": "x"}}
    cached, _ = imagenet_weights_file("densenet121")
    assert cached.is_relative_to(tmp_path)
    cached.parent.mkdir(parents=True)
    cached.touch()  # only the file's presence decides the source; loading it is tested in test_models
    assert transfer.pretrained_weights(DENSENET, {"manifest": "x"}) == "imagenet"


@pytest.mark.slow
def test_off_the_shelf_keeps_the_source_backbone_and_fine_tuning_changes_it(
        both_sites: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CXR_PROFILE", "quick")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch_home"))
    model = transfer.ARCHITECTURES[1]  # ResNet-50: BatchNorm statistics would move if the frozen backbone trained
    source = source_models.source_config(model, source_models.source_manifest(both_sites, tmp_path), both_sites,
                                         "quick")
    target = transfer.target_manifest(both_sites, tmp_path)
    runs = tmp_path / "runs"
    ots = run(transfer.arm_config(model, "off-the-shelf", target, both_sites, "quick", source, 400), runs_dir=runs)
    ft = run(transfer.arm_config(model, "fine-tuned", target, both_sites, "quick", source, 400), runs_dir=runs)
    upstream = run(source, runs_dir=runs)
    assert upstream.cached  # the arms trained the source model first, through the run cache
    source_state = torch.load(upstream.checkpoint, weights_only=True)["model"]
    ots_state = torch.load(ots.checkpoint, weights_only=True)["model"]
    ft_state = torch.load(ft.checkpoint, weights_only=True)["model"]
    backbone = [key for key in source_state if key.startswith("backbone.")]
    assert all(torch.equal(ots_state[key], source_state[key]) for key in backbone)
    assert not all(torch.equal(ft_state[key], source_state[key]) for key in backbone)
    assert ots_state["head.weight"].shape == (len(transfer.TARGET_FINDINGS), 2048)
    assert transfer.backbone_change(ots, upstream, model) == 0  # the frozen backbone is the source's, exactly
    assert 0 < transfer.backbone_change(ft, upstream, model) < 1
    assert set(ots.predictions["path"]) == set(ft.predictions["path"])
    scored = tables.certain_labels(ft, transfer.TARGET_FINDINGS)  # what the chapter and the command score
    assert scored.predictions["path"].equals(ft.predictions["path"]) and scored.metrics == ft.metrics
    assert (scored.predictions[transfer.TARGET_FINDINGS].isna() >= ft.predictions[transfer.TARGET_FINDINGS].isna()
            ).all().all()
    health = source_models.health_table({"source": upstream}, source_models.SOURCE_FINDINGS).loc["source"]
    assert health["score spread (mean sd over findings)"] > 0  # a trained network's scores differ between images
    assert 0 <= health["silent channels of the last layer"] <= 1
    assert health["training loss, last epoch"] == upstream.history["loss"].iloc[-1]
    found = source_models.score_drivers(upstream, source_models.SOURCE_FINDINGS, n_boot=20)
    assert -1 <= found["findings ranking alike (mean Spearman)"] <= 1 and -1 <= found["Spearman with brightness"] <= 1
    valid = [found[key] for key in ("validation low", "validation mean AUROC", "validation high")]
    assert valid == sorted(valid) or np.isnan(valid).all()  # NaN: too few validation positives in so small a site
    results, arms = transfer.by_label({(model.name, "off-the-shelf"): ots, (model.name, "fine-tuned"): ft})
    assert list(results) == ["ResNet-50 OTS", "ResNet-50 FT"] and arms["ResNet-50 FT"] == (model, "fine-tuned")
    costs = transfer.cost_table(results, arms, len(transfer.TARGET_FINDINGS))
    assert costs.loc["ResNet-50 OTS", "trainable parameters"] == 2048 * 5 + 5  # the head only
    assert costs.loc["ResNet-50 FT", "kept epoch"] == ft.metrics["best_epoch"] and costs["run seconds"].gt(0).all()
    paths = ft.predictions["path"].head(3).tolist()
    shown, maps = localisation.gradcam_maps(results, paths, class_index=0)
    side = ft.config["preset"]["image_size"]
    assert shown.shape == (3, side, side) and {m.shape for m in maps.values()} == {(3, side, side)}


def test_image_statistics_and_what_one_number_follows() -> None:
    flat, checkers = torch.full((1, 1, 8, 8), 0.5), (torch.arange(8)[:, None] + torch.arange(8)).remainder(2)
    images = torch.cat([flat, checkers[None, None].float()])
    assert source_models.image_statistics(images).to_dict("list") == {"brightness": [0.5, 0.5],
                                                                      "edge content": [0.0, 2.0]}
    dimming = torch.rand(40, 1, 16, 16, generator=torch.Generator().manual_seed(0)) * torch.linspace(1, 0.1, 40)[
        :, None, None, None]
    stats = source_models.image_statistics(dimming)
    one_number = pd.DataFrame({finding: -stats["brightness"] * k for k, finding in enumerate("abc", 1)})
    found = source_models.drivers(one_number, stats)
    assert found["findings ranking alike (mean Spearman)"] == pytest.approx(1)
    assert found["Spearman with brightness"] == pytest.approx(-1)
    independent = pd.DataFrame(np.random.default_rng(0).random((40, 3)), columns=list("abc"))
    assert abs(source_models.drivers(independent, stats)["findings ranking alike (mean Spearman)"]) < 0.3
    chance = pd.concat([found, pd.Series({"validation mean AUROC": 0.54, "validation low": 0.45,
                                          "validation high": 0.62})])
    assert "not knowledge turned around" in source_models.backwards_reading("M", chance)
    assert "brightness (Spearman -1.00)" in source_models.backwards_reading("M", chance)
    backwards = chance.replace({0.54: 0.40, 0.45: 0.35, 0.62: 0.45})
    assert "below 0.5 too" in source_models.backwards_reading("M", backwards)
    right_way = chance.replace({0.54: 0.70, 0.45: 0.62, 0.62: 0.78})
    assert "wholly above 0.5: on other films it ranks them the right way round" in source_models.backwards_reading(
        "M", right_way)


def test_off_the_shelf_summary_counts_the_differences_it_loses() -> None:
    significant = pd.DataFrame({"A": ["DenseNet-121 OTS", "ResNet-50 FT", "ResNet-50 OTS"],
                                "B": ["DenseNet-121 FT", "ResNet-50 scratch", "ResNet-50 FT"],
                                "A - B": [-0.05, 0.04, 0.02]})
    assert transfer.off_the_shelf_summary(significant).startswith(
        "2 of the 3 per-finding differences that survived the false-discovery control involve an off-the-shelf arm, "
        "and in 1 of them the off-the-shelf arm is the worse one.")
    assert "No per-finding difference" in transfer.off_the_shelf_summary(significant.iloc[:0])


def test_reported_summaries_come_from_reported_csv() -> None:
    reported = read_reported(Path(__file__).resolve().parents[1] / "book" / "reported.csv")
    summaries = transfer.reported_summaries(reported)
    assert set(summaries["paper"]) == {"001", "002", "003"}
    paper_001 = summaries[summaries["paper"] == "001"].set_index("model (reported)")["value (reported)"]
    assert set(paper_001.index) == {"ResNet-50 OTS", "ResNet-50 FT", "ResNet-50-1channel"}
    assert paper_001["ResNet-50-1channel"] == pytest.approx(0.819)  # the value the source chapter quotes
    paper_002 = set(summaries.loc[summaries["paper"] == "002", "model (reported)"])  # pretrained vs scratch only
    assert paper_002 == {"DenseNet-121 from scratch (random init)",
                         "DenseNet-121 baseline (ImageNet-pretrained; all layers fine-tuned)"}
    assert summaries["value (reported)"].between(0, 1).all()


def test_size_sweep_in_words() -> None:
    sweep = pd.DataFrame({"train_images": [100, 100, 300, 300, 600, 600], "arm": ["fine-tuned", "from scratch"] * 3,
                          "mean_auroc": [0.62, 0.48, 0.7, 0.6, 0.8, 0.73],
                          "ci_low": [0.58, 0.45, 0.66, 0.55, 0.77, 0.7],
                          "ci_high": [0.66, 0.52, 0.74, 0.65, 0.83, 0.76],
                          "difference": [0.14, np.nan, 0.10, np.nan, 0.07, np.nan],
                          "difference_low": [0.09, np.nan, 0.05, np.nan, -0.01, np.nan],
                          "difference_high": [0.19, np.nan, 0.15, np.nan, 0.12, np.nan]})
    change = pd.DataFrame({"smaller": [100, 300], "larger": [600, 600], "change": [-0.07, -0.03],
                           "change_low": [-0.12, -0.08], "change_high": [-0.02, 0.02]})
    words = transfer_sizes.describe(sweep, change)
    assert words["ts_sizes"] == "100, 300 and 600"
    assert words["ts_gaps"].startswith("100 images +0.140 (+0.090 to +0.190); 300 images +0.100")
    assert words["ts_clear"] == "The interval lies wholly above zero at 100 and 300 training images"
    assert words["ts_trend"].startswith("shrinks from 100 to 600 training images: the paired interval of the change "
                                        "lies wholly below zero.")
    assert "from 300 to 600 images -0.030 (-0.080 to +0.020)" in words["ts_trend"]
    assert "From 300 training images on, the change's interval reaches both sides of zero" in words["ts_trend"]
    assert "At 100 images (0.480, 0.450-0.520) the from-scratch arm's own interval includes 0.5" in words["ts_trend"]
    three = pd.DataFrame({"smaller": [1_000, 10_000, 50_000], "larger": [200_000] * 3, "change": [-0.07, -0.03, -0.02],
                          "change_low": [-0.12, -0.08, -0.05], "change_high": [-0.02, 0.02, 0.01]})
    assert "From 10,000 training images on, the change's interval" in transfer_sizes.change_reading(three)
    three["change_high"] = [-0.02, 0.02, -0.01]  # an unsure size followed by a sure one
    reading = transfer_sizes.change_reading(three)
    assert "From 10,000 training images to 200,000, the change's interval reaches both sides of zero." in reading
    assert " on, " not in reading
    change["change_high"] = [0.01, 0.02]  # the smallest size's interval now reaches above zero
    assert transfer_sizes.change_reading(change).startswith(
        "may shrink or grow from 100 to 600 training images: the paired interval of the change reaches both sides of "
        "zero, so this sweep cannot tell.")
    change["change"], change["change_low"] = [0.05, 0.01], [0.02, -0.03]
    assert transfer_sizes.change_reading(change).startswith("grows from 100 to 600")


def _sweep_run(tmp_path: Path, name: str, scores: np.ndarray, labels: np.ndarray, patients: np.ndarray) -> Result:
    """A finished run of the sweep as the chapter reads it: its test predictions (one finding) and its history."""
    predictions = pd.DataFrame({"path": [f"img{i}.png" for i in range(len(labels))], "patient_id": patients,
                                "Edema": labels, "Edema_score": scores})
    return Result(key=name, run_dir=tmp_path, config={}, metrics={}, predictions=predictions, history=pd.DataFrame(),
                  checkpoint=tmp_path / "none.pt", cached=True, elapsed=0.0)


def test_gap_change_is_the_paired_difference_of_differences(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    labels = np.tile([0.0, 1.0], 300)
    patients = np.repeat(np.arange(150), 4).astype(str)  # four films per patient
    noise = rng.normal(size=(4, 600))
    scale = {"small pretrained": 1.0, "small scratch": 4.0, "large pretrained": 0.6, "large scratch": 0.8}
    runs = {name: _sweep_run(tmp_path, name, labels + s * noise[k], labels, patients)
            for k, (name, s) in enumerate(scale.items())}
    auroc = {name: roc_auc_score(labels, run.predictions["Edema_score"]) for name, run in runs.items()}
    found = transfer_sizes.gap_change((runs["small pretrained"], runs["small scratch"]),
                                      (runs["large pretrained"], runs["large scratch"]), ["Edema"], n_boot=300)
    expected = ((auroc["large pretrained"] - auroc["large scratch"])
                - (auroc["small pretrained"] - auroc["small scratch"]))
    assert found["change"] == pytest.approx(expected)
    assert found["change_low"] < expected < found["change_high"] and found["change_high"] < 0  # the gap shrinks
    moved = _sweep_run(tmp_path, "other", labels, labels, patients)
    moved.predictions["path"] = moved.predictions["path"].iloc[::-1].to_numpy()
    with pytest.raises(ValueError, match="not tested on the same images"):
        transfer_sizes.gap_change((moved, runs["small scratch"]), (runs["large pretrained"], runs["large scratch"]),
                                  ["Edema"], n_boot=10)


def test_budgets_count_steps_to_the_kept_epoch(tmp_path: Path) -> None:
    def finished(images: int, kept: int) -> Result:
        return Result(key=str(images), run_dir=tmp_path, config={"preset": {"batch_size": 32}},
                      metrics={"images": {"train": images}, "best_epoch": kept},
                      predictions=pd.DataFrame(), history=pd.DataFrame({"epoch": range(1, 7)}),
                      checkpoint=tmp_path / "none.pt", cached=True, elapsed=0.0)

    runs = {(97, "fine-tuned"): finished(97, 1), (97, "from scratch"): finished(97, 4),
            (1624, "fine-tuned"): finished(1624, 6), (1624, "from scratch"): finished(1624, 6)}
    budget = transfer_sizes.budgets(runs)
    assert budget.loc[0].to_dict() == {"arm": "fine-tuned", "train_images": 97, "epochs": 6, "steps": 24,
                                       "kept_epoch": 1, "steps_to_kept": 4}
    assert transfer_sizes.budget_reading(budget) == (
        "at a fixed 6 epochs, the fine-tuned arm took 24 gradient steps on 97 training images (and kept epoch 1, "
        "after 4 steps) against 306 on 1,624 (kept epoch 6, after 306)")
