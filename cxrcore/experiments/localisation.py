"""Grad-CAM localisation on the synthetic sites: the drawn sign's mask against a class activation map.

The synthetic sites (`data_prep.synth`) record where each sign was drawn: `_synth/<site>_signs.csv` lists the signs
of each image, `_synth/masks/<image path>.png` holds the sign id of every pixel in its red channel (as
`data_prep.synth.gallery` reads it). A map is scored by the share of its energy inside the drawn sign
(`cxrcore.cam.energy_inside`), against the sign's share of the image, and by the pointing game.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from cxrcore.cam import class_activation_map, energy_inside, gradcam, pointing_game
from cxrcore.experiments.tables import listed
from cxrcore.runner import Result, evaluation_dataset
from data_prep.synth.signs import SIGN_IDS

SYNTH_DIR = "_synth"
ENERGY_DRAWS = 1000  # bootstrap draws over images for the intervals of energy / area


def has_sign_masks(data_root: str | Path) -> bool:
    """True when the data root is a synthetic site with its drawn-sign tables and masks."""
    return (Path(data_root) / SYNTH_DIR).is_dir()


def drawn_sign_paths(data_root: str | Path, site: str, sign: str, paths: Iterable[str], limit: int) -> list[str]:
    """The first `limit` of `paths` (in their order) whose film shows the sign: drawn by `_synth/<site>_signs.csv`
    and with pixels in its mask. A drawn sign can leave none on a film (an effusion under about 0.15 severity keeps a
    frontal film's costophrenic angle sharp, as a small effusion does; a later sign can cover a small one), and a
    film with nothing to point at cannot score a map."""
    signs = pd.read_csv(Path(data_root) / SYNTH_DIR / f"{site}_signs.csv")
    drawn = set(signs.loc[(signs["sign"] == sign) & (signs["drawn"] == 1), "path"])
    shown = []
    for path in paths:
        if len(shown) == limit:
            break
        if path in drawn and (np.asarray(_sign_ids(data_root, path)) == SIGN_IDS[sign]).any():
            shown.append(path)
    return shown


def mask_file(data_root: str | Path, path: str) -> Path:
    """The mask PNG of an image path: `_synth/masks/<path>.png`."""
    return Path(data_root) / SYNTH_DIR / "masks" / Path(path).with_suffix(".png")


def _sign_ids(data_root: str | Path, path: str) -> Image.Image:
    """The mask PNG's red channel at its own size: the id of the sign drawn at each pixel (0: none)."""
    return Image.open(mask_file(data_root, path)).getchannel(0)


def sign_mask(data_root: str | Path, path: str, side: int, sign: str) -> np.ndarray:
    """Boolean (side, side) mask of the sign's drawn pixels, resized like the model's square input (nearest)."""
    ids = _sign_ids(data_root, path)
    return np.asarray(ids.resize((side, side), Image.Resampling.NEAREST)) == SIGN_IDS[sign]


def sign_masks(data_root: str | Path, paths: Sequence[str], sign: str, side: int) -> list[np.ndarray]:
    """`sign_mask` of every path at one side (`functools.partial` of the first three: masks for a side)."""
    return [sign_mask(data_root, path, side, sign) for path in paths]


def per_image(maps: np.ndarray, masks: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Each image's energy inside the mask (NaN for an all-zero map) and the mask's share of the image."""
    energy = np.array([energy_inside(m, k) for m, k in zip(maps, masks, strict=True)], dtype=float)
    return energy, np.array([k.mean() for k in masks], dtype=float)


def _ratio(energy: np.ndarray, area: np.ndarray) -> float:
    """Mean energy inside over mean area, on the same images (NaN when there are none)."""
    return float(energy.mean() / area.mean()) if energy.size and area.mean() > 0 else np.nan


def ratio_interval(energy: np.ndarray, area: np.ndarray, n_boot: int = ENERGY_DRAWS, seed: int = 0
                   ) -> tuple[float, float]:
    """95 % bootstrap interval (images resampled) of mean energy over mean area; NaN for fewer than two images."""
    if energy.size < 2:
        return np.nan, np.nan
    draws = np.random.default_rng(seed).integers(0, energy.size, (n_boot, energy.size))
    ratios = energy[draws].mean(axis=1) / np.maximum(area[draws].mean(axis=1), 1e-12)
    low, high = np.percentile(ratios, [2.5, 97.5])
    return float(low), float(high)


def ratio_difference(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray],
                     n_boot: int = ENERGY_DRAWS, seed: int = 0) -> dict[str, float]:
    """Energy / area of arm A minus arm B on the images both maps score (neither all zero), with its paired 95 %
    bootstrap interval (the same images resampled for both); a and b are (energy, area) per image from `per_image`.
    Returns {"difference", "low", "high", "images"}; NaN where fewer than two images are common."""
    common = np.isfinite(a[0]) & np.isfinite(b[0])
    (ea, aa), (eb, ab) = ((e[common], k[common]) for e, k in (a, b))
    out = {"difference": _ratio(ea, aa) - _ratio(eb, ab), "low": np.nan, "high": np.nan, "images": int(common.sum())}
    if common.sum() < 2:
        return out
    draws = np.random.default_rng(seed).integers(0, common.sum(), (n_boot, int(common.sum())))
    differences = (ea[draws].mean(axis=1) / np.maximum(aa[draws].mean(axis=1), 1e-12)
                   - eb[draws].mean(axis=1) / np.maximum(ab[draws].mean(axis=1), 1e-12))
    out["low"], out["high"] = (float(v) for v in np.percentile(differences, [2.5, 97.5]))
    return out


def localisation_row(maps: np.ndarray, masks: Sequence[np.ndarray], region: str = "effusion") -> dict[str, float]:
    """One arm's scores over images: mean energy inside and the region's mean share of the image, both over the
    images whose map is not all zero (the same images for both), energy / area with its 95 % bootstrap interval,
    the pointing game over every image, and the number of all-zero maps."""
    energy, area = per_image(maps, masks)
    scored = np.isfinite(energy)
    low, high = ratio_interval(energy[scored], area[scored])
    return {f"energy inside the {region}": float(energy[scored].mean()) if scored.any() else np.nan,
            f"{region}'s share of the image": float(area[scored].mean()) if scored.any() else np.nan,
            "peak inside (pointing game)": float(np.mean([pointing_game(m, k)
                                                          for m, k in zip(maps, masks, strict=True)])),
            "all-zero maps": int((~scored).sum()),
            "energy / area": _ratio(energy[scored], area[scored]), "energy / area low": low,
            "energy / area high": high}


def localisation_table(maps: dict[str, np.ndarray], masks_for_side: Callable[[int], list[np.ndarray]],
                       region: str = "effusion") -> pd.DataFrame:
    """Arm x score table of `localisation_row` (each arm's masks at its maps' side), plus each arm's energy / area
    minus the highest arm's on the images both score, with its paired 95 % bootstrap interval (NaN for the highest
    arm itself)."""
    masks = {side: masks_for_side(side) for side in dict.fromkeys(m.shape[-1] for m in maps.values())}
    scores = {name: per_image(m, masks[m.shape[-1]]) for name, m in maps.items()}
    table = pd.DataFrame.from_dict({name: localisation_row(m, masks[m.shape[-1]], region)
                                    for name, m in maps.items()}, orient="index")
    columns = ["minus the highest", "minus the highest low", "minus the highest high"]
    table[columns] = np.nan
    if table["energy / area"].notna().any():
        best = table["energy / area"].idxmax()
        for name in table.index.drop(best):
            paired = ratio_difference(scores[name], scores[best])
            table.loc[name, columns] = [paired["difference"], paired["low"], paired["high"]]
    return table.astype({"all-zero maps": int})


def test_images(result: Result, paths: Sequence[str], manifest: str | Path | None = None) -> torch.Tensor:
    """The given test images as the run sees them at evaluation ((N, C, side, side), normalized, not augmented): of
    its own test split, or of another manifest's (another site's test images, say)."""
    dataset = evaluation_dataset(result, "test", manifest)
    index = {path: i for i, path in enumerate(dataset.manifest["path"])}
    return torch.stack([dataset[index[path]]["image"] for path in paths])


def gradcam_maps(results: Mapping[str, Result], paths: Sequence[str], class_index: int
                 ) -> tuple[torch.Tensor, dict[str, np.ndarray]]:
    """Each run's Grad-CAM of one class on the given test images ((N, side, side) per run, at the run's input
    side), and the grey images as the first run sees them ((N, side, side), normalized)."""
    maps, shown = {}, None
    for name, result in results.items():
        images = test_images(result, paths)
        maps[name] = gradcam(result.load_model(), images, class_index)
        shown = images[:, 0] if shown is None else shown
    return shown, maps


def cam_and_gradcam(result: Result, paths: Sequence[str], class_index: int, manifest: str | Path | None = None
                    ) -> tuple[torch.Tensor, dict[str, np.ndarray]]:
    """One run's plain class activation map (Zhou et al.: the class's head weights times the last feature maps, as
    paper 002 draws them) and its Grad-CAM of one class on the same test images (of its own test split, or of
    another manifest's), each (N, side, side) in [0, 1], and the grey images as the run sees them ((N, side, side))."""
    images = test_images(result, paths, manifest)
    model = result.load_model()
    return images[:, 0], {"CAM": class_activation_map(model, images, class_index),
                          "Grad-CAM": gradcam(model, images, class_index)}


def pointing_game_caveat(cells: int) -> str:
    """A sentence for maps too coarse for the pointing game (empty from 3 x 3 cells up): stretched bilinearly to the
    image, a 2 x 2 map keeps its highest cell's value out to the image's edges, so its peak is always a corner block
    of the image, wherever the sign is."""
    if cells >= 3:
        return ""
    return (f"Stretched to the image, a {cells} x {cells} map is highest in a corner block of the image whatever the "
            "model saw; signs seldom reach into the corners, so the pointing game (is the map's peak inside the "
            "sign?) says nothing about the model at this size.")


def highest_reading(table: pd.DataFrame, peak: str = "") -> str:
    """Which arm of a `localisation_table` puts the most energy inside the region, named only against the arms whose
    paired interval (on the images both score) lies below it; the others are within noise of it."""
    ratio = table["energy / area"].dropna()
    if ratio.empty:
        return "No arm's map can be scored: every one is all zero on every image."
    best = ratio.idxmax()
    head = f"{best}'s ({ratio[best]:.2f} times{peak})"
    others = table.loc[ratio.index.drop(best)]
    if others.empty:
        return f"The only arm with a map to score is {head}."
    below = [name for name, row in others.iterrows() if row["minus the highest high"] < 0]
    level = [name for name in others.index if name not in below]
    if not level:
        return (f"The highest share is {head}, above every other arm's: each paired 95 % interval of the difference "
                "(over the images both arms score) lies below zero.")
    within = (f"not set apart from {listed(f'{name} ({ratio[name]:.2f})' for name in level)} by the paired 95 % "
              "interval of the difference (over the images both arms score)")
    if not below:
        return f"No arm stands out: the highest, {head}, is {within}."
    return (f"The highest, {head}, is above {listed(below)} beyond the paired 95 % interval of the difference, but "
            f"{within}.")


def chance_reading(table: pd.DataFrame) -> str:
    """Which arms' 95 % intervals of energy / area include 1, the share of a map that ignores the region."""
    bounded = table.dropna(subset=["energy / area low", "energy / area high"])
    if bounded.empty:
        return ""
    at_chance = [name for name, row in bounded.iterrows() if row["energy / area low"] <= 1 <= row["energy / area high"]]
    if len(at_chance) == len(bounded):
        return ("Every arm's 95 % interval (images resampled) includes 1: on these images no map is shown to put more "
                "of its energy inside the region than a map that ignores it.")
    if at_chance:
        return f"The 95 % intervals (images resampled) of {listed(at_chance)} include 1, chance."
    return "No arm's 95 % interval (images resampled) includes 1, chance."


def localisation_summary(table: pd.DataFrame, masks: Sequence[np.ndarray], region: str = "effusion",
                         cells: int | None = None) -> str:
    """What a `localisation_table` says, in sentences: the region's area, the arms' range of energy / area, the
    highest arm only where its paired interval sets it apart (with its pointing game, unless a map of `cells` x
    `cells` is too coarse for it), which intervals include chance, and any all-zero maps."""
    ratio, zero = table["energy / area"].dropna(), table["all-zero maps"]
    area = float(np.mean([mask.mean() for mask in masks]))
    caveat = "" if cells is None else pointing_game_caveat(cells)
    best = ratio.idxmax() if not ratio.empty else None
    peak = "" if caveat or best is None else \
        f", peak inside on {table.loc[best, 'peak inside (pointing game)']:.0%} of the images"
    text = f"Over {len(masks)} test images with a drawn {region}, the {region} covers {area:.1%} of the image on "
    text += "average."
    if best is not None:
        text += (f" The arms put between {ratio.min():.2f} and {ratio.max():.2f} times that share of their map's "
                 "energy inside it (1 is a map that ignores it).")
    text += " " + highest_reading(table, peak)
    chance = chance_reading(table)
    if chance:
        text += " " + chance
    if caveat:
        text += " " + caveat
    if zero.any():
        text += (" All-zero maps (no positive evidence anywhere after the map's ReLU): "
                 + ", ".join(f"{name} ({n} of {len(masks)} images)" for name, n in zero[zero > 0].items())
                 + "; those images count in neither that arm's energy nor its area.")
    return text
