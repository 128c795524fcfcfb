"""Experiment "transfer-sizes": how much pretraining is worth as the target training set grows.

DenseNet-121 fine-tuned from its pretrained weights against from scratch, on nested subsets of the transfer
experiment's training patients (the same validation and test images for every run), with the paired
patient-bootstrap interval of their difference in mean test AUROC, and of the change in that difference from the
smallest training set to the largest (`gap_change`). Papers 001 and 002 disagree on what pretraining buys (001:
scratch catches up on 78,000 images; 002: at 3 epochs ImageNet weights help a lot). At a fixed number of epochs a
smaller training set is also fewer gradient steps, so the sweep varies the data and the training budget together.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from cxrcore.experiments import source_models, transfer
from cxrcore.experiments.tables import (
    RESULT_COLUMNS,
    bootstrap_draws,
    gradient_steps,
    listed,
    result_row,
    scored_findings,
)
from cxrcore.metrics import WeightedAUROC, bootstrap_mean_difference, patient_weights, score_column
from cxrcore.runner import Result
from cxrcore.settings import Settings

NAME = "transfer-sizes"
ARCHITECTURE = source_models.ARCHITECTURES[0]  # DenseNet-121: paper 002's network
PRETRAINED, SCRATCH = "fine-tuned", "from scratch"
QUICK_SIZES = (100, 300)  # plus the transfer experiment's own training set (its runs are reused): all 1,624
GPU_SIZES = (300, 3_000)  # the GPU-sized demo site has about 10,700 training images: a decade below each
FULL_SIZES = (1_000, 10_000, 50_000)
DIFFERENCE_COLUMNS = ["difference", "difference_low", "difference_high"]
CHANGE_COLUMNS = ["smaller", "larger", "change", "change_low", "change_high"]
# draws of the change's interval in every profile: four AUROCs per finding and draw cost little, and a verdict near
# the edge of zero should not turn on Monte Carlo noise
CHANGE_DRAWS = 2_000


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


def gap_change(smaller: tuple[Result, Result], larger: tuple[Result, Result], findings: list[str], n_boot: int,
               seed: int = 0) -> dict:
    """(Pretrained - scratch at the larger size) - (pretrained - scratch at the smaller), in mean test AUROC, with
    its paired patient-bootstrap interval: every draw resamples the test patients once and scores all four runs."""
    runs = [*larger, *smaller]
    first = runs[0].predictions
    if not all(r.predictions["path"].equals(first["path"]) for r in runs):
        raise ValueError("the four runs were not tested on the same images")
    signs = np.array([1.0, -1.0, -1.0, 1.0])  # larger pretrained, larger scratch, smaller pretrained, smaller scratch
    aurocs = []
    for finding in scored_findings(first, findings):
        counted = first[finding].notna().to_numpy()
        labels = first.loc[counted, finding].to_numpy()
        aurocs.append((counted, [WeightedAUROC(labels, r.predictions.loc[counted, score_column(finding)].to_numpy())
                                 for r in runs]))

    def change(weights: np.ndarray) -> float:
        return float(np.nanmean([signs @ np.array([a(weights[rows]) for a in each]) for rows, each in aurocs]))

    draws = np.array([change(weights) for weights in patient_weights(first["patient_id"].to_numpy(), n_boot, seed)])
    low, high = np.nanpercentile(draws, [2.5, 97.5])
    return {"change": change(np.ones(len(first))), "change_low": float(low), "change_high": float(high)}


def finished_runs(settings: Settings) -> dict[tuple[int | None, str], Result]:
    """(training images, arm) -> finished run of the sweep, scored on certain test labels."""
    return {key: transfer.finished(config, settings) for key, config in configs(settings).items()}


def changes(settings: Settings) -> pd.DataFrame:
    """One row per smaller size: the change in the pretrained advantage from it to the largest size (CHANGE_COLUMNS),
    with its paired patient-bootstrap interval (`gap_change`)."""
    finished, all_sizes = finished_runs(settings), sizes(settings)
    largest = all_sizes[-1]
    pair = {size: (finished[(size, PRETRAINED)], finished[(size, SCRATCH)]) for size in all_sizes}
    rows = [{"smaller": pair[size][0].metrics["images"]["train"], "larger": pair[largest][0].metrics["images"]["train"],
             **gap_change(pair[size], pair[largest], transfer.TARGET_FINDINGS, CHANGE_DRAWS)}
            for size in all_sizes[:-1]]
    return pd.DataFrame(rows, columns=CHANGE_COLUMNS)


def budgets(finished: dict[tuple[int | None, str], Result]) -> pd.DataFrame:
    """Per run of the sweep: training images, epochs, gradient steps, the epoch kept and the steps up to it."""
    rows = []
    for (_, arm), result in finished.items():
        steps, epochs = gradient_steps(result), len(result.history)
        kept = int(result.metrics["best_epoch"])
        rows.append({"arm": arm, "train_images": result.metrics["images"]["train"], "epochs": epochs,
                     "steps": steps, "kept_epoch": kept, "steps_to_kept": steps * kept // epochs})
    return pd.DataFrame(rows).sort_values(["train_images", "arm"], ignore_index=True)


def budget_reading(budget: pd.DataFrame) -> str:
    """The sweep's training budgets in words: the gradient steps at the smallest and the largest size (pretrained arm,
    with the steps up to the epoch it kept)."""
    pretrained = budget[budget["arm"] == PRETRAINED].sort_values("train_images")
    small, large = pretrained.iloc[0], pretrained.iloc[-1]
    epochs = sorted(set(pretrained["epochs"]))
    held = f"at a fixed {epochs[0]} epochs" if len(epochs) == 1 else f"at {epochs[0]} to {epochs[-1]} epochs"
    return (f"{held}, the fine-tuned arm took {small.steps:,} gradient steps on {small.train_images:,} training images "
            f"(and kept epoch {small.kept_epoch}, after {small.steps_to_kept:,} steps) against {large.steps:,} on "
            f"{large.train_images:,} (kept epoch {large.kept_epoch}, after {large.steps_to_kept:,})")


def results(settings: Settings) -> pd.DataFrame:
    """One row per size and arm (RESULT_COLUMNS); the pretrained rows add the paired difference to scratch."""
    draws = bootstrap_draws(settings)
    finished = finished_runs(settings)
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


def change_reading(change: pd.DataFrame) -> str:
    """Whether the pretrained advantage shrinks from the smallest to the largest size, decided by the paired interval
    of its change (`changes`): "shrinks" only when that interval lies wholly below zero; every change with its
    interval."""
    first = next(change.itertuples())  # the smallest size against the largest
    per_size = "; ".join(f"from {row.smaller:,} to {row.larger:,} images {row.change:+.3f} ({row.change_low:+.3f} to "
                   f"{row.change_high:+.3f})" for row in change.itertuples())
    if first.change_high < 0:
        verdict = (f"shrinks from {first.smaller:,} to {first.larger:,} training images: the paired interval of the "
                   "change lies wholly below zero")
    elif first.change_low > 0:
        verdict = (f"grows from {first.smaller:,} to {first.larger:,} training images: the paired interval of the "
                   "change lies wholly above zero")
    else:
        verdict = (f"may shrink or grow from {first.smaller:,} to {first.larger:,} training images: the paired "
                   "interval of the change reaches both sides of zero, so this sweep cannot tell")
    later = [row for row in change.itertuples()][1:]
    unsure = [row for row in later if row.change_low <= 0 <= row.change_high]
    if first.change_high >= 0 or not unsure:
        where = ""
    elif unsure == later[later.index(unsure[0]):]:  # every size from the first unsure one on is unsure
        where = (f" From {unsure[0].smaller:,} training images on, the change's interval reaches both sides of zero: "
                 "whatever shrinking this sweep shows lies between its smallest sizes.")
    else:
        where = (f" From {listed(f'{row.smaller:,}' for row in unsure)} training images to {first.larger:,}, the "
                 "change's interval reaches both sides of zero.")
    return (f"{verdict}. The change in the difference, larger size minus smaller, with paired 95 % intervals: "
            f"{per_size}.{where}")


def describe(sweep: pd.DataFrame, change: pd.DataFrame) -> dict[str, str]:
    """The sweep in words, for the chapter's glue: its sizes, each difference with its interval, where the interval
    clears zero, and whether the difference shrinks from the smallest to the largest size (`change_reading`)."""
    gaps = differences(sweep)
    sizes = [f"{n:,}" for n in gaps.index]
    clear = [f"{n:,}" for n, row in gaps.iterrows() if row.difference_low > 0]
    if len(clear) == len(gaps):
        clear_text = "The interval lies wholly above zero at every size"
    elif clear:
        clear_text = f"The interval lies wholly above zero at {listed(clear)} training images"
    else:
        clear_text = "No interval lies wholly above zero"
    return {"ts_sizes": listed(sizes),
            "ts_gaps": "; ".join(f"{n:,} images {row.difference:+.3f} ({row.difference_low:+.3f} to "
                                 f"{row.difference_high:+.3f})" for n, row in gaps.iterrows()),
            "ts_clear": clear_text, "ts_trend": change_reading(change) + _chance_note(sweep)}


def _chance_note(sweep: pd.DataFrame) -> str:
    """A sentence naming the sizes where the from-scratch arm's own interval still includes 0.5 ("" if none)."""
    scratch = sweep[sweep["arm"] == SCRATCH].sort_values("train_images")
    at_chance = scratch[(scratch["ci_low"] <= 0.5) & (scratch["ci_high"] >= 0.5)]
    if at_chance.empty:
        return ""
    named = listed([f"{row.train_images:,} images ({row.mean_auroc:.3f}, {row.ci_low:.3f}-{row.ci_high:.3f})"
                     for row in at_chance.itertuples()])
    return (f" At {named} the from-scratch arm's own interval includes 0.5: there it has not learned yet, and the "
            "difference there measures the pretrained arm against chance.")
