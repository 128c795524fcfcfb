"""Plotting helpers for the chapters: prevalence, label values, co-occurrence, demographics, scores, CAM grids.

Each Axes function draws on `ax` (a new figure when None), titles and labels it, and returns the Axes. Inputs are the
tables of data_prep.stats / data_prep.labeler_eval / cxrcore.metrics, so the figures show exactly what the tables
hold. Nothing is read or written here.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from cxrcore.cam import overlay

LABEL_VALUES = ("positive", "uncertain", "negative", "not_mentioned")
LABEL_COLOURS = {"positive": "#c0392b", "uncertain": "#f39c12", "negative": "#2e86c1", "not_mentioned": "#d5d8dc"}


def _axes(ax: Axes | None, figsize: tuple[float, float]) -> Axes:
    """The given Axes, or the Axes of a new figure of `figsize` inches."""
    if ax is not None:
        return ax
    _, ax = plt.subplots(figsize=figsize)
    return ax


def grouped_barh(table: pd.DataFrame, ax: Axes | None = None, *, title: str, xlabel: str,
                 percent: bool = False) -> Axes:
    """Horizontal grouped bars: one group per row of `table`, one bar per column (legend = column names)."""
    ax = _axes(ax, (7, 0.35 * len(table) * max(1, len(table.columns)) ** 0.5 + 1.2))
    values = table * 100 if percent else table
    values.iloc[::-1].plot.barh(ax=ax, width=0.8)  # first row on top
    ax.set_title(title)
    ax.set_xlabel(xlabel + (" (%)" if percent else ""))
    ax.set_ylabel("")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(axis="x", alpha=0.3)
    return ax


def prevalence_bars(prevalence: pd.DataFrame, ax: Axes | None = None, *,
                    title: str = "Prevalence per finding") -> Axes:
    """Share of positive images per finding (rows) and dataset (columns), as grouped horizontal bars in %."""
    return grouped_barh(prevalence, ax, title=title, xlabel="images labelled positive", percent=True)


def label_composition(counts: pd.DataFrame, ax: Axes | None = None, *, title: str = "Label values per finding") -> Axes:
    """Stacked shares of positive / uncertain / negative / not mentioned per finding (a label_counts table)."""
    ax = _axes(ax, (7, 0.32 * len(counts) + 1.2))
    columns = [c for c in LABEL_VALUES if c in counts.columns]
    shares = counts.set_index("finding")[columns]
    shares = shares.div(shares.sum(axis=1), axis=0) * 100
    shares.iloc[::-1].plot.barh(stacked=True, ax=ax, width=0.8, color=[LABEL_COLOURS[c] for c in columns])
    ax.set_title(title)
    ax.set_xlabel("share of images (%)")
    ax.set_ylabel("")
    ax.set_xlim(0, 100)
    ax.legend([c.replace("_", " ") for c in columns], fontsize=8, ncols=len(columns), loc="upper center",
              bbox_to_anchor=(0.5, -0.12))
    return ax


def cooccurrence_heatmap(matrix: pd.DataFrame, ax: Axes | None = None, *, title: str = "Co-occurrence",
                         colorbar_label: str = "P(column positive | row positive)") -> Axes:
    """Heatmap of a (K, K) co-occurrence table (data_prep.stats.cooccurrence), annotated in % when conditional."""
    ax = _axes(ax, (0.5 * len(matrix) + 2.5, 0.45 * len(matrix) + 1.5))
    conditional = float(np.nanmax(matrix.to_numpy())) <= 1.0
    colorbar = {"label": colorbar_label + (" (%)" if conditional else "")}
    sns.heatmap(matrix * 100 if conditional else matrix, ax=ax, cmap="rocket_r", square=True, annot=True,
                fmt=".0f", annot_kws={"fontsize": 6}, cbar_kws=colorbar, vmin=0, vmax=100 if conditional else None)
    ax.set_title(title)
    ax.set_xlabel("finding (column)")
    ax.set_ylabel("finding (row)")
    ax.tick_params(labelsize=7)
    return ax


def age_histograms(tables: Mapping[str, pd.DataFrame], ax: Axes | None = None, *,
                   title: str = "Age distribution", bin_width: float = 2.0) -> Axes:
    """Density histograms (steps) of the `age` column of each named table, one line per dataset."""
    ax = _axes(ax, (6, 3.5))
    top = max(float(t["age"].max()) for t in tables.values())
    bins = np.arange(0, top + bin_width, bin_width)
    for name, table in tables.items():
        ax.hist(table["age"].dropna(), bins=bins, density=True, histtype="step", linewidth=1.5, label=name)
    ax.set_title(title)
    ax.set_xlabel("age (years)")
    ax.set_ylabel("density (per year)")
    ax.legend(fontsize=8)
    return ax


def category_shares(tables: Mapping[str, pd.DataFrame], column: str, ax: Axes | None = None, *,
                    title: str | None = None, order: Sequence[str] | None = None) -> Axes:
    """Grouped bars of the share (%) of each value of `column` (e.g. sex, projection) in each named table."""
    ax = _axes(ax, (5, 3.5))
    shares = pd.DataFrame({name: t[column].value_counts(normalize=True) * 100 for name, t in tables.items()}).fillna(0)
    if order is not None:
        shares = shares.reindex([v for v in order if v in shares.index])
    shares.plot.bar(ax=ax, rot=0, width=0.8)
    ax.set_title(title or f"{column.capitalize()} distribution")
    ax.set_xlabel(column)
    ax.set_ylabel("share of images (%)")
    ax.legend(fontsize=8)
    return ax


def images_per_patient(tables: Mapping[str, pd.DataFrame], ax: Axes | None = None, *,
                       title: str = "Images per patient", cap: int = 20) -> Axes:
    """Share of patients (%) with 1, 2, ..., `cap` or more images, per named table (one line each)."""
    ax = _axes(ax, (6, 3.5))
    for name, table in tables.items():
        sizes = table.groupby("patient_id").size().clip(upper=cap)
        shares = sizes.value_counts(normalize=True).reindex(range(1, cap + 1), fill_value=0) * 100
        ax.plot(shares.index, shares.to_numpy(), marker="o", markersize=3, label=name)
    ax.set_yscale("log")
    ticks = [1, *range(5, cap, 5), cap]
    ax.set_xticks(ticks, [*map(str, ticks[:-1]), f"{cap}+"])  # whole images
    ax.set_title(title)
    ax.set_xlabel(f"images per patient (last point: {cap} or more)")
    ax.set_ylabel("share of patients (%)")
    ax.legend(fontsize=8)
    return ax


def demographics_figure(tables: Mapping[str, pd.DataFrame], *, title: str = "Who is in the datasets") -> Figure:
    """Four panels: age histograms, sex shares, projection shares and images per patient."""
    figure, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    age_histograms(tables, axes[0, 0])
    category_shares(tables, "sex", axes[0, 1], title="Sex", order=["M", "F", "U"])
    category_shares(tables, "projection", axes[1, 0], title="Projection (lateral: unknown / LL / RL)")
    images_per_patient(tables, axes[1, 1])
    figure.suptitle(title)
    figure.tight_layout()
    return figure


def labeler_scores(scores: pd.DataFrame, metric: str = "f1", ax: Axes | None = None, *,
                   title: str | None = None) -> Axes:
    """Grouped bars of one metric per class (rows) and labeler (bars), from labeler_eval.evaluate_labelers()."""
    table = scores.pivot(index="class", columns="labeler", values=metric)
    table = table.reindex(index=list(dict.fromkeys(scores["class"])), columns=list(dict.fromkeys(scores["labeler"])))
    ax = grouped_barh(table, ax, title=title or f"Report labelers against MeSH: {metric}", xlabel=metric)
    ax.set_xlim(0, 1)
    return ax


def auroc_intervals(tables: Mapping[str, pd.DataFrame], ax: Axes | None = None, *,
                    title: str = "AUROC with 95% bootstrap interval") -> Axes:
    """AUROC points with [low, high] error bars per finding (rows of each table), one colour per named table."""
    names = list(tables)
    findings = list(dict.fromkeys(f for t in tables.values() for f in t.index))
    ax = _axes(ax, (7, 0.45 * len(findings) + 1.5))
    offsets = np.linspace(-0.15, 0.15, len(names)) if len(names) > 1 else np.zeros(1)
    positions = np.arange(len(findings))[::-1]  # first finding on top
    for offset, name in zip(offsets, names, strict=True):
        table = tables[name].reindex(findings)
        errors = np.vstack([table["auroc"] - table["low"], table["high"] - table["auroc"]])
        ax.errorbar(table["auroc"], positions + offset, xerr=errors, fmt="o", capsize=3, label=name)
    ax.axvline(0.5, color="grey", linestyle=":", linewidth=1)
    ax.set_yticks(positions, findings)
    ax.set_title(title)
    ax.set_xlabel("AUROC")
    ax.legend(fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    return ax


def mean_intervals(table: pd.DataFrame, ax: Axes | None = None, *, title: str, label: str = "variant",
                   markers: Mapping[str, str] | None = None, xlabel: str = "mean test AUROC") -> Axes:
    """One row per row of `table`: its mean_auroc with the [ci_low, ci_high] bar, labelled by its `label` column;
    `markers` adds other columns as hollow markers on the same row (column -> legend text)."""
    markers = markers or {}
    ax = _axes(ax, (7, 0.45 * len(table) + 1.4))
    positions = np.arange(len(table))[::-1]  # first row on top
    errors = np.vstack([table["mean_auroc"] - table["ci_low"], table["ci_high"] - table["mean_auroc"]])
    ax.errorbar(table["mean_auroc"], positions, xerr=errors, fmt="o", capsize=3, color="#1f4e79",
                label="per image, 95 % CI")
    for (column, text), shape in zip(markers.items(), "^sv", strict=False):
        ax.scatter(table[column], positions, marker=shape, facecolors="none", edgecolors="#c0392b", label=text)
    ax.set_yticks(positions, table[label])
    ax.set(title=title, xlabel=xlabel)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))  # beside the rows, never over them
    ax.grid(axis="x", alpha=0.3)
    return ax


def reliability_diagram(curves: Mapping[str, pd.DataFrame], ax: Axes | None = None, *, title: str) -> Axes:
    """Each curve's share positive against its mean score per score bin (marker area by the bin's labels), beside the
    diagonal a calibrated model would follow; curves: name -> frame with mean score, share positive, labels."""
    ax = _axes(ax, (5.5, 4.5))
    ax.plot([0, 1], [0, 1], ":", color="grey", label="calibrated")
    for (name, curve), marker in zip(curves.items(), "os^vD", strict=False):
        line, = ax.plot(curve["mean score"], curve["share positive"], label=name)
        ax.scatter(curve["mean score"], curve["share positive"], s=4 * np.sqrt(curve["labels"]), marker=marker,
                   color=line.get_color(), alpha=0.7)
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="mean score in the bin", ylabel="share of the bin's labels positive",
           title=title)
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(alpha=0.3)
    return ax


HISTORY_LABELS = {"loss": "training loss", "val_loss": "validation loss", "mean_auroc": "validation mean AUROC"}


def learning_curves(histories: Mapping[str, pd.DataFrame], metric: str, ax: Axes | None = None, *,
                    title: str | None = None, best_epochs: Mapping[str, int] | None = None) -> Axes:
    """One line per named run of a history column (cxrcore.train's table) against the epoch; rings mark the
    epoch each run kept (`best_epochs`)."""
    ax = _axes(ax, (5, 3.5))
    for name, history in histories.items():
        (line,) = ax.plot(history["epoch"], history[metric], marker="o", markersize=3, label=name)
        if best_epochs and name in best_epochs:
            kept = history[history["epoch"] == best_epochs[name]]
            ax.plot(kept["epoch"], kept[metric], "o", markersize=9, markerfacecolor="none", color=line.get_color())
    ax.set_title(title or HISTORY_LABELS.get(metric, metric))
    ax.set_xlabel("epoch")
    ax.set_ylabel(HISTORY_LABELS.get(metric, metric))
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return ax


def correlation_heatmap(matrix: pd.DataFrame, ax: Axes | None = None, *, title: str,
                        colorbar_label: str = "Spearman rank correlation") -> Axes:
    """Annotated heatmap of a symmetric (M, M) correlation table between models, lower triangle only."""
    ax = _axes(ax, (0.7 * len(matrix) + 3, 0.6 * len(matrix) + 1.5))
    upper = np.triu(np.ones(matrix.shape, dtype=bool), k=1)
    sns.heatmap(matrix, ax=ax, mask=upper, cmap="vlag", vmin=-1, vmax=1, annot=True, fmt=".2f", square=True,
                annot_kws={"fontsize": 7}, cbar_kws={"label": colorbar_label})
    ax.set_title(title)
    ax.set_xlabel("model")
    ax.set_ylabel("model")
    ax.tick_params(labelsize=7)
    return ax


def site_matrix(means: pd.DataFrame, ax: Axes | None = None, *, title: str,
                colorbar_label: str = "mean test AUROC") -> Axes:
    """Annotated heatmap of a model x test-site table of mean AUROCs (rows: models, columns: sites)."""
    ax = _axes(ax, (1.6 * means.shape[1] + 3.5, 0.5 * len(means) + 1.5))
    sns.heatmap(means.astype(float), ax=ax, cmap="viridis", annot=True, fmt=".3f", annot_kws={"fontsize": 8},
                cbar_kws={"label": colorbar_label})
    ax.set_title(title)
    ax.set_xlabel("tested on")
    ax.set_ylabel("model")
    ax.tick_params(labelsize=8)
    return ax


def size_sweep(table: pd.DataFrame, axes: Sequence[Axes], *, title: str = "Training-set size") -> Sequence[Axes]:
    """Two panels from a transfer-sizes table: each arm's mean test AUROC with its interval against the training
    images, and the pretrained-minus-scratch difference with its paired interval (zero line = no difference)."""
    left, right = axes
    for arm, rows in table.groupby("arm", sort=False):
        rows = rows.sort_values("train_images")
        errors = [rows["mean_auroc"] - rows["ci_low"], rows["ci_high"] - rows["mean_auroc"]]
        left.errorbar(rows["train_images"], rows["mean_auroc"], yerr=errors, marker="o", capsize=3, label=arm)
    diff = table.dropna(subset=["difference"]).sort_values("train_images")
    errors = [diff["difference"] - diff["difference_low"], diff["difference_high"] - diff["difference"]]
    right.errorbar(diff["train_images"], diff["difference"], yerr=errors, marker="o", capsize=3, color="#2e4053")
    right.axhline(0, color="grey", linewidth=0.8)
    for ax, ylabel, panel in ((left, "mean test AUROC (95% CI)", "each arm"),
                              (right, "pretrained minus scratch (paired 95% CI)", "the difference")):
        sizes = sorted(table["train_images"].unique())
        ax.set_xscale("log")
        ax.set_xticks(sizes, [f"{n:,}" for n in sizes])
        ax.minorticks_off()
        ax.set_xlabel("training images")
        ax.set_ylabel(ylabel)
        ax.set_title(f"{title}: {panel}")
        ax.grid(alpha=0.3)
    left.legend(fontsize=8)
    return axes


def cam_grid(images: np.ndarray | torch.Tensor, maps: Mapping[str, np.ndarray], masks: Sequence[np.ndarray],
             title: str, rows: int = 3, image_title: str = "image", row_labels: Sequence[str] = ()) -> Figure:
    """Figure: the first `rows` grey images (a region outlined when masks are given, each row named by `row_labels`
    when given), then each model's (or method's) CAM overlay."""
    columns = [image_title, *maps]
    figure, axes = plt.subplots(rows, len(columns), figsize=(1.55 * len(columns), 1.75 * rows), squeeze=False)
    for row in range(rows):
        axes[row, 0].imshow(images[row], cmap="gray")
        if row_labels:
            axes[row, 0].set_ylabel(row_labels[row], fontsize=8)
        if len(masks):
            axes[row, 0].contour(masks[row], levels=[0.5], colors="yellow", linewidths=0.8)
        for col, name in enumerate(maps, start=1):
            axes[row, col].imshow(overlay(images[row], maps[name][row]))
        for ax, heading in zip(axes[row], columns, strict=True):
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(heading, fontsize=7)
    figure.suptitle(title)
    figure.tight_layout()
    return figure


def differences_against_spread(differences: pd.Series, fold_means: pd.Series, ax: Axes | None = None, *,
                               title: str) -> Axes:
    """Each comparison's difference of mean AUROC (bars) against the split-to-split spread of one model's mean AUROC
    over resamplings: the band is +- (max - min) of `fold_means` around zero, the dotted lines +- one SD."""
    ax = _axes(ax, (7, 0.45 * len(differences) + 1.6))
    width, sd = float(fold_means.max() - fold_means.min()), float(fold_means.std(ddof=1))
    positions = np.arange(len(differences))[::-1]
    ax.axvspan(-width, width, color="#d5dbdb", label=f"split-to-split range ({len(fold_means)} resamplings)")
    for edge, label in ((-sd, "one SD between splits"), (sd, None)):
        ax.axvline(edge, color="grey", linestyle=":", linewidth=1, label=label)
    colours = ["#1f4e79" if abs(v) >= width else "#95a5a6" for v in differences]
    ax.barh(positions, differences.to_numpy(), color=colours, height=0.6)
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_yticks(positions, differences.index)
    ax.set(title=title, xlabel="difference of mean test AUROC")
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.grid(axis="x", alpha=0.3)
    return ax
