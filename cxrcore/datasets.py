"""The torch dataset over a manifest: decoding, the papers' transforms, normalization, labels under a policy.

Transforms (``augment``):

* ``False`` (evaluation, and training without augmentation): resize to ``image_size`` x ``image_size``.
* ``True`` / ``"mild"``: resize to 256/224 of the size, random crop back to it, random rotation within +-7 degrees.
  No horizontal flip: a flip moves the heart to the right (it turns a normal film into dextrocardia) and swaps
  the side of every lateralized finding, so it is left out of the default.
* ``"paper000"`` (Bajwa et al., Keras ImageDataGenerator): random horizontal flip, rotation within +-20 degrees,
  horizontal and vertical shifts of up to 20 % of the side (the uncovered border is filled with black, Keras fills
  with the nearest edge pixel: a documented difference).
* ``"paper001"`` (Baltruschat et al.): Inception-style random resized crop (8-100 % of the area, aspect 3:4 to
  4:3), rotation within +-7 degrees and horizontal flip, exactly as reported there.
* ``"paper002"`` (Wei and Jethani): resize to 364/320 of the size, random crop back to it, horizontal flip.

Normalization: ``"imagenet"`` (ImageNet statistics; for one channel the mean of the three), ``"dataset"``
(statistics of this dataset's own images, :func:`compute_normalization`, paper 002: use it on the training
manifest and pass the result explicitly to the validation/test datasets), ``"none"``, or explicit (mean, std).

16-bit files are divided by their white level: 2**bits - 1 where the file records its bits (a PNG's sBIT chunk),
4095 with a warning where the values stay within 12 bits (radiographs' common depth), else 65535.
"""
from __future__ import annotations

import logging
import struct
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset
from torchvision.transforms import v2

from cxrcore.findings import PATIENT_TARGETS, apply_policy, patient_targets

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
AUGMENTATIONS = ("mild", "paper000", "paper001", "paper002")
# decode size over crop size of the augmentations that resize first and crop after (others decode at the size)
_PRESIZE = {"mild": 256 / 224, "paper001": 256 / 224, "paper002": 364 / 320}
_SEX_FEATURE = {"M": 1.0, "F": 0.0, "U": 0.5}
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _png_significant_bits(path: Path) -> int | None:
    """The bits per gray sample a PNG file records in its sBIT chunk (e.g. 12 in a 16-bit file), None if absent."""
    with open(path, "rb") as stream:
        if stream.read(8) != _PNG_SIGNATURE:
            return None
        while len(header := stream.read(8)) == 8:
            length, kind = struct.unpack(">I4s", header)
            if kind == b"sBIT":
                bits = stream.read(length)[:1]
                return bits[0] if bits and 1 <= bits[0] <= 16 else None
            if kind in (b"IDAT", b"IEND"):  # sBIT must come before the image data
                return None
            stream.seek(length + 4, 1)  # chunk data and CRC
    return None


def _white_level(image: Image.Image, pixels: np.ndarray, path: Path) -> float:
    """The value of white in a 16/32-bit integer image: 2**bits - 1 for the bits the file records (PNG sBIT);
    else 255 for a mode 'I' image within 8 bits; else 4095 for a 16-bit image within 12 bits (the common depth
    of radiographs, stored in 16-bit files without saying so), with a warning naming the file; else 65535."""
    bits = _png_significant_bits(path) if image.format == "PNG" else None
    if bits is not None:
        return 2.0**bits - 1
    peak = float(pixels.max()) if pixels.size else 0.0
    if image.mode == "I" and peak <= 255:
        return 255.0
    if peak <= 4095:
        warnings.warn(f"{path}: 16-bit image whose values stay within 12 bits (max {peak:.0f}): read as 12-bit, "
                      "divided by 4095 instead of 65535; record the depth (PNG sBIT chunk, e.g. pypng's bitdepth=12) "
                      "or rescale the file to the full range if that is wrong", UserWarning, stacklevel=2)
        return 4095.0
    return 65535.0


def _to_gray_image(image: Image.Image, size: tuple[int, int], path: Path) -> Image.Image:
    """Mode 'L' (8 bit) or 'F' (16 bit scaled to [0, 1], see `_white_level`) image resized to size, from any
    grayscale or color mode."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        pixels = np.asarray(image, dtype=np.float32)
        image = Image.fromarray(pixels / _white_level(image, pixels, path))
    elif image.mode not in ("L", "F"):
        if image.mode not in ("RGB", "RGBA", "LA", "P", "1", "CMYK", "YCbCr"):
            raise ValueError(f"{path}: unsupported image mode {image.mode!r}")
        image = image.convert("L")  # RGB(A) -> luma (ITU-R 601); alpha is dropped
    return image.resize(size, Image.Resampling.BILINEAR)


def _to_array(image: Image.Image) -> np.ndarray:
    """(H, W) float32 in [0, 1] from a mode 'L' or 'F' image."""
    array = np.array(image, dtype=np.float32)
    return array / 255.0 if image.mode == "L" else array


def load_gray_image(path: str | Path, size: int) -> Image.Image:
    """Decode an image file to a (size, size) 'L' or 'F' PIL image; a missing or corrupt file raises naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file {path} not found")
    try:
        with Image.open(path) as image:
            if image.format == "JPEG":
                image.draft("L", (size, size))  # JPEG DCT scaling: decode at >= size, much faster for big files
            image.load()
            return _to_gray_image(image, (size, size), path)
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise OSError(f"cannot decode image file {path}: {err}") from err


