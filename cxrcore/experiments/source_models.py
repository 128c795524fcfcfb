"""Experiment "source-models": each architecture trained from random weights on the ChestX-ray14 site.

The official test list, a patient-wise validation carve-out, its 14 findings, paper 000's fine-tuning recipe. These
are the pretrained weights of the transfer experiment wherever ImageNet weights are not in the local torch cache
(always in the quick profile), so both chapters define them here and find them in the same run cache.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy import stats

from cxrcore.experiments.tables import (
    RESULT_COLUMNS,
    bootstrap_draws,
    predictions_auroc_table,
    result_row,
    scored_findings,
)
from cxrcore.findings import NIH_HARMONIZED
from cxrcore.manifest import write_derived_manifest
from cxrcore.metrics import score_column
from cxrcore.models import build_model, target_layer
from cxrcore.runner import Result, evaluation_dataset, predict_split, run
from cxrcore.settings import Settings, quick_sized
from data_prep.manifests import assign_splits, read_nih

NAME = "source-models"
SOURCE_FINDINGS = list(NIH_HARMONIZED)
# Bajwa et al. (paper 000) start from a published DenseNet-121 already trained on ChestX-ray14 (CheXNet-Keras) and
# train it further on CheXpert and their hospital site with this recipe; here it trains each source from random weights
SOURCE_PRESET = "paper000"
ARMS = ("off-the-shelf", "fine-tuned", "from scratch")
QUICK_SOURCE_IMAGES = 1600  # training images of a source model in the quick profile (whole patients)
SPLIT_SEED = 0


@dataclass(frozen=True)
class Architecture:
    """One network of the comparison: its head and the preset of its paper for each arm."""

    name: str  # as the chapters print it
    short: str  # in plot labels
    arch: str
    head: str
    arms: tuple[str, ...]
    transfer_preset: str  # off-the-shelf and fine-tuned
    scratch_preset: str
    quick_share: float = 1.0  # share of the quick profile's training images (the same for all of its arms)

    def quick_images(self, images: int) -> int:
        """Training images of this architecture's runs in the quick profile."""
        return round(images * self.quick_share)


ARCHITECTURES = (
    # papers 001/002: off-the-shelf vs fine-tuned vs from scratch, one recipe for every arm: paper 000's, which
    # fine-tunes DenseNet-121 from one site to the next (paper 001 also gave its scratch arm 10x the lr: left out)
    Architecture("DenseNet-121", "DenseNet-121", "densenet121", "linear", ARMS, "paper000", "paper000"),
    Architecture("ResNet-50", "ResNet-50", "resnet50", "linear", ARMS, "paper000", "paper000"),
    # paper 003: VGG-16 + GAP + dense(1024) + ReLU + sigmoid head, frozen base vs full training (lr 1e-4)
    # VGG-16 costs 4-5 times DenseNet-121's compute per image (no BatchNorm, full-resolution 3x3 convolutions): on
    # two CPU cores the quick book can afford it an eighth of the images (benchmarks appendix)
    Architecture("VGG-16 (paper 003 head)", "VGG-16", "vgg16", "paper003", ARMS[:2], "paper003", "paper003",
                 quick_share=0.125),
)


def source_manifest(data_root: Path, out_dir: Path) -> Path:
    """The ChestX-ray14 manifest (official test list, 10 % patient-wise validation) under out_dir."""
    table = assign_splits(read_nih(data_root), "nih", SPLIT_SEED).reset_index(drop=True)
    return write_derived_manifest(table, out_dir / "transfer_source_nih.csv")


def source_config(architecture: Architecture, manifest: Path, data_root: Path, profile: str) -> dict:
    """Run config of a source model: random initialisation on the ChestX-ray14 site, 3 input channels."""
    return {"manifest": str(manifest), "findings": SOURCE_FINDINGS, "data_root": str(data_root),
            "arch": architecture.arch, "head": architecture.head, "channels": 3, "preset": SOURCE_PRESET,
            "policy": "u-ones", "seed": 0, "profile": profile,
            "max_train_images": architecture.quick_images(QUICK_SOURCE_IMAGES) if quick_sized(profile) else None}


def trainable_parameters(architecture: Architecture, num_classes: int, arm: str = "fine-tuned") -> int:
    """Parameters the optimizer updates in one arm (a source model trains every layer, like "fine-tuned")."""
    net = build_model(architecture.arch, num_classes, channels=1 if arm == "from scratch" else 3,
                      head=architecture.head, freeze_backbone=arm == "off-the-shelf")
    return sum(p.numel() for p in net.parameters() if p.requires_grad)


def configs(settings: Settings) -> dict[str, dict]:
    """Architecture name -> run config of its source model."""
    manifest = source_manifest(settings.data_root, settings.runs_dir / "manifests")
    return {a.name: source_config(a, manifest, settings.data_root, settings.profile) for a in ARCHITECTURES}


def stages(settings: Settings) -> list[list[dict]]:
    """One stage: the source models are independent of each other."""
    return [list(configs(settings).values())]


def results(settings: Settings) -> pd.DataFrame:
    """One row per source model (RESULT_COLUMNS), mean over the findings with >= 5 test positives."""
    rows = [result_row(NAME, name, "from scratch (source)", run(config, runs_dir=settings.runs_dir),
                       SOURCE_FINDINGS, bootstrap_draws(settings))
            for name, config in configs(settings).items()]
    return pd.DataFrame(rows, columns=RESULT_COLUMNS)


SILENT_IMAGES = 64  # test images `silent_channels` looks at (one batch through the network)


