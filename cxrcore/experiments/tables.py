"""What every experiment's results table holds (a finished run's mean test AUROC with its patient-bootstrap CI),
and the chapters' comparisons of arms: recipes, pairwise DeLong tests with BH q values, thresholds, precision,
recall, F1, and the sentences that state them."""
from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
from scipy.stats import false_discovery_control

from cxrcore.manifest import load_manifest
from cxrcore.metrics import (
    WeightedAUROC,
    delong_test,
    patient_weights,
    precision_recall_f1,
    score_column,
    summarize,
    thresholds,
)
from cxrcore.presets import QUICK_FIELDS, Preset, get_preset
from cxrcore.runner import Result, resolved_preset, train_image_count
from cxrcore.settings import Settings

RESULT_COLUMNS = ["experiment", "model", "arm", "train_images", "test_images", "mean_auroc", "ci_low", "ci_high",
                  "seconds", "epochs", "kept_epoch", "images_per_s"]
RECIPE_FIELDS = ("lr", *QUICK_FIELDS, "augment", "select_by")  # the rows of a recipe table
MIN_POSITIVES = 5  # fewer test positives: no AUROC is reported for the finding (its interval would mean little)


def bootstrap_draws(settings: Settings) -> int:
    """Patient-bootstrap draws of the profile's intervals (fewer on a CPU)."""
    return 300 if settings.is_quick_profile else 2000


def scored_findings(predictions: pd.DataFrame, findings: Sequence[str], min_positives: int = MIN_POSITIVES) -> list:
    """The findings with at least `min_positives` positive labels among the predictions' images."""
    return [f for f in findings if int((predictions[f] == 1).sum()) >= min_positives]


def predictions_auroc_table(predictions: pd.DataFrame, findings: Sequence[str], n_boot: int, level: str = "image",
                            how: str = "mean") -> pd.DataFrame:
    """Per-finding AUROC of a predictions table with 95 % patient-bootstrap intervals, and their mean, over the
    findings with enough positives (`cxrcore.metrics.summarize`: per image, or per study/patient by `how`)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # a finding may lack positives in some bootstrap draws
        return summarize(predictions, scored_findings(predictions, findings), level=level, how=how, n_boot=n_boot)


def auroc_table(result: Result, findings: Sequence[str], n_boot: int) -> pd.DataFrame:
    """Per-finding test AUROC of a finished run with 95 % patient-bootstrap intervals, and their mean."""
    return predictions_auroc_table(result.predictions, findings, n_boot)


def uncertain_not_scored(predictions: pd.DataFrame, manifest: pd.DataFrame, findings: Sequence[str]) -> pd.DataFrame:
    """A predictions table whose labels the manifest marks uncertain (-1) are NaN (not scored), whatever policy the
    model was trained under: a label its own labeler called uncertain is no ground truth (the CheXpert
    competition's test labels are radiologists' and certain)."""
    raw = manifest.drop_duplicates("path").set_index("path")[list(findings)]
    missing = predictions.loc[~predictions["path"].isin(raw.index), "path"]
    if len(missing):
        raise ValueError(f"{len(missing)} predicted image(s) are not in the manifest, e.g. {missing.iloc[0]!r}")
    uncertain = raw.reindex(predictions["path"]).to_numpy() == -1  # (N, K)
    return predictions.assign(**{f: predictions[f].mask(uncertain[:, k]) for k, f in enumerate(findings)})


def certain_labels(result: Result, findings: Sequence[str]) -> Result:
    """The run with its uncertain test labels not scored (`uncertain_not_scored` against the manifest it was tested
    on); the run's own metrics.json keeps the training policy's test labels."""
    config = result.config["run"]
    manifest = load_manifest(config.get("test_manifest") or config["manifest"])
    return dataclasses.replace(result, predictions=uncertain_not_scored(result.predictions, manifest, findings))


def result_row(experiment: str, model: str, arm: str, result: Result, findings: Sequence[str], n_boot: int) -> dict:
    """One row of an experiment's table (RESULT_COLUMNS) for a finished run."""
    mean = auroc_table(result, findings, n_boot).loc["Mean"]
    history = result.history
    return {"experiment": experiment, "model": model, "arm": arm, "train_images": result.metrics["images"]["train"],
            "test_images": result.metrics["images"]["test"], "mean_auroc": mean["auroc"], "ci_low": mean["low"],
            "ci_high": mean["high"], "seconds": result.elapsed, "epochs": len(history),
            "kept_epoch": result.metrics["best_epoch"], "images_per_s": history["images_per_s"].mean()}


