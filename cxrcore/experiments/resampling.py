"""Experiment "resampling": paper 001's five patient-wise 70/10/20 resamplings of the ChestX-ray14 site.

The same ResNet-50 recipe as the experiment "paper001" (`paper001.run_config`) trains on each of five independent
seeded patient-wise splits of all the site's images (`data_prep.splits.kfold_patient_resampling`; a patient may be
in more than one resampling's test set, as in paper 001). Their spread is the yardstick for the differences between
the paper001 experiment's models: a difference smaller than the split-to-split spread is not a result.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from cxrcore.experiments import paper001
from cxrcore.experiments.tables import (
    auroc_table,
    bootstrap_draws,
    listed,
    predictions_auroc_table,
    results_table,
    scored_findings,
)
from cxrcore.manifest import write_derived_manifest
from cxrcore.metrics import MEAN_ROW, auroc_per_class, fold_summary, score_column
from cxrcore.runner import Result, run
from cxrcore.settings import Settings
from data_prep.manifests import read_nih
from data_prep.splits import kfold_patient_resampling

NAME = "resampling"
N_FOLDS = 5
FOLD_FRACTIONS = (0.7, 0.1, 0.2)
SPLIT_SEED = 0
FOLDS = tuple(f"split {k + 1}" for k in range(N_FOLDS))


def fold_manifests(settings: Settings) -> list[Path]:
    """Paper 001's five patient-wise 70/10/20 resamplings of all the site's images, one manifest each."""
    table = read_nih(settings.data_root).reset_index(drop=True)
    folds = kfold_patient_resampling(table, N_FOLDS, FOLD_FRACTIONS, seed=SPLIT_SEED)
    out = settings.runs_dir / "manifests"
    return [write_derived_manifest(table.assign(split=folds[f"split_{k}"]), out / f"{NAME}_split{k + 1}.csv")
            for k in range(N_FOLDS)]


def configs(settings: Settings) -> dict[str, dict]:
    """Fold name -> run config (paper001's ResNet-50 recipe on that resampling)."""
    return {fold: paper001.run_config(manifest, settings) for fold, manifest in zip(FOLDS, fold_manifests(settings),
                                                                                    strict=True)}


def stages(settings: Settings) -> list[list[dict]]:
    """One stage: the resamplings are independent."""
    return [list(configs(settings).values())]


def runs(settings: Settings) -> dict[str, Result]:
    """Fold name -> finished run."""
    return {fold: run(config, runs_dir=settings.runs_dir) for fold, config in configs(settings).items()}


def results(settings: Settings) -> pd.DataFrame:
    """One row per resampling (RESULT_COLUMNS): `fold_results` of the finished runs."""
    return fold_results(runs(settings), bootstrap_draws(settings))


def fold_results(finished: dict[str, Result], n_boot: int) -> pd.DataFrame:
    """One row per resampling (RESULT_COLUMNS), every mean over the same findings (`common_findings`)."""
    return results_table(NAME, paper001.BASE, finished, common_findings(finished), n_boot)


def common_findings(finished: dict[str, Result]) -> list[str]:
    """The findings with enough test positives in every resampling: the ones every fold mean averages over."""
    predictions = [result.predictions for result in finished.values()]
    return [f for f in paper001.FINDINGS if all(f in scored_findings(p, paper001.FINDINGS) for p in predictions)]


def fold_table(finished: dict[str, Result]) -> pd.DataFrame:
    """Long table (fold, finding, auroc): each resampling's test AUROC per finding with enough test positives in
    every resampling (`common_findings`), and their mean ("Mean")."""
    common = common_findings(finished)
    rows = []
    for fold, result in finished.items():
        table = result.predictions
        aurocs = auroc_per_class(table[common].to_numpy(), table[[score_column(f) for f in common]].to_numpy(),
                                 names=common)
        rows += [{"fold": fold, "finding": finding, "auroc": value} for finding, value in aurocs.items()]
        rows.append({"fold": fold, "finding": MEAN_ROW, "auroc": float(aurocs.mean())})
    return pd.DataFrame(rows)


def fold_means(finished: dict[str, Result], n_boot: int) -> pd.DataFrame:
    """Per resampling: the mean test AUROC over `common_findings` (`fold_table`'s "Mean") with its 95 %
    patient-bootstrap interval (auroc, low, high)."""
    common = common_findings(finished)
    rows = {fold: predictions_auroc_table(result.predictions, common, n_boot).loc[MEAN_ROW, ["auroc", "low", "high"]]
            for fold, result in finished.items()}
    return pd.DataFrame(rows).T.astype(float)


def learned_reading(means: pd.DataFrame, learned: float = paper001.LEARNED_AUROC) -> str:
    """Which resamplings' mean test AUROC (`fold_means`) reaches `learned` (the chapter's line for a network that
    learned), and which reach 0.5 with their intervals."""
    up, chance = means.index[means["auroc"] >= learned].tolist(), means.index[means["low"] <= 0.5].tolist()
    at_chance = (f"On {listed(chance)} the mean interval reaches 0.5 (chance). " if chance else
                 "Every resampling's mean interval lies above 0.5. ")
    if len(up) == len(means):
        return at_chance + f"Every split reaches {learned}, this chapter's line for a network that learned."
    if not up:
        return at_chance + (f"No split reaches {learned}, this chapter's line for a network that learned: on every "
                            "split the recipe has barely started.")
    return at_chance + (f"Only {listed(up)} reach{'es' if len(up) == 1 else ''} {learned}, this chapter's line "
                        "for a network that learned: the same recipe on as many films learned on some splits and "
                        "barely started on the others.")


def summary(finished: dict[str, Result]) -> pd.DataFrame:
    """Per finding and their mean: mean, SD, min and max over the resamplings (paper 001's summary)."""
    return fold_summary(fold_table(finished))


def sd_kinds(table: pd.DataFrame) -> pd.Series:
    """Two spreads from a `summary`: the SD of the mean AUROC across the resamplings, and the mean of the per-finding
    SDs (what paper 001's Table 3 gives in its "Average" row)."""
    return pd.Series({"SD of the mean AUROC": float(table.loc[MEAN_ROW, "std"]),
                      "mean of the per-finding SDs": float(table["std"].drop(MEAN_ROW).mean())})


def spread_against_differences(models: dict[tuple[str, str], Result], folds: dict[str, Result],
                               n_boot: int) -> pd.DataFrame:
    """Each paper001 comparison's difference of mean test AUROC (arm minus ResNet-50, official split) beside the
    resamplings' spread of ResNet-50's mean AUROC (SD and max - min), and whether the difference lies within it;
    the models' means are over the same findings as the resamplings' (`common_findings`)."""
    common = common_findings(folds)
    means = {arm: auroc_table(result, common, n_boot).loc[MEAN_ROW, "auroc"]
             for (_, arm), result in paper001.finding_runs(models).items()}
    folded = fold_table(folds)
    spread = folded.loc[folded["finding"] == MEAN_ROW, "auroc"]
    width = float(spread.max() - spread.min())
    table = pd.DataFrame({"difference": {f"{arm} - {paper001.BASE}": value - means[paper001.BASE]
                                         for arm, value in means.items() if arm != paper001.BASE}})
    return table.assign(split_sd=float(spread.std(ddof=1)), split_range=width,
                        within_spread=table["difference"].abs() < width)
