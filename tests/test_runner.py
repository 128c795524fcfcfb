"""The experiment runner: a real (tiny) run from PNG files and a manifest, its on-disk cache and its keys."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from cxrcore.cli import dispatch
from cxrcore.experiments.tables import gradient_steps
from cxrcore.findings import patient_targets
from cxrcore.metrics import score_column
from cxrcore.models import build_model
from cxrcore.presets import SMOKE_MAX_EPOCHS, SMOKE_TRAIN_SHARE
from cxrcore.runner import (
    RunConfig,
    evaluation_dataset,
    predict_split,
    resolved_preset,
    run,
    run_key,
    train_image_count,
)

FINDINGS = ["Cardiomegaly", "Pleural Effusion"]
COMMANDS = {"train": ("cxrcore.runner", "train")}


def _write_site(root, n_patients: int = 12, seed: int = 0):
    """PNG images (a bright blob where Cardiomegaly is positive) and a manifest CSV in the project's schema."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_patients):
        split = "train" if p < 6 else ("valid" if p < 9 else "test")
        for s in range(2):
            path = f"site/images/P{p:05d}/S{s}/view1_frontal.png"
            positive = int(rng.integers(0, 2))
            pixels = rng.normal(90, 20, size=(48, 48))
            if positive:
                pixels[14:34, 14:34] += 120
            (root / path).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(root / path)
            rows.append({"path": path, "site": "hospital", "patient_id": f"{p:05d}", "study_id": f"{p:05d}/{s}",
                         "view": "frontal", "projection": "PA" if s else "AP", "sex": "MF"[p % 2], "age": 40 + p,
                         "split": split, "Cardiomegaly": positive,
                         "Pleural Effusion": [1, 0, -1, np.nan][int(rng.integers(0, 4))]})
    manifest = root / "manifest.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    return manifest


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("runner_data")
    return root, _write_site(root)


def _config(root, manifest, **changes) -> dict:
    config = {"manifest": str(manifest), "data_root": str(root), "findings": FINDINGS, "policy": "u-ones",
              "arch": "resnet18", "channels": 1, "weights": None, "preset": "paper003", "profile": "quick",
              "overrides": {"image_size": 32, "epochs": 1, "batch_size": 8}, "seed": 0}
    return {**config, **changes}


def test_run_then_cache_hit(site, tmp_path, capsys):
    root, manifest = site
    runs = tmp_path / "runs"
    first = run(_config(root, manifest), runs_dir=runs)
    assert not first.cached and first.run_dir == runs / first.key
    assert list(first.history["epoch"]) == [1]
    assert len(first.predictions) == 6 and first.predictions["patient_id"].str.fullmatch(r"\d{5}").all()
    assert first.predictions["patient_id"].iloc[0] == "00009"  # leading zeros survive the CSV round trip
    assert set(first.metrics["test_auroc"]) == set(FINDINGS)
    assert torch.load(first.checkpoint, weights_only=True)["model_config"]["arch"] == "resnet18"
    assert sorted(p.name for p in runs.iterdir()) == [first.key]  # no work or temp directory left behind

    second = run(_config(root, manifest), runs_dir=runs)
    assert second.cached and second.key == first.key
    pd.testing.assert_frame_equal(second.predictions, first.predictions)
    assert second.load_model().head.weight.shape == (2, 512)

    config_file = tmp_path / "run.json"
    config_file.write_text(json.dumps(_config(root, manifest)))
    assert dispatch(COMMANDS, "cxrcore", "", ["train", str(config_file), "--runs-dir", str(runs), "--quiet"]) == 0
    assert f"run {first.key} (cached)" in capsys.readouterr().out

    again = predict_split(second, "test")  # the saved model on the saved test split reproduces the run's predictions
    pd.testing.assert_frame_equal(again[first.predictions.columns], first.predictions, check_exact=False, atol=1e-5)
    valid = predict_split(second, "valid")
    assert set(valid["patient_id"]) == {f"{p:05d}" for p in range(6, 9)} and len(valid) == 6
    with pytest.raises(ValueError, match="'valid' or 'test'"):
        predict_split(second, "train")
    test_images = evaluation_dataset(second, "test")
    assert list(test_images.manifest["path"]) == list(first.predictions["path"]) and test_images.augment is None
    assert test_images.mean == first.metrics["normalization"]["mean"]

    downstream = _config(root, manifest, weights=f"run:{first.key}")
    assert run_key(downstream, runs_dir=runs) != first.key


