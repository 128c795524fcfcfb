"""The plotting helpers draw what they are given, titled: a CAM grid of images and one column per model."""
from __future__ import annotations

import matplotlib
import numpy as np

from cxrcore.plots import cam_grid

matplotlib.use("Agg")


def test_cam_grid_draws_the_image_and_one_column_per_arm() -> None:
    images = np.random.default_rng(0).random((3, 8, 8))
    maps = {"A": np.zeros((3, 8, 8)), "B": np.ones((3, 8, 8)) / 2}
    masks = [np.eye(8, dtype=bool)] * 3
    figure = cam_grid(images, maps, masks, "title", rows=2, image_title="image (drawn effusion)")
    assert len(figure.axes) == 2 * 3
    assert [ax.get_title() for ax in figure.axes[:3]] == ["image (drawn effusion)", "A", "B"]
    assert figure.axes[3].get_title() == "" and figure.texts[0].get_text() == "title"
    matplotlib.pyplot.close(figure)
