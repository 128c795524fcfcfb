"""Gallery for the data chapter: each sign beside its one-line description, frontal and lateral, with its mask."""

from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from PIL import Image

from data_prep.synth.signs import SIGN_IDS, SIGN_TEXT
from data_prep.synth.write import SITE_DIRS, mask_path

SITES = tuple(SITE_DIRS)


def sign_pixels(root: Path, path: str, sign: str) -> np.ndarray:
    """Where an image's mask records the sign: (H, W) bool from the sign ids in the mask's red channel."""
    return np.asarray(Image.open(root / mask_path(path)))[..., 0] == SIGN_IDS[sign]


def sign_examples(data_root: str | Path, sign: str) -> dict[tuple[str, str], str]:
    """One image path per (site, view) whose mask shows the sign, from the ground-truth tables."""
    root = Path(data_root)
    found = {}
    for site in SITES:
        signs = pd.read_csv(root / "_synth" / f"{site}_signs.csv")
        images = pd.read_csv(root / "_synth" / f"{site}_images.csv")
        candidates = images[images["path"].isin(signs.loc[signs["sign"] == sign, "path"])]
        for view in ("frontal", "lateral"):
            for _, row in candidates[candidates["view"] == view].iterrows():
                if sign_pixels(root, row["path"], sign).any():
                    found[(site, view)] = row["path"]
                    break
    return found


def show(ax: plt.Axes, data_root: str | Path, path: str, sign: str) -> None:
    """An image with the outline of where the sign was drawn, so the sign itself stays visible."""
    root = Path(data_root)
    image = np.asarray(Image.open(root / path).convert("L"))
    mask = sign_pixels(root, path, sign)
    ax.imshow(image, cmap="gray", vmin=0, vmax=255)
    ax.contour(mask, levels=[0.5], colors="#ff3b30", linewidths=0.8)
    ax.set_xticks([])
    ax.set_yticks([])


def gallery(data_root: str | Path, signs: list[str] | None = None) -> Figure:
    """Rows = signs (with their description), columns = the site x view pairs that show any of them."""
    signs = signs or [s for s in SIGN_IDS if s != "hypoinflation"]
    examples = {sign: sign_examples(data_root, sign) for sign in signs}
    columns = [(site, view) for site in SITES for view in ("frontal", "lateral")
               if any((site, view) in found for found in examples.values())]  # ChestX-ray14 has no laterals
    figure, axes = plt.subplots(len(signs), 1 + len(columns), figsize=(2.6 + 1.75 * len(columns), 1.95 * len(signs)),
                                width_ratios=[1.5] + [1] * len(columns), squeeze=False, layout="constrained")
    for r, sign in enumerate(signs):
        axes[r, 0].axis("off")
        axes[r, 0].text(1.0, 0.5, f"{sign.replace('_', ' ')}\n" + textwrap.fill(SIGN_TEXT[sign], 30),
                        transform=axes[r, 0].transAxes, ha="right", va="center", fontsize=8)
        for c, key in enumerate(columns, start=1):
            if key in examples[sign]:
                show(axes[r, c], data_root, examples[sign][key], sign)
            else:
                axes[r, c].axis("off")
            if r == 0:
                axes[r, c].set_title(f"{key[0]}\n{key[1]}", fontsize=9)
    return figure
