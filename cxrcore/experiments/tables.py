"""What every experiment's results table holds: a finished run's mean test AUROC with its patient-bootstrap CI."""
from __future__ import annotations

import warnings
from collections.abc import Sequence

import pandas as pd

from cxrcore.metrics import summarize
from cxrcore.runner import Result
from cxrcore.settings import Settings

RESULT_COLUMNS = ["experiment", "model", "arm", "train_images", "test_images", "mean_auroc", "ci_low", "ci_high",
                  "seconds", "epochs", "kept_epoch", "images_per_s"]
MIN_POSITIVES = 5  # fewer test positives: no AUROC is reported for the finding (its interval would mean little)


def bootstrap_draws(settings: Settings) -> int:
    """Patient-bootstrap draws of the profile's intervals (fewer on a CPU)."""
    return 300 if settings.profile == "quick" else 2000


def scored_findings(predictions: pd.DataFrame, findings: Sequence[str], min_positives: int = MIN_POSITIVES) -> list:
    """The findings with at least `min_positives` positive labels among the predictions' images."""
    return [f for f in findings if int((predictions[f] == 1).sum()) >= min_positives]


def auroc_table(result: Result, findings: Sequence[str], n_boot: int) -> pd.DataFrame:
    """Per-finding test AUROC with 95 % patient-bootstrap intervals, and their mean (`cxrcore.metrics.summarize`)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # a finding may lack positives in some bootstrap draws
        return summarize(result.predictions, scored_findings(result.predictions, findings), n_boot=n_boot)


def result_row(experiment: str, model: str, arm: str, result: Result, findings: Sequence[str], n_boot: int) -> dict:
    """One row of an experiment's table (RESULT_COLUMNS) for a finished run."""
    mean = auroc_table(result, findings, n_boot).loc["Mean"]
    history = result.history
    return {"experiment": experiment, "model": model, "arm": arm, "train_images": result.metrics["images"]["train"],
            "test_images": result.metrics["images"]["test"], "mean_auroc": mean["auroc"], "ci_low": mean["low"],
            "ci_high": mean["high"], "seconds": result.elapsed, "epochs": len(history),
            "kept_epoch": result.metrics["best_epoch"], "images_per_s": history["images_per_s"].mean()}
