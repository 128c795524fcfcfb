"""ManifestDataset items (shapes, dtypes, decoding of each file kind), errors naming files, normalization."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from layouts import CheXpertTree, radiograph_like, write_image
from torch.utils.data import DataLoader

from cxrcore.datasets import ManifestDataset, compute_normalization, group_predictions, load_gray
from cxrcore.findings import CHEXPERT_FINDINGS
from cxrcore.train import ItemSeeds, item_seed, make_loader
from data_prep.manifests import assign_splits, read_chexpert

FOUR = ["Atelectasis", "Cardiomegaly", "Pleural Effusion", "Pneumonia"]


@pytest.fixture
def manifest(chexpert_tree: CheXpertTree) -> pd.DataFrame:
    """The session CheXpert tree's manifest (real rows, JPEG files)."""
    return assign_splits(read_chexpert(chexpert_tree.root), "chexpert", seed=0)


@pytest.mark.parametrize("channels", [1, 3])
def test_item_contract(manifest: pd.DataFrame, chexpert_tree: CheXpertTree, channels: int) -> None:
    dataset = ManifestDataset(manifest, chexpert_tree.root, FOUR, image_size=64, channels=channels)
    item = dataset[0]
    assert item["image"].shape == (channels, 64, 64) and item["image"].dtype == torch.float32
    assert item["target"].shape == item["mask"].shape == (4,) and item["target"].dtype == torch.float32
    assert item["features"].shape == (3,) and item["features"].dtype == torch.float32
    row = manifest.iloc[0]
    expected_features = [row["age"] / 100, {"M": 1.0, "F": 0.0, "U": 0.5}[row["sex"]], float(row["projection"] == "AP")]
    np.testing.assert_allclose(item["features"].numpy(), expected_features, rtol=1e-6)
    assert item["patient_id"] == row["patient_id"] and item["path"] == row["path"]
    assert item["study_id"] == row["study_id"]
    batch = next(iter(DataLoader(dataset, batch_size=5)))
    assert batch["image"].shape == (5, channels, 64, 64) and len(batch["patient_id"]) == 5


def test_targets_follow_policy(manifest: pd.DataFrame, chexpert_tree: CheXpertTree) -> None:
    ones = ManifestDataset(manifest, chexpert_tree.root, CHEXPERT_FINDINGS, policy="u-ones", image_size=32)
    raw = manifest[CHEXPERT_FINDINGS].to_numpy()
    np.testing.assert_array_equal(ones.targets.numpy(), np.isin(raw, [1, -1]).astype(np.float32))
    ignore = ManifestDataset(manifest, chexpert_tree.root, CHEXPERT_FINDINGS, policy="u-ignore", image_size=32)
    np.testing.assert_array_equal(ignore.mask.numpy(), (raw != -1).astype(np.float32))
    multi = ManifestDataset(manifest, chexpert_tree.root, CHEXPERT_FINDINGS, policy="u-multiclass", image_size=32)
    assert multi[0]["target"].dtype == torch.int64
    with pytest.raises(ValueError, match=r"findings \['Effusion'\] are not columns"):
        ManifestDataset(manifest, chexpert_tree.root, ["Effusion"])


