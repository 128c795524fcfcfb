"""Evaluation: per-class AUROC with patient-bootstrap CIs, DeLong's test, thresholds, rank correlation, paired tests.

Conventions. Labels `y_true` and scores `y_score` are (N, K) arrays or DataFrames (one column per finding) or 1-D
arrays for one class; scores are probabilities or logits (AUROC only needs their order). `mask` (N, K) is 1/True
where a label counts (as ManifestDataset's `mask`); NaN labels never count. Counted labels must be 0 or 1.

Predictions table (`predictions_frame`, read by `aggregate` and `summarize`): one row per image with id columns
(`patient_id`, `study_id`, `path`, ...), one label column per finding named as the finding (0/1, NaN where not
counted) and one score column per finding named `score_column(finding)` ("<finding>_score").
"""
from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping, Sequence
from typing import NamedTuple

import numpy as np
import pandas as pd
from scipy import stats
from sklearn.metrics import (
    accuracy_score,
    mean_absolute_error,
    precision_recall_curve,
    precision_recall_fscore_support,
    roc_auc_score,
    roc_curve,
)

__all__ = [
    "DeLongResult",
    "aggregate",
    "auroc_per_class",
    "averaged_f1",
    "bootstrap_auroc_ci",
    "delong_test",
    "fold_summary",
    "mae",
    "paired_tests",
    "patient_codes",
    "patient_weights",
    "precision_recall_f1",
    "predictions_frame",
    "resample_patients",
    "score_column",
    "spearman_matrix",
    "summarize",
    "thresholds",
]

SCORE_SUFFIX = "_score"
MEAN_ROW = "Mean"
ArrayLike = np.ndarray | pd.DataFrame | pd.Series | Sequence


def score_column(finding: str) -> str:
    """Name of a finding's score column in a predictions table."""
    return f"{finding}{SCORE_SUFFIX}"


# ----------------------------------------------------------------------------------------------- input checking


def _as_matrix(values: ArrayLike, what: str) -> np.ndarray:
    """Any (N,) or (N, K) array-like -> float (N, K) array."""
    array = np.asarray(values, dtype=float)
    if array.ndim == 1:
        array = array[:, None]
    if array.ndim != 2:
        raise ValueError(f"{what} must be 1-D or 2-D, got shape {array.shape}")
    return array


def _class_names(y_true: ArrayLike, names: Sequence[str] | None, k: int) -> list[str]:
    """Explicit names, else DataFrame columns / Series name, else 'class 0', 'class 1', ..."""
    if names is not None:
        found = [str(n) for n in names]
    elif isinstance(y_true, pd.DataFrame):
        found = [str(c) for c in y_true.columns]
    elif isinstance(y_true, pd.Series) and y_true.name is not None:
        found = [str(y_true.name)]
    else:
        found = [f"class {i}" for i in range(k)]
    if len(found) != k:
        raise ValueError(f"{len(found)} names given for {k} classes")
    return found