def bootstrap_mean_interval(values: Sequence[float], groups: Sequence, n_boot: int, seed: int = 0
                            ) -> tuple[float, float]:
    """95 % patient-bootstrap interval of the mean of per-image values (each draw resamples the patients with all
    their images: `metrics.patient_weights`)."""
    values = np.asarray(values, dtype=float)
    draws = [values @ weights / weights.sum() for weights in patient_weights(np.asarray(groups), n_boot, seed)]
    low, high = np.percentile(draws, [2.5, 97.5])
    return float(low), float(high)


def results_table(experiment: str, model: str, finished: Mapping[str, Result], findings: Sequence[str],
                  n_boot: int) -> pd.DataFrame:
    """An experiment's table (RESULT_COLUMNS): one row per arm (the keys of `finished`) of one model."""
    rows = [result_row(experiment, model, arm, result, findings, n_boot) for arm, result in finished.items()]
    return pd.DataFrame(rows, columns=RESULT_COLUMNS)


def pairwise_delong(truth: pd.DataFrame, scores: Mapping[str, pd.DataFrame], groups: Mapping[str, Sequence[str]],
                    findings: Sequence[str], patients: Sequence | None = None) -> pd.DataFrame:
    """DeLong's test per finding for every pair of arms within each group, with Benjamini-Hochberg q values; with
    `patients` (each truth row's patient id), z and p are Obuchowski's clustered test and "p (films independent)"
    keeps DeLong's original p, which treats every film as independent."""
    patient_ids = None if patients is None else np.asarray(patients)
    rows = []
    for model, names in groups.items():
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                for finding in findings:
                    counted = truth[finding].notna().to_numpy()
                    paired = (truth[finding][counted], scores[a][score_column(finding)][counted],
                              scores[b][score_column(finding)][counted])
                    test = delong_test(*paired, groups=None if patient_ids is None else patient_ids[counted])
                    rows.append({"model": model, "A": a, "B": b, "finding": finding, "AUROC A": test.auc_a,
                                 "AUROC B": test.auc_b, "A - B": test.auc_a - test.auc_b, "z": test.z, "p": test.p}
                                | ({} if patients is None else {"p (films independent)": delong_test(*paired).p}))
    table = pd.DataFrame(rows)
    table["q (BH)"] = false_discovery_control(table["p"].to_numpy(), method="bh")
    table["pair"] = table["A"] + " vs " + table["B"]
    return table


def delong_cells(delong: pd.DataFrame) -> pd.DataFrame:
    """Pair x finding table of "difference (p, q)" texts, pairs in the order of `pairwise_delong`."""
    text = [f"{d:+.3f} (p {p:.3f}, q {q:.3f})" for d, p, q in zip(delong["A - B"], delong["p"], delong["q (BH)"],
                                                                   strict=True)]
    cells = delong.assign(text=text).pivot(index="pair", columns="finding", values="text")
    return cells.reindex(delong["pair"].unique())


def worse_arm(delong: pd.DataFrame) -> pd.Series:
    """The arm with the lower AUROC in each row of a DeLong table ("" where the two are equal)."""
    worse = delong["A"].where(delong["A - B"] < 0, delong["B"])
    return worse.where(delong["A - B"] != 0, "")