@pytest.fixture(scope="module")
def image_kinds(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    """One file per kind (8-/16-bit PNG, JPEG, RGB, RGBA) of the same picture, and a manifest over them."""
    root = tmp_path_factory.mktemp("kinds")
    kinds = ["png8", "png16", "jpeg", "rgb", "rgba"]
    paths = [f"site/{kind}.{'jpg' if kind == 'jpeg' else 'png'}" for kind in kinds]
    for kind, path in zip(kinds, paths, strict=True):
        write_image(root / path, kind, shape=(48, 40), seed=7)
    manifest = pd.DataFrame({
        "path": paths, "site": "hospital", "patient_id": [f"P{i}" for i in range(5)], "study_id": "S",
        "view": "frontal", "projection": "PA", "sex": ["M", "F", "U", "M", "F"], "age": [30.0, 40, np.nan, 60, 70],
        "split": "train", "Edema": [1.0, 0.0, -1.0, np.nan, 1.0],
    })
    return root, manifest


def test_every_file_kind_decodes_to_the_same_picture(image_kinds: tuple[Path, pd.DataFrame]) -> None:
    root, manifest = image_kinds
    expected = np.asarray(radiograph_like((48, 40), seed=7), dtype=np.float32)
    for path in manifest["path"]:
        pixels = load_gray(root / path, 48)  # resized from 40 wide to 48 wide: compare central rows' profile
        assert pixels.shape == (48, 48) and pixels.dtype == np.float32
        assert 0.0 <= pixels.min() and pixels.max() <= 1.0
        assert abs(pixels.mean() - expected.mean()) < 0.01, path
        assert pixels[:, 24].mean() > pixels[:, 4].mean() + 0.3, path  # bright mediastinum, darker lung
    sixteen = load_gray(root / "site/png16.png", 32)
    eight = load_gray(root / "site/png8.png", 32)
    assert np.abs(sixteen - eight).max() < 1.5 / 255  # 16-bit scaled by 65535, 8-bit by 255


@pytest.mark.parametrize("channels", [1, 3])
def test_items_of_every_kind(image_kinds: tuple[Path, pd.DataFrame], channels: int) -> None:
    root, manifest = image_kinds
    dataset = ManifestDataset(manifest, root, ["Edema"], policy="u-ignore", image_size=32, channels=channels,
                              normalization="none")
    for i in range(len(dataset)):
        item = dataset[i]
        assert item["image"].shape == (channels, 32, 32)
        if channels == 3:
            assert torch.equal(item["image"][0], item["image"][2])
    assert dataset[2]["mask"].item() == 0.0 and dataset[3]["target"].item() == 0.0  # uncertain / not mentioned
    assert dataset[2]["features"][0].item() == pytest.approx(0.5)  # missing age -> median age (50) / 100


def test_missing_and_corrupt_files(image_kinds: tuple[Path, pd.DataFrame], tmp_path: Path) -> None:
    _, manifest = image_kinds
    corrupt = tmp_path / "site" / "png8.png"
    corrupt.parent.mkdir()
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 4)
    (tmp_path / "site" / "jpeg.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(40))
    dataset = ManifestDataset(manifest, tmp_path, ["Edema"], image_size=32)
    with pytest.raises(OSError, match="cannot decode image file .*png8.png"):
        dataset[0]
    with pytest.raises(OSError, match="cannot decode image file .*jpeg.jpg"):
        dataset[2]
    with pytest.raises(FileNotFoundError, match="png16.png not found"):
        dataset[1]
    skipping = ManifestDataset(manifest, tmp_path, ["Edema"], image_size=32, on_error="skip")
    assert list(skipping.manifest["path"]) == ["site/png8.png", "site/jpeg.jpg"]


def test_large_jpeg_uses_draft(tmp_path: Path) -> None:
    write_image(tmp_path / "big.jpg", "jpeg", shape=(1024, 900), seed=1)
    pixels = load_gray(tmp_path / "big.jpg", 64)
    assert pixels.shape == (64, 64) and pixels[:, 32].mean() > pixels[:, 5].mean() + 0.3


@pytest.mark.parametrize("augment", [True, "paper000", "paper001", "paper002"])
def test_augmentation(manifest: pd.DataFrame, chexpert_tree: CheXpertTree, augment: bool | str) -> None:
    dataset = ManifestDataset(manifest, chexpert_tree.root, FOUR, image_size=32, augment=augment)
    draws = [dataset[0]["image"] for _ in range(5)]
    assert all(image.shape == (3, 32, 32) for image in draws)
    assert not all(torch.equal(draws[0], image) for image in draws[1:])  # random crops/rotations of one file
    with pytest.raises(ValueError, match="augment"):
        ManifestDataset(manifest, chexpert_tree.root, FOUR, augment="vertical-flip")


def _epochs_of_images(loader: DataLoader, epochs: list[int]) -> list[dict[str, torch.Tensor]]:
    """Per epoch: each path's augmented image, as the loader delivered it."""
    seen = []
    for epoch in epochs:
        loader.sampler.set_epoch(epoch)
        seen.append({path: image for batch in loader for path, image in zip(batch["path"], batch["image"],
                                                                               strict=True)})
    return seen


def test_augmentation_seeds_make_items_independent_of_workers(manifest: pd.DataFrame,
                                                              chexpert_tree: CheXpertTree) -> None:
    dataset = ManifestDataset(manifest, chexpert_tree.root, FOUR, image_size=32, augment="paper000", cache=True)
    by_workers = {}
    for workers in (0, 2):  # persistent workers hold their own RNG: only per-item seeds make them agree
        loader = make_loader(dataset, batch_size=4, shuffle=True, seed=3, num_workers=workers, device="cpu")
        assert isinstance(loader.sampler, ItemSeeds)
        by_workers[workers] = _epochs_of_images(loader, [1, 2, 1])
    for plain, worked in zip(by_workers[0], by_workers[2], strict=True):
        assert plain.keys() == worked.keys() == set(dataset.manifest["path"])
        assert all(torch.equal(plain[path], worked[path]) for path in plain)
    first, second, again = by_workers[0]
    assert all(torch.equal(first[path], again[path]) for path in first)  # an epoch's draw repeats exactly
    assert sum(torch.equal(first[path], second[path]) for path in first) < len(first) / 2  # a new epoch redraws
    index = 5
    assert torch.equal(dataset[(index, item_seed(3, 1, index))]["image"], first[dataset.manifest["path"][index]])
    assert item_seed(3, 1, index, repeat=0) != item_seed(3, 1, index, repeat=1)  # drawn twice: augmented twice
    assert not isinstance(make_loader(dataset, batch_size=4, device="cpu").sampler, ItemSeeds)  # evaluation


def test_normalization(manifest: pd.DataFrame, chexpert_tree: CheXpertTree) -> None:
    own = ManifestDataset(manifest, chexpert_tree.root, FOUR, image_size=32, normalization="dataset")
    images = torch.stack([own[i]["image"] for i in range(len(own))])
    assert abs(images.mean().item()) < 0.01 and images.std().item() == pytest.approx(1.0, abs=0.02)
    mean, std = compute_normalization(own, n=1000)
    assert own.mean == mean and own.std == std and len(mean) == 3
    imagenet = ManifestDataset(manifest, chexpert_tree.root, FOUR, image_size=32, channels=1)
    assert imagenet.mean == [pytest.approx(0.449)] and imagenet.std == [pytest.approx(0.226)]
    explicit = ManifestDataset(manifest, chexpert_tree.root, FOUR, image_size=32, normalization=([0.5], [0.25]))
    raw = ManifestDataset(manifest, chexpert_tree.root, FOUR, image_size=32, normalization="none")
    torch.testing.assert_close(explicit[0]["image"], (raw[0]["image"] - 0.5) / 0.25)
    with pytest.raises(ValueError, match="std > 0"):
        ManifestDataset(manifest, chexpert_tree.root, FOUR, normalization=([0.5, 0.5], [0.2, 0.2]))


def test_group_predictions() -> None:
    ids = ["p2", "p1", "p2", "p1", "p3"]
    probs = np.array([[0.2, 0.9], [0.4, 0.1], [0.6, 0.3], [0.8, 0.5], [0.5, 0.5]])
    groups, mean = group_predictions(ids, probs, how="mean")
    assert list(groups) == ["p1", "p2", "p3"]
    np.testing.assert_allclose(mean, [[0.6, 0.3], [0.4, 0.6], [0.5, 0.5]])
    _, most = group_predictions(ids, probs, how="max")
    np.testing.assert_allclose(most, [[0.8, 0.5], [0.6, 0.9], [0.5, 0.5]])
    with pytest.raises(ValueError, match="ids for"):
        group_predictions(ids[:2], probs)
