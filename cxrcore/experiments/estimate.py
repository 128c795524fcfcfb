"""`python -m cxrcore experiment NAME --estimate`: how long an experiment's runs would train on one GPU, before any of
them trains, from each run's FLOPs and the training rates measured on one GPU.

A run's seconds are its images times its FLOPs per image over the measured rate of its model family, plus a fixed
start-up: every epoch trains on its training images (forward and backward) and scores its validation images
(forward), then the test images are scored once. The rates are training FLOPs per second measured end to end on an
NVIDIA H100 (benchmarks appendix, "On a GPU"): for DenseNets, `python -m cxrcore bench` of DenseNet-121 at 320 px
through the GPU input path; for every other convolutional network (ResNets, VGG-16: dense convolutions, like
ResNets'), the runner's own ResNet-50 run at 224 px in the gpu profile, loader, augmentation, validation and logging
included. A run that trains a head on cached features costs one forward pass over its images. Evaluation on other
sites and CAMs are not counted. Checked against the nine runs measured there (paper 001's seven, leakage's two): from
69 % under to 59 % over per run, 4 % under in total.
"""
from __future__ import annotations

from functools import cache

import pandas as pd

from cxrcore.bench import training_flops
from cxrcore.experiments import experiment
from cxrcore.runner import RunConfig, resolved_preset, run_key, split_tables
from cxrcore.settings import Settings

# training images/s measured on one NVIDIA H100 80GB (2026-11-27, bf16 autocast, channels-last, benchmarks appendix
# "On a GPU"): (arch, input side, images/s). DenseNet: the bench's GPU-path pipeline, batch 64; other: the median
# epoch of the gpu profile's ResNet-50 run of paper 001 (batch 64, 7,001 training images, history.csv images_per_s)
MEASURED = {"densenet": ("densenet121", 320, 1_024.5), "other": ("resnet50", 224, 2_009.0)}
FORWARD_SHARE = 1 / 3  # a forward pass costs about a third of a training step (forward + backward)
RUN_START_S = 8.0  # per run: start-up, image cache, test scoring and writing (7-16 s measured, the median 8)


@cache
def flops_per_second(family: str) -> float:
    """The measured training FLOPs per second of a model family ("densenet" or "other") on the benchmark's GPU."""
    arch, side, images_per_second = MEASURED[family]
    return training_flops(arch, side) * images_per_second


@cache
def _step_flops(arch: str, side: int, channels: int, large: bool, meta: bool) -> float:
    return training_flops(arch, side, channels=channels, large=large, meta=meta)


def run_seconds(config: dict) -> dict:
    """A run's estimated GPU seconds with what they come from (epochs, images, training FLOPs per image)."""
    checked = RunConfig.from_dict(config)
    preset = resolved_preset(checked)
    images = {split: len(rows) for split, rows in split_tables(checked).items()}
    images["train"] = checked.draws_per_epoch or images["train"]
    flops = 0.0 if checked.arch == "metadata" else _step_flops(checked.arch, preset.image_size, checked.channels,
                                                              checked.uses_large, checked.meta)
    rate = flops_per_second("densenet" if checked.arch.startswith("densenet") else "other")
    if checked.feature_cache:  # features of every image once, then a head: forward passes only
        passes = (images["train"] + images["valid"] + images["test"]) * FORWARD_SHARE
    else:
        passes = preset.epochs * (images["train"] + images["valid"] * FORWARD_SHARE) + images["test"] * FORWARD_SHARE
    return {"arch": checked.arch, "side": preset.image_size, "batch": preset.batch_size, "epochs": preset.epochs,
            **{f"{split} images": count for split, count in images.items()},
            "GFLOP per image": flops / 1e9, "seconds": RUN_START_S + passes * flops / rate}


def estimate(names: list[str], settings: Settings) -> pd.DataFrame:
    """One row per run of the named experiments (a run several of them share counted once, in the first)."""
    rows, seen = [], set()
    for name in names:
        for stage in experiment(name).stages(settings):
            for config in stage:
                key = run_key(config, runs_dir=settings.runs_dir)
                if key not in seen:
                    seen.add(key)
                    rows.append({"experiment": name, "run": key, **run_seconds(config)})
    return pd.DataFrame(rows)


def summary(table: pd.DataFrame) -> pd.DataFrame:
    """Runs and estimated minutes per experiment, and in all."""
    per = table.groupby("experiment", sort=False).agg(runs=("run", "size"), seconds=("seconds", "sum"))
    per.loc["all"] = [per["runs"].sum(), per["seconds"].sum()]
    return per.assign(minutes=per["seconds"] / 60).round({"seconds": 0, "minutes": 1})