def test_key_changes_with_config_and_manifest(site, tmp_path):
    root, manifest = site
    base = run_key(_config(root, manifest), runs_dir=tmp_path)
    assert run_key(_config(root, manifest), runs_dir=tmp_path) == base
    assert run_key(_config(root, manifest, seed=1), runs_dir=tmp_path) != base
    assert run_key(_config(root, manifest, overrides={"image_size": 32, "epochs": 2, "batch_size": 8}),
                   runs_dir=tmp_path) != base
    assert run_key(_config(root, manifest, profile="full"), runs_dir=tmp_path) != base
    # where the data lies and how many loader workers read it do not change the experiment
    assert run_key(_config(root, manifest, data_root="/elsewhere", num_workers=2), runs_dir=tmp_path) == base
    changed = tmp_path / "manifest.csv"
    table = pd.read_csv(manifest, dtype=str)
    table.loc[0, "Cardiomegaly"] = "0" if table.loc[0, "Cardiomegaly"] == "1" else "1"
    table.to_csv(changed, index=False)
    assert run_key(_config(root, changed), runs_dir=tmp_path) != base


def test_smoke_profile_cuts_the_quick_runs_images_and_epochs(site, tmp_path):
    root, manifest = site
    cut = {"image_size": 32, "epochs": 3, "batch_size": 4}
    quick = resolved_preset(_config(root, manifest, overrides=cut))
    smoke = resolved_preset(_config(root, manifest, overrides=cut, profile="smoke"))
    assert (quick.epochs, smoke.epochs) == (3, SMOKE_MAX_EPOCHS)
    assert dataclasses.replace(smoke, epochs=quick.epochs) == quick  # nothing else changes
    result = run(_config(root, manifest, overrides=cut, profile="smoke", draws_per_epoch=16),
                 runs_dir=tmp_path / "runs")
    assert 0 < result.metrics["images"]["train"] <= round(12 * SMOKE_TRAIN_SHARE)  # whole patients, a share of 12
    assert result.metrics["images"]["test"] == 6 and len(result.history) == SMOKE_MAX_EPOCHS  # test set as quick
    assert result.metrics["draws_per_epoch"] == round(16 * SMOKE_TRAIN_SHARE)  # draws cut alike
    assert run_key(_config(root, manifest, profile="smoke"), runs_dir=tmp_path) != run_key(
        _config(root, manifest), runs_dir=tmp_path)


def test_copies_repeat_training_images_only(site, tmp_path):
    root, manifest = site
    table = pd.read_csv(manifest, dtype=str)
    table["copies"] = [3 if i == 0 else 1 for i in range(len(table))]  # row 0 is a training image
    repeated = tmp_path / "repeated.csv"
    table.to_csv(repeated, index=False)
    config = _config(root, repeated, overrides={"image_size": 32, "epochs": 1, "batch_size": 4})
    assert train_image_count(config) == 14 and train_image_count({**config, "max_train_images": 13}) <= 13
    result = run(config, runs_dir=tmp_path / "runs")
    assert result.metrics["images"] == {"train": 14, "valid": 6, "test": 6}  # 12 training images, one drawn 3 times


def test_draws_per_epoch_give_an_up_sampled_run_the_plain_runs_steps(site, tmp_path):
    """Row 0 drawn five times makes 16 training rows; 12 draws an epoch take the 12-image run's 3 batches of 4."""
    root, manifest = site
    table = pd.read_csv(manifest, dtype=str)
    table["copies"] = [5 if i == 0 else 1 for i in range(len(table))]
    repeated = tmp_path / "repeated.csv"
    table.to_csv(repeated, index=False)
    config = _config(root, repeated, overrides={"image_size": 32, "epochs": 2, "batch_size": 4}, draws_per_epoch=12)
    result = run(config, runs_dir=tmp_path / "runs")
    assert result.metrics["images"]["train"] == 16 and result.metrics["draws_per_epoch"] == 12
    assert gradient_steps(result) == 2 * 3
    assert run_key(config, runs_dir=tmp_path) != run_key({**config, "draws_per_epoch": None}, runs_dir=tmp_path)


def test_bad_configs_fail_clearly(site, tmp_path):
    root, manifest = site
    with pytest.raises(ValueError, match=r"unknown run config key\(s\) \['learning_rate'\]"):
        run_key(_config(root, manifest, learning_rate=0.1), runs_dir=tmp_path)
    with pytest.raises(ValueError, match="unknown preset override"):
        run_key(_config(root, manifest, overrides={"lrr": 1}), runs_dir=tmp_path)
    with pytest.raises(KeyError, match="unknown preset"):
        run_key(_config(root, manifest, preset="paper999"), runs_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="no finished run"):
        run_key(_config(root, manifest, weights="run:0123abcd"), runs_dir=tmp_path)
    with pytest.raises(ValueError, match="lacks required"):
        RunConfig.from_dict({"findings": FINDINGS})
    # profile, data root and run cache are passed down from the entry point, never read from the environment here
    without_profile = {k: v for k, v in _config(root, manifest).items() if k != "profile"}
    with pytest.raises(ValueError, match="'profile' is missing"):
        run_key(without_profile, runs_dir=tmp_path)
    with pytest.raises(ValueError, match="runs_dir is missing"):
        run(_config(root, manifest))
    with pytest.raises(ValueError, match="'data_root' is missing"):
        run(_config(root, manifest, data_root=None), runs_dir=tmp_path)


