"""Experiment "transfer-sizes": how much pretraining is worth as the target training set grows.

DenseNet-121 fine-tuned from its pretrained weights against from scratch, on nested subsets of the transfer
experiment's training patients (the same validation and test images for every run), with the paired
patient-bootstrap interval of their difference in mean test AUROC. Papers 001 and 002 disagree on what pretraining
buys (001: scratch catches up on 78,000 images; 002: at 3 epochs ImageNet weights help a lot); the difference
should shrink as the training set grows.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from cxrcore.experiments import source_models, transfer
from cxrcore.experiments.tables import RESULT_COLUMNS, bootstrap_draws, result_row, scored_findings
from cxrcore.metrics import bootstrap_mean_difference, score_column
from cxrcore.runner import Result
from cxrcore.settings import Settings

NAME = "transfer-sizes"
ARCHITECTURE = source_models.ARCHITECTURES[0]  # DenseNet-121: paper 002's network
PRETRAINED, SCRATCH = "fine-tuned", "from scratch"
QUICK_SIZES = (100, 300)  # plus the transfer experiment's own training set (its runs are reused): all 1,624
GPU_SIZES = (300, 3_000)  # the GPU-sized demo site has about 10,700 training images: a decade below each
FULL_SIZES = (1_000, 10_000, 50_000)
DIFFERENCE_COLUMNS = ["difference", "difference_low", "difference_high"]


def sizes(settings: Settings) -> list[int | None]:
    """Training-set sizes of the sweep; the last (None in the full profile: all) is the transfer experiment's."""
    smaller = {"gpu": GPU_SIZES, "full": FULL_SIZES}.get(settings.profile, QUICK_SIZES)
    return [*smaller, transfer.train_images(ARCHITECTURE, settings.profile)]


def configs(settings: Settings) -> dict[tuple[int | None, str], dict]:
    """(training images, arm) -> run config."""
    manifest = transfer.target_manifest(settings.data_root, settings.runs_dir / "manifests")
    source = source_models.configs(settings)[ARCHITECTURE.name]
    return {(size, arm): transfer.arm_config(ARCHITECTURE, arm, manifest, settings.data_root, settings.profile,
                                             source, size)
            for size in sizes(settings) for arm in (PRETRAINED, SCRATCH)}


def stages(settings: Settings) -> list[list[dict]]:
    """The source model first, then every run of the sweep."""
    return [[source_models.configs(settings)[ARCHITECTURE.name]], list(configs(settings).values())]


def paired_difference(pretrained: Result, scratch: Result, findings: list[str], n_boot: int) -> dict:
    """Pretrained minus scratch mean test AUROC with its paired patient-bootstrap interval."""
    a, b = pretrained.predictions, scratch.predictions
    if not a["path"].equals(b["path"]):
        raise ValueError(f"runs {pretrained.key} and {scratch.key} were not tested on the same images")
    scored = scored_findings(a, findings)
    labels = a[scored]
    result = bootstrap_mean_difference(labels.fillna(0).to_numpy(), a[[score_column(f) for f in scored]].to_numpy(),
                                       b[[score_column(f) for f in scored]].to_numpy(), a["patient_id"].to_numpy(),
                                       n_boot=n_boot, mask=labels.notna().to_numpy())
    return {"difference": result["difference"], "difference_low": result["low"], "difference_high": result["high"]}


def results(settings: Settings) -> pd.DataFrame:
    """One row per size and arm (RESULT_COLUMNS); the pretrained rows add the paired difference to scratch."""
    draws = bootstrap_draws(settings)
    finished = {key: transfer.finished(config, settings) for key, config in configs(settings).items()}
    rows = []
    for size in sizes(settings):
        pretrained, scratch = finished[(size, PRETRAINED)], finished[(size, SCRATCH)]
        difference = paired_difference(pretrained, scratch, transfer.TARGET_FINDINGS, draws)
        for arm, result in ((PRETRAINED, pretrained), (SCRATCH, scratch)):
            row = result_row(NAME, ARCHITECTURE.name, arm, result, transfer.TARGET_FINDINGS, draws)
            rows.append({**row, **(difference if arm == PRETRAINED else dict.fromkeys(difference, np.nan))})
    return pd.DataFrame(rows, columns=RESULT_COLUMNS + DIFFERENCE_COLUMNS)


def differences(sweep: pd.DataFrame) -> pd.DataFrame:
    """The pretrained rows of `results`, by training images: the paired difference and its interval."""
    return sweep.dropna(subset=["difference"]).sort_values("train_images").set_index("train_images")


def _listed(items: list[str]) -> str:
    """"a", "a and b", "a, b and c"."""
    return " and ".join([", ".join(items[:-1]), items[-1]]) if len(items) > 1 else "".join(items)


def describe(sweep: pd.DataFrame) -> dict[str, str]:
    """The sweep in words, for the chapter's glue: its sizes, each difference with its interval, where the interval
    clears zero, and whether the difference shrinks from the smallest to the largest size."""
    gaps = differences(sweep)
    sizes = [f"{n:,}" for n in gaps.index]
    clear = [f"{n:,}" for n, row in gaps.iterrows() if row.difference_low > 0]
    if len(clear) == len(gaps):
        clear_text = "The interval lies wholly above zero at every size"
    elif clear:
        clear_text = f"The interval lies wholly above zero at {_listed(clear)} training images"
    else:
        clear_text = "No interval lies wholly above zero"
    shrinks = gaps["difference"].iloc[-1] < gaps["difference"].iloc[0]
    steady = gaps["difference"].is_monotonic_decreasing
    trend = (("shrinks" if steady else "shrinks, though not at every step") + ". "
             "This is the shape of the papers' lesson, at this run's scale: with few target images "
             "the source model's features carry the result, and the more target images there are, the more a network "
             "trained from scratch learns the same on its own." if shrinks else
             "does not shrink on these sizes: here the papers' lesson does not show, and the intervals say how sure "
             "that is.")
    return {"ts_sizes": _listed(sizes),
            "ts_gaps": "; ".join(f"{n:,} images {row.difference:+.3f} ({row.difference_low:+.3f} to "
                                 f"{row.difference_high:+.3f})" for n, row in gaps.iterrows()),
            "ts_clear": clear_text, "ts_trend": trend}
