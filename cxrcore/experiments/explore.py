"""Explorers for the chapters: a knob (ipywidgets) and what it changes, each behind a function a chapter calls once.

Each explorer is two parts: a pure function of the knob's state that computes the numbers or draws the figure (what
the tests check), and a small widget that calls it on every change (`ipywidgets.interactive_output`). In the built
site the widgets' outputs are the ones of their default state, saved with the executed notebook.

* `threshold_explorer`: one run's test predictions of a finding at a decision threshold: confusion matrix,
  precision, recall, F1, and the operating point on the ROC curve beside the validation-chosen threshold;
* `policy_explorer`: how an uncertainty policy per finding turns a label table's values into positives, negatives,
  ignored labels and a third class;
* `cam_explorer`: a run, a finding, a test image and a map (CAM or Grad-CAM): the image with the drawn sign's
  outline where the synthetic site has one, the map over it, the label and the score;
* `sign_explorer`: the demo sites' renderer draws one sign at a chosen severity on a synthetic patient built on a
  real lung mask, beside the same patient without it;
* `counterfactual_explorer`: a test film with a chest drain beside the same film rendered without it, as a run sees
  them, their difference, and each model's pneumothorax score on both.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import ipywidgets as widgets
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from IPython.display import display
from matplotlib.figure import Figure
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support, roc_curve

from cxrcore.cam import class_activation_map, gradcam, overlay
from cxrcore.experiments import localisation
from cxrcore.findings import POLICIES, apply_policy
from cxrcore.metrics import score_column
from cxrcore.runner import Result, evaluation_dataset
from data_prep.synth.plan import make_sign
from data_prep.synth.render import render
from data_prep.synth.signs import SIGN_IDS
from data_prep.synth.styles import STYLES
from data_prep.synth.templates import lung_templates

INTERACTIVE_NOTE = "Interactive in JupyterLab: the built site shows the default setting."


def _show(figure: Figure) -> None:
    """Display a figure in the explorer's output area and close it (so that the cell does not show it twice)."""
    display(figure)
    plt.close(figure)


def _labelled(predictions: pd.DataFrame, finding: str) -> tuple[np.ndarray, np.ndarray]:
    """(labels, scores) of the images whose label of `finding` is known (0 or 1)."""
    known = predictions[finding].notna().to_numpy()
    return predictions[finding].to_numpy()[known].astype(int), predictions[score_column(finding)].to_numpy()[known]


def threshold_counts(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, float]:
    """Confusion counts, precision, recall, F1 and false-positive rate when score >= threshold is called positive."""
    called = (np.asarray(scores) >= threshold).astype(int)
    tn, fp, fn, tp = confusion_matrix(labels, called, labels=[0, 1]).ravel()
    precision, recall, f1, _ = precision_recall_fscore_support(labels, called, average="binary", zero_division=0)
    return {"TP": int(tp), "FP": int(fp), "FN": int(fn), "TN": int(tn), "precision": float(precision),
            "recall": float(recall), "F1": float(f1), "FPR": fp / (fp + tn) if fp + tn else float("nan")}


def threshold_figure(predictions: pd.DataFrame, finding: str, threshold: float,
                     chosen: float | None = None) -> Figure:
    """Confusion matrix at `threshold` and the ROC curve with that operating point (and the chosen threshold's)."""
    labels, scores = _labelled(predictions, finding)
    counts = threshold_counts(labels, scores, threshold)
    figure, (left, right) = plt.subplots(1, 2, figsize=(9, 3.6))
    matrix = np.array([[counts["TN"], counts["FP"]], [counts["FN"], counts["TP"]]])
    left.imshow(matrix, cmap="Blues")
    for (row, col), value in np.ndenumerate(matrix):
        left.text(col, row, str(value), ha="center", va="center", fontsize=12)
    left.set(xticks=[0, 1], xticklabels=["called negative", "called positive"], yticks=[0, 1],
             yticklabels=["negative", "positive"],
             title=f"threshold {threshold:.2f}: precision {counts['precision']:.2f}, recall {counts['recall']:.2f}, "
             f"F1 {counts['F1']:.2f}")
    left.title.set_fontsize(9)
    fpr, tpr, _ = roc_curve(labels, scores)
    right.plot(fpr, tpr, color="#1f4e79")
    right.plot([0, 1], [0, 1], ":", color="grey")
    right.plot(counts["FPR"], counts["recall"], "o", color="#c0392b", label=f"threshold {threshold:.2f}")
    if chosen is not None and np.isfinite(chosen):
        point = threshold_counts(labels, scores, chosen)
        right.plot(point["FPR"], point["recall"], "s", mfc="none", color="#117a65",
                   label=f"validation-chosen {chosen:.2f}")
    right.set(xlabel="false-positive rate", ylabel="true-positive rate (recall)", title=f"ROC curve: {finding}")
    right.legend(fontsize=8, loc="lower right")
    figure.suptitle(f"{finding} on {len(labels)} test images with a known label", fontsize=10)
    figure.tight_layout()
    return figure


