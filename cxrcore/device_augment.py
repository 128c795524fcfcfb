"""Augmentation and normalization of a whole batch on its device: one affine_grid + grid_sample per batch.

Why: the CPU path (`cxrcore.datasets`) augments each PIL image in a DataLoader worker; on a fast GPU the workers
cannot keep up. Here the images arrive on the device as a uint8 (B, 1, S, S) batch from a pre-resized cache
(S = `ManifestDataset.decode_size` gives the CPU path's field of view), and each item's crop, rotation,
translation and flip are folded into one 2x3 matrix. torchvision's v2 transforms are no use on a batched tensor:
they draw ONE set of parameters for the whole batch.

Each item's parameters are drawn on the CPU from its own seed (`cxrcore.train.item_seed`) with
`numpy.random.default_rng`: the same seed gives the same matrix on any device and in any batch.

Conventions:

* Matrices are `F.affine_grid` thetas with align_corners=False: they map an output pixel's normalized coordinates
  (x right, y down, -1..1 spanning the whole side) to the input's. A crop of side c at offset o of an S-px image has
  scale c / S and centre (o + c / 2) / S * 2 - 1, so a crop of out_size px reads pixel centres exactly.
* Angles are in degrees, positive = counter-clockwise in the displayed image, as torchvision's rotate and
  RandomRotation (RandomAffine's angle turns the other way; its range is symmetric, so the distribution is the same).
* One order for every preset: crop (resized to out_size), rotate about the centre, translate, flip. paper000's CPU
  path flips first; a flip before a rotation by a or a shift by t equals one after a rotation by -a and a shift by
  (-tx, ty), and both ranges are symmetric, so the distribution is the same.
* Edges as PIL's bilinear: a point inside the image's area reads the edge pixels there (not a blend with the
  padding), a point outside it reads 0 (black, the CPU path's fill), before normalization.

Known differences from the CPU path: one resampling instead of one per transform (sharper); no antialiasing when a
crop is shrunk (PIL's resize widens its filter; ours does not, so a large paper001 crop aliases a little more);
float pixels throughout (PIL rounds to uint8 after each step); crop offsets and translations are whole pixels as in
torchvision, drawn from numpy instead of torch's RNG, so a seed gives a different (equally distributed) draw.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

AUGMENTATIONS = ("mild", "paper000", "paper001", "paper002")
_SMALL_ROTATION = 7.0  # degrees, mild and paper001 (torchvision RandomRotation(7))
_PAPER000_ROTATION = 20.0  # degrees (RandomAffine(degrees=20))
_PAPER000_SHIFT = 0.2  # of the side, each axis (RandomAffine(translate=(0.2, 0.2)))
_RRC_SCALE = (0.08, 1.0)  # paper001's RandomResizedCrop: area fraction and aspect (width / height) ranges
_RRC_RATIO = (3 / 4, 4 / 3)


class _Params(NamedTuple):
    """One item's augmentation: crop box (top, left, height, width) in input px, angle in degrees (counter-clockwise),
    shift (x, y) in fractions of the output side, horizontal flip."""

    box: tuple[int, int, int, int]
    angle: float
    shift: tuple[float, float]
    flip: bool


def _random_crop(rng: np.random.Generator, in_size: int, out_size: int) -> tuple[int, int, int, int]:
    """RandomCrop(out_size) of an in_size image: top, then left, whole pixels."""
    if in_size < out_size:
        raise ValueError(f"a random crop of {out_size} px needs images of at least that size, got {in_size} px "
                         "(cache the training images at ManifestDataset.decode_size)")
    top, left = (int(rng.integers(0, in_size - out_size + 1)) for _ in range(2))
    return top, left, out_size, out_size


def _resized_crop_box(rng: np.random.Generator, size: int) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop.get_params on a square image: 10 tries, then a centre crop."""
    area = size * size
    log_ratio = (math.log(_RRC_RATIO[0]), math.log(_RRC_RATIO[1]))
    for _ in range(10):
        target_area = area * rng.uniform(*_RRC_SCALE)
        aspect = math.exp(rng.uniform(*log_ratio))
        width = int(round(math.sqrt(target_area * aspect)))
        height = int(round(math.sqrt(target_area / aspect)))
        if 0 < width <= size and 0 < height <= size:
            top = int(rng.integers(0, size - height + 1))
            left = int(rng.integers(0, size - width + 1))
            return top, left, height, width
    # a square image's aspect 1 lies within the ratio range: torchvision falls back to the whole image
    return 0, 0, size, size


def _mild(rng: np.random.Generator, in_size: int, out_size: int) -> _Params:
    """RandomCrop(out_size), RandomRotation(7)."""
    return _Params(_random_crop(rng, in_size, out_size), rng.uniform(-_SMALL_ROTATION, _SMALL_ROTATION), (0.0, 0.0),
                   False)


def _paper000(rng: np.random.Generator, in_size: int, out_size: int) -> _Params:
    """RandomHorizontalFlip, RandomAffine(degrees=20, translate=(0.2, 0.2)) on the whole image."""
    flip = bool(rng.random() < 0.5)
    angle = rng.uniform(-_PAPER000_ROTATION, _PAPER000_ROTATION)
    limit = _PAPER000_SHIFT * out_size
    shift_px = (round(rng.uniform(-limit, limit)), round(rng.uniform(-limit, limit)))  # whole px, as torchvision
    return _Params((0, 0, in_size, in_size), angle, (shift_px[0] / out_size, shift_px[1] / out_size), flip)


