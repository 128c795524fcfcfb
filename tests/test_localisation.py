"""Grad-CAM localisation on the synthetic sites (cxrcore.experiments.localisation): masks in write.py's layout."""
from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from cxrcore import cam as cam_module
from cxrcore.experiments.localisation import (
    drawn_sign_paths,
    has_sign_masks,
    highest_reading,
    localisation_row,
    localisation_summary,
    localisation_table,
    mask_file,
    per_image,
    pointing_game_caveat,
    ratio_difference,
    sign_mask,
    sign_masks,
)
from data_prep.synth.signs import SIGN_IDS

matplotlib.use("Agg")
PATH = "CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg"


def write_mask(root: Path, path: str, ids: np.ndarray) -> None:
    """The mask PNG as data_prep.synth.write saves it: red = sign id, green = anatomy bits, blue = 0."""
    anatomy = np.full_like(ids, 3)  # lungs and thorax everywhere: must not count as a sign
    file = root / "_synth" / "masks" / Path(path).with_suffix(".png")
    file.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.stack([ids, anatomy, np.zeros_like(ids)], axis=-1)).save(file)


def test_drawn_sign_paths_keeps_order_and_limit(tmp_path: Path) -> None:
    assert not has_sign_masks(tmp_path)
    (tmp_path / "_synth").mkdir()
    signs = pd.DataFrame({"path": ["a", "b", "c", "d", "e"], "drawn": [1, 0, 1, 1, 1],
                          "sign": ["effusion", "effusion", "effusion", "opacity", "effusion"]})
    signs.to_csv(tmp_path / "_synth" / "chexpert_signs.csv", index=False)
    assert has_sign_masks(tmp_path)
    effusion, opacity = np.zeros((8, 8), dtype=np.uint8), np.zeros((8, 8), dtype=np.uint8)
    effusion[6:, :3], opacity[:2, :2] = SIGN_IDS["effusion"], SIGN_IDS["opacity"]
    for path in "abcde":
        write_mask(tmp_path, path, effusion)
    assert drawn_sign_paths(tmp_path, "chexpert", "effusion", ["e", "d", "c", "b", "a"], 10) == ["e", "c", "a"]
    assert drawn_sign_paths(tmp_path, "chexpert", "effusion", pd.Series(["e", "d", "c", "b", "a"]), 2) == ["e", "c"]
    write_mask(tmp_path, "c", opacity)  # drawn, but nothing of it on the film (a small effusion on a frontal film)
    assert drawn_sign_paths(tmp_path, "chexpert", "effusion", ["e", "d", "c", "b", "a"], 10) == ["e", "a"]


def test_sign_mask_reads_the_red_channel_resized(tmp_path: Path) -> None:
    ids = np.zeros((40, 40), dtype=np.uint8)
    ids[20:, :20] = SIGN_IDS["effusion"]  # bottom-left quarter
    ids[:10, 30:] = SIGN_IDS["opacity"]
    write_mask(tmp_path, PATH, ids)
    assert mask_file(tmp_path, PATH) == tmp_path / "_synth/masks" / PATH.replace(".jpg", ".png")
    mask = sign_mask(tmp_path, PATH, 8, "effusion")
    assert mask.shape == (8, 8) and mask.dtype == bool
    expected = np.zeros((8, 8), dtype=bool)
    expected[4:, :4] = True
    np.testing.assert_array_equal(mask, expected)
    assert sign_mask(tmp_path, PATH, 40, "opacity").sum() == 100
    assert len(sign_masks(tmp_path, [PATH, PATH], "effusion", 4)) == 2