def threshold_explorer(predictions: pd.DataFrame, findings: Sequence[str],
                       chosen: Mapping[str, float] | None = None) -> widgets.VBox:
    """A finding menu and a threshold slider over one run's test predictions (`threshold_figure` on each change);
    `chosen`: the validation-chosen threshold per finding, marked on the ROC curve."""
    chosen = {} if chosen is None else dict(chosen)  # a Series of thresholds too (tables.youden_thresholds)
    finding = widgets.Dropdown(options=list(findings), description="finding")
    threshold = widgets.FloatSlider(value=0.5, min=0.0, max=1.0, step=0.01, description="threshold",
                                    continuous_update=False)

    def show(finding: str, threshold: float) -> None:
        _show(threshold_figure(predictions, finding, threshold, chosen.get(finding)))

    box = widgets.VBox([widgets.HBox([finding, threshold]),
                        widgets.interactive_output(show, {"finding": finding, "threshold": threshold}),
                        widgets.HTML(f"<i>{INTERACTIVE_NOTE}</i>")])
    display(box)
    return box


def policy_counts(table: pd.DataFrame, policies: Mapping[str, str]) -> pd.DataFrame:
    """Finding x (positive, negative, ignored, uncertain class): training labels after each finding's policy
    (`cxrcore.findings.apply_policy`, one finding at a time, so the explorer may mix binary and 3-class policies)."""
    rows = {}
    for finding, policy in policies.items():
        targets, mask = apply_policy(table[[finding]].to_numpy(), policy, [finding], table["path"].tolist())
        counted = mask[:, 0] > 0
        rows[finding] = {"positive": int(((targets[:, 0] == 1) & counted).sum()),
                         "negative": int(((targets[:, 0] == 0) & counted).sum()),
                         "ignored": int((~counted).sum()), "uncertain class": int((targets[:, 0] == 2).sum())}
    return pd.DataFrame.from_dict(rows, orient="index")


def policy_figure(table: pd.DataFrame, policies: Mapping[str, str],
                  paper_choices: Mapping[str, str] | None = None) -> Figure:
    """Stacked bars of `policy_counts`, one per finding, each labelled with its policy (and a paper's choice)."""
    counts = policy_counts(table, policies)
    paper_choices = paper_choices or {}
    names = [f"{f}\n{p}" + (f" ({paper_choices[f]} in the paper)" if f in paper_choices else "")
             for f, p in policies.items()]
    figure, ax = plt.subplots(figsize=(8, 0.55 * len(counts) + 1.6))
    counts.set_axis(names).iloc[::-1].plot.barh(stacked=True, ax=ax,
                                                  color=["#c0392b", "#2e86c1", "#d5d8dc", "#f39c12"])
    ax.set(title=f"Training labels under each finding's policy ({len(table):,} images)", xlabel="images")
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    figure.tight_layout()
    return figure


def policy_explorer(table: pd.DataFrame, findings: Sequence[str], default: str = "u-ones",
                    paper_choices: Mapping[str, str] | None = None) -> widgets.VBox:
    """A policy menu per finding over a label table (`policy_figure` on each change)."""
    menus = {f: widgets.Dropdown(options=list(POLICIES), value=default, description=f,
                                 style={"description_width": "140px"}) for f in findings}

    def show(**chosen: str) -> None:
        _show(policy_figure(table, chosen, paper_choices))

    box = widgets.VBox([widgets.GridBox(list(menus.values()), layout=widgets.Layout(
                            grid_template_columns="repeat(2, 330px)")),
                        widgets.interactive_output(show, menus), widgets.HTML(f"<i>{INTERACTIVE_NOTE}</i>")])
    display(box)
    return box


def sign_of(finding: str) -> str | None:
    """The synthetic sign drawn for a finding ("Pleural Effusion" -> "effusion"), or None if none is drawn for it."""
    words = finding.lower().split()
    for name in ("_".join(words), words[-1]):
        if name in SIGN_IDS:
            return name
    return None