def _prepare(
    y_true: ArrayLike, y_score: ArrayLike, mask: ArrayLike | None, names: Sequence[str] | None,
    regression: Sequence[str] = (),
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Validated (labels, scores, counted, names): labels/scores (N, K) float, counted (N, K) bool; labels are 0 or
    1 where counted, except in the `regression` classes (e.g. age in years)."""
    labels, scores = _as_matrix(y_true, "y_true"), _as_matrix(y_score, "y_score")
    if labels.shape != scores.shape:
        raise ValueError(f"y_true shape {labels.shape} differs from y_score shape {scores.shape}")
    counted = ~np.isnan(labels)
    if mask is not None:
        mask_matrix = _as_matrix(mask, "mask")
        if mask_matrix.shape != labels.shape:
            raise ValueError(f"mask shape {mask_matrix.shape} differs from y_true shape {labels.shape}")
        counted &= mask_matrix > 0
    class_names = _class_names(y_true, names, labels.shape[1])
    for k, name in enumerate(class_names):
        if name in regression:
            continue
        bad_labels = np.setdiff1d(np.unique(labels[counted[:, k], k]), [0.0, 1.0])
        if bad_labels.size:
            raise ValueError(f"class {name!r}: labels must be 0 or 1 where counted, found {bad_labels.tolist()}")
    _check_scores(scores, counted, class_names)
    return labels, scores, counted, class_names


def _check_scores(scores: np.ndarray, counted: np.ndarray, names: Sequence[str], rows: Sequence | None = None) -> None:
    """Raise naming the finding, how many counted rows have a NaN/inf score and the first (rows: their paths)."""
    for k, name in enumerate(names):
        bad = np.flatnonzero(counted[:, k] & ~np.isfinite(scores[:, k]))
        if bad.size:
            first = [rows[i] for i in bad[:5]] if rows is not None else f"rows {bad[:10].tolist()}"
            raise ValueError(f"finding {name!r} (score column {k}): {bad.size} of {int(counted[:, k].sum())} counted "
                             f"rows have a NaN/inf score, first {first}; scores must be finite: find those images "
                             "(cxrcore.train.predict names the paths of images with NaN/inf scores)")


def _warn_undefined(name: str, labels: np.ndarray) -> None:
    """AUROC needs both label values: say which class and what it had."""
    values = np.unique(labels).tolist()
    warnings.warn(f"AUROC undefined for {name!r}: counted labels {values} (n={labels.size}); reported as NaN",
                  UserWarning, stacklevel=3)


# ------------------------------------------------------------------------------------------------------ AUROC


def auroc_per_class(
    y_true: ArrayLike, y_score: ArrayLike, mask: ArrayLike | None = None, names: Sequence[str] | None = None
) -> pd.Series:
    """AUROC of each class over its counted labels (sklearn); NaN with a warning where only one label value occurs."""
    labels, scores, counted, class_names = _prepare(y_true, y_score, mask, names)
    values = []
    for k, name in enumerate(class_names):
        y, s = labels[counted[:, k], k], scores[counted[:, k], k]
        if np.unique(y).size < 2:
            _warn_undefined(name, y)
            values.append(np.nan)
        else:
            values.append(roc_auc_score(y, s))
    return pd.Series(values, index=class_names, name="auroc", dtype=float)


class WeightedAUROC:
    """AUROC of one class under per-image integer weights (= AUROC of the data with rows repeated), O(N) per call:
    a patient bootstrap's draw is one of `patient_weights(groups, n_boot, seed)`."""

    def __init__(self, labels: np.ndarray, scores: np.ndarray) -> None:
        self.positive = labels.astype(float)
        # Tied scores share a group: a positive/negative pair in one group counts 1/2, as in roc_auc_score.
        _, self.group = np.unique(scores, return_inverse=True)
        self.n_groups = int(self.group.max()) + 1 if scores.size else 0

    def __call__(self, weights: np.ndarray) -> float:
        pos = np.bincount(self.group, weights=weights * self.positive, minlength=self.n_groups)
        neg = np.bincount(self.group, weights=weights * (1.0 - self.positive), minlength=self.n_groups)
        negatives_below = np.cumsum(neg) - neg
        pairs = pos.sum() * neg.sum()
        return float(np.sum(pos * (negatives_below + 0.5 * neg)) / pairs) if pairs > 0 else np.nan


def patient_codes(groups: ArrayLike) -> tuple[np.ndarray, int]:
    """(N,) patient index 0..P-1 of each image (in order of first appearance) and P; a missing id is an error."""
    codes, uniques = pd.factorize(pd.Series(np.asarray(groups, dtype=object)), use_na_sentinel=True)
    if (codes < 0).any():
        raise ValueError(f"missing patient id at rows {np.flatnonzero(codes < 0)[:10].tolist()}")
    return codes, len(uniques)


def resample_patients(groups: ArrayLike, rng: np.random.Generator) -> np.ndarray:
    """One cluster-bootstrap draw: sample patients with replacement and return the indices of all their images."""
    codes, n_patients = patient_codes(groups)
    order = np.argsort(codes, kind="stable")  # image indices grouped by patient
    sizes = np.bincount(codes, minlength=n_patients)
    starts = np.cumsum(sizes) - sizes
    drawn = rng.integers(0, n_patients, size=n_patients)  # (P,) patients, with replacement
    counts = sizes[drawn]
    offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    return order[np.repeat(starts[drawn], counts) + offsets]


def patient_weights(groups: ArrayLike, n_boot: int, rng: np.random.Generator | int = 0) -> Iterator[np.ndarray]:
    """n_boot patient-bootstrap draws, each as (N,) image weights: how often `resample_patients` drew each image;
    rng is a seed, or a Generator to continue (the draws of one seed are the same wherever they are taken)."""
    rng = np.random.default_rng(rng)  # default_rng returns a Generator unchanged
    codes, n_patients = patient_codes(groups)
    for _ in range(n_boot):
        drawn = rng.integers(0, n_patients, size=n_patients)  # the draw resample_patients makes
        yield np.bincount(drawn, minlength=n_patients)[codes].astype(float)


def bootstrap_auroc_ci(
    y_true: ArrayLike,
    y_score: ArrayLike,
    groups: ArrayLike,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
    mask: ArrayLike | None = None,
    *,
    names: Sequence[str] | None = None,
    include_mean: bool = False,
) -> pd.DataFrame:
    """Per-class AUROC with a percentile bootstrap CI that resamples patients (all images of a drawn patient).

    groups: (N,) patient id of each image. Images of one patient are correlated, so resampling images would
    understate the uncertainty. Columns: auroc, low, high, n_pos, n_neg, n_boot (draws where AUROC was defined).
    include_mean adds a row "Mean": the mean AUROC over the classes with a defined AUROC, with its own CI.
    """
    labels, scores, counted, class_names = _prepare(y_true, y_score, mask, names)
    if len(np.asarray(groups)) != labels.shape[0]:
        raise ValueError(f"groups has {len(np.asarray(groups))} entries for {labels.shape[0]} images")
    if not 0 < alpha < 1 or n_boot < 1:
        raise ValueError(f"need 0 < alpha < 1 and n_boot >= 1, got alpha={alpha}, n_boot={n_boot}")
    point = auroc_per_class(labels, scores, counted, class_names).to_numpy()
    aucs = [WeightedAUROC(labels[counted[:, k], k], scores[counted[:, k], k]) for k in range(len(class_names))]
    draws = np.full((n_boot, len(class_names)), np.nan)
    for b, weights in enumerate(patient_weights(groups, n_boot, seed)):
        for k, auc in enumerate(aucs):
            if not np.isnan(point[k]):
                draws[b, k] = auc(weights[counted[:, k]])
    table = pd.DataFrame(
        {
            "auroc": point,
            "n_pos": [int(labels[counted[:, k], k].sum()) for k in range(len(class_names))],
            "n_neg": [int((labels[counted[:, k], k] == 0).sum()) for k in range(len(class_names))],
        },
        index=pd.Index(class_names, name="finding"),
    )
    if include_mean:
        defined = ~np.isnan(point)
        mean_draws = np.nanmean(draws[:, defined], axis=1) if defined.any() else np.full(n_boot, np.nan)
        draws = np.column_stack([draws, mean_draws])
        mean_row = pd.DataFrame({"auroc": [np.nanmean(point) if defined.any() else np.nan],
                                 "n_pos": [table["n_pos"].sum()], "n_neg": [table["n_neg"].sum()]}, index=[MEAN_ROW])
        table = pd.concat([table, mean_row]).rename_axis("finding")
    return _with_percentiles(table, draws, alpha)


def bootstrap_mean_difference(
    y_true: ArrayLike,
    score_a: ArrayLike,
    score_b: ArrayLike,
    groups: ArrayLike,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
    mask: ArrayLike | None = None,
) -> dict[str, float]:
    """Mean AUROC of model A minus model B over the classes both define, on the same images, with a paired
    patient-bootstrap percentile CI (each draw resamples patients once and scores both models on it).

    Returns {"difference", "low", "high", "n_boot"}; pairing removes the shared difficulty of the drawn patients,
    so this interval is narrower than the two models' own intervals suggest.
    """
    labels, scores_a, counted, names = _prepare(y_true, score_a, mask, None)
    _, scores_b, _, _ = _prepare(y_true, score_b, mask, names)
    if len(np.asarray(groups)) != labels.shape[0]:
        raise ValueError(f"groups has {len(np.asarray(groups))} entries for {labels.shape[0]} images")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # a class without both label values is left out below
        defined = auroc_per_class(labels, scores_a, counted, names).notna().to_numpy()
    if not defined.any():
        raise ValueError("no class has both positive and negative labels: the AUROC difference is undefined")
    pairs = [(WeightedAUROC(labels[counted[:, k], k], scores_a[counted[:, k], k]),
              WeightedAUROC(labels[counted[:, k], k], scores_b[counted[:, k], k])) for k in np.flatnonzero(defined)]
    columns = [counted[:, k] for k in np.flatnonzero(defined)]

    def mean_difference(weights: np.ndarray) -> float:
        values = [(a(weights[c]), b(weights[c])) for (a, b), c in zip(pairs, columns, strict=True)]
        return float(np.nanmean([a - b for a, b in values]))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a draw where no class is defined gives NaN
        draws = np.array([mean_difference(weights) for weights in patient_weights(groups, n_boot, seed)])
    draws = draws[~np.isnan(draws)]
    low, high = np.percentile(draws, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return {"difference": mean_difference(np.ones(labels.shape[0])), "low": float(low), "high": float(high),
            "n_boot": int(draws.size)}


def _with_percentiles(table: pd.DataFrame, draws: np.ndarray, alpha: float) -> pd.DataFrame:
    """Add low/high percentile bounds and the number of defined draws to a per-class table."""
    valid = (~np.isnan(draws)).sum(axis=0)
    low, high = np.full(draws.shape[1], np.nan), np.full(draws.shape[1], np.nan)
    for k in np.flatnonzero(valid):
        low[k], high[k] = np.percentile(draws[~np.isnan(draws[:, k]), k], [100 * alpha / 2, 100 * (1 - alpha / 2)])
        if valid[k] < 0.95 * draws.shape[0]:
            warnings.warn(f"{table.index[k]!r}: AUROC undefined in {draws.shape[0] - valid[k]} of {draws.shape[0]} "
                          f"bootstrap draws (too few positives or negatives); CI from the rest", UserWarning,
                          stacklevel=3)
    table = table.assign(low=low, high=high, n_boot=valid)
    return table[["auroc", "low", "high", "n_pos", "n_neg", "n_boot"]]


# ------------------------------------------------------------------------------------------------------ DeLong


class DeLongResult(NamedTuple):
    """AUROCs of two scores on the same cases, DeLong's z statistic and two-sided p-value."""

    auc_a: float
    auc_b: float
    z: float
    p: float


def delong_test(y_true: ArrayLike, score_a: ArrayLike, score_b: ArrayLike,
                groups: ArrayLike | None = None) -> DeLongResult:
    """DeLong et al. (1988) test of two correlated AUROCs on one test set (fast midrank form of Sun & Xu, 2014);
    with `groups` (N,) patient ids, Obuchowski's (1997) clustered variance: a patient's images are not independent."""
    labels = np.asarray(y_true, dtype=float).ravel()
    scores = np.vstack([np.asarray(score_a, dtype=float).ravel(), np.asarray(score_b, dtype=float).ravel()])
    if scores.shape[1] != labels.size:
        raise ValueError(f"{labels.size} labels but scores of length {scores.shape[1]}")
    if not np.isin(labels, [0.0, 1.0]).all() or not np.isfinite(scores).all():
        raise ValueError("delong_test needs 0/1 labels and finite scores (mask out uncounted rows first)")
    positive = labels == 1
    m, n = int(positive.sum()), int((~positive).sum())
    if m < 2 or n < 2:
        raise ValueError(f"delong_test needs at least 2 positives and 2 negatives, got {m} and {n}")
    pos_scores, neg_scores = scores[:, positive], scores[:, ~positive]  # (2, m), (2, n)
    rank_pos = stats.rankdata(pos_scores, axis=1)
    rank_neg = stats.rankdata(neg_scores, axis=1)
    rank_all = stats.rankdata(np.hstack([pos_scores, neg_scores]), axis=1)  # midranks: ties count 1/2
    aucs = rank_all[:, :m].sum(axis=1) / (m * n) - (m + 1) / (2 * n)
    v_pos = (rank_all[:, :m] - rank_pos) / n  # (2, m) structural components of the positives
    v_neg = 1.0 - (rank_all[:, m:] - rank_neg) / m  # (2, n) structural components of the negatives
    if groups is None:
        covariance = np.cov(v_pos) / m + np.cov(v_neg) / n  # (2, 2)
    else:
        if len(np.asarray(groups)) != labels.size:
            raise ValueError(f"groups has {len(np.asarray(groups))} entries for {labels.size} images")
        covariance = _clustered_covariance(v_pos, v_neg, aucs, patient_codes(groups)[0], positive)
    variance = covariance[0, 0] + covariance[1, 1] - 2 * covariance[0, 1]
    difference = aucs[0] - aucs[1]
    if variance <= 0:
        z = 0.0 if difference == 0 else float(np.sign(difference) * np.inf)
    else:
        z = float(difference / np.sqrt(variance))
    return DeLongResult(float(aucs[0]), float(aucs[1]), z, float(2 * stats.norm.sf(abs(z))))


def _clustered_covariance(v_pos: np.ndarray, v_neg: np.ndarray, aucs: np.ndarray, codes: np.ndarray,
                          positive: np.ndarray) -> np.ndarray:
    """(2, 2) covariance of two AUROCs with patients as clusters (Obuchowski 1997: the S10, S01 and S11 terms, and
    their form across two tests): per patient, the sum of its images' structural components minus its image count
    times the AUROC."""
    n_patients = int(codes.max()) + 1
    pos_codes, neg_codes = codes[positive], codes[~positive]
    m, n = pos_codes.size, neg_codes.size
    m_i = np.bincount(pos_codes, minlength=n_patients)  # (P,) positive images of each patient
    n_i = np.bincount(neg_codes, minlength=n_patients)
    pos_patients, neg_patients = int((m_i > 0).sum()), int((n_i > 0).sum())
    if pos_patients < 2 or neg_patients < 2:
        raise ValueError(f"the clustered test needs positives from at least 2 patients and negatives from at least 2, "
                         f"got {pos_patients} and {neg_patients}")
    a = np.stack([np.bincount(pos_codes, weights=v, minlength=n_patients) for v in v_pos]) - np.outer(aucs, m_i)
    b = np.stack([np.bincount(neg_codes, weights=v, minlength=n_patients) for v in v_neg]) - np.outer(aucs, n_i)
    cross = a @ b.T  # (2, 2) sums over patients of a_r * b_s
    return (pos_patients / (pos_patients - 1) * (a @ a.T) / m**2
            + neg_patients / (neg_patients - 1) * (b @ b.T) / n**2
            + n_patients / (n_patients - 1) * (cross + cross.T) / (m * n))


# ------------------------------------------------------------------------------------------- predictions table


def predictions_frame(
    y_true: ArrayLike,
    y_score: ArrayLike,
    findings: Sequence[str],
    ids: pd.DataFrame | Mapping[str, Sequence] | None = None,
    mask: ArrayLike | None = None,
    regression: Sequence[str] = (),
) -> pd.DataFrame:
    """Per-image predictions table: id columns, label columns (NaN where not counted) and `<finding>_score` columns
    (for `regression` targets such as age, the value and the predicted value)."""
    labels, scores, counted, names = _prepare(y_true, y_score, mask, list(findings), regression)
    table = pd.DataFrame(ids).reset_index(drop=True) if ids is not None else pd.DataFrame(index=range(len(labels)))
    if len(table) != len(labels):
        raise ValueError(f"ids has {len(table)} rows for {len(labels)} predictions")
    for k, name in enumerate(names):
        table[name] = np.where(counted[:, k], labels[:, k], np.nan)
        table[score_column(name)] = scores[:, k]
    return table


def _findings_in(df: pd.DataFrame, findings: Sequence[str] | None) -> list[str]:
    """Findings with both a label and a score column; an error naming what is missing."""
    if findings is None:
        findings = [c[: -len(SCORE_SUFFIX)] for c in df.columns if c.endswith(SCORE_SUFFIX)]
    missing = [c for f in findings for c in (f, score_column(f)) if c not in df.columns]
    if missing or not findings:
        raise ValueError(f"predictions table lacks columns {missing or 'for any finding'}; has {list(df.columns)}")
    return list(findings)


def aggregate(
    df: pd.DataFrame, by: str = "patient_id", how: str = "mean", findings: Sequence[str] | None = None
) -> pd.DataFrame:
    """Patient- or study-level predictions (paper 002 scores patients): scores by mean or max, labels by max.

    A patient (study) is positive for a finding if any of its counted image labels is; NaN labels are ignored.
    Study ids are taken within patients (CheXpert's `study1` repeats across patients). Adds `n_images`.
    """
    if by not in ("patient_id", "study_id") or how not in ("mean", "max"):
        raise ValueError(f"by must be patient_id|study_id and how mean|max, got by={by!r}, how={how!r}")
    names = _findings_in(df, findings)
    keys = ["patient_id"] if by == "patient_id" else [c for c in ("patient_id", "study_id") if c in df.columns]
    if by not in df.columns or "patient_id" not in keys:
        raise ValueError(f"predictions table needs column(s) {['patient_id', by]}; has {list(df.columns)}")
    rules = {f: "max" for f in names} | {score_column(f): how for f in names}
    grouped = df.groupby(keys, sort=True, dropna=False)
    result = grouped.agg(rules)
    result.insert(0, "n_images", grouped.size())
    return result.reset_index()


# ------------------------------------------------------------------------------------ thresholds and F1 (paper 003)


def _threshold_one(labels: np.ndarray, scores: np.ndarray, method: str) -> float:
    """One class's operating threshold; a score >= threshold predicts positive."""
    if method == "0.5":
        return 0.5
    if np.unique(labels).size < 2:
        return np.nan
    if method == "youden":
        fpr, tpr, cuts = roc_curve(labels, scores, drop_intermediate=False)
        return float(cuts[int(np.argmax(tpr - fpr))])  # first maximum = the highest threshold among ties
    precision, recall, cuts = precision_recall_curve(labels, scores)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    return float(cuts[int(np.argmax(f1[:-1]))])


def thresholds(
    y_true: ArrayLike,
    y_score: ArrayLike,
    method: str = "0.5",
    mask: ArrayLike | None = None,
    names: Sequence[str] | None = None,
) -> float | pd.Series:
    """Decision threshold per class: fixed 0.5, Youden's J = TPR - FPR maximized, or F1 maximized.

    Choose thresholds on validation data and apply them to the test set (choosing on the test set flatters it).
    Returns a float for 1-D input, a Series per class otherwise; NaN (with a warning) where a class has one label.
    """
    if method not in ("0.5", "youden", "f1"):
        raise ValueError(f"method must be '0.5', 'youden' or 'f1', got {method!r}")
    labels, scores, counted, class_names = _prepare(y_true, y_score, mask, names)
    cuts = []
    for k, name in enumerate(class_names):
        y = labels[counted[:, k], k]
        cut = _threshold_one(y, scores[counted[:, k], k], method)
        if np.isnan(cut):
            warnings.warn(f"{method} threshold undefined for {name!r}: one label value", UserWarning, stacklevel=2)
        cuts.append(cut)
    if np.asarray(y_true).ndim == 1:
        return cuts[0]
    return pd.Series(cuts, index=class_names, name="threshold", dtype=float)


def precision_recall_f1(
    y_true: ArrayLike,
    y_score: ArrayLike,
    threshold_method: str | float | Mapping[str, float] | pd.Series = "0.5",
    mask: ArrayLike | None = None,
    names: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Per-class precision, recall, F1 at a threshold: method name, one number, or per-class values from validation."""
    labels, scores, counted, class_names = _prepare(y_true, y_score, mask, names)
    if isinstance(threshold_method, str):
        cuts = thresholds(labels, scores, threshold_method, counted, class_names)  # 2-D input: a Series
    elif np.isscalar(threshold_method):
        cuts = pd.Series(float(threshold_method), index=class_names)
    else:
        cuts = pd.Series(threshold_method, dtype=float)
        missing = [n for n in class_names if n not in cuts.index]
        if missing:
            raise ValueError(f"no threshold given for {missing}")
    rows = []
    for k, name in enumerate(class_names):
        y, s, cut = labels[counted[:, k], k], scores[counted[:, k], k], float(cuts[name])
        if np.isnan(cut) or y.size == 0:
            rows.append((cut, np.nan, np.nan, np.nan, int(y.sum()), y.size))
            continue
        p, r, f, _ = precision_recall_fscore_support(y, s >= cut, average="binary", zero_division=0)
        rows.append((cut, p, r, f, int(y.sum()), y.size))
    columns = ["threshold", "precision", "recall", "f1", "support", "n"]
    return pd.DataFrame(rows, columns=columns, index=pd.Index(class_names, name="finding"))


AVERAGES = ("micro", "macro", "weighted", "samples")  # paper 003's Tables 1-4 report all four


def averaged_f1(
    y_true: ArrayLike, y_score: ArrayLike, cuts: float | Mapping[str, float] | pd.Series = 0.5,
    names: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Multi-label precision, recall and F1 averaged four ways (scikit-learn's micro, macro, weighted by support,
    per sample) at one threshold or per-class thresholds, and the subset accuracy (every label of an image right).

    Rows: the averages, then "subset accuracy" (in the f1 column). Every label must be known (no NaN): an average
    over images needs each image's full label set."""
    labels, scores, counted, class_names = _prepare(y_true, y_score, None, names)
    unknown = [name for k, name in enumerate(class_names) if not counted[:, k].all()]
    if unknown:
        raise ValueError(f"averaged_f1 needs every label known; missing labels for {unknown}")
    per_class = pd.Series(cuts, index=class_names, dtype=float) if np.isscalar(cuts) else pd.Series(cuts, dtype=float)
    missing = [n for n in class_names if n not in per_class.index]
    if missing:
        raise ValueError(f"no threshold given for {missing}")
    predicted = (scores >= per_class[class_names].to_numpy()).astype(int)  # (N, K)
    truth = labels.astype(int)
    rows = {average: precision_recall_fscore_support(truth, predicted, average=average, zero_division=0)[:3]
            for average in AVERAGES}
    table = pd.DataFrame(rows, index=["precision", "recall", "f1"]).T
    table.loc["subset accuracy"] = [np.nan, np.nan, accuracy_score(truth, predicted)]
    return table.rename_axis("average")


# --------------------------------------------------------------------------------- comparisons between models


def spearman_matrix(preds: Mapping[str, ArrayLike], by_class: bool = False) -> pd.DataFrame:
    """Spearman rank correlation between models' predictions on the same images (paper 001, Table 4).

    preds: model name -> (N,) or (N, K) scores. By default all scores are flattened into one vector per model;
    by_class=True correlates each class separately and averages the K matrices.
    """
    names = list(preds)
    matrices = [_as_matrix(preds[n], f"predictions of {n!r}") for n in names]
    if not names or any(m.shape != matrices[0].shape for m in matrices):
        shapes = {name: matrix.shape for name, matrix in zip(names, matrices, strict=True)}
        raise ValueError(f"need predictions of equal shape, got {shapes}")
    columns = range(matrices[0].shape[1]) if by_class else [slice(None)]
    per_class = [_spearman_of([m[:, c].ravel() for m in matrices]) for c in columns]
    return pd.DataFrame(np.mean(per_class, axis=0), index=names, columns=names)


def _spearman_of(vectors: list[np.ndarray]) -> np.ndarray:
    """Spearman correlation matrix of equally long vectors (scipy returns a scalar for two)."""
    if len(vectors) == 1:
        return np.ones((1, 1))
    rho = stats.spearmanr(np.column_stack(vectors)).statistic
    return np.array([[1.0, rho], [rho, 1.0]]) if np.ndim(rho) == 0 else np.asarray(rho)


def paired_tests(auc_a: ArrayLike, auc_b: ArrayLike, alternative: str = "two-sided",
                 wilcoxon_method: str = "auto") -> dict[str, float]:
    """Paired t-test and Wilcoxon signed-rank test of two models' AUROCs over the same classes (paper 000).

    Series are aligned on their index; pairs with a NaN are left out with a warning that names them.
    `alternative` ("two-sided", "greater": a > b, "less") and `wilcoxon_method` ("auto", "exact", "approx") are
    scipy's; paper 000's reported p-values are one-sided normal-approximation ones ("greater", "approx").
    Returns n, mean_diff (a - b), t, t_p, wilcoxon, wilcoxon_p.
    """
    if isinstance(auc_a, pd.Series) and isinstance(auc_b, pd.Series):
        a, b = auc_a.align(auc_b, join="outer")
    else:
        a, b = pd.Series(np.asarray(auc_a, dtype=float)), pd.Series(np.asarray(auc_b, dtype=float))
        if len(a) != len(b):
            raise ValueError(f"{len(a)} AUROCs against {len(b)}")
    incomplete = a.isna() | b.isna()
    if incomplete.any():
        warnings.warn(f"paired tests leave out {list(a.index[incomplete])} (NaN in one model)", UserWarning,
                      stacklevel=2)
    a, b = a[~incomplete].to_numpy(float), b[~incomplete].to_numpy(float)
    if a.size < 2:
        raise ValueError(f"paired tests need at least 2 complete pairs, got {a.size}")
    t_test = stats.ttest_rel(a, b, alternative=alternative)
    signed_rank = stats.wilcoxon(a, b, alternative=alternative, method=wilcoxon_method)
    return {"n": int(a.size), "mean_diff": float(np.mean(a - b)), "t": float(t_test.statistic),
            "t_p": float(t_test.pvalue), "wilcoxon": float(signed_rank.statistic),
            "wilcoxon_p": float(signed_rank.pvalue)}


def fold_summary(table: pd.DataFrame, value: str = "auroc", by: str = "finding", fold: str = "fold") -> pd.DataFrame:
    """Paper 001's summary of repeated patient-wise resamplings: per `by` (e.g. finding), the mean, standard deviation
    (ddof 1), minimum and maximum of `value` over the folds, and the number of folds; every `by` must have a value
    in every fold (the error names the gaps)."""
    missing = [c for c in (value, by, fold) if c not in table.columns]
    if missing:
        raise ValueError(f"fold_summary: columns {missing} missing; have {list(table.columns)}")
    wide = table.pivot(index=by, columns=fold, values=value)
    gaps = wide.isna().stack()
    if gaps.any():
        raise ValueError(f"fold_summary: no {value} for {gaps[gaps].index.tolist()[:5]} ({by}, {fold})")
    if wide.shape[1] < 2:
        raise ValueError(f"fold_summary needs at least 2 folds, got {wide.shape[1]}")
    summary = pd.DataFrame({"mean": wide.mean(axis=1), "std": wide.std(axis=1, ddof=1), "min": wide.min(axis=1),
                            "max": wide.max(axis=1), "folds": wide.shape[1]})
    return summary.reindex(pd.unique(table[by]))


def mae(y: ArrayLike, y_hat: ArrayLike) -> float:
    """Mean absolute error (e.g. predicted age in years, paper 001), via sklearn."""
    truth, predicted = np.asarray(y, dtype=float).ravel(), np.asarray(y_hat, dtype=float).ravel()
    if truth.shape != predicted.shape or not (np.isfinite(truth).all() and np.isfinite(predicted).all()):
        raise ValueError(f"mae needs finite arrays of equal length, got {truth.size} and {predicted.size}")
    return float(mean_absolute_error(truth, predicted))


def target_metrics(y_true: ArrayLike, y_score: ArrayLike, mask: ArrayLike | None, names: Sequence[str],
                   regression: Sequence[str] = ()) -> tuple[pd.Series, pd.Series]:
    """(AUROC of each classified target, MAE of each `regression` target) over their counted rows; an undefined
    AUROC (one label value) or a regression target with no counted row is NaN."""
    labels, scores, counted, names = _prepare(y_true, y_score, mask, list(names), regression)
    classified = [k for k, name in enumerate(names) if name not in regression]
    aurocs = auroc_per_class(np.where(counted, labels, np.nan)[:, classified], scores[:, classified],
                             names=[names[k] for k in classified]) if classified else pd.Series(dtype=float)
    errors = {names[k]: mae(labels[counted[:, k], k], scores[counted[:, k], k]) if counted[:, k].any() else np.nan
              for k, name in enumerate(names) if name in regression}
    return aurocs, pd.Series(errors, dtype=float, name="mae")


# ---------------------------------------------------------------------------------------------- chapter table


def summarize(
    predictions_df: pd.DataFrame,
    findings: Sequence[str] | None = None,
    *,
    level: str = "image",
    how: str = "mean",
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> pd.DataFrame:
    """The chapter table: per-finding AUROC with patient-bootstrap CI, plus the mean AUROC, from a predictions table.

    level: "image" (every image), "study" or "patient" (predictions aggregated first with `how`, see `aggregate`).
    Adds a text column "AUROC (95% CI)" ready to print.
    """
    if level not in ("image", "study", "patient"):
        raise ValueError(f"level must be image|study|patient, got {level!r}")
    names = _findings_in(predictions_df, findings)
    if "patient_id" not in predictions_df.columns:
        raise ValueError("predictions table needs a patient_id column (the bootstrap resamples patients)")
    scores = predictions_df[[score_column(f) for f in names]].to_numpy(dtype=float)
    rows = predictions_df["path"].tolist() if "path" in predictions_df.columns else None
    _check_scores(scores, predictions_df[names].notna().to_numpy(), names, rows)  # per image, before aggregating
    table = predictions_df if level == "image" else aggregate(predictions_df, f"{level}_id", how, names)
    result = bootstrap_auroc_ci(
        table[names], table[[score_column(f) for f in names]].to_numpy(), table["patient_id"].to_numpy(),
        n_boot=n_boot, alpha=alpha, seed=seed, names=names, include_mean=True,
    )
    percent = round(100 * (1 - alpha))
    result[f"AUROC ({percent}% CI)"] = [
        f"{r.auroc:.3f} ({r.low:.3f}-{r.high:.3f})" if np.isfinite(r.auroc) else "n/a" for r in result.itertuples()
    ]
    return result
