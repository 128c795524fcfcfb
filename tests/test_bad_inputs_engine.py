"""Bad inputs a new user meets in the engine: diverged runs, NaN images and scores, 12-bit values in 16-bit PNGs."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from layouts import radiograph_like, write_image
from PIL import Image, PngImagePlugin

from cxrcore.datasets import ManifestDataset, load_gray
from cxrcore.metrics import auroc_per_class, predictions_frame, summarize
from cxrcore.models import build_model
from cxrcore.train import DIVERGED_FACTOR, TrainConfig, fit, make_loader, predict

FINDINGS = ["Cardiomegaly", "Pleural Effusion"]
SIZE = 32


def _write_site(root, n_patients: int = 9) -> pd.DataFrame:
    """PNG images (brighter where Cardiomegaly is positive) and their manifest rows in the project's schema."""
    rng = np.random.default_rng(0)
    rows = []
    for p in range(n_patients):
        split = "train" if p < 6 else "valid"
        for s in range(2):
            path = f"site/images/P{p:05d}/S{s}/view1_frontal.png"
            positive = int(rng.integers(0, 2))
            write_image(root / path, "png8", shape=(48, 48), seed=10 * p + s + 1000 * positive)
            rows.append({"path": path, "patient_id": f"{p:05d}", "study_id": f"{p:05d}/{s}", "projection": "PA",
                         "sex": "MF"[p % 2], "age": 40 + p, "split": split, "Cardiomegaly": positive,
                         "Pleural Effusion": 1 - positive})
    return pd.DataFrame(rows)


def _replace_with_float_tiff(root, table: pd.DataFrame, index: int, value: float) -> str:
    """Swap one row's image for a 32-bit float TIFF holding `value` in one corner; returns its new path."""
    pixels = radiograph_like((48, 48), seed=index).astype(np.float32)
    pixels[:4, :4] = value
    path = table.loc[index, "path"].replace(".png", ".tif")
    Image.fromarray(pixels, mode="F").save(root / path)
    table.loc[index, "path"] = path
    return path


def _loader(root, table: pd.DataFrame, split: str, shuffle: bool = False):
    dataset = ManifestDataset(table[table["split"] == split], root, FINDINGS, image_size=SIZE, channels=1)
    return make_loader(dataset, batch_size=8, shuffle=shuffle, device="cpu")


def _fit(root, table, tmp_path=None, **cfg):
    config = TrainConfig(**{"epochs": 1, "device": "cpu", "progress": False, "lr": 1e-3,
                            "checkpoint_dir": str(tmp_path) if tmp_path else None, **cfg})
    model = build_model("resnet18", len(FINDINGS), channels=1, seed=0)
    history = fit(model, _loader(root, table, "train", shuffle=True), _loader(root, table, "valid"), cfg=config,
                  class_names=FINDINGS)
    return model, history


@pytest.fixture
def site(tmp_path):
    root = tmp_path / "data"
    return root, _write_site(root)


# ------------------------------------------------------------------------------------------------- divergence


def test_huge_learning_rate_stops_the_run_naming_epoch_loss_and_lr(site, tmp_path):
    # before: lr 1e6 gave loss 5e13, validation loss 2e29, AUROC 0.5, saved as a normal result
    root, table = site
    with pytest.raises(FloatingPointError, match=r"diverged at epoch 1: mean training loss \S+e\+13 .*lr=1e\+06"):
        _fit(root, table, tmp_path / "checkpoints", lr=1e6)
    assert not (tmp_path / "checkpoints" / "last.pt").exists()  # the diverged epoch was never saved


def test_loss_past_the_limit_stops_the_run(site):
    # lr 1: the first epoch's mean loss is about 130 times chance (ln 2), past the limit of 50 times
    root, table = site
    with pytest.raises(FloatingPointError, match=r"diverged at epoch 1: .* times the loss of predicting 0\.5 for "
                                                 r"every label \(0\.693; the limit is 50 times\); lower the learning "
                                                 r"rate \(lr=1, try 0\.1\)"):
        _fit(root, table, lr=1.0)


def test_poor_high_learning_rate_run_is_not_stopped(site):
    # lr 0.1: a loss several times chance and a huge validation loss (BatchNorm after two steps), yet no divergence
    root, table = site
    _, history = _fit(root, table, lr=0.1)
    ratio = history.table["loss"].iloc[0] / math.log(2)
    assert 2 < ratio < DIVERGED_FACTOR
    assert history.table["val_loss"].iloc[0] > DIVERGED_FACTOR * math.log(2)


def test_collapsed_model_predicting_prevalences_is_not_stopped(site):
    # as the book's VGG-16: the backbone outputs zeros, only the head's bias learns the prevalences
    root, table = site
    model = build_model("resnet18", len(FINDINGS), channels=1, seed=0)
    with torch.no_grad():
        model.backbone.conv1.weight.zero_()
    config = TrainConfig(epochs=1, lr=1e-2, device="cpu", progress=False)
    history = fit(model, _loader(root, table, "train", shuffle=True), _loader(root, table, "valid"), cfg=config)
    scores = predict(model, _loader(root, table, "valid"), class_names=FINDINGS, device="cpu")
    assert scores["Cardiomegaly_score"].std() < 1e-6  # collapsed: one probability for every image
    assert history.table["loss"].max() < 1.5 * math.log(2)


