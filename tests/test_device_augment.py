"""Batched device augmentation against references: slicing and torch.flip for crops, PIL for rotation, translation
and resized crops (the CPU path's library), and the presets' ranges read back from the matrices."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF
from layouts import write_image
from PIL import Image

from cxrcore.datasets import IMAGENET_MEAN, IMAGENET_STD, load_gray_image
from cxrcore.device_augment import (
    AUGMENTATIONS,
    _matrix,
    _Params,
    augment_batch,
    draw_matrices,
    normalize_batch,
)

MEAN, STD = list(IMAGENET_MEAN), list(IMAGENET_STD)
SEEDS = list(range(300))


def _pixels(images: torch.Tensor, matrices: torch.Tensor, out_size: int) -> np.ndarray:
    """(B, out, out) float pixels in [0, 1]: augment_batch without normalization, one channel."""
    return augment_batch(images, matrices, out_size, [0.0], [1.0], 1)[:, 0].numpy()


def _random_image(size: int, seed: int = 0) -> np.ndarray:
    """(size, size) uint8 noise: every crop, flip and turn of it is distinct."""
    return np.random.default_rng(seed).integers(0, 256, size=(size, size), dtype=np.uint8)


def _batch(*images: np.ndarray) -> torch.Tensor:
    """uint8 (B, 1, S, S) from (S, S) arrays."""
    return torch.from_numpy(np.stack(images))[:, None]


def _read_back(theta: np.ndarray, in_size: int) -> dict:
    """A matrix's parameters: theta = [D R^-1 F | c - D R^-1 t] with D the crop's scale, R the rotation, F the flip,
    c the crop's centre, t the shift (normalized units)."""
    linear = theta[:, :2]
    scale = np.linalg.norm(linear, axis=1)  # (width, height) / in_size
    turned = linear / scale[:, None]  # R^-1 F
    flip = np.linalg.det(turned) < 0
    unrotate = turned @ np.diag([-1.0 if flip else 1.0, 1.0])  # [[cos, -sin], [sin, cos]]
    width, height = scale * in_size
    return {"width": width, "height": height, "centre": theta[:, 2], "flip": bool(flip),
            "angle": math.degrees(math.atan2(unrotate[1, 0], unrotate[0, 0])), "unrotate": unrotate}


def test_whole_image_matrix_reproduces_normalize_batch():
    images = _batch(_random_image(32, 0), _random_image(32, 1))
    whole = _matrix(_Params((0, 0, 32, 32), 0.0, (0.0, 0.0), False), 32)
    np.testing.assert_array_equal(whole, [[1, 0, 0], [0, 1, 0]])
    matrices = torch.from_numpy(np.stack([whole, whole])).float()
    got = augment_batch(images, matrices, 32, MEAN, STD, 3)
    torch.testing.assert_close(got, normalize_batch(images, MEAN, STD, 3), atol=1e-5, rtol=0)


def test_paper002_crops_the_region_drawn_from_its_seed():
    image = _random_image(40)
    seeds = list(range(16))
    got = _pixels(_batch(*[image] * len(seeds)), draw_matrices("paper002", seeds, 40, 32), 32) * 255
    flips = []
    for seed, crop in zip(seeds, got, strict=True):
        rng = np.random.default_rng(seed)  # the draw order is the contract: top, left, flip
        top, left, flip = rng.integers(0, 9), rng.integers(0, 9), rng.random() < 0.5
        expected = torch.from_numpy(image[top:top + 32, left:left + 32].astype(np.float32))
        if flip:
            expected = torch.flip(expected, dims=[-1])
        np.testing.assert_allclose(crop, expected.numpy(), atol=1e-3, err_msg=f"seed {seed}")
        flips.append(flip)
    assert any(flips) and not all(flips)


@pytest.mark.parametrize("angle", [7.0, -13.0, 20.0])
def test_rotation_matches_pil_counter_clockwise(angle):
    image = _random_image(40)
    matrix = torch.from_numpy(_matrix(_Params((0, 0, 40, 40), angle, (0.0, 0.0), False), 40)).float()[None]
    reference = Image.fromarray(image.astype(np.float32) / 255).rotate(angle, resample=Image.Resampling.BILINEAR)
    # PIL's rotate turns counter-clockwise, fills 0 outside and reads the edge pixels up to the image's border
    np.testing.assert_allclose(_pixels(_batch(image), matrix, 40)[0], np.asarray(reference), atol=1e-5)