def cam_figure(result: Result, path: str, finding: str, method: str = "CAM", *, model=None) -> Figure:
    """One test image of a run: the grey image (the drawn sign outlined when the site recorded it) and the map of
    `finding` over it (`method`: "CAM" or "Grad-CAM"), titled with the image's label and the run's score."""
    findings = list(result.config["run"]["findings"])
    model = result.load_model() if model is None else model
    images = localisation.test_images(result, [path])  # (1, C, side, side)
    index = findings.index(finding)
    if method == "CAM":
        heat = class_activation_map(model, images, index)[0]
    elif method == "Grad-CAM":
        heat = gradcam(model, images, index)[0]
    else:
        raise ValueError(f"method {method!r}: expected 'CAM' or 'Grad-CAM'")
    row = result.predictions.set_index("path").loc[path]
    label = {1.0: "positive", 0.0: "negative"}.get(row[finding], "not scored")
    grey = images[0, 0].numpy()
    figure, (left, right) = plt.subplots(1, 2, figsize=(6.4, 3.5))
    left.imshow(grey, cmap="gray")
    sign, data_root = sign_of(finding), result.config["data_root"]
    if sign and localisation.has_sign_masks(data_root) and localisation.mask_file(data_root, path).is_file():
        mask = localisation.sign_mask(data_root, path, grey.shape[-1], sign)
        if mask.any():
            left.contour(mask, levels=[0.5], colors="yellow", linewidths=0.8)
        left.set_title(f"drawn {sign}: {'outlined' if mask.any() else 'none'}", fontsize=8)
    right.imshow(overlay(grey, heat))
    right.set_title(method, fontsize=8)
    for ax in (left, right):
        ax.set_xticks([])
        ax.set_yticks([])
    figure.suptitle(f"{finding}: label {label}, score {row[score_column(finding)]:.2f}\n{path}", fontsize=8)
    figure.tight_layout()
    return figure


def cam_explorer(results: Mapping[str, Result], findings: Sequence[str], n_images: int = 48) -> widgets.VBox:
    """Menus for a run, a finding and a map, and a slider over the first `n_images` test images of the first run
    (`cam_figure` on each change; each run's model is loaded once)."""
    models: dict[str, object] = {}
    paths = next(iter(results.values())).predictions["path"].head(n_images).tolist()
    run = widgets.Dropdown(options=list(results), description="run")
    finding = widgets.Dropdown(options=list(findings), description="finding")
    method = widgets.ToggleButtons(options=["CAM", "Grad-CAM"], description="map")
    image = widgets.IntSlider(value=0, min=0, max=len(paths) - 1, description="test image", continuous_update=False)

    def show(run: str, finding: str, method: str, image: int) -> None:
        if run not in models:  # load each run's model once, on first use
            models[run] = results[run].load_model()
        _show(cam_figure(results[run], paths[image], finding, method, model=models[run]))

    controls = {"run": run, "finding": finding, "method": method, "image": image}
    box = widgets.VBox([widgets.HBox([run, finding]), widgets.HBox([method, image]),
                        widgets.interactive_output(show, controls), widgets.HTML(f"<i>{INTERACTIVE_NOTE}</i>")])
    display(box)
    return box


Images = tuple[np.ndarray, np.ndarray, np.ndarray]


def render_with_sign(sign: str, severity: float, *, site: str = "chexpert", patient: int = 0, side: int = 256,
                     templates: tuple[np.ndarray, np.ndarray] | None = None) -> Images:
    """(image without the sign, image with it, mask of where it was drawn): one synthetic frontal PA image of
    patient number `patient` on a site's style, rendered twice from the same seeds (`data_prep.synth.render`);
    `templates`: `lung_templates()` (the real lung masks), read once by the caller when rendering many."""
    if sign not in SIGN_IDS:
        raise ValueError(f"sign {sign!r}: expected one of {', '.join(SIGN_IDS)}")
    if not 0 < severity <= 1:
        raise ValueError(f"severity {severity}: expected a value in (0, 1]")
    shapes, aspects = lung_templates() if templates is None else templates
    job = {"seed": 0, "site": site, "index": patient, "height": side, "width": side, "patient_number": patient,
           "study_number": patient, "sex": "F" if patient % 2 else "M", "age": 60.0, "projection": "PA",
           "view": "frontal"}
    placed = make_sign(np.random.default_rng(patient), sign, severity=severity)  # side and zone as the sites draw
    plain, _, _ = render({**job, "signs": []}, shapes, aspects)
    drawn, masks, _ = render({**job, "signs": [placed]}, shapes, aspects)
    return plain, drawn, masks[..., 0] == SIGN_IDS[sign]


