"""The GPU path end to end on the CPU: a uint8 image cache of a real CheXpert-layout tree, batches augmented and
normalized on the device (`DeviceAugmentedDataset.to_model_input`), real training steps through `fit`."""
from __future__ import annotations

import pandas as pd
import pytest
import torch
from layouts import CheXpertTree, write_chexpert

from cxrcore.datasets import DeviceAugmentedDataset, ManifestDataset
from cxrcore.experiments import transfer
from cxrcore.image_cache import device_dataset, open_image_cache
from cxrcore.models import build_model
from cxrcore.runner import IMAGE_CACHE, RunConfig, _datasets, _device_datasets, _train, resolved_preset
from cxrcore.train import TrainConfig, fit, make_loader
from data_prep.manifests import assign_splits, read_chexpert

FOUR = ["Atelectasis", "Cardiomegaly", "Pleural Effusion", "Pneumonia"]


@pytest.fixture
def manifest(chexpert_tree: CheXpertTree) -> pd.DataFrame:
    """The session CheXpert tree's manifest (real rows, JPEG files)."""
    return assign_splits(read_chexpert(chexpert_tree.root), "chexpert", seed=0)


@pytest.mark.parametrize("channels", [1, 3])
def test_evaluation_batches_equal_the_cpu_path(manifest, chexpert_tree, tmp_path, channels) -> None:
    cpu = ManifestDataset(manifest, chexpert_tree.root, FOUR, image_size=40, channels=channels)
    gpu = device_dataset(cpu, tmp_path)
    batch = next(iter(make_loader(gpu, batch_size=6, device="cpu")))
    assert batch["image"].dtype == torch.uint8 and batch["image"].shape == (6, 1, 40, 40)
    model_input = gpu.to_model_input(batch["image"], batch["seed"])
    expected = torch.stack([cpu[i]["image"] for i in range(6)])
    torch.testing.assert_close(model_input, expected, rtol=0, atol=1e-6)
    assert batch["path"] == [cpu[i]["path"] for i in range(6)] and torch.equal(batch["target"], cpu.targets[:6])


def test_training_batches_are_augmented_from_their_seeds(manifest, chexpert_tree, tmp_path) -> None:
    cpu = ManifestDataset(manifest, chexpert_tree.root, FOUR, image_size=32, augment="paper001")
    gpu = device_dataset(cpu, tmp_path)
    assert gpu.cache.side == cpu.decode_size == 37  # 256/224 of the input: the crop's field of view
    loader = make_loader(gpu, batch_size=4, shuffle=True, seed=1, device="cpu")
    batch = next(iter(loader))
    first = gpu.to_model_input(batch["image"], batch["seed"])
    assert first.shape == (4, 3, 32, 32) and torch.isfinite(first).all()
    torch.testing.assert_close(gpu.to_model_input(batch["image"], batch["seed"]), first, rtol=0, atol=0)
    assert not torch.equal(gpu.to_model_input(batch["image"], batch["seed"] + 1), first)  # other seeds, other draws
    with pytest.raises(ValueError, match="decoded at 37 px"):
        DeviceAugmentedDataset(cpu, open_image_cache(list(cpu.manifest["path"]), chexpert_tree.root, 32, tmp_path))


def test_fit_trains_on_the_gpu_path_and_repeats_exactly(manifest, chexpert_tree, tmp_path) -> None:
    train = manifest[manifest["split"] == "train"]
    valid = manifest[manifest["split"] != "train"]
    histories, weights = [], []
    for _ in range(2):  # twice, from scratch
        datasets = [device_dataset(ManifestDataset(rows, chexpert_tree.root, FOUR, image_size=32, augment=augment),
                                   tmp_path / "cache") for rows, augment in ((train, "paper000"), (valid, False))]
        model = build_model("resnet18", len(FOUR), seed=0)
        loaders = (make_loader(datasets[0], batch_size=4, shuffle=True, drop_last=True, device="cpu"),
                   make_loader(datasets[1], batch_size=8, device="cpu"))
        cfg = TrainConfig(epochs=2, device="cpu", precision="bf16", progress=False, scheduler="none")
        histories.append(fit(model, *loaders, cfg=cfg, class_names=FOUR).table)
        weights.append(model.state_dict())
    assert histories[0]["loss"].notna().all() and histories[0]["val_loss"].notna().all()
    pd.testing.assert_series_equal(histories[0]["loss"], histories[1]["loss"])  # the same seeds, the same run
    assert all(torch.equal(weights[0][name], weights[1][name]) for name in weights[0])


def test_the_runner_trains_and_tests_a_run_on_the_gpu_path(tmp_path) -> None:
    """What the runner does on CUDA (`runner._trains_on_gpu`), here on the CPU: every split through its image
    cache, paper 001's crops drawn on the device, then the run's test metrics."""
    root = tmp_path / "data"
    write_chexpert(root, n_train_patients=12)  # 70/10/20 of 12 patients leaves each split at least one
    manifest = transfer.target_manifest(root, tmp_path / "manifests")
    config = RunConfig.from_dict({"manifest": str(manifest), "data_root": str(root),
                                  "findings": FOUR, "arch": "resnet18", "preset": "paper001", "profile": "quick",
                                  "overrides": {"image_size": 32, "epochs": 1, "batch_size": 8}, "seed": 0})
    preset = resolved_preset(config)
    datasets = _device_datasets(_datasets(config, preset, root), tmp_path)
    folder = next((tmp_path / IMAGE_CACHE).iterdir())  # the code hash's subfolder
    assert all(isinstance(d, DeviceAugmentedDataset) for d in datasets)
    assert [d.cache.side for d in datasets] == [37, 32, 32]  # training images at the crop's decode size
    assert len(list(folder.glob("*.npy"))) == 3
    metrics = _train(config, preset, None, tmp_path / "work", datasets, progress=False)
    assert metrics["images"]["train"] == len(datasets[0]) and set(metrics["test_auroc"]) == set(FOUR)
    assert (tmp_path / "work" / "predictions.csv").is_file()