def test_flip_then_affine_matches_torchvision_on_pil():
    image = _random_image(40)
    flipped = Image.fromarray(image[:, ::-1].astype(np.float32) / 255)
    # paper000's CPU order: flip, then RandomAffine, whose angle turns clockwise and whose shift is whole pixels
    reference = TF.affine(flipped, angle=-10.0, translate=[3, -4], scale=1.0, shear=[0.0, 0.0],
                          interpolation=TF.InterpolationMode.BILINEAR)
    # our order flips last: the same image is a turn by -10 and a shift by (-3, -4) px before the flip
    matrix = _matrix(_Params((0, 0, 40, 40), -10.0, (-3 / 40, -4 / 40), True), 40)
    got = _pixels(_batch(image), torch.from_numpy(matrix).float()[None], 40)[0]
    np.testing.assert_allclose(got, np.asarray(reference), atol=1e-5)


@pytest.mark.parametrize("box", [(0, 0, 20, 30), (10, 5, 30, 25), (34, 40, 30, 24)])
def test_enlarged_crop_matches_pil_resize(box):
    top, left, height, width = box
    image = _random_image(64)
    reference = Image.fromarray(image.astype(np.float32) / 255).resize(
        (48, 48), Image.Resampling.BILINEAR, box=(left, top, left + width, top + height))
    matrix = torch.from_numpy(_matrix(_Params(box, 0.0, (0.0, 0.0), False), 64)).float()[None]
    np.testing.assert_allclose(_pixels(_batch(image), matrix, 48)[0], np.asarray(reference), atol=1e-5)


def test_paper001_crops_inside_the_image_within_its_area_and_aspect():
    size = 256
    params = [_read_back(m, size) for m in draw_matrices("paper001", SEEDS, size, 224).numpy()]
    fractions, positions = [], []
    for p in params:
        width, height = round(p["width"]), round(p["height"])
        assert abs(p["width"] - width) < 1e-3 and abs(p["height"] - height) < 1e-3  # whole pixels
        left = (p["centre"][0] + 1) / 2 * size - width / 2
        top = (p["centre"][1] + 1) / 2 * size - height / 2
        assert -1e-3 < left and left + width < size + 1e-3 and -1e-3 < top and top + height < size + 1e-3
        assert abs(left - round(left)) < 1e-3 and abs(top - round(top)) < 1e-3
        # sides are rounded to whole pixels (as torchvision): within half a pixel of an area >= 8 % and aspect 3:4-4:3
        assert (width + 0.5) * (height + 0.5) >= 0.08 * size**2 and width * height <= size**2
        assert (width + 0.5) / (height - 0.5) >= 3 / 4 and (width - 0.5) / (height + 0.5) <= 4 / 3
        fractions.append(width * height / size**2)
        if width < size and height < size:
            positions.append((left / (size - width), top / (size - height)))  # uniform in [0, 1] each
    assert min(fractions) < 0.15 and max(fractions) > 0.85
    assert np.all(np.abs(np.mean(positions, axis=0) - 0.5) < 0.1)
    assert 0.3 < np.mean([p["flip"] for p in params]) < 0.7


@pytest.mark.parametrize("augment,limit,flips", [("mild", 7, False), ("paper001", 7, True), ("paper000", 20, True),
                                                  ("paper002", 0, True)])
def test_rotation_ranges_and_flips(augment, limit, flips):
    params = [_read_back(m, 64) for m in draw_matrices(augment, SEEDS, 64, 56).numpy()]
    angles, flipped = [p["angle"] for p in params], [p["flip"] for p in params]
    assert max(abs(a) for a in angles) <= limit + 1e-4
    if limit:
        assert min(angles) < -0.9 * limit and max(angles) > 0.9 * limit
    assert any(flipped) == flips


def test_paper000_shift_within_a_fifth_of_the_side_in_whole_pixels():
    shifts = []
    for matrix in draw_matrices("paper000", SEEDS, 56, 56).numpy():
        p = _read_back(matrix, 56)
        assert p["width"] == pytest.approx(56) and p["height"] == pytest.approx(56)  # the whole image
        shift = -np.linalg.solve(p["unrotate"], p["centre"]) / 2 * 56  # px: centre = -R^-1 t
        np.testing.assert_allclose(shift, np.round(shift), atol=1e-3)
        shifts.append(shift)
    shifts = np.abs(np.array(shifts))
    assert shifts.max() <= round(0.2 * 56) + 1e-3 and shifts.max(axis=0).min() >= 10


def test_mild_and_paper002_crop_whole_pixels_of_the_output_size():
    for augment in ("mild", "paper002"):
        for matrix in draw_matrices(augment, SEEDS[:50], 64, 56).numpy():
            p = _read_back(matrix, 64)
            assert p["width"] == pytest.approx(56) and p["height"] == pytest.approx(56)
            offsets = (p["centre"] + 1) / 2 * 64 - 28
            assert offsets.min() > -1e-4 and offsets.max() < 8 + 1e-4
            np.testing.assert_allclose(offsets, np.round(offsets), atol=1e-4)