def load_gray(path: str | Path, size: int) -> np.ndarray:
    """Decode an image file to (size, size) float32 in [0, 1]; a missing or corrupt file raises naming it."""
    return _to_array(load_gray_image(path, size))


def _train_transform(augment: str, image_size: int) -> v2.Transform:
    """The random geometric transform of one augmentation preset, applied to the PIL image (fast on CPU)."""
    if augment == "paper000":
        return v2.Compose([
            v2.RandomHorizontalFlip(),
            v2.RandomAffine(degrees=20, translate=(0.2, 0.2)),
        ])
    if augment == "paper001":
        return v2.Compose([
            v2.RandomResizedCrop(image_size, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), antialias=True),
            v2.RandomRotation(7),
            v2.RandomHorizontalFlip(),
        ])
    if augment == "paper002":
        return v2.Compose([v2.RandomCrop(image_size), v2.RandomHorizontalFlip()])
    return v2.Compose([v2.RandomCrop(image_size), v2.RandomRotation(7)])


def _resolve_augment(augment: bool | str) -> str | None:
    """None (no augmentation) or the name of a preset."""
    if augment is False or augment is None:
        return None
    if augment is True:
        return "mild"
    if augment not in AUGMENTATIONS:
        raise ValueError(f"augment must be a bool or one of {AUGMENTATIONS}, got {augment!r}")
    return augment


def _features(manifest: pd.DataFrame) -> np.ndarray:
    """(N, 3) float32: age / 100 (missing -> the manifest's median), sex M=1 F=0 U=0.5, projection AP=1 else 0."""
    age = pd.to_numeric(manifest["age"], errors="coerce")
    if age.isna().any():
        fill = float(age.median()) if age.notna().any() else 50.0
        log.info("%d images without age: feature set to the median age %.0f", int(age.isna().sum()), fill)
        age = age.fillna(fill)
    sex = manifest["sex"].map(_SEX_FEATURE)
    if sex.isna().any():
        raise ValueError(f"unknown sex {manifest['sex'][sex.isna()].iloc[0]!r}; expected one of {list(_SEX_FEATURE)}")
    projection = (manifest["projection"] == "AP").astype(float)
    return np.stack([age.to_numpy() / 100.0, sex.to_numpy(), projection.to_numpy()], axis=1).astype(np.float32)


def _targets(manifest: pd.DataFrame, names: Sequence[str], policy: str | Mapping[str, str]
             ) -> tuple[np.ndarray, np.ndarray]:
    """(targets, mask) (N, K) in the order of `names`: findings under the policy, patient targets from their
    columns (cxrcore.findings.patient_targets)."""
    findings = [n for n in names if n not in PATIENT_TARGETS]
    patient = [n for n in names if n in PATIENT_TARGETS]
    if not patient:
        return apply_policy(manifest[findings].to_numpy(), policy, findings, manifest["path"].tolist())
    targets = np.zeros((len(manifest), len(names)), dtype=np.float32)
    mask = np.zeros_like(targets)
    parts = [(patient, patient_targets(manifest, patient))]
    if findings:
        finding_part = apply_policy(manifest[findings].to_numpy(), policy, findings, manifest["path"].tolist())
        if finding_part[0].dtype != np.float32:
            raise ValueError("patient targets (age, sex, projection) cannot be mixed with the u-multiclass policy")
        parts.append((findings, finding_part))
    for chosen, (values, counted) in parts:
        columns = [names.index(n) for n in chosen]
        targets[:, columns], mask[:, columns] = values, counted
    return targets, mask