def _paper001(rng: np.random.Generator, in_size: int, out_size: int) -> _Params:
    """RandomResizedCrop(scale=(0.08, 1), ratio=(3/4, 4/3)), RandomRotation(7), RandomHorizontalFlip."""
    box = _resized_crop_box(rng, in_size)
    angle = rng.uniform(-_SMALL_ROTATION, _SMALL_ROTATION)
    return _Params(box, angle, (0.0, 0.0), bool(rng.random() < 0.5))


def _paper002(rng: np.random.Generator, in_size: int, out_size: int) -> _Params:
    """RandomCrop(out_size), RandomHorizontalFlip."""
    return _Params(_random_crop(rng, in_size, out_size), 0.0, (0.0, 0.0), bool(rng.random() < 0.5))


_DRAWS = {"mild": _mild, "paper000": _paper000, "paper001": _paper001, "paper002": _paper002}


def _matrix(params: _Params, in_size: int) -> np.ndarray:
    """(2, 3) theta: output coords -> flip -> undo the shift -> undo the rotation -> the crop's place in the input."""
    top, left, height, width = params.box
    crop = np.array([[width / in_size, 0.0, (2 * left + width) / in_size - 1],
                     [0.0, height / in_size, (2 * top + height) / in_size - 1],
                     [0.0, 0.0, 1.0]])
    a = math.radians(params.angle)
    # y points down: a counter-clockwise turn moves (x, y) to (x cos + y sin, -x sin + y cos); we need its inverse
    unrotate = np.array([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0], [0.0, 0.0, 1.0]])
    unshift = np.array([[1.0, 0.0, -2 * params.shift[0]], [0.0, 1.0, -2 * params.shift[1]], [0.0, 0.0, 1.0]])
    flip = np.diag([-1.0 if params.flip else 1.0, 1.0, 1.0])
    return (crop @ unrotate @ unshift @ flip)[:2]


def draw_matrices(augment: str, seeds: Sequence[int], in_size: int, out_size: int) -> torch.Tensor:
    """(B, 2, 3) float32 affine matrices (for F.affine_grid, align_corners=False) mapping each output image's
    normalized coordinates to its input's: the crop, rotation, translation and flip of one augmentation, each item's
    parameters drawn from its own seed."""
    if augment not in _DRAWS:
        raise ValueError(f"augment must be one of {AUGMENTATIONS}, got {augment!r}")
    if in_size < 1 or out_size < 1:
        raise ValueError(f"in_size and out_size must be positive, got {in_size} and {out_size}")
    draw = _DRAWS[augment]
    matrices = [_matrix(draw(np.random.default_rng(int(seed)), in_size, out_size), in_size) for seed in seeds]
    return torch.from_numpy(np.stack(matrices) if matrices else np.zeros((0, 2, 3))).float()


def _check_images(images: torch.Tensor) -> None:
    """Raise unless images is a uint8 (B, 1, S, S) batch."""
    if images.dtype != torch.uint8:
        raise TypeError(f"images must be uint8 (the cache's pixels), got {images.dtype}")
    if images.dim() != 4 or images.shape[1] != 1 or images.shape[2] != images.shape[3]:
        raise ValueError(f"images must be a gray square batch (B, 1, S, S), got shape {tuple(images.shape)}")


def _normalized(pixels: torch.Tensor, mean: Sequence[float], std: Sequence[float], channels: int) -> torch.Tensor:
    """(B, channels, H, W) (pixels - mean) / std from (B, 1, H, W) float pixels in [0, 1]."""
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    if len(mean) != channels or len(std) != channels:
        raise ValueError(f"mean and std need {channels} values each (one per channel), got {len(mean)} and {len(std)}")
    mean_t = torch.tensor(mean, dtype=torch.float32, device=pixels.device).view(1, channels, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32, device=pixels.device).view(1, channels, 1, 1)
    return (pixels - mean_t) / std_t  # broadcast: 3 channels repeat the gray one


def normalize_batch(images: torch.Tensor, mean: Sequence[float], std: Sequence[float], channels: int) -> torch.Tensor:
    """Float (B, channels, S, S) normalized model input from a uint8 (B, 1, S, S) batch without augmentation."""
    _check_images(images)
    return _normalized(images.float() / 255, mean, std, channels)


def _pil_edges(grid: torch.Tensor, size: int) -> torch.Tensor:
    """The grid with PIL's bilinear edges: inside the image's area clamped to the edge pixels' centres, outside
    moved far off (grid_sample's zero padding alone would fade the last half pixel inside the image into black)."""
    edge = 1 - 1 / size
    return torch.where(grid.abs() <= 1, grid.clamp(-edge, edge), torch.full_like(grid, 3.0))


def augment_batch(images: torch.Tensor, matrices: torch.Tensor, out_size: int, mean: Sequence[float],
                  std: Sequence[float], channels: int) -> torch.Tensor:
    """Float (B, channels, out_size, out_size) normalized model input from a uint8 (B, 1, S, S) batch and its matrices
    (bilinear, zeros outside the image), on the batch's device."""
    _check_images(images)
    batch = images.shape[0]
    if matrices.shape != (batch, 2, 3):
        raise ValueError(f"matrices must be ({batch}, 2, 3), one per image (draw_matrices with one seed per image), "
                         f"got shape {tuple(matrices.shape)}")
    theta = matrices.to(images.device, torch.float32)
    grid = F.affine_grid(theta, [batch, 1, out_size, out_size], align_corners=False)  # (B, out, out, 2) x, y
    grid = _pil_edges(grid, images.shape[-1])
    pixels = F.grid_sample(images.float() / 255, grid, mode="bilinear", padding_mode="zeros",
                           align_corners=False)  # (B, 1, out, out)
    return _normalized(pixels, mean, std, channels)
