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
from cxrcore.experiments.tables import auroc_table, bootstrap_draws, results_table, scored_findings
from cxrcore.manifest import write_derived_manifest
from cxrcore.metrics import auroc_per_class, fold_summary, score_column
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
    """One row per resampling (RESULT_COLUMNS)."""
    return results_table(NAME, paper001.BASE, runs(settings), paper001.FINDINGS, bootstrap_draws(settings))


def fold_table(finished: dict[str, Result]) -> pd.DataFrame:
    """Long table (fold, finding, auroc): each resampling's test AUROC per finding with enough test positives in
    every resampling, and their mean ("Mean")."""
    predictions = {fold: result.predictions for fold, result in finished.items()}
    common = [f for f in paper001.FINDINGS if all(f in scored_findings(p, paper001.FINDINGS)
                                                  for p in predictions.values())]
    rows = []
    for fold, table in predictions.items():
        aurocs = auroc_per_class(table[common].to_numpy(), table[[score_column(f) for f in common]].to_numpy(),
                                 names=common)
        rows += [{"fold": fold, "finding": finding, "auroc": value} for finding, value in aurocs.items()]
        rows.append({"fold": fold, "finding": "Mean", "auroc": float(aurocs.mean())})
    return pd.DataFrame(rows)


def summary(finished: dict[str, Result]) -> pd.DataFrame:
    """Per finding and their mean: mean, SD, min and max over the resamplings (paper 001's summary)."""
    return fold_summary(fold_table(finished))


def spread_against_differences(models: dict[tuple[str, str], Result], folds: dict[str, Result],
                               n_boot: int) -> pd.DataFrame:
    """Each paper001 comparison's difference of mean test AUROC (arm minus ResNet-50, official split) beside the
    resamplings' spread of ResNet-50's mean AUROC (SD and max - min), and whether the difference lies within it."""
    means = {arm: auroc_table(result, paper001.FINDINGS, n_boot).loc["Mean", "auroc"]
             for (_, arm), result in paper001.finding_runs(models).items()}
    spread = fold_table(folds).query("finding == 'Mean'")["auroc"]
    width = float(spread.max() - spread.min())
    table = pd.DataFrame({"difference": {f"{arm} - {paper001.BASE}": value - means[paper001.BASE]
                                         for arm, value in means.items() if arm != paper001.BASE}})
    return table.assign(split_sd=float(spread.std(ddof=1)), split_range=width,
                        within_spread=table["difference"].abs() < width)