class ManifestDataset(Dataset):
    """Images and policy-mapped labels of a manifest; items are dicts (see the item contract in the book). An item
    is asked for by its index, or by (index, seed) to draw its augmentation from that seed."""

    takes_item_seeds = True  # cxrcore.train.make_loader hands a shuffled loader's items their own seeds

    def __init__(
        self,
        manifest: pd.DataFrame,
        data_root: str | Path,
        findings: Sequence[str],
        policy: str | Mapping[str, str] = "u-ones",
        image_size: int = 224,
        channels: int = 3,
        augment: bool | str = False,
        normalization: str | tuple[Sequence[float], Sequence[float]] = "imagenet",
        on_error: str = "raise",
        cache: bool = False,
    ) -> None:
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        missing = [f for f in findings if f not in manifest.columns and f not in PATIENT_TARGETS]
        if missing:
            raise ValueError(f"findings {missing} are not columns of the manifest ({list(manifest.columns)})")
        self.data_root = Path(data_root)
        manifest = manifest.reset_index(drop=True)
        if on_error == "skip":  # leave out missing files now (corrupt ones still raise when read)
            exists = np.array([(self.data_root / p).is_file() for p in manifest["path"]], dtype=bool)
            if not exists.all():
                log.warning("%d of %d image files missing, left out (e.g. %s)", int((~exists).sum()), len(exists),
                            manifest["path"][~exists].tolist()[:3])
                manifest = manifest[exists].reset_index(drop=True)
        self.manifest = manifest
        self._paths = manifest["path"].astype(str).tolist()  # plain lists: fast per-item access
        self._patients = manifest["patient_id"].astype(str).tolist()
        self._studies = manifest["study_id"].astype(str).tolist()
        self.findings = list(findings)
        self.image_size = int(image_size)
        self.channels = channels
        self.augment = _resolve_augment(augment)
        targets, mask = _targets(manifest, self.findings, policy)
        self.targets = torch.from_numpy(targets)  # (N, K) float32, or int64 class indices for u-multiclass
        self.mask = torch.from_numpy(mask)  # (N, K) float32
        self.features = torch.from_numpy(_features(manifest))  # (N, 3)
        self.decode_size = round(self.image_size * _PRESIZE.get(self.augment, 1.0)) if self.augment else self.image_size
        self.random_transform = _train_transform(self.augment, self.image_size) if self.augment else None
        # decoded images at decode_size, kept after their first read: each file is decoded once per run, not once
        # per epoch ('L' files as uint8, 16-bit files as float32; a process-local dict, one per DataLoader worker)
        self._decoded: dict[int, np.ndarray] | None = {} if cache else None
        self.mean, self.std = self._normalization(normalization)
        self._mean = np.array(self.mean, dtype=np.float32)[:, None, None]  # (C, 1, 1)
        self._std = np.array(self.std, dtype=np.float32)[:, None, None]

    def _normalization(self, normalization: str | tuple[Sequence[float], Sequence[float]]) -> tuple[list, list]:
        """Per-channel (mean, std) lists for the chosen normalization."""
        if isinstance(normalization, str):
            if normalization == "imagenet":
                mean, std = list(IMAGENET_MEAN), list(IMAGENET_STD)
                return (mean, std) if self.channels == 3 else ([float(np.mean(mean))], [float(np.mean(std))])
            if normalization == "none":
                return [0.0] * self.channels, [1.0] * self.channels
            if normalization == "dataset":
                return compute_normalization(self)
            raise ValueError(f"normalization: 'imagenet', 'dataset', 'none' or (mean, std), not {normalization!r}")
        mean, std = (list(map(float, v)) for v in normalization)
        if len(mean) == 1 and self.channels == 3:
            mean, std = mean * 3, std * 3
        if len(mean) != self.channels or len(std) != self.channels or min(std) <= 0:
            raise ValueError(f"normalization (mean, std) must have {self.channels} values each, std > 0")
        return mean, std

    def __len__(self) -> int:
        return len(self.manifest)

    def pixels(self, index: int) -> np.ndarray:
        """The decoded (image_size, image_size) float32 image in [0, 1], before augmentation and normalization."""
        return load_gray(self.data_root / self._paths[index], self.image_size)

    def _decoded_image(self, index: int) -> Image.Image:
        """The image at decode_size, from the in-memory cache when there is one."""
        if self._decoded is None:
            return load_gray_image(self.data_root / self._paths[index], self.decode_size)
        array = self._decoded.get(index)
        if array is None:
            array = np.asarray(load_gray_image(self.data_root / self._paths[index], self.decode_size))
            self._decoded[index] = array
        return Image.fromarray(array)

    def __getitem__(self, item: int | tuple[int, int]) -> dict:
        index, seed = item if isinstance(item, tuple) else (item, None)
        image = self._decoded_image(index)
        if self.random_transform is not None:
            image = self._augmented(image, seed)
        pixels = _to_array(image)[None]  # (1, H, W)
        # numpy, not torch: small elementwise ops in torch's thread pool cost far more than they compute
        normalized = (pixels - self._mean) / self._std  # (C, H, W), broadcast over channels
        return {"image": torch.from_numpy(normalized), **self.labels(index)}

    def _augmented(self, image: Image.Image, seed: int | None) -> Image.Image:
        """The random transform drawn from its own seed (`cxrcore.train.ItemSeeds`), else from torch's global RNG."""
        if seed is None:
            return self.random_transform(image)
        with torch.random.fork_rng(devices=[]):  # the item's draw leaves the process's RNG as it was
            torch.manual_seed(seed)
            return self.random_transform(image)

    def labels(self, index: int) -> dict:
        """An item without its image: target, mask, non-image features and ids."""
        return {"target": self.targets[index], "mask": self.mask[index], "features": self.features[index],
                "patient_id": self._patients[index], "study_id": self._studies[index], "path": self._paths[index]}