def within_pairs(matrix: pd.DataFrame, groups: Mapping[str, Sequence[str]]) -> pd.Series:
    """The entries of a model x model matrix for every pair within a group, indexed "A vs B"."""
    return pd.Series({f"{a} vs {b}": matrix.loc[a, b] for names in groups.values()
                      for i, a in enumerate(names) for b in names[i + 1:]}, dtype=float)


def youden_thresholds(valid: pd.DataFrame, findings: Sequence[str]) -> pd.Series:
    """Per-finding Youden thresholds chosen on a validation predictions table (NaN where a finding has one label)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # a finding without a validation positive: no threshold
        return thresholds(valid[list(findings)], valid[[score_column(f) for f in findings]].to_numpy(), "youden",
                          names=list(findings))


def threshold_tables(truth: pd.DataFrame, scores: Mapping[str, pd.DataFrame], findings: Sequence[str],
                     cuts: float | Mapping[str, pd.Series]) -> dict[str, pd.DataFrame]:
    """Each arm's per-finding precision, recall and F1 at one threshold for all, or at the arm's own thresholds."""
    columns = [score_column(f) for f in findings]
    return {name: precision_recall_f1(truth[list(findings)], table[columns].to_numpy(),
                                      cuts if isinstance(cuts, float | int) else cuts[name], names=list(findings))
            for name, table in scores.items()}


def f1_by_arm(tables: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """Arm x finding F1 of `threshold_tables`, with the arm's mean over the findings as a last column, "macro F1"."""
    f1 = pd.DataFrame({name: table["f1"] for name, table in tables.items()}).T
    return f1.assign(**{"macro F1": f1.mean(axis=1)})


def all_positive_f1(truth: pd.DataFrame, findings: Sequence[str]) -> pd.Series:
    """Per finding, the F1 of calling every counted image positive: 2p / (1 + p), p the share of its counted labels
    that are positive (precision p, recall 1); the floor a thresholded classifier has to beat."""
    prevalence = truth[list(findings)].mean()  # NaN labels (not counted) are skipped
    return (2 * prevalence / (1 + prevalence)).rename("all positive")


def called_positive(truth: pd.DataFrame, scores: Mapping[str, pd.DataFrame], findings: Sequence[str],
                    cuts: float | Mapping[str, pd.Series]) -> pd.DataFrame:
    """Arm x finding: how many counted test images each arm calls positive (score at or above its threshold)."""
    counted = truth[list(findings)].notna()
    rows = {}
    for name, table in scores.items():
        cut = cuts if isinstance(cuts, float | int) else cuts[name]
        rows[name] = {f: int(((table[score_column(f)] >= (cut if isinstance(cut, float | int) else cut[f]))
                              & counted[f]).sum()) for f in findings}
    return pd.DataFrame.from_dict(rows, orient="index")[list(findings)]


def patient_bootstrap_pairs(delong: pd.DataFrame, truth: pd.DataFrame, scores: Mapping[str, pd.DataFrame],
                            patients: Sequence, n_boot: int, seed: int = 0) -> pd.DataFrame:
    """A `pairwise_delong` table with, per row, the paired patient-bootstrap 95 % interval of A - B, its two-sided
    p value (twice the smaller share of draws on either side of zero, counting the observed difference) and BH q
    values: it resamples patients, so the correlation of one patient's films is carried (as by the clustered
    `pairwise_delong`, without a variance formula or a normal approximation)."""
    weights = list(patient_weights(np.asarray(patients), n_boot, seed))  # the same draws for every row
    rows = []
    for a, b, finding in zip(delong["A"], delong["B"], delong["finding"], strict=True):
        counted = truth[finding].notna().to_numpy()
        labels = truth.loc[counted, finding].to_numpy()
        auc_a = WeightedAUROC(labels, scores[a].loc[counted, score_column(finding)].to_numpy())
        auc_b = WeightedAUROC(labels, scores[b].loc[counted, score_column(finding)].to_numpy())
        draws = np.array([auc_a(w[counted]) - auc_b(w[counted]) for w in weights])
        draws = draws[~np.isnan(draws)]
        below, above = (draws <= 0).sum(), (draws >= 0).sum()
        p = min(1.0, 2 * (1 + min(below, above)) / (1 + draws.size))
        low, high = np.percentile(draws, [2.5, 97.5])
        rows.append({"boot low": low, "boot high": high, "p (patient bootstrap)": p})
    added = pd.DataFrame(rows, index=delong.index)
    added["q (patient BH)"] = false_discovery_control(added["p (patient bootstrap)"].to_numpy(), method="bh")
    return pd.concat([delong, added], axis=1)


