"""Gallery for the data chapter: each sign beside its one-line description, frontal and lateral, with its mask."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from PIL import Image

from data_prep.synth.signs import SIGN_IDS, SIGN_TEXT
from data_prep.synth.write import SITE_DIRS

SITES = tuple(SITE_DIRS)


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
                if (np.asarray(Image.open(root / row["mask"]))[..., 0] == SIGN_IDS[sign]).any():
                    found[(site, view)] = row["path"]
                    break
    return found


def show(ax: plt.Axes, data_root: str | Path, path: str, sign: str) -> None:
    """An image with the mask of where the sign was drawn outlined in colour."""
    root = Path(data_root)
    image = np.asarray(Image.open(root / path).convert("L"))
    mask = np.asarray(Image.open(root / "_synth" / "masks" / Path(path).with_suffix(".png")))[..., 0] == SIGN_IDS[sign]
    ax.imshow(image, cmap="gray", vmin=0, vmax=255)
    ax.imshow(np.ma.masked_where(~mask, mask), cmap="autumn", alpha=0.35)
    ax.set_xticks([])
    ax.set_yticks([])


def gallery(data_root: str | Path, signs: list[str] | None = None) -> Figure:
    """Rows = signs (with their description), columns = site x view; missing combinations left blank."""
    signs = signs or [s for s in SIGN_IDS if s != "hypoinflation"]
    columns = [(site, view) for site in SITES for view in ("frontal", "lateral")]
    figure, axes = plt.subplots(len(signs), len(columns), figsize=(1.7 * len(columns), 1.9 * len(signs)), squeeze=False)
    for r, sign in enumerate(signs):
        examples = sign_examples(data_root, sign)
        for c, key in enumerate(columns):
            ax = axes[r, c]
            if key in examples:
                show(ax, data_root, examples[key], sign)
            else:
                ax.axis("off")
            if r == 0:
                ax.set_title(f"{key[0]}\n{key[1]}", fontsize=8)
        axes[r, 0].text(
            -0.08,
            0.5,
            f"{sign}\n{SIGN_TEXT[sign]}",
            transform=axes[r, 0].transAxes,
            ha="right",
            va="center",
            fontsize=7,
            wrap=True,
        )
    figure.subplots_adjust(left=0.3, wspace=0.05, hspace=0.15)
    return figure