def test_feature_cache_trains_the_same_head_as_the_images(site, tmp_path):
    """A frozen backbone's head trained on features computed once equals the head trained through the images
    (no augmentation in either), to float tolerance: the same batches, the same Adam steps."""
    root, manifest = site
    common = {"freeze_backbone": True, "overrides": {"image_size": 32, "epochs": 3, "batch_size": 4,
                                                     "augment": False, "scheduler": "onecycle"}}
    through_images = run(_config(root, manifest, **common), runs_dir=tmp_path / "a")
    from_features = run(_config(root, manifest, feature_cache=True, **common), runs_dir=tmp_path / "b")
    heads = [{k: v for k, v in r.load_model().state_dict().items() if k.startswith("head.")}
             for r in (through_images, from_features)]
    assert heads[0].keys() == heads[1].keys()
    initial = build_model("resnet18", len(FINDINGS), channels=1, seed=0).state_dict()["head.weight"]
    assert not torch.allclose(heads[0]["head.weight"], initial)  # the head did train
    for name in heads[0]:
        torch.testing.assert_close(heads[1][name], heads[0][name], atol=1e-5, rtol=1e-4)
    backbone = [v for k, v in from_features.load_model().state_dict().items() if k.startswith("backbone.")]
    reference = [v for k, v in through_images.load_model().state_dict().items() if k.startswith("backbone.")]
    assert all(torch.equal(a, b) for a, b in zip(backbone, reference, strict=True))
    np.testing.assert_allclose(from_features.history["val_loss"], through_images.history["val_loss"], rtol=1e-5)


def test_feature_cache_needs_a_frozen_backbone(site):
    root, manifest = site
    with pytest.raises(ValueError, match="feature_cache=True needs freeze_backbone=True"):
        RunConfig.from_dict(_config(root, manifest, feature_cache=True))


def test_three_class_head_trains_and_reports_the_positive_probability(site, tmp_path):
    """Paper 002's U-MultiClass end to end: a 3-logit head with its class-weighted loss trains, the scores are the
    softmax over (negative, positive) of the saved model, and uncertain labels are not counted."""
    root, manifest = site
    result = run(_config(root, manifest, head="multiclass3", policy="u-multiclass", loss_weighting="paper002",
                         overrides={"image_size": 32, "epochs": 2, "batch_size": 8}), runs_dir=tmp_path / "runs")
    assert np.isfinite(result.history["loss"]).all() and len(result.history) == 2
    images = evaluation_dataset(result, "test")
    net = result.load_model().eval()
    with torch.no_grad():
        logits = net(torch.stack([images[i]["image"] for i in range(len(images))]))  # (N, K, 3)
    assert logits.shape == (len(images), len(FINDINGS), 3)
    expected = torch.softmax(logits[..., :2], dim=-1)[..., 1].numpy()  # the uncertain logit left out
    scores = result.predictions[[score_column(f) for f in FINDINGS]].to_numpy()
    np.testing.assert_allclose(scores, expected, atol=1e-5)
    source = pd.read_csv(manifest).set_index("path").loc[result.predictions["path"], "Pleural Effusion"]
    counted = result.predictions["Pleural Effusion"].notna().to_numpy()
    assert not counted[(source == -1).to_numpy()].any()  # an uncertain label is not scored
    assert counted[source.isin([0, 1]).to_numpy()].all()


def test_a_last_batch_of_one_image_is_dropped_so_batchnorm_trains(site, tmp_path):
    """12 training images in batches of 11 would leave one image alone, on which BatchNorm cannot train."""
    root, manifest = site
    config = _config(root, manifest, overrides={"image_size": 32, "epochs": 1, "batch_size": 11})
    result = run(config, runs_dir=tmp_path / "runs")
    assert result.metrics["images"]["train"] == 12 and len(result.history) == 1