def bootstrap_cells(pairs: pd.DataFrame) -> pd.DataFrame:
    """Pair x finding table of "difference (interval, p, q)" texts from `patient_bootstrap_pairs`."""
    text = [f"{d:+.3f} ({lo:+.3f} to {hi:+.3f}, p {p:.3f}, q {q:.3f})" for d, lo, hi, p, q in zip(
        pairs["A - B"], pairs["boot low"], pairs["boot high"], pairs["p (patient bootstrap)"], pairs["q (patient BH)"],
        strict=True)]
    cells = pairs.assign(text=text).pivot(index="pair", columns="finding", values="text")
    return cells.reindex(pairs["pair"].unique())


def gradient_steps(result: Result) -> int:
    """Optimizer steps a run took: its epochs times its batches of training draws per epoch."""
    draws = result.metrics.get("draws_per_epoch", result.metrics["images"]["train"])
    batches = math.ceil(draws / result.config["preset"]["batch_size"])
    return len(result.history) * batches


def listed(names: Iterable[str]) -> str:
    """"a", "a and b", "a, b and c": names joined for a sentence."""
    names = list(names)
    return " and ".join([", ".join(names[:-1]), names[-1]]) if len(names) > 1 else "".join(names)


def recipe_table(configs: Iterable[dict], all_train_images: int,
                 reported_images: Mapping[str, str] | None = None) -> pd.DataFrame:
    """Each preset the runs use as its paper reports it beside what these runs train with (the profile's changes),
    and the training images they train on (`runner.train_image_count`; "(all)" where that is all_train_images);
    columns (preset, paper, "reported" | "this run"). A value the paper does not report (`Preset.chosen`) reads "not
    reported (ours: ...)"; the paper's training images are `reported_images[preset name]` where given, else "n/a"."""
    columns: dict[tuple[str, str, str], list] = {}
    images: dict[str, set[int]] = {}
    for config in configs:
        paper, shown = get_preset(config["preset"]), resolved_preset(config)
        columns[(paper.name, paper.paper, "reported")] = [_reported(paper, f) for f in RECIPE_FIELDS]
        columns[(paper.name, paper.paper, "this run")] = [getattr(shown, f) for f in RECIPE_FIELDS]
        images.setdefault(paper.name, set()).add(train_image_count(config))
    table = pd.DataFrame(columns, index=list(RECIPE_FIELDS)).astype(str)
    table.loc["training images"] = [(reported_images or {}).get(name, "n/a") if kind == "reported" else
                                    _counts(images[name], all_train_images) for name, _, kind in table.columns]
    return table


def _reported(preset: Preset, field: str) -> str:
    """A preset's value as its paper reports it, or "not reported (ours: ...)" for a value the paper leaves out."""
    value = getattr(preset, field)
    return f"not reported (ours: {value})" if field in preset.chosen else str(value)


def _counts(counts: set[int], all_images: int | None = None) -> str:
    """"600", "97 or 299 or 600", or "504 to 599" for more than three counts; "1,624 (all)" for all_images."""
    ordered = sorted(counts)
    if len(ordered) > 3:
        return f"{ordered[0]:,} to {ordered[-1]:,}"
    return " or ".join(f"{n:,} (all)" if n == all_images else f"{n:,}" for n in ordered)


