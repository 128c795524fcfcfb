"""The plotting helpers draw what they are given, titled: a CAM grid of images and one column per model."""
from __future__ import annotations

import matplotlib
import numpy as np
import pandas as pd

from cxrcore.plots import cam_grid, mean_intervals, reliability_diagram

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


def test_mean_intervals_draws_each_row_with_its_interval_and_markers() -> None:
    table = pd.DataFrame({"variant": ["a", "b"], "mean_auroc": [0.7, 0.6], "ci_low": [0.65, 0.5],
                          "ci_high": [0.75, 0.7], "study": [0.72, 0.61]})
    ax = mean_intervals(table, title="means", markers={"study": "per study"})
    assert ax.get_title() == "means" and [t.get_text() for t in ax.get_yticklabels()] == ["a", "b"]
    assert list(ax.get_yticks()) == [1, 0]  # the first row on top
    bars = ax.containers[0]  # the errorbar: points, then the interval lines
    np.testing.assert_allclose(np.asarray(bars.lines[0].get_xdata(), dtype=float), [0.7, 0.6])
    segments = bars.lines[2][0].get_segments()
    assert [tuple(np.round(seg[:, 0], 2)) for seg in segments] == [(0.65, 0.75), (0.5, 0.7)]
    np.testing.assert_allclose(ax.collections[-1].get_offsets()[:, 0], [0.72, 0.61])
    assert sorted(t.get_text() for t in ax.get_legend().get_texts()) == ["per image, 95 % CI", "per study"]
    matplotlib.pyplot.close(ax.figure)


def test_reliability_diagram_draws_each_curve_beside_the_diagonal() -> None:
    curve = pd.DataFrame({"mean score": [0.1, 0.5, 0.9], "share positive": [0.05, 0.3, 0.6], "labels": [100, 25, 4]})
    ax = reliability_diagram({"plain": curve, "weighted": curve.assign(**{"share positive": [0.0, 0.1, 0.2]})},
                             title="reliability")
    diagonal, plain, weighted = ax.get_lines()
    assert list(diagonal.get_xdata()) == [0, 1] and list(diagonal.get_ydata()) == [0, 1]
    np.testing.assert_allclose(np.asarray(plain.get_ydata(), dtype=float), [0.05, 0.3, 0.6])
    np.testing.assert_allclose(np.asarray(weighted.get_ydata(), dtype=float), [0.0, 0.1, 0.2])
    np.testing.assert_allclose(ax.collections[0].get_sizes(), [40, 20, 8])  # marker area by the bin's labels
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["calibrated", "plain", "weighted"]
    matplotlib.pyplot.close(ax.figure)
