"""Experiment "source-models": each architecture trained from random weights on the ChestX-ray14 site.

The official test list, a patient-wise validation carve-out, its 14 findings, paper 000's recipe. These are the
pretrained weights of the transfer experiment wherever ImageNet weights are not in the local torch cache (always
in the quick profile), so both chapters define them here and find them in the same run cache.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from cxrcore.experiments.tables import RESULT_COLUMNS, bootstrap_draws, result_row
from cxrcore.findings import NIH_HARMONIZED
from cxrcore.manifest import write_derived_manifest
from cxrcore.metrics import score_column
from cxrcore.models import build_model, target_layer
from cxrcore.runner import Result, evaluation_dataset, run
from cxrcore.settings import Settings, quick_sized
from data_prep.manifests import assign_splits, read_nih

NAME = "source-models"
SOURCE_FINDINGS = list(NIH_HARMONIZED)
SOURCE_PRESET = "paper000"  # Bajwa et al. train DenseNet-121 on ChestX-ray14 with this recipe
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


def silent_channels(result: Result, images: int = 64) -> float:
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