def mean_rows(tables: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """Model x (auroc, low, high, ...): the "Mean" row of each model's `auroc_table`."""
    return pd.DataFrame({name: table.loc["Mean"] for name, table in tables.items()}).T.astype(
        {"auroc": float, "low": float, "high": float})


def interval(row: pd.Series) -> str:
    """"0.812 (0.780-0.841)": an AUROC row's value and 95 % interval."""
    return f"{row['auroc']:.3f} ({row['low']:.3f}-{row['high']:.3f})"


def above_chance(means: pd.DataFrame) -> str:
    """A sentence naming the models whose mean interval lies wholly above 0.5, or saying that none does."""
    above = [name for name, row in means.iterrows() if row["low"] > 0.5]
    if not above:
        return "No arm's mean interval lies wholly above 0.5 (chance)."
    return "Mean intervals that lie wholly above 0.5 (chance): " + ", ".join(above) + "."


def p_text(value: float, digits: int = 3, bound: float = 0.05) -> str:
    """A p or q value for prose, "= 0.012"; one below `bound` that would round up to it reads "< 0.05"."""
    shown = f"{value:.{digits}f}"
    return f"< {bound:g}" if value < bound <= float(shown) else f"= {shown}"


def clustering_reading(delong: pd.DataFrame, alpha: float = 0.05) -> str:
    """What clustering by patient changed in a `pairwise_delong` table with patients: how many tests have p < alpha
    counting every film as independent and clustered by patient, and in how many the first p is the smaller."""
    n = len(delong)
    films = int((delong["p (films independent)"] < alpha).sum())
    clustered = int((delong["p"] < alpha).sum())
    smaller = int((delong["p (films independent)"] < delong["p"]).sum())
    text = (f"Counting every film as independent, {films} of the {n} tests have p < {alpha:g}; clustered by "
            f"patient, {clustered}. ")
    if 3 * smaller >= 2 * n:  # a clear majority of the tests: clustering made them stricter
        return text + (f"In {smaller} of the {n} the films-as-independent p is the smaller one: a patient's films "
                       "are not independent evidence, and counting them as such overstates what the test set shows.")
    both_ways = ("A patient's films can share errors that widen a difference's uncertainty, and a patient with "
                 "positive and negative films can also narrow it (a model that scores all of one patient's films "
                 "higher gains on the positives what it loses on the negatives); counting films as independent sees "
                 "neither.")
    if 3 * smaller <= n:
        return text + (f"The films-as-independent p is the smaller one in only {smaller} of the {n}: clustering by "
                       f"patient gave most tests a smaller p. {both_ways}")
    return text + (f"The films-as-independent p is the smaller one in only {smaller} of the {n}: clustering moved the "
                   f"p-values both ways. {both_ways}")


def significant_differences(delong: pd.DataFrame, q: float = 0.05, column: str = "q (BH)") -> str:
    """The rows whose q value (`column`: DeLong's BH q, or "q (patient BH)") is below `q`, as "A > B on finding
    (q = ...)"; "none" if there are none."""
    significant = delong[delong[column] < q]
    return "; ".join(f"{r['A']} {'>' if r['A - B'] > 0 else '<'} {r['B']} on {r['finding']} (q {p_text(r[column])})"
                     for _, r in significant.iterrows()) or "none"


def best_by_finding(tables: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """Finding x arm AUROC (each arm's `auroc_table`), with the arm of the highest per finding ("best") and its lead
    over the runner-up ("lead"): which label policy, view set or normalization wins where. Rows no arm scores
    are left out."""
    if len(tables) < 2:
        raise ValueError(f"best_by_finding compares arms: got {len(tables)}")
    auroc = pd.DataFrame({name: table["auroc"] for name, table in tables.items()}).astype(float).dropna(how="all")
    ranked = np.sort(auroc.fillna(-np.inf).to_numpy(), axis=1)  # an arm without a score ranks last
    return auroc.assign(best=auroc.idxmax(axis=1), lead=ranked[:, -1] - ranked[:, -2])
