"""Experiment "transfer": off-the-shelf, fine-tuned and from-scratch arms on the CheXpert site.

* target: the CheXpert layout's frontal training images split patient-wise 70/10/20 (paper 001's resampling
  proportions), the five CheXpert competition findings, trained under U-Ones (papers 000 and 003 use U-Ones) and
  scored on the certain labels only (`tables.certain_labels`: an uncertain test label is not counted).
* arms: off-the-shelf (pretrained backbone frozen, only the head trained, on backbone features computed once:
  `cxrcore.features`), fine-tuned (all layers trained from the pretrained weights), from scratch (random
  initialisation, one input channel, paper 001's "1channel").
* pretrained weights: ImageNet when its weights are in the local torch cache, else the architecture's source model
  (`cxrcore.experiments.source_models`), trained on demand through the run cache.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from cxrcore.experiments import source_models
from cxrcore.experiments.source_models import ARCHITECTURES, ARMS, Architecture, trainable_parameters
from cxrcore.experiments.tables import (
    RESULT_COLUMNS,
    bootstrap_draws,
    certain_labels,
    result_row,
    uncertain_not_scored,
    worse_arm,
)
from cxrcore.manifest import assert_patient_disjoint, load_manifest, write_derived_manifest
from cxrcore.models import build_model, imagenet_weights_file
from cxrcore.runner import Result, predict_split, run
from cxrcore.settings import Settings, quick_sized
from data_prep.manifests import read_chexpert
from data_prep.splits import split_patients

NAME = "transfer"
TARGET_FINDINGS = ["Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion"]
TARGET_FRACTIONS = {"train": 0.7, "valid": 0.1, "test": 0.2}
ARM_ABBREVIATIONS = {"off-the-shelf": "OTS", "fine-tuned": "FT", "from scratch": "scratch"}  # paper 001's
# training images of an arm in the quick profile (whole patients): every training image of the demo site (1,624;
# VGG-16 gets its share): at 600 fine-tuned DenseNet-121 scored 0.78, at all of them 0.83 (issue 10)
QUICK_TARGET_IMAGES = 1_700
# every arm's epochs in the quick profile (the source models train 10): on all 1,624 images, the arms and the size
# sweep fit the 8 minutes a chapter may take at 6 epochs (7: about 9 minutes with the sweep, two runs at a time)
QUICK_TARGET_EPOCHS = 6
SPLIT_SEED = 0

__all__ = ["ARCHITECTURES", "ARMS", "Architecture", "arm_config", "by_label", "configs", "cost_table", "label",
           "off_the_shelf_summary", "reported_summaries", "results", "stages", "target_manifest",
           "trainable_parameters"]


def target_manifest(data_root: Path, out_dir: Path) -> Path:
    """CheXpert train.csv, frontal images, split patient-wise 70/10/20 (valid.csv is left out) under out_dir."""
    table = read_chexpert(data_root)
    table = table[(table["split"] == "trainval") & (table["view"] == "frontal")].reset_index(drop=True)
    table["split"] = split_patients(table, TARGET_FRACTIONS, seed=SPLIT_SEED)
    assert_patient_disjoint(table)
    return write_derived_manifest(table, out_dir / "transfer_target_chexpert.csv")


def imagenet_available(arch: str) -> bool:
    """True when torchvision's ImageNet weights for arch lie in the local torch hub cache."""
    return imagenet_weights_file(arch)[0].is_file()


def pretrained_weights(architecture: Architecture, source: dict) -> str | dict:
    """"imagenet" when its weights are cached locally, else the source run (trained on demand by the runner)."""
    return "imagenet" if imagenet_available(architecture.arch) else {"run": source}


def input_channels(arm: str) -> int:
    """Grey image as 3 channels for pretrained weights (as ImageNet networks take it), 1 channel from scratch."""
    return 1 if arm == "from scratch" else 3


def train_images(architecture: Architecture, profile: str) -> int | None:
    """Training images of an arm: a few hundred whole patients in the quick profile, all (None) in the full one."""
    return architecture.quick_images(QUICK_TARGET_IMAGES) if quick_sized(profile) else None


def arm_config(architecture: Architecture, arm: str, manifest: Path, data_root: Path, profile: str, source: dict,
               max_train_images: int | None) -> dict:
    """Run config of one arm on the CheXpert site, on up to max_train_images training images (None: all)."""
    if arm not in architecture.arms:
        raise ValueError(f"{architecture.name} has the arms {architecture.arms}, not {arm!r}")
    config = {"manifest": str(manifest), "findings": TARGET_FINDINGS, "data_root": str(data_root),
              "arch": architecture.arch, "head": architecture.head, "policy": "u-ones", "seed": 0,
              "profile": profile, "max_train_images": max_train_images, "channels": input_channels(arm),
              "overrides": {"epochs": QUICK_TARGET_EPOCHS} if quick_sized(profile) else {}}
    if arm == "from scratch":
        return {**config, "weights": None, "preset": architecture.scratch_preset}
    frozen = arm == "off-the-shelf"
    return {**config, "weights": pretrained_weights(architecture, source), "preset": architecture.transfer_preset,
            "freeze_backbone": frozen, "feature_cache": frozen}


def label(architecture: Architecture, arm: str) -> str:
    """Row label of an arm, e.g. "DenseNet-121 FT"."""
    return f"{architecture.short} {ARM_ABBREVIATIONS[arm]}"


def configs(settings: Settings) -> dict[tuple[str, str], dict]:
    """(architecture name, arm) -> run config, for every arm of every architecture."""
    manifest = target_manifest(settings.data_root, settings.runs_dir / "manifests")
    sources = source_models.configs(settings)
    return {(a.name, arm): arm_config(a, arm, manifest, settings.data_root, settings.profile, sources[a.name],
                                      train_images(a, settings.profile))
            for a in ARCHITECTURES for arm in a.arms}