def test_localisation_table_scores_maps_at_their_own_side() -> None:
    def masks_for_side(side: int) -> list[np.ndarray]:
        calls.append(side)
        mask = np.zeros((side, side), dtype=bool)
        mask[: side // 2, : side // 2] = True  # a quarter of the image
        return [mask, mask]

    calls = []
    inside = np.zeros((2, 4, 4))
    inside[:, 0, 0] = 1.0  # all energy inside, peak inside
    flat = np.ones((2, 4, 4))  # ignores the region: energy share = area share, no peak
    half = np.zeros((2, 8, 8))
    half[0, 0, 0], half[0, 7, 7] = 1.0, 3.0  # a quarter of the energy inside, peak outside
    maps = {"inside": inside, "flat": flat, "mixed": half}  # the second map of "mixed" is all zero
    table = localisation_table(maps, masks_for_side)
    assert sorted(calls) == [4, 8]  # one call per side
    assert list(table.index) == ["inside", "flat", "mixed"]
    assert list(table.columns) == ["energy inside the effusion", "effusion's share of the image",
                                   "peak inside (pointing game)", "all-zero maps", "energy / area", "energy / area low",
                                   "energy / area high", "minus the highest", "minus the highest low",
                                   "minus the highest high"]
    assert table["energy inside the effusion"].tolist() == pytest.approx([1.0, 0.25, 0.25])
    assert table["effusion's share of the image"].tolist() == pytest.approx([0.25, 0.25, 0.25])
    assert table["energy / area"].tolist() == pytest.approx([4.0, 1.0, 1.0])
    assert table[["energy / area low", "energy / area high"]].loc["inside"].tolist() == pytest.approx([4.0, 4.0])
    assert table[["energy / area low", "energy / area high"]].loc["mixed"].isna().all()  # one image scored
    assert table["peak inside (pointing game)"].tolist() == pytest.approx([1.0, 0.0, 0.0])
    assert table["all-zero maps"].tolist() == [0, 0, 1] and table["all-zero maps"].dtype == int
    assert table.loc["flat", ["minus the highest", "minus the highest low", "minus the highest high"]].tolist() == \
        pytest.approx([-3.0, -3.0, -3.0])
    assert table.loc[["inside", "mixed"], "minus the highest low"].isna().all()  # itself; one common image
    zero = localisation_table({"zero": np.zeros((2, 4, 4))}, masks_for_side, region="drain")
    assert np.isnan(zero.loc["zero", "energy inside the drain"]) and zero.loc["zero", "all-zero maps"] == 2
    summary = localisation_summary(table, masks_for_side(4))
    assert summary.startswith("Over 2 test images with a drawn effusion, the effusion covers 25.0% of the image on "
                              "average. The arms put between 1.00 and 4.00 times that share of their map's energy "
                              "inside it (1 is a map that ignores it). The highest, inside's (4.00 times, peak inside "
                              "on 100% of the images), is above flat beyond the paired 95 % interval of the "
                              "difference, but not set apart from mixed (1.00)")
    assert "The 95 % intervals (images resampled) of flat include 1, chance." in summary
    assert summary.endswith("All-zero maps (no positive evidence anywhere after the map's ReLU): mixed (1 of 2 "
                            "images); those images count in neither that arm's energy nor its area.")
    assert "all-zero" not in localisation_summary(table.drop("mixed"), masks_for_side(4))
    assert "above every other arm's" in localisation_summary(localisation_table(
        {"inside": inside, "flat": flat}, masks_for_side), masks_for_side(4))
    coarse = localisation_summary(table, masks_for_side(4), cells=2)
    assert "peak inside on" not in coarse and pointing_game_caveat(2) in coarse
    assert "peak inside on 100%" in localisation_summary(table, masks_for_side(4), cells=7)


def test_energy_and_area_share_their_images_and_near_equal_arms_name_no_winner() -> None:
    """An all-zero map leaves its image out of both the energy and the area (B 1.8); two arms whose ratios differ by
    noise are not ranked."""
    small, large = np.zeros((4, 4), dtype=bool), np.zeros((4, 4), dtype=bool)
    small[0, 0], large[:2, :] = True, True  # 1/16 and 1/2 of the image
    maps = np.zeros((2, 4, 4))
    maps[0] = 1.0  # flat on the small mask's image, all zero on the large one's
    row = localisation_row(maps, [small, large])
    assert row["effusion's share of the image"] == pytest.approx(1 / 16) and row["energy / area"] == pytest.approx(1)
    energy, area = per_image(maps, [small, large])
    assert np.isnan(energy[1]) and area.tolist() == pytest.approx([1 / 16, 1 / 2])
    rng = np.random.default_rng(0)
    masks = [np.zeros((8, 8), dtype=bool) for _ in range(30)]
    for mask in masks:
        mask[4:, :4] = True
    noisy = {name: rng.random((30, 8, 8)) for name in ("fine-tuned", "from scratch")}
    table = localisation_table(noisy, lambda side: masks)
    paired = ratio_difference(per_image(noisy["fine-tuned"], masks), per_image(noisy["from scratch"], masks))
    assert paired["images"] == 30 and paired["low"] < paired["difference"] < paired["high"]
    assert paired["low"] < 0 < paired["high"]
    assert highest_reading(table).startswith("No arm stands out: the highest, ")


def test_the_pointing_game_caveat_covers_exactly_the_grids_whose_peak_is_a_corner() -> None:
    """A CAM upsampled as cxrcore.cam does it: a 2 x 2 grid's peak is the corner block on its highest cell's side,
    wherever that cell is; from 3 x 3 an inner cell's peak is inside the image, and no caveat is given."""
    side = 64
    for cells, caveat in ((2, True), (3, False)):
        assert bool(pointing_game_caveat(cells)) == caveat
        for row, col in np.ndindex(cells, cells):
            grid = torch.zeros(1, 1, cells, cells)
            grid[0, 0, row, col] = 1.0
            peak = np.argwhere(cam_module._scale_maps(grid, (side, side), True)[0, 0] == 1.0)  # the tied maxima
            corner = {0: range(0, side // 4), cells - 1: range(side - side // 4, side)}
            in_corner = row in corner and col in corner and all(
                r in corner[row] and c in corner[col] for r, c in peak)
            assert in_corner == (cells == 2 or (row, col) in {(0, 0), (0, 2), (2, 0), (2, 2)})
