"""The explorers' logic without a browser: each control state gives the numbers or figure it should."""
from __future__ import annotations

import ipywidgets as widgets
import matplotlib
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_curve

from cxrcore.experiments.explore import (
    lung_templates,
    policy_counts,
    policy_explorer,
    render_with_sign,
    sign_figure,
    threshold_counts,
    threshold_explorer,
    threshold_figure,
)

matplotlib.use("Agg")


@pytest.fixture
def predictions() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 200).astype(float)
    labels[:10] = np.nan  # unknown labels are not scored
    return pd.DataFrame({"path": [f"p{i}.png" for i in range(200)], "patient_id": [f"q{i}" for i in range(200)],
                         "Edema": labels, "Edema_score": np.clip(0.3 * np.nan_to_num(labels) + rng.random(200) * 0.7,
                                                                 0, 1)})


@pytest.mark.parametrize("threshold", [0.0, 0.35, 0.5, 0.8, 1.01])
def test_threshold_counts_are_the_direct_counts(predictions: pd.DataFrame, threshold: float) -> None:
    known = predictions["Edema"].notna()
    labels, scores = predictions.loc[known, "Edema"].to_numpy().astype(int), predictions.loc[known, "Edema_score"]
    counts = threshold_counts(labels, scores.to_numpy(), threshold)
    called = scores.to_numpy() >= threshold
    tp, fp = int((called & (labels == 1)).sum()), int((called & (labels == 0)).sum())
    fn, tn = int((~called & (labels == 1)).sum()), int((~called & (labels == 0)).sum())
    assert (counts["TP"], counts["FP"], counts["FN"], counts["TN"]) == (tp, fp, fn, tn)
    assert counts["recall"] == pytest.approx(tp / (tp + fn))
    assert counts["precision"] == pytest.approx(tp / (tp + fp) if tp + fp else 0.0)
    assert counts["FPR"] == pytest.approx(fp / (fp + tn))


def test_threshold_figure_marks_the_operating_point_on_the_roc_curve(predictions: pd.DataFrame) -> None:
    figure = threshold_figure(predictions, "Edema", 0.5, chosen=0.4)
    matrix_ax, roc_ax = figure.axes[:2]
    known = predictions["Edema"].notna()
    counts = threshold_counts(predictions.loc[known, "Edema"].to_numpy().astype(int),
                              predictions.loc[known, "Edema_score"].to_numpy(), 0.5)
    shown = sorted(int(text.get_text()) for text in matrix_ax.texts)
    assert shown == sorted([counts["TP"], counts["FP"], counts["FN"], counts["TN"]])
    curve, _, point, chosen = roc_ax.lines
    fpr, tpr, _ = roc_curve(predictions.loc[known, "Edema"].astype(int), predictions.loc[known, "Edema_score"])
    np.testing.assert_allclose(curve.get_xdata(), fpr)
    assert (point.get_xdata()[0], point.get_ydata()[0]) == pytest.approx((counts["FPR"], counts["recall"]))
    assert chosen.get_label() == "validation-chosen 0.40"
    assert "190 test images" in figure.texts[0].get_text()
    matplotlib.pyplot.close(figure)


def test_each_policy_sorts_the_same_labels_into_its_classes() -> None:
    values = [1.0, 1.0, 0.0, -1.0, -1.0, -1.0, np.nan, 0.0]
    table = pd.DataFrame({"path": [f"i{i}.png" for i in range(8)], "Edema": values, "Atelectasis": values[::-1]})
    counts = {policy: policy_counts(table, {"Edema": policy}).loc["Edema"].to_dict()
              for policy in ("u-ones", "u-zeros", "u-ignore", "u-multiclass")}
    # 2 positive, 2 negative, 3 uncertain, 1 not mentioned (a negative under every policy)
    assert counts["u-ones"] == {"positive": 5, "negative": 3, "ignored": 0, "uncertain class": 0}
    assert counts["u-zeros"] == {"positive": 2, "negative": 6, "ignored": 0, "uncertain class": 0}
    assert counts["u-ignore"] == {"positive": 2, "negative": 3, "ignored": 3, "uncertain class": 0}
    assert counts["u-multiclass"] == {"positive": 2, "negative": 3, "ignored": 0, "uncertain class": 3}
    mixed = policy_counts(table, {"Edema": "u-multiclass", "Atelectasis": "u-ones"})
    assert list(mixed.index) == ["Edema", "Atelectasis"] and mixed.loc["Atelectasis", "positive"] == 5


def test_the_explorers_offer_their_controls(predictions: pd.DataFrame) -> None:
    box = threshold_explorer(predictions, ["Edema"], chosen=pd.Series({"Edema": 0.4}))  # as youden_thresholds gives
    controls = box.children[0].children
    assert isinstance(controls[1], widgets.FloatSlider) and controls[1].value == 0.5
    assert list(controls[0].options) == ["Edema"]
    table = pd.DataFrame({"path": ["a.png", "b.png"], "Edema": [1.0, -1.0]})
    menus = policy_explorer(table, ["Edema"], paper_choices={"Edema": "u-multiclass"}).children[0].children
    assert [m.value for m in menus] == ["u-ones"] and "u-multiclass" in menus[0].options
    matplotlib.pyplot.close("all")


@pytest.fixture(scope="module")
def templates() -> tuple[np.ndarray, np.ndarray]:
    return lung_templates()  # the 517 real lung masks, read once


@pytest.mark.parametrize("sign", ["effusion", "pneumothorax"])
def test_a_more_severe_sign_covers_more_of_the_same_patient(sign: str, templates) -> None:
    plain_low, low, low_mask = render_with_sign(sign, 0.3, templates=templates)
    plain_high, high, high_mask = render_with_sign(sign, 1.0, templates=templates)
    np.testing.assert_array_equal(plain_low, plain_high)  # the same patient, without the sign
    assert 0 < low_mask.sum() < high_mask.sum()
    change = np.abs(high.astype(float) - plain_high.astype(float))
    assert change[high_mask].mean() > 5 * change[~high_mask].mean()  # the sign changes the image where it was drawn


def test_a_small_effusion_is_not_drawn_on_a_frontal_view_and_bad_knobs_are_refused(templates) -> None:
    _, _, mask = render_with_sign("effusion", 0.1, templates=templates)  # small effusions: the lateral's sulcus only
    assert not mask.any()
    figure = sign_figure("effusion", 0.1, templates=templates)
    assert "(0.0% of the image)" in figure.texts[0].get_text() and len(figure.axes) == 3
    matplotlib.pyplot.close(figure)
    with pytest.raises(ValueError, match="sign 'effusions'"):
        render_with_sign("effusions", 0.5, templates=templates)
    with pytest.raises(ValueError, match=r"severity 0: expected a value in \(0, 1\]"):
        render_with_sign("effusion", 0, templates=templates)
