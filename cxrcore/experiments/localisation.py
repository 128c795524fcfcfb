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
from cxrcore.runner import Result, evaluation_dataset
from data_prep.synth.signs import SIGN_IDS

SYNTH_DIR = "_synth"


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


def localisation_row(maps: np.ndarray, masks: Sequence[np.ndarray], region: str = "effusion") -> dict[str, float]:
    """One arm's scores over images: mean energy inside (all-zero maps left out), area share, pointing game."""
    energy = np.array([energy_inside(m, k) for m, k in zip(maps, masks, strict=True)])  # NaN: an all-zero map
    return {f"energy inside the {region}": np.nanmean(energy) if np.isfinite(energy).any() else np.nan,
            f"{region}'s share of the image": float(np.mean([k.mean() for k in masks])),
            "peak inside (pointing game)": float(np.mean([pointing_game(m, k)
                                                          for m, k in zip(maps, masks, strict=True)])),
            "all-zero maps": int(np.isnan(energy).sum())}


def localisation_table(maps: dict[str, np.ndarray], masks_for_side: Callable[[int], list[np.ndarray]],
                       region: str = "effusion") -> pd.DataFrame:
    """Arm x score table of `localisation_row`, plus energy / area; each arm's masks at its maps' side."""
    masks = {side: masks_for_side(side) for side in dict.fromkeys(m.shape[-1] for m in maps.values())}
    table = pd.DataFrame.from_dict({name: localisation_row(m, masks[m.shape[-1]], region)
                                    for name, m in maps.items()}, orient="index")
    table["energy / area"] = table[f"energy inside the {region}"] / table[f"{region}'s share of the image"]
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


def localisation_summary(table: pd.DataFrame, masks: Sequence[np.ndarray], region: str = "effusion",
                         cells: int | None = None) -> str:
    """What a `localisation_table` says, in sentences: the region's area, the arms' range of energy / area, the most
    focused arm (with its pointing game, unless a map of `cells` x `cells` is too coarse for it), and any all-zero
    maps."""
    ratio, zero, best = table["energy / area"], table["all-zero maps"], table["energy / area"].idxmax()
    area = float(np.mean([mask.mean() for mask in masks]))
    caveat = "" if cells is None else pointing_game_caveat(cells)
    peak = "" if caveat else f", peak inside on {table.loc[best, 'peak inside (pointing game)']:.0%} of the images"
    text = (f"Over {len(masks)} test images with a drawn {region}, the {region} covers {area:.1%} of the image on "
            f"average. The arms put between {ratio.min():.2f} and {ratio.max():.2f} times that share of their map's "
            f"energy inside it; the highest share is {best}'s ({ratio[best]:.2f} times{peak}).")
    if caveat:
        text += " " + caveat
    if zero.any():
        text += (" All-zero maps (no positive evidence anywhere after the map's ReLU): "
                 + ", ".join(f"{name} ({n} of {len(masks)} images)" for name, n in zero[zero > 0].items())
                 + "; those maps do not count in the energy column.")
    return text