class DeviceAugmentedDataset(Dataset):
    """A ManifestDataset's items with uint8 images (1, S, S) read from its pre-resized cache (`cxrcore.image_cache`,
    S its decode_size), augmented and normalized a whole batch at a time on the device (`to_model_input`): the GPU
    path, whose DataLoader only slices a memory map (the CPU path decodes and augments each image with PIL). Made
    by `cxrcore.image_cache.device_dataset`."""

    takes_item_seeds = True  # a shuffled loader hands items their seeds: each item's augmentation comes from its own

    def __init__(self, dataset: ManifestDataset, cache: Sequence) -> None:
        if len(cache) != len(dataset) or getattr(cache, "side", dataset.decode_size) != dataset.decode_size:
            raise ValueError(f"image cache of {len(cache)} images at {getattr(cache, 'side', '?')} px for a dataset "
                             f"of {len(dataset)} images decoded at {dataset.decode_size} px: build it from the "
                             "dataset's own paths at its decode_size")
        self.dataset = dataset
        self.cache = cache
        for name in ("manifest", "findings", "targets", "mask", "features", "mean", "std", "image_size", "channels",
                     "augment", "decode_size"):
            setattr(self, name, getattr(dataset, name))

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: int | tuple[int, int]) -> dict:
        index, seed = item if isinstance(item, tuple) else (item, -1)  # -1: no seed, not augmented
        return {"image": torch.from_numpy(self.cache[index])[None], "seed": seed, **self.dataset.labels(index)}

    def labels(self, index: int) -> dict:
        """An item without its image (ManifestDataset.labels)."""
        return self.dataset.labels(index)

    def to_model_input(self, images: torch.Tensor, seeds: torch.Tensor | None) -> torch.Tensor:
        """Float (B, C, image_size, image_size) model input from a uint8 (B, 1, S, S) batch on its device: augmented
        from the items' seeds when training with augmentation, else only normalized."""
        from cxrcore.device_augment import augment_batch, draw_matrices, normalize_batch

        if self.augment is None or seeds is None or bool((seeds < 0).any()):
            if images.shape[-1] != self.image_size:
                raise ValueError(f"images of {images.shape[-1]} px without augmentation: expected {self.image_size}")
            return normalize_batch(images, self.mean, self.std, self.channels)
        matrices = draw_matrices(self.augment, seeds.tolist(), images.shape[-1], self.image_size)
        return augment_batch(images, matrices, self.image_size, self.mean, self.std, self.channels)


def compute_normalization(dataset: ManifestDataset, n: int = 256, seed: int = 0) -> tuple[list, list]:
    """Per-channel (mean, std) of the pixel values of n images drawn with a seeded generator (paper 002)."""
    if len(dataset) == 0:
        raise ValueError("cannot compute normalization statistics of an empty dataset")
    chosen = np.random.default_rng(seed).choice(len(dataset), size=min(n, len(dataset)), replace=False)
    total = total_sq = 0.0
    count = 0
    for index in chosen:
        pixels = dataset.pixels(int(index)).astype(np.float64)
        total += pixels.sum()
        total_sq += np.square(pixels).sum()
        count += pixels.size
    mean = total / count
    std = float(np.sqrt(max(total_sq / count - mean**2, 1e-12)))
    return [float(mean)] * dataset.channels, [std] * dataset.channels


def group_predictions(
    patient_ids: Sequence[str], probs: np.ndarray, how: str = "mean"
) -> tuple[np.ndarray, np.ndarray]:
    """Aggregate image-level rows (N, K) to one row per id (patient or study), by mean or max (paper 002)."""
    if how not in ("mean", "max"):
        raise ValueError(f"how must be 'mean' or 'max', got {how!r}")
    probs = np.asarray(probs, dtype=float)
    ids = np.asarray(patient_ids).astype(str)
    if probs.ndim == 1:
        probs = probs[:, None]
    if len(ids) != len(probs):
        raise ValueError(f"{len(ids)} ids for {len(probs)} prediction rows")
    grouped = pd.DataFrame(probs).groupby(ids, sort=True).agg(how)
    return grouped.index.to_numpy(dtype=str), grouped.to_numpy()
