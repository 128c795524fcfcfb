"""The transfer-learning experiment: source models trained on the ChestX-ray14 site, arms trained on CheXpert.

Two chapters share these definitions, so a source model trained by one is found in the run cache by the other:

* source: each architecture trained from random initialisation on the ChestX-ray14 layout (official test list,
  patient-wise validation carve-out, its 14 findings), paper 000's recipe. In the quick profile, and wherever the
  ImageNet weights are not in the local torch cache, these are the pretrained weights the arms start from.
* target: the CheXpert layout's frontal training images split patient-wise 70/10/20 (paper 001's resampling
  proportions), the five CheXpert competition findings under U-Ones (papers 001 and 003 use U-Ones).
* arms: off-the-shelf (pretrained backbone frozen, only the head trained), fine-tuned (all layers trained from the
  pretrained weights), from scratch (random initialisation, one input channel, paper 001's "1channel").
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cxrcore.findings import NIH_HARMONIZED
from cxrcore.models import build_model, imagenet_weights_file

TARGET_FINDINGS = ["Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion"]
SOURCE_FINDINGS = list(NIH_HARMONIZED)
TARGET_FRACTIONS = {"train": 0.7, "valid": 0.1, "test": 0.2}
ARMS = ("off-the-shelf", "fine-tuned", "from scratch")
ARM_ABBREVIATIONS = {"off-the-shelf": "OTS", "fine-tuned": "FT", "from scratch": "scratch"}  # paper 001's
SOURCE_PRESET = "paper000"  # Bajwa et al. train DenseNet-121 on ChestX-ray14 with this recipe
QUICK_SOURCE_IMAGES = 800  # training images of a source model in the quick profile (whole patients)
QUICK_TARGET_IMAGES = 400  # training images of an arm in the quick profile
SPLIT_SEED = 0


@dataclass(frozen=True)
class Model:
    """One architecture of the comparison: its head and the presets of its paper for each arm."""

    name: str  # as the chapters print it
    short: str  # in plot labels
    arch: str
    head: str
    arms: tuple[str, ...]
    transfer_preset: str  # off-the-shelf and fine-tuned
    scratch_preset: str


MODELS = (
    # papers 001/002: off-the-shelf vs fine-tuned vs from scratch, one recipe for every arm: paper 000's, which
    # fine-tunes DenseNet-121 from one site to the next (paper 001 also gave its scratch arm 10x the lr: left out)
    Model("DenseNet-121", "DenseNet-121", "densenet121", "linear", ARMS, "paper000", "paper000"),
    Model("ResNet-50", "ResNet-50", "resnet50", "linear", ARMS, "paper000", "paper000"),
    # paper 003: VGG-16 + GAP + dense(1024) + ReLU + sigmoid head, frozen base vs full training (lr 1e-4)
    Model("VGG-16 (paper 003 head)", "VGG-16", "vgg16", "paper003", ARMS[:2], "paper003", "paper003"),
)


def source_manifest(data_root: Path, out_dir: Path) -> Path:
    """The ChestX-ray14 manifest (official test list, 10 % patient-wise validation) under out_dir."""
    from data_prep.manifests import assign_splits, read_nih, write_derived_manifest

    table = assign_splits(read_nih(data_root), "nih", SPLIT_SEED).reset_index(drop=True)
    return write_derived_manifest(table, out_dir / "transfer_source_nih.csv")


def target_manifest(data_root: Path, out_dir: Path) -> Path:
    """CheXpert train.csv, frontal images, split patient-wise 70/10/20 (valid.csv is left out) under out_dir."""
    from data_prep.manifests import read_chexpert, write_derived_manifest
    from data_prep.splits import assert_patient_disjoint, split_patients

    table = read_chexpert(data_root)
    table = table[(table["split"] == "trainval") & (table["view"] == "frontal")].reset_index(drop=True)
    table["split"] = split_patients(table, TARGET_FRACTIONS, seed=SPLIT_SEED)
    assert_patient_disjoint(table)
    return write_derived_manifest(table, out_dir / "transfer_target_chexpert.csv")


def source_config(model: Model, manifest: Path, data_root: Path, quick: bool) -> dict:
    """Run config of the source model: random initialisation on the ChestX-ray14 site, 3 input channels."""
    return {"manifest": str(manifest), "findings": SOURCE_FINDINGS, "data_root": str(data_root),
            "arch": model.arch, "head": model.head, "channels": 3, "preset": SOURCE_PRESET, "policy": "u-ones",
            "seed": 0, "max_train_images": QUICK_SOURCE_IMAGES if quick else None}


def imagenet_available(arch: str) -> bool:
    """True when torchvision's ImageNet weights for arch lie in the local torch hub cache."""
    return imagenet_weights_file(arch)[0].is_file()


def pretrained_weights(model: Model, source: dict) -> str | dict:
    """"imagenet" when its weights are cached locally, else the source run (trained on demand by the runner)."""
    return "imagenet" if imagenet_available(model.arch) else {"run": source}


def input_channels(arm: str) -> int:
    """Grey image as 3 channels for pretrained weights (as ImageNet networks take it), 1 channel from scratch."""
    return 1 if arm == "from scratch" else 3


def trainable_parameters(model: Model, num_classes: int, arm: str = "fine-tuned") -> int:
    """Parameters the optimizer updates in one arm (a source model trains every layer, like "fine-tuned")."""
    net = build_model(model.arch, num_classes, channels=input_channels(arm), head=model.head,
                      freeze_backbone=arm == "off-the-shelf")
    return sum(p.numel() for p in net.parameters() if p.requires_grad)


def arm_config(model: Model, arm: str, manifest: Path, data_root: Path, quick: bool, source: dict) -> dict:
    """Run config of one arm on the CheXpert site."""
    if arm not in model.arms:
        raise ValueError(f"{model.name} has the arms {model.arms}, not {arm!r}")
    config = {"manifest": str(manifest), "findings": TARGET_FINDINGS, "data_root": str(data_root),
              "arch": model.arch, "head": model.head, "policy": "u-ones", "seed": 0,
              "max_train_images": QUICK_TARGET_IMAGES if quick else None}
    if arm == "from scratch":
        return {**config, "channels": input_channels(arm), "weights": None, "preset": model.scratch_preset}
    return {**config, "channels": input_channels(arm), "weights": pretrained_weights(model, source),
            "preset": model.transfer_preset,
            "freeze_backbone": arm == "off-the-shelf"}