def sign_figure(sign: str, severity: float, *, site: str = "chexpert", patient: int = 0,
                templates: tuple[np.ndarray, np.ndarray] | None = None) -> Figure:
    """The same synthetic patient without and with a sign at `severity`, and the sign's outline on the latter."""
    plain, drawn, mask = render_with_sign(sign, severity, site=site, patient=patient, templates=templates)
    change = np.abs(drawn.astype(float) - plain.astype(float))[mask].mean() if mask.any() else 0.0
    figure, axes = plt.subplots(1, 3, figsize=(9, 3.4))
    for ax, image, title in zip(axes, (plain, drawn, drawn), ("without", f"{sign}, severity {severity:.2f}",
                                                             "where it was drawn"), strict=True):
        ax.imshow(image, cmap="gray", vmin=0, vmax=255)
        ax.set(xticks=[], yticks=[], title=title)
    if mask.any():
        axes[2].contour(mask, levels=[0.5], colors="yellow", linewidths=0.8)
    figure.suptitle(f"{site} style, patient {patient}: the sign changes its pixels by {change:.1f} grey levels "
                    f"on average ({mask.mean():.1%} of the image)", fontsize=9)
    figure.tight_layout()
    return figure


def sign_explorer(signs: Sequence[str] = tuple(SIGN_IDS), default: str = "effusion") -> widgets.VBox:
    """Menus for a sign and a site style, sliders for its severity and the patient (`sign_figure` on each change)."""
    templates = lung_templates()  # the real lung masks, read once
    sign = widgets.Dropdown(options=list(signs), value=default, description="sign")
    site = widgets.Dropdown(options=list(STYLES), description="site style")
    severity = widgets.FloatSlider(value=0.3, min=0.05, max=1.0, step=0.05, description="severity",
                                   continuous_update=False)
    patient = widgets.IntSlider(value=0, min=0, max=20, description="patient", continuous_update=False)

    def show(sign: str, site: str, severity: float, patient: int) -> None:
        _show(sign_figure(sign, severity, site=site, patient=patient, templates=templates))

    controls = {"sign": sign, "site": site, "severity": severity, "patient": patient}
    box = widgets.VBox([widgets.HBox([sign, site]), widgets.HBox([severity, patient]),
                        widgets.interactive_output(show, controls), widgets.HTML(f"<i>{INTERACTIVE_NOTE}</i>")])
    display(box)
    return box


def counterfactual_figure(result: Result, counterfactual_manifest: str, pairs: pd.DataFrame, path: str,
                          finding: str = "Pneumothorax") -> Figure:
    """A test film and its counterfactual (the same film rendered without one sign) as `result`'s model sees them,
    their absolute difference, and each model's score of `finding` on both (`pairs`: one row per film, indexed by
    path: "counterfactual", the label, "<model>" and "<model>, drain removed" scores)."""
    row = pairs.loc[path]
    original = localisation.test_images(result, [path])[0, 0].numpy()
    dataset = evaluation_dataset(result, "test", counterfactual_manifest)
    index = {p: i for i, p in enumerate(dataset.manifest["path"])}
    without = dataset[index[row["counterfactual"]]]["image"][0].numpy()
    models = [c for c in pairs.columns if c not in ("counterfactual", finding) and not c.endswith("drain removed")]
    figure, axes = plt.subplots(1, 3, figsize=(9, 3.4))
    panels = (("the film", original, "gray"), ("the same film, drain removed", without, "gray"),
              ("what changed (absolute difference)", np.abs(original - without), "magma"))
    for ax, (title, image, cmap) in zip(axes, panels, strict=True):
        ax.imshow(image, cmap=cmap)
        ax.set_title(title, fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    label = {1.0: "positive", 0.0: "negative"}.get(row[finding], "not scored")
    scores = "; ".join(f"{m}: {row[m]:.2f} -> {row[f'{m}, drain removed']:.2f}" for m in models)
    figure.suptitle(f"{finding} {label}. Score with the drain -> without it. {scores}\n{path}", fontsize=8)
    figure.tight_layout()
    return figure


def counterfactual_explorer(result: Result, counterfactual_manifest: str, pairs: pd.DataFrame,
                            finding: str = "Pneumothorax") -> widgets.VBox:
    """A slider over the test films of `pairs` (positives first) and `counterfactual_figure` on each change."""
    paths = pairs.index.tolist()
    image = widgets.IntSlider(value=0, min=0, max=len(paths) - 1, description="film", continuous_update=False)

    def show(image: int) -> None:
        _show(counterfactual_figure(result, counterfactual_manifest, pairs, paths[image], finding))

    box = widgets.VBox([image, widgets.interactive_output(show, {"image": image}),
                        widgets.HTML(f"<i>{INTERACTIVE_NOTE}</i>")])
    display(box)
    return box