def silent_channels(result: Result, images: int = SILENT_IMAGES) -> float:
    """Share of the last feature maps' channels (what the head reads) that are zero on every one of the first
    `images` test images: units that carry nothing, e.g. ReLUs that died during training."""
    dataset = evaluation_dataset(result, "test")
    batch = torch.stack([dataset[i]["image"] for i in range(min(images, len(dataset)))])
    net = result.load_model().eval()
    captured = []
    hook = target_layer(net).register_forward_hook(lambda _module, _inputs, output: captured.append(output))
    with torch.no_grad():
        net(batch)
    hook.remove()
    maps = captured[0]  # (N, C, h, w)
    return float((maps.amax(dim=(0, 2, 3)) <= 0).float().mean())


COLLAPSED_SPREAD = 0.01  # a network whose test scores vary less than this gives every image the same answer


def health_table(results: dict[str, Result], findings: list[str]) -> pd.DataFrame:
    """Per model: how much its test scores vary (mean sd over findings), its silent last-layer channels and its
    last training loss; does a network tell the images apart at all?"""
    scores = [score_column(finding) for finding in findings]
    return pd.DataFrame({name: {"score spread (mean sd over findings)": result.predictions[scores].std().mean(),
                                "silent channels of the last layer": silent_channels(result),
                                "training loss, last epoch": result.history["loss"].iloc[-1]}
                         for name, result in results.items()}).T


def image_statistics(images: torch.Tensor) -> pd.DataFrame:
    """Per image (N, C, h, w) as a network reads it: mean intensity, and edge content (mean absolute difference
    between neighbouring pixels, across and down)."""
    pixels = images.float().mean(dim=1)  # (N, h, w)
    edges = pixels.diff(dim=1).abs().mean(dim=(1, 2)) + pixels.diff(dim=2).abs().mean(dim=(1, 2))
    return pd.DataFrame({"brightness": pixels.mean(dim=(1, 2)).numpy(), "edge content": edges.numpy()})


def drivers(scores: pd.DataFrame, images: pd.DataFrame) -> pd.Series:
    """What one model's scores (one column per finding) follow: how alike its findings rank the images (mean
    Spearman over pairs of findings), and the Spearman of its mean rank with each image statistic (rows aligned)."""
    pairs = scores.corr("spearman").to_numpy()[np.triu_indices(scores.shape[1], 1)]  # NaN where a column is constant
    ranks = scores.rank().mean(axis=1).to_numpy()
    return pd.Series({"findings ranking alike (mean Spearman)": float(np.nanmean(pairs)),
                      **{f"Spearman with {name}": float(stats.spearmanr(ranks, images[name])[0]) for name in images}})


def score_drivers(result: Result, findings: list[str], n_boot: int, images: int = 512) -> pd.Series:
    """`drivers` of a finished model over its first `images` test images, read as it read them, and its mean
    AUROC on its validation films: does a model that ranks the test films backwards do so on other films too?"""
    dataset = evaluation_dataset(result, "test")
    items = [dataset[i] for i in range(min(images, len(dataset)))]
    table = result.predictions.set_index("path").loc[[item["path"] for item in items]]
    found = drivers(table[[score_column(f) for f in findings]],
                    image_statistics(torch.stack([item["image"] for item in items])))
    valid = predict_split(result, "valid")
    mean = (predictions_auroc_table(valid, findings, n_boot).loc["Mean"] if scored_findings(valid, findings)
            else pd.Series({"auroc": np.nan, "low": np.nan, "high": np.nan}))  # too few validation positives
    return pd.concat([found, pd.Series({"validation mean AUROC": mean["auroc"], "validation low": mean["low"],
                                        "validation high": mean["high"]})])


def share_words(share: float) -> str:
    """A share of the training images in words: "half", "a quarter", "an eighth", else a percentage."""
    return {0.5: "half", 0.25: "a quarter", 0.125: "an eighth"}.get(share, f"{share:.0%}")


def backwards_reading(name: str, found: pd.Series) -> str:
    """What the chapter says of a model whose test interval lies below 0.5, from its `score_drivers`."""
    alike = found["findings ranking alike (mean Spearman)"]
    statistic = found[["Spearman with brightness", "Spearman with edge content"]].abs().idxmax()
    follows = f"the film's {statistic.removeprefix('Spearman with ')} (Spearman {found[statistic]:+.2f})"
    if alike > 0.95:
        what = (f"{name} gives every film one number: its outputs rank the test films alike (mean Spearman between "
                f"findings {alike:.3f}), and that number follows {follows}.")
    else:
        what = (f"{name}'s outputs rank the test films partly alike (mean Spearman between findings {alike:.2f}); "
                f"their mean rank follows {follows}.")
    if np.isnan(found["validation mean AUROC"]):
        return f"{what} Its validation films hold too few positives to tell whether it ranks other films backwards."
    valid = (f"On its validation films the same model scores {found['validation mean AUROC']:.3f} "
             f"({found['validation low']:.3f}-{found['validation high']:.3f})")
    if found["validation high"] < 0.5:
        return f"{what} {valid}, below 0.5 too: it has learned something that runs against the findings."
    if found["validation low"] > 0.5:
        return (f"{what} {valid}, wholly above 0.5: on other films it ranks them the right way round, so its backwards "
                "ranking of the test films is a property of that set, not knowledge turned around.")
    return (f"{what} {valid}, an interval that reaches 0.5: whether such scores put the films with a finding above or "
            "below the others depends on which films a set holds, so its backwards ranking of the test films is not "
            "knowledge turned around.")