def test_the_large_preset_builds_the_large_network(site, tmp_path):
    """Paper 001's "-large" preset reaches the model: the extra max-pool halves the last feature maps (issue 15)."""
    root, manifest = site
    overrides = {"image_size": 64, "epochs": 1, "batch_size": 8}
    large = run(_config(root, manifest, preset="paper001-large", overrides=overrides), runs_dir=tmp_path / "runs")
    plain = run(_config(root, manifest, preset="paper001-scratch", overrides=overrides), runs_dir=tmp_path / "runs")
    assert RunConfig.from_dict(large.config["run"]).uses_large and not large.config["run"]["large"]
    assert resolved_preset(large.config["run"]).image_size == 64  # the override; the quick profile gives 128
    sides = {}
    for name, result in (("large", large), ("plain", plain)):
        net = result.load_model().eval()
        assert any(n.endswith("pool_large") for n, _ in net.named_modules()) == (name == "large")
        with torch.no_grad():
            sides[name] = net.backbone(torch.zeros(1, 1, 64, 64)).shape[-1]
    assert sides == {"plain": 2, "large": 1}
    assert len(large.predictions) == len(plain.predictions) == 6
    with pytest.raises(ValueError, match="image_size"):  # "-large" needs twice the smallest input
        RunConfig.from_dict(_config(root, manifest, preset="paper001-large", overrides={"image_size": 32}))


def test_patient_targets_come_from_the_manifests_columns():
    """Age in years / 100, sex 1 = male, projection 1 = AP; what cannot count is masked, ages over 100 named."""
    table = pd.DataFrame({"path": ["a.png", "b.png", "c.png", "d.png"], "age": [30.0, np.nan, 414.0, 100.0],
                          "sex": ["M", "F", "U", "M"], "projection": ["AP", "PA", "LL", "AP"]})
    with pytest.warns(UserWarning, match=r"1 image\(s\) with an age above 100.*c\.png"):
        targets, mask = patient_targets(table, ["projection", "age", "sex"])
    np.testing.assert_allclose(targets, [[1, 0.3, 1], [0, 0, 0], [0, 0, 0], [1, 1.0, 1]])
    np.testing.assert_array_equal(mask, [[1, 1, 1], [1, 0, 1], [0, 0, 0], [1, 1, 1]])
    with pytest.raises(ValueError, match="'weight' is not a patient target"):
        patient_targets(table, ["weight"])


def test_age_sex_and_projection_train_as_targets(site, tmp_path):
    """Paper 001's patient targets through the manifest, dataset, loss and metrics: age regressed (MAE in years),
    sex and projection classified (AUROC), alone or beside findings."""
    root, manifest = site
    result = run(_config(root, manifest, findings=["age", "sex", "projection", "Cardiomegaly"]),
                 runs_dir=tmp_path / "runs")
    table = pd.read_csv(manifest)
    test = table[table["split"] == "test"].set_index("path")
    predictions = result.predictions.set_index("path")
    np.testing.assert_allclose(predictions["age"], test.loc[predictions.index, "age"])  # years, not scaled
    assert predictions[score_column("age")].between(0, 100).all()
    expected_mae = (predictions["age"] - predictions[score_column("age")]).abs().mean()
    assert result.metrics["test_mae"]["age"] == pytest.approx(expected_mae)
    assert set(result.metrics["test_auroc"]) == {"sex", "projection", "Cardiomegaly"}  # no AUROC of an age
    np.testing.assert_array_equal(predictions["projection"], (test.loc[predictions.index, "projection"] == "AP"))
    assert {"mae_age", "auroc_sex", "auroc_projection"} <= set(result.history.columns)
    assert "auroc_age" not in result.history.columns


def test_patient_targets_and_the_metadata_only_model_fail_clearly(site):
    root, manifest = site
    with pytest.raises(ValueError, match=r"patient targets \['age'\] train with meta=False"):
        RunConfig.from_dict(_config(root, manifest, findings=["age"], meta=True))
    with pytest.raises(ValueError, match="unknown finding.*patient targets"):
        RunConfig.from_dict(_config(root, manifest, findings=["Age"]))
    with pytest.raises(ValueError, match="arch='metadata'.*needs meta=True"):
        RunConfig.from_dict(_config(root, manifest, arch="metadata"))


def test_the_metadata_only_model_reads_age_sex_and_projection_not_the_image(site, tmp_path):
    """Paper 001's MLP baseline: its scores are the same for two images with the same age, sex and projection."""
    root, manifest = site
    result = run(_config(root, manifest, arch="metadata", meta=True), runs_dir=tmp_path / "runs")
    net = result.load_model().eval()
    features = torch.tensor([[0.5, 1.0, 0.0], [0.5, 1.0, 0.0], [0.7, 0.0, 1.0]])
    with torch.no_grad():
        scores = net(torch.rand(3, 1, 32, 32), features)
    torch.testing.assert_close(scores[0], scores[1])
    assert not torch.equal(scores[0], scores[2])
    assert set(result.metrics["test_auroc"]) == set(FINDINGS) and result.metrics["test_mae"] == {}
