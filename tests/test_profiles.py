"""The profiles: what the gpu profile changes in every preset, and the GPU-time estimate of an experiment's runs
(real CheXpert-layout files, real FLOP counts of the real models; nothing trains)."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from layouts import write_chexpert

from cxrcore import make_settings
from cxrcore.__main__ import COMMANDS
from cxrcore.bench import training_flops
from cxrcore.cli import dispatch
from cxrcore.experiments import leakage
from cxrcore.experiments.estimate import FORWARD_SHARE, RUN_START_S, estimate, flops_per_second, summary
from cxrcore.presets import (
    GPU_BATCH,
    GPU_FIELDS,
    GPU_MAX_EPOCHS,
    PRESETS,
    gpu_profile_preset,
    profile_preset,
    quick_profile_preset,
)
from cxrcore.runner import resolved_preset, run_key


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_gpu_profile_keeps_the_papers_input_and_caps_the_epochs(name: str) -> None:
    paper = PRESETS[name]
    gpu = profile_preset(name, "gpu")
    assert gpu.image_size == paper.image_size  # 448 for "-large", as the paper trains it
    assert gpu.batch_size == (GPU_BATCH // 2 if paper.large else GPU_BATCH)
    assert gpu.epochs == min(paper.epochs, GPU_MAX_EPOCHS) and gpu.scheduler == "onecycle"
    changed = {f.name for f in dataclasses.fields(paper) if getattr(gpu, f.name) != getattr(paper, f.name)}
    assert changed <= {*GPU_FIELDS, "gpu_profile"}  # nothing else: lr, augmentation, selection as the paper's
    assert gpu_profile_preset(gpu) is gpu  # idempotent
    assert profile_preset(name, "full") == paper
    assert profile_preset(name, "quick") == quick_profile_preset(paper) == profile_preset(name, "smoke")


def test_every_profile_keeps_the_papers_batch_ratio_for_large() -> None:
    paper = PRESETS["paper001-large"].batch_size / PRESETS["paper001-scratch"].batch_size  # 8 / 16
    for profile in ("quick", "gpu", "full"):
        large, standard = (profile_preset(name, profile).batch_size for name in ("paper001-large", "paper001-scratch"))
        assert large / standard == paper, profile


def test_a_gpu_run_has_its_own_key_and_the_profile_preset(tmp_path: Path) -> None:
    root = tmp_path / "data"
    write_chexpert(root, n_train_patients=12)
    configs = {profile: leakage.configs(make_settings(profile, root, tmp_path / "runs"))["patient-wise"]
               for profile in ("gpu", "full")}
    assert resolved_preset(configs["gpu"]).batch_size == GPU_BATCH
    assert resolved_preset(configs["full"]).batch_size == PRESETS["paper000"].batch_size
    keys = {profile: run_key(config, runs_dir=tmp_path / "runs") for profile, config in configs.items()}
    assert keys["gpu"] != keys["full"]


def test_training_flops_of_resnet50_match_its_published_count() -> None:
    # ResNet-50 at 224 px: 4.1 G multiply-adds forward (He et al. 2016) = 8.2 GFLOP; a training step is about 3x
    assert training_flops("resnet50", 224) == pytest.approx(3 * 8.2e9, rel=0.05)
    assert training_flops("resnet50", 448) == pytest.approx(4 * training_flops("resnet50", 224), rel=0.02)


def test_estimate_adds_up_epochs_images_and_flops(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture) -> None:
    root, runs = tmp_path / "data", tmp_path / "runs"
    write_chexpert(root, n_train_patients=12)
    settings = make_settings("gpu", root, runs)
    table = estimate(["leakage"], settings)
    assert list(table["experiment"]) == ["leakage", "leakage"] and (table["side"] == 320).all()
    row = table.iloc[0]
    flops = training_flops("resnet18", 320)
    expected = RUN_START_S + (row["epochs"] * (row["train images"] + FORWARD_SHARE * row["valid images"])
                              + FORWARD_SHARE * row["test images"]) * flops / flops_per_second("other")
    assert row["epochs"] == GPU_MAX_EPOCHS and row["seconds"] == pytest.approx(expected)
    assert summary(table).loc["all", "seconds"] == pytest.approx(table["seconds"].sum(), abs=0.5)
    for name, value in {"CXR_PROFILE": "gpu", "CXR_DATA_ROOT": str(root), "CXR_RUNS_DIR": str(runs)}.items():
        monkeypatch.setenv(name, value)
    assert dispatch(COMMANDS, "cxrcore", "", ["experiment", "leakage", "--estimate"]) == 0
    printed = capsys.readouterr().out
    assert "resnet18" in printed and "minutes" in printed
    assert not [p for p in runs.iterdir() if p.name != "manifests"]  # nothing trained