# ------------------------------------------------------------------------------------------- NaN images and scores


def test_nan_training_image_is_named_alone(site):
    # before: "batch of 8 images starting [3 paths]", the bad one not necessarily among them
    root, table = site
    bad = _replace_with_float_tiff(root, table, 5, np.nan)
    infinite = _replace_with_float_tiff(root, table, 9, np.inf)
    with pytest.raises(FloatingPointError, match=r"2 image\(s\) with NaN/inf pixel values in the training batch "
                                                 r"at epoch 1, step \d") as caught:
        _fit(root, table)
    named = [p for p in table["path"] if p in str(caught.value)]
    assert sorted(named) == sorted([bad, infinite])


def test_nan_validation_image_names_the_split_and_path(site):
    # before: "class 'Cardiomegaly': non-finite scores at rows [3]" from metrics, no split, no path
    root, table = site
    bad = _replace_with_float_tiff(root, table, 14, np.nan)
    with pytest.raises(FloatingPointError, match=r"1 image\(s\) with NaN/inf pixel values in the validation images"
                                                 rf": \['{bad}'\]"):
        _fit(root, table)


def test_nan_weights_give_an_error_naming_split_and_paths(site):
    root, table = site
    model = build_model("resnet18", len(FINDINGS), channels=1, seed=0)
    with torch.no_grad():
        model.head.bias[1] = float("nan")
    valid = table[table["split"] == "valid"]
    with pytest.raises(FloatingPointError, match=r"NaN/inf scores for 6 of the 6 test images, "
                                                 rf"first \['{valid['path'].iloc[0]}', '{valid['path'].iloc[1]}'"):
        predict(model, _loader(root, table, "valid"), class_names=FINDINGS, device="cpu", split="test")


def test_metrics_nan_score_error_names_finding_and_counts():
    labels = np.array([[0, 1], [1, 0], [0, 1], [1, 0], [0, np.nan]], dtype=float)
    scores = np.array([[0.1, 0.9], [0.8, np.nan], [0.3, 0.7], [0.6, np.inf], [0.2, np.nan]])
    with pytest.raises(ValueError, match=r"finding 'Effusion' \(score column 1\): 2 of 4 counted rows have a NaN/inf "
                                         r"score, first rows \[1, 3\]"):
        auroc_per_class(labels, scores, names=["Cardiomegaly", "Effusion"])


def test_summarize_names_the_paths_of_nan_scores():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, size=(20, 1)).astype(float)
    scores = rng.random((20, 1))
    scores[[4, 11], 0] = np.nan
    ids = {"path": [f"site/images/P{i:05d}/S0/view1_frontal.png" for i in range(20)],
           "patient_id": [f"{i:05d}" for i in range(20)]}
    table = predictions_frame(labels, np.nan_to_num(scores), ["Cardiomegaly"], ids=ids)
    table["Cardiomegaly_score"] = scores[:, 0]
    with pytest.raises(ValueError, match=r"2 of 20 counted rows .* first \['site/images/P00004/S0/view1_frontal.png'"
                                         r", 'site/images/P00011/S0/view1_frontal.png'\]"):
        summarize(table, n_boot=10, level="patient")
    table.loc[[4, 11], "Cardiomegaly"] = np.nan  # a NaN score where the label does not count is left alone
    assert summarize(table, n_boot=10).loc["Cardiomegaly", "auroc"] >= 0


# ------------------------------------------------------------------------------------------------ 16-bit files


def _png16(path, pixels: np.ndarray, significant_bits: int | None = None):
    info = PngImagePlugin.PngInfo()
    if significant_bits is not None:
        info.add(b"sBIT", bytes([significant_bits]))
    Image.fromarray(pixels.astype(np.uint16)).save(path, format="PNG", pnginfo=info)
    return path


def test_12_bit_values_in_a_16_bit_png_are_read_as_12_bit_with_a_warning(tmp_path):
    # before: divided by 65535 (mean 0.037), no warning
    pixels = radiograph_like((40, 32), seed=0)
    path = _png16(tmp_path / "twelve.png", np.rint(pixels * 4095))
    eight = load_gray(write_image(tmp_path / "eight.png", "png8"), SIZE)
    with pytest.warns(UserWarning, match=r"twelve\.png: 16-bit image whose values stay within 12 bits .* 4095"):
        twelve = load_gray(path, SIZE)
    assert np.abs(twelve - eight).max() < 1.5 / 255


def test_png_significant_bits_chunk_sets_the_depth_without_warning(tmp_path):
    pixels = radiograph_like((40, 32), seed=0)
    eight = load_gray(write_image(tmp_path / "eight.png", "png8"), SIZE)
    ten = _png16(tmp_path / "ten.png", np.rint(pixels * 1023), significant_bits=10)
    dark = _png16(tmp_path / "dark.png", np.rint(pixels * 4095), significant_bits=16)  # the file says 16 bits
    full = write_image(tmp_path / "full.png", "png16")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.abs(load_gray(ten, SIZE) - eight).max() < 1.5 / 255
        np.testing.assert_allclose(load_gray(dark, SIZE), load_gray(full, SIZE) * 4095 / 65535, atol=1e-3)
        assert np.abs(load_gray(full, SIZE) - eight).max() < 1.5 / 255