def stages(settings: Settings) -> list[list[dict]]:
    """The source models first (the arms start from them), then every arm."""
    return [*source_models.stages(settings), list(configs(settings).values())]


def finished(config: dict, settings: Settings) -> Result:
    """A run of this experiment (trained now if not in the run cache), its uncertain test labels not scored."""
    return certain_labels(run(config, runs_dir=settings.runs_dir), TARGET_FINDINGS)


def runs(settings: Settings) -> dict[tuple[str, str], Result]:
    """(architecture name, arm) -> finished run, scored on certain test labels (`finished`)."""
    return {key: finished(config, settings) for key, config in configs(settings).items()}


def valid_predictions(result: Result) -> pd.DataFrame:
    """A run's model on its validation images (`runner.predict_split`), uncertain labels not scored: where the
    chapter chooses thresholds, with the labels the test is scored on."""
    manifest = load_manifest(result.config["run"]["manifest"])
    return uncertain_not_scored(predict_split(result, "valid"), manifest, TARGET_FINDINGS)


def results(settings: Settings) -> pd.DataFrame:
    """One row per architecture and arm (RESULT_COLUMNS)."""
    draws = bootstrap_draws(settings)
    rows = [result_row(NAME, name, arm, result, TARGET_FINDINGS, draws)
            for (name, arm), result in runs(settings).items()]
    return pd.DataFrame(rows, columns=RESULT_COLUMNS)


def by_label(finished: Mapping[tuple[str, str], Result]
             ) -> tuple[dict[str, Result], dict[str, tuple[Architecture, str]]]:
    """The runs keyed by their row label ("DenseNet-121 FT"), and each label's (architecture, arm)."""
    architectures = {a.name: a for a in ARCHITECTURES}
    arms = {label(architectures[name], arm): (architectures[name], arm) for name, arm in finished}
    results = {name: finished[(architecture.name, arm)] for name, (architecture, arm) in arms.items()}
    return results, arms


def cost_table(results: Mapping[str, Result], arms: Mapping[str, tuple[Architecture, str]],
               n_findings: int) -> pd.DataFrame:
    """Per arm: trainable parameters, run seconds, seconds per epoch, training images/s and the epoch kept."""
    rows = {name: {"arm": arms[name][1],
                   "trainable parameters": trainable_parameters(arms[name][0], n_findings, arms[name][1]),
                   "run seconds": result.elapsed, "s per epoch": result.history["seconds"].mean(),
                   "training images/s": result.history["images_per_s"].mean(),
                   "kept epoch": int(result.metrics["best_epoch"])}
            for name, result in results.items()}
    return pd.DataFrame.from_dict(rows, orient="index")


def backbone_change(tuned: Result, start: Result, architecture: Architecture) -> float:
    """How far a run's backbone moved from the weights it started from: the L2 norm of the change of the backbone's
    trainable weights (those an off-the-shelf arm freezes) over the L2 norm of the starting weights."""
    frozen = build_model(architecture.arch, len(TARGET_FINDINGS), channels=3, head=architecture.head,
                         freeze_backbone=True)
    backbone = {name for name, p in frozen.named_parameters() if not p.requires_grad}
    after, before = tuned.load_model().state_dict(), start.load_model().state_dict()
    change = sum(float((after[n] - before[n]).pow(2).sum()) for n in backbone)
    return (change / sum(float(before[n].pow(2).sum()) for n in backbone)) ** 0.5


def off_the_shelf_summary(significant: pd.DataFrame) -> str:
    """A sentence: how many of the significant per-finding differences (rows of a `pairwise_delong` table, kept by
    whichever q value the chapter goes by) involve an off-the-shelf arm, and how many it loses."""
    if significant.empty:
        return "No per-finding difference survived the false-discovery control."
    ots = ARM_ABBREVIATIONS["off-the-shelf"]
    involved = int((significant["A"].str.endswith(ots) | significant["B"].str.endswith(ots)).sum())
    worse = int(worse_arm(significant).str.endswith(ots).sum())
    return (f"{involved} of the {len(significant)} per-finding differences that survived the false-discovery control "
            f"involve an off-the-shelf arm, and in {worse} of them the off-the-shelf arm is the worse one.")


REPORTED_SUMMARIES = (  # paper, the data it reports on, metric, reported.csv rows (a query)
    ("001", "ChestX-ray14, 14 findings, 5 resamplings", "mean AUROC",
     "paper == '001' and source == 'Table 3' and finding == 'Mean' and metric == 'auroc' "
     "and model in ['ResNet-50 OTS', 'ResNet-50 FT', 'ResNet-50-1channel']"),
    ("002", "CheXpert, patient level, 3 epochs", "mean AUROC",
     "paper == '002' and source in ['Table 4', 'Section 5.2.3 text'] and finding == 'Mean' and metric == 'auroc'"),
    ("003", "CheXpert, 14 observations, threshold 0.5 in its code (not stated in its text)", "macro F1",
     "paper == '003' and source in ['Table 1', 'Table 2'] and finding == 'Mean' and metric == 'f1_macro'"),
)


def reported_summaries(reported: pd.DataFrame) -> pd.DataFrame:
    """What papers 001-003 report for pretrained against scratch, or frozen against fully trained: one row per
    model (paper, data, metric, model, value), from book/reported.csv."""
    rows = [(paper, data, metric, model, value) for paper, data, metric, query in REPORTED_SUMMARIES
            for model, value in reported.query(query)[["model", "value"]].itertuples(index=False)]
    return pd.DataFrame(rows, columns=["paper", "data", "metric", "model (reported)", "value (reported)"])