@pytest.mark.parametrize("augment", AUGMENTATIONS)
def test_each_matrix_depends_on_its_own_seed_only(augment):
    seeds = [5, 9, 13, 2**62 + 7]
    matrices = draw_matrices(augment, seeds, 64, 56)
    torch.testing.assert_close(draw_matrices(augment, seeds[::-1], 64, 56), matrices.flip(0), atol=0, rtol=0)
    torch.testing.assert_close(draw_matrices(augment, [9], 64, 56)[0], matrices[1], atol=0, rtol=0)
    flat = matrices.reshape(len(seeds), -1)
    assert torch.cdist(flat, flat).add(torch.eye(len(seeds))).min() > 0  # every pair differs


@pytest.fixture(scope="module")
def radiograph(tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    """A radiograph-like PNG decoded as the cache holds it: uint8 (64, 64), the decode size of 56 px paper001."""
    path = write_image(tmp_path_factory.mktemp("device_augment") / "film.png", "png8", shape=(80, 72))
    return np.asarray(load_gray_image(path, 64))


@pytest.mark.parametrize("augment", AUGMENTATIONS)
def test_whole_path_on_a_radiograph(radiograph, augment):
    assert radiograph.dtype == np.uint8
    images = _batch(*[radiograph] * 6)
    got = augment_batch(images, draw_matrices(augment, range(6), 64, 56), 56, MEAN, STD, 3)
    assert got.shape == (6, 3, 56, 56) and got.dtype == torch.float32 and torch.isfinite(got).all()
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    pixels = got * std + mean  # (B, 3, H, W): the gray channel, three times
    torch.testing.assert_close(pixels[:, 1:], pixels[:, :1].expand(-1, 2, -1, -1), atol=1e-5, rtol=0)
    assert pixels.min() > -1e-5 and pixels.max() < 1 + 1e-5
    flat = pixels[:, 0].reshape(6, -1)
    assert torch.cdist(flat, flat).add(torch.eye(6)).min() > 0  # one draw per item, not one per batch


@pytest.mark.parametrize("augment", AUGMENTATIONS)
def test_white_image_normalizes_to_one_inside(augment):
    images = torch.full((4, 1, 64, 64), 255, dtype=torch.uint8)
    got = augment_batch(images, draw_matrices(augment, range(4), 64, 56), 56, MEAN, STD, 3)
    white = (1 - torch.tensor(MEAN)) / torch.tensor(STD)
    black = -torch.tensor(MEAN) / torch.tensor(STD)
    torch.testing.assert_close(got[:, :, 20:36, 20:36], white.view(1, 3, 1, 1).expand(4, 3, 16, 16))
    assert (got >= black.view(1, 3, 1, 1) - 1e-5).all() and (got <= white.view(1, 3, 1, 1) + 1e-5).all()


def test_normalize_batch_one_channel():
    images = _batch(_random_image(16))
    got = normalize_batch(images, [0.5], [0.25], 1)
    assert got.shape == (1, 1, 16, 16)
    torch.testing.assert_close(got, (images.float() / 255 - 0.5) / 0.25)


def test_errors_name_the_problem():
    images = _batch(_random_image(16), _random_image(16, 1))
    matrices = draw_matrices("paper002", [0, 1], 16, 16)
    with pytest.raises(ValueError, match="paper001"):
        draw_matrices("flips", [0], 16, 16)
    with pytest.raises(ValueError, match="at least"):
        draw_matrices("mild", [0], 16, 20)
    with pytest.raises(TypeError, match="uint8"):
        augment_batch(images.float(), matrices, 16, MEAN, STD, 3)
    with pytest.raises(TypeError, match="uint8"):
        normalize_batch(images.float(), MEAN, STD, 3)
    with pytest.raises(ValueError, match=r"\(B, 1, S, S\)"):
        augment_batch(images.expand(-1, 3, -1, -1), matrices, 16, MEAN, STD, 3)
    with pytest.raises(ValueError, match=r"\(B, 1, S, S\)"):
        normalize_batch(images[:, :, :8], MEAN, STD, 3)
    with pytest.raises(ValueError, match="one seed per image"):
        augment_batch(images, draw_matrices("paper002", [0, 1, 2], 16, 16), 16, MEAN, STD, 3)
    with pytest.raises(ValueError, match="3 values each"):
        augment_batch(images, matrices, 16, MEAN[:1], STD[:1], 3)
    with pytest.raises(ValueError, match="1 values each"):
        normalize_batch(images, MEAN, STD, 1)


def test_output_feeds_a_conv_under_bf16_autocast(radiograph):
    images = _batch(radiograph, radiograph)
    inputs = augment_batch(images, draw_matrices("paper001", [3, 4], 64, 56), 56, MEAN, STD, 3)
    conv = torch.nn.Conv2d(3, 4, kernel_size=3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = conv(inputs)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()
