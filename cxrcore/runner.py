"""Run one experiment from a config and cache it on disk, so a rebuilt book reuses finished runs.

A run lives in `runs_dir/<key>/` where key = hash(canonical config JSON with the resolved preset, the manifest
file's content, the weights file's content, the source of the cxrcore package). The directory is written under
`runs_dir/.work-<key>/` (where a crashed run also resumes from its last epoch checkpoint) and renamed into place
when complete, so a run directory is either whole or absent.

Before any work a config is checked field by field (`RunConfig`: type and range, the preset overrides included)
and every split's image files are checked to exist under the data root. One process at a time computes a key: it
holds `runs_dir/.work-<key>.lock` (`fcntl.flock`); a second process (or thread) running the same key waits for it,
saying so on stderr, then reads the finished run from the cache. The lock holder removes what dead writers left in
the work folder (atomic writes' `.NAME.XXXX.tmp` files, a forced rerun's `.trash-<key>-PID` folder); a failed run's
work folder is removed unless it holds an epoch checkpoint to resume from.

CLI: `python -m cxrcore train CONFIG.json [--runs-dir D] [--force]`.
"""
from __future__ import annotations

import argparse
import dataclasses
import fcntl
import hashlib
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist

import cxrcore
from cxrcore.atomic import atomic_write
from cxrcore.features import HeadOnly, feature_loaders
from cxrcore.findings import ALL_FINDINGS, NIH_TO_HARMONIZED, PATIENT_TARGETS, is_regression, resolve_policy
from cxrcore.manifest import FINAL_SPLITS, VIEWS, copies, load_manifest
from cxrcore.metrics import score_column, target_metrics
from cxrcore.models import ARCHS, HEADS, build_model, load_model, save_model
from cxrcore.presets import (
    SMOKE_TRAIN_SHARE,
    Preset,
    get_preset,
    profile_preset,
    smoke_profile_preset,
    with_overrides,
)
from cxrcore.settings import DATA_ROOT_ENV, PROFILES, settings
from cxrcore.train import SCHEDULERS, SELECT_BY, fit, make_loader, predict, process_group, resolve_device

if TYPE_CHECKING:
    from cxrcore.datasets import ManifestDataset

LOSS_WEIGHTING = ("none", "pos_weight", "paper002")
NORMALIZATIONS = ("imagenet", "dataset", "none")
MIN_IMAGE_SIZE = 32  # the smallest input DenseNet-121 and VGG-16 take (five halvings); twice that with `large`
ID_COLUMNS = {"path": str, "patient_id": str, "study_id": str}
# runs_dir's folder of the GPU path's uint8 image caches (cxrcore.image_cache), one subfolder per code hash: a cache
# is not keyed on the decoder, a run is (delete the old subfolders to free their space)
IMAGE_CACHE = "image-cache"
GPU_PATH_WORKERS = 4  # DataLoader workers of a run on the GPU path when its config sets none
CACHE_BYTES = 2 * 1024**3  # decoded images are kept in memory (decoded once per run) when they take less than this
SHOWN_MISSING = 5  # missing image files named in the error


# ---------------------------------------------------------------- config checks


def _bad(where: str, value: object, expected: str) -> ValueError:
    return ValueError(f"run config {where}={value!r}: expected {expected}")


def _whole(where: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _bad(where, value, f"a whole number >= {minimum}")
    return value


def _is_number(value: object) -> bool:
    """A finite int or float (an int is fine where a float is expected), not a bool."""
    return not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value)


def _real(where: str, value: object, expected: str, accept: Callable[[float], bool]) -> float:
    if not _is_number(value) or not accept(value):
        raise _bad(where, value, f"a number {expected}")
    return value


def _flag(where: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise _bad(where, value, "true or false")
    return value


def _choice(where: str, value: object, choices: Sequence) -> object:
    if isinstance(value, bool) or not isinstance(value, str | int) or value not in choices:
        raise _bad(where, value, f"one of {list(choices)}")
    return value


def _path_text(where: str, value: object) -> str:
    """A path as the JSON config writes it: a non-empty string (a pathlib.Path is turned into one)."""
    value = os.fspath(value) if isinstance(value, os.PathLike) else value
    if not isinstance(value, str) or not value.strip():
        raise _bad(where, value, "a path (a non-empty string)")
    return value


def _names(where: str, value: object, example: str) -> list[str]:
    """A non-empty list (or tuple) of distinct non-empty strings."""
    if not isinstance(value, list | tuple) or not value or not all(isinstance(v, str) and v for v in value):
        raise _bad(where, value, f"a non-empty list of names, e.g. {example}")
    repeated = sorted({v for v in value if value.count(v) > 1})
    if repeated:
        raise ValueError(f"run config {where}={list(value)!r}: {repeated} listed more than once; list each once")
    return list(value)


def _findings(value: object) -> list[str]:
    findings = _names("findings", value, '["Atelectasis", "Cardiomegaly"]')
    unknown = [f for f in findings if f not in ALL_FINDINGS and f not in PATIENT_TARGETS]
    if unknown:
        hints = [f"{f!r} is {NIH_TO_HARMONIZED[f]!r}" for f in unknown if f in NIH_TO_HARMONIZED]
        raise ValueError(f"run config findings: unknown finding(s) {unknown}"
                         + (f" (harmonized: {', '.join(hints)})" if hints else "")
                         + f"; a manifest's findings are named {ALL_FINDINGS}, and the patient targets "
                         f"{list(PATIENT_TARGETS)}")
    return findings


def _views(value: object) -> list[str] | None:
    if value is None:
        return None
    views = _names("views", value, '["frontal"]')
    unknown = [v for v in views if v not in VIEWS]
    if unknown:
        raise _bad("views", value, f"a list of views out of {list(VIEWS)}, e.g. ['frontal']")
    return views


def _normalization(value: object, channels: int) -> str | list:
    """"imagenet" | "dataset" | "none" | [mean, std] with 1 or `channels` values each (std > 0)."""
    if isinstance(value, str):
        return _choice("normalization", value, NORMALIZATIONS)

    def numbers(part: object) -> bool:
        return isinstance(part, list | tuple) and len(part) in (1, channels) and all(map(_is_number, part))

    if not (isinstance(value, list | tuple) and len(value) == 2 and all(map(numbers, value)) and min(value[1]) > 0):
        raise _bad("normalization", value, f"one of {list(NORMALIZATIONS)} or [mean, std], each a list of 1 or "
                                           f"{channels} numbers, std > 0, e.g. [[0.5], [0.25]]")
    return value


def _weights(value: object) -> str | dict | None:
    if value is None:
        return None
    if isinstance(value, str | os.PathLike):
        return _path_text("weights", value)
    if isinstance(value, dict) and set(value) == {"run"} and isinstance(value["run"], dict):
        try:
            RunConfig.from_dict(value["run"])
        except (ValueError, KeyError) as err:
            raise ValueError(f"run config weights['run'] (the run that gives the weights): {err.args[0]}") from err
        return value
    raise _bad("weights", value, 'null, "imagenet", a checkpoint path, "run:<key>" or {"run": {run config}}')


def _augment(where: str, value: object) -> object:
    from cxrcore.datasets import AUGMENTATIONS

    if value is True or value is False or isinstance(value, str) and value in AUGMENTATIONS:
        return value
    raise _bad(where, value, f"false, true (mild) or one of {list(AUGMENTATIONS)} (augmentations cxrcore.datasets "
                             "implements)")


def _betas(where: str, value: object) -> object:
    if not (isinstance(value, list | tuple) and len(value) == 2 and all(_is_number(b) and 0 <= b < 1 for b in value)):
        raise _bad(where, value, "a pair [beta1, beta2] of numbers in [0, 1), e.g. [0.9, 0.999]")
    return value


_OVERRIDE_CHECKS: dict[str, Callable[[str, object], object]] = {
    "lr": lambda where, v: _real(where, v, "> 0, e.g. 0.001", lambda x: x > 0),
    "batch_size": lambda where, v: _whole(where, v, 1),
    "epochs": lambda where, v: _whole(where, v, 1),
    "augment": _augment,
    "optimizer": lambda where, v: _choice(where, v, ("adam",)),  # the only one cxrcore.train implements
    "betas": _betas,
    "weight_decay": lambda where, v: _real(where, v, ">= 0", lambda x: x >= 0),
    "scheduler": lambda where, v: _choice(where, v, SCHEDULERS),
    "plateau_factor": lambda where, v: _real(where, v, "between 0 and 1 (exclusive)", lambda x: 0 < x < 1),
    "plateau_patience": lambda where, v: _whole(where, v, 0),
    "select_by": lambda where, v: _choice(where, v, SELECT_BY),
    "large": _flag,
}


def _overrides(value: object, preset: str, large: bool) -> dict:
    """Preset overrides checked for name (by presets.with_overrides), type and range."""
    if not isinstance(value, dict):
        raise _bad("overrides", value, 'an object of preset fields, e.g. {"epochs": 2, "lr": 0.001}')
    for name, override in value.items():
        where = f"overrides[{name!r}]"
        if name == "image_size":
            _whole(where, override, MIN_IMAGE_SIZE * (2 if large else 1))
        elif name in _OVERRIDE_CHECKS:
            _OVERRIDE_CHECKS[name](where, override)
    with_overrides(get_preset(preset), value)  # unknown names raise listing the valid ones
    return value


def _policy(value: object, findings: list[str]) -> list[str]:
    """One policy name per finding (cxrcore.findings.resolve_policy; patient targets have none), its errors naming
    the config field."""
    try:
        return resolve_policy(value, [f for f in findings if f not in PATIENT_TARGETS])
    except (TypeError, ValueError) as err:
        raise ValueError(f"run config policy={value!r}: {err} (a name, or an object finding -> name)") from err


@dataclass
class RunConfig:
    """Everything that defines one experiment (the JSON config of `python -m cxrcore train`).

    Creating one checks every field's type and range (and the preset overrides'), raising ValueError that names
    the field, the bad value and what is valid; JSON forms are fine (a list where a tuple is meant, an int for a
    float, a pathlib.Path for a path string).
    """

    manifest: str  # manifest CSV (cxrcore.manifest schema)
    findings: list[str]  # findings, and/or patient targets (cxrcore.findings.PATIENT_TARGETS: age, sex, projection)
    data_root: str | None = None  # image paths are relative to it (required to run; not part of the key)
    policy: str | dict = "u-ones"  # u-ones | u-zeros | u-ignore | u-multiclass, or {finding: policy}
    arch: str = "densenet121"
    channels: int = 3
    large: bool = False
    meta: bool = False  # fuse age, sex, projection (paper 001 "-meta")
    head: str = "linear"  # linear | paper003 | multiclass3
    weights: str | dict | None = None  # None | "imagenet" | checkpoint path | "run:<key>" | {"run": {config}}
    freeze_backbone: bool = False
    feature_cache: bool = False  # frozen backbone: train the head on features computed once (images not augmented)
    preset: str = "paper000"
    overrides: dict = field(default_factory=dict)  # preset fields replaced (lr, epochs, image_size, ...)
    profile: str | None = None  # quick | smoke | gpu | full (required to run): presets.profile_preset()
    seed: int = 0
    train_split: str = "train"
    valid_split: str = "valid"
    test_split: str = "test"
    test_manifest: str | None = None  # test on another site's manifest (its test_split rows)
    views: list[str] | None = None  # keep only these views, e.g. ["frontal"]
    max_train_images: int | None = None  # random whole patients (seeded) up to this many images
    max_valid_images: int | None = None
    max_test_images: int | None = None
    # training images drawn each epoch (a fresh draw without replacement, copies included); None: every row once.
    # Equal draws give an up-sampled run the plain run's gradient steps (the smoke profile scales it by its share).
    draws_per_epoch: int | None = None
    normalization: str | list = "imagenet"  # imagenet | dataset (training images' statistics) | none | [mean, std]
    loss_weighting: str = "none"  # none | pos_weight (negatives/positives) | paper002 (3-class weights)
    num_workers: int = 0  # machinery only: not part of the key

    def __post_init__(self) -> None:
        self.manifest = _path_text("manifest", self.manifest)
        self.findings = _findings(self.findings)
        self.data_root = None if self.data_root is None else _path_text("data_root", self.data_root)
        policies = _policy(self.policy, self.findings)
        _choice("arch", self.arch.lower() if isinstance(self.arch, str) else self.arch, ARCHS)  # any letter case
        _choice("channels", self.channels, (1, 3))
        for name in ("large", "meta", "freeze_backbone", "feature_cache"):
            _flag(name, getattr(self, name))
        _choice("head", self.head, HEADS)
        self.weights = _weights(self.weights)
        if not isinstance(self.preset, str):
            raise _bad("preset", self.preset, "a preset name (cxrcore.presets.PRESETS)")
        self.overrides = _overrides(self.overrides, self.preset, self.uses_large)
        if self.profile is not None and (not isinstance(self.profile, str) or self.profile.lower() not in PROFILES):
            raise _bad("profile", self.profile, f"one of {list(PROFILES)}")
        _whole("seed", self.seed, 0)
        for name in ("train_split", "valid_split", "test_split"):
            _choice(name, getattr(self, name), FINAL_SPLITS)
        self.test_manifest = None if self.test_manifest is None else _path_text("test_manifest", self.test_manifest)
        self.views = _views(self.views)
        for name in ("max_train_images", "max_valid_images", "max_test_images", "draws_per_epoch"):
            if getattr(self, name) is not None:
                _whole(name, getattr(self, name), 1)
        self.normalization = _normalization(self.normalization, self.channels)
        _choice("loss_weighting", self.loss_weighting, LOSS_WEIGHTING)
        _whole("num_workers", self.num_workers, 0)
        self._check_combinations(policies)

    @property
    def uses_large(self) -> bool:
        """Paper 001's "-large" network (the extra max-pool, twice the input side): asked for by the config's `large`
        or by its preset (paper001-large)."""
        return self.large or get_preset(self.preset).large

    def _check_combinations(self, policies: list[str]) -> None:
        """Fields that only work together."""
        if self.feature_cache and not self.freeze_backbone:
            raise ValueError("feature_cache=True needs freeze_backbone=True: only a frozen backbone's features are "
                             "the same every epoch")
        if self.arch.lower() == "metadata" and not (self.meta and self.weights is None and not self.freeze_backbone
                                                     and self.head == "linear" and not self.uses_large):
            raise ValueError("arch='metadata' (paper 001's MLP on age, sex and projection, no image) needs meta=True, "
                             "weights=null, freeze_backbone=false, head='linear' and no large input")
        patient = [f for f in self.findings if f in PATIENT_TARGETS]
        if patient and (self.meta or self.head == "multiclass3" or self.loss_weighting != "none"):
            raise ValueError(f"patient targets {patient} train with meta=False (a -meta model is given them as "
                             "input), the linear or paper003 head and loss_weighting='none'; got "
                             f"meta={self.meta}, head={self.head!r}, loss_weighting={self.loss_weighting!r}")
        if policies and (self.head == "multiclass3") != (policies[0] == "u-multiclass"):
            raise ValueError("head='multiclass3' and policy 'u-multiclass' (targets 0/1/2) go together; "
                             f"got head={self.head!r} with policy={self.policy!r}")
        if self.loss_weighting == "paper002" and self.head != "multiclass3":
            raise ValueError("loss_weighting='paper002' needs head='multiclass3' (and policy 'u-multiclass')")

    @classmethod
    def from_dict(cls, config: dict | RunConfig) -> RunConfig:
        """Build from a dict; unknown keys raise naming them and the valid ones, bad values as in the class doc."""
        if isinstance(config, RunConfig):
            return config
        if not isinstance(config, dict):
            raise ValueError(f"a run config is an object (dict) of RunConfig fields, got {type(config).__name__}")
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(config) - set(names))
        if unknown:
            raise ValueError(f"unknown run config key(s) {unknown}; valid keys: {names}")
        missing = [name for name in ("manifest", "findings") if name not in config]
        if missing:
            raise ValueError(f"run config lacks required key(s) {missing}")
        return cls(**config)

    def to_dict(self) -> dict:
        """Plain dict (JSON-able)."""
        return dataclasses.asdict(self)


@dataclass
class Result:
    """A finished run: history, per-image test predictions, metrics, checkpoint, config and timing."""

    key: str
    run_dir: Path
    config: dict
    history: pd.DataFrame
    predictions: pd.DataFrame
    metrics: dict
    checkpoint: Path
    elapsed: float  # seconds the run took when it was computed
    cached: bool  # True when read back from runs_dir

    def load_model(self):
        """The trained model (CPU)."""
        return load_model(self.checkpoint)


# ---------------------------------------------------------------- hashing


def _file_hash(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


_NOT_IN_RUN_KEY = {"plots.py", "cam.py", "bench.py", "cli.py", "__main__.py", "layers.py"}  # configs say it all


def code_hash() -> str:
    """sha256 over the cxrcore source files that shape a run (plotting, CAM and CLI files leave runs valid)."""
    digest = hashlib.sha256()
    for path in sorted(Path(cxrcore.__file__).parent.glob("*.py")):
        if path.name in _NOT_IN_RUN_KEY:
            continue
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def resolved_preset(config: dict | RunConfig) -> Preset:
    """The preset a run config trains with: its profile's version of the named preset, with the overrides."""
    return _resolve_preset(RunConfig.from_dict(config))


def _resolve_preset(config: RunConfig) -> Preset:
    if config.profile is None:
        raise ValueError("run config: 'profile' is missing (quick, smoke, gpu or full; `python -m cxrcore train` "
                         "fills it from $CXR_PROFILE)")
    preset = with_overrides(profile_preset(get_preset(config.preset), config.profile), config.overrides)
    return smoke_profile_preset(preset) if config.profile.lower() == "smoke" else preset


def _runs_dir(runs_dir: str | Path | None) -> Path:
    if runs_dir is None:
        raise ValueError("runs_dir is missing: pass the run cache folder (settings.runs_dir)")
    return Path(runs_dir)


def _resolve_weights(config: RunConfig, runs_dir: Path, *, execute: bool) -> tuple[str | None, str | None]:
    """(weights argument for build_model, content hash of the weights file or None)."""
    weights = config.weights
    if weights is None or weights == "imagenet":
        return weights, None
    if isinstance(weights, dict):  # {"run": config}, checked by RunConfig
        upstream = run(weights["run"], runs_dir=runs_dir) if execute else None
        key = upstream.key if upstream else run_key(weights["run"], runs_dir=runs_dir)
        path = runs_dir / key / "model.pt"
        return str(path), key  # the upstream key already hashes its config, data and code
    if isinstance(weights, str) and weights.startswith("run:"):
        path = runs_dir / weights.removeprefix("run:") / "model.pt"
        if not path.is_file():
            raise FileNotFoundError(f"weights {weights!r}: no finished run at {path.parent}")
        return str(path), _file_hash(path)
    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(f"weights checkpoint {path} does not exist")
    return str(path), _file_hash(path)


def _key_material(config: RunConfig, runs_dir: Path) -> dict:
    preset = _resolve_preset(config)
    _, weights_hash = _resolve_weights(config, runs_dir, execute=False)
    hashed = {k: v for k, v in config.to_dict().items() if k not in ("data_root", "num_workers", "profile")}
    return {"config": hashed, "preset": preset.to_dict(), "train_share": _train_share(config),
            "manifest": _file_hash(config.manifest),
            "test_manifest": _file_hash(config.test_manifest) if config.test_manifest else None,
            "weights": weights_hash, "code": code_hash()}


def run_key(config: dict | RunConfig, *, runs_dir: str | Path | None = None) -> str:
    """The cache key of a config (without running it)."""
    config = RunConfig.from_dict(config)
    material = _key_material(config, _runs_dir(runs_dir))
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:20]


# ---------------------------------------------------------------- data


def limit_patients(rows: pd.DataFrame, max_images: int | None, seed: int) -> pd.DataFrame:
    """Whole patients in a seeded random order, up to max_images images (each counted as often as it is drawn)."""
    drawn = copies(rows)
    if max_images is None or drawn.sum() <= max_images:
        return rows
    patients = rows["patient_id"].unique()
    order = np.random.default_rng(seed).permutation(len(patients))
    per_patient = drawn.groupby(rows["patient_id"]).sum()
    cumulative = per_patient.loc[patients[order]].cumsum()
    keep = set(cumulative.index[cumulative <= max_images])
    return rows[rows["patient_id"].isin(keep)]


def training_rows(config: dict | RunConfig) -> pd.DataFrame:
    """The manifest rows a run config trains on, a row drawn k times appearing k times: its manifest's split and
    views, whole patients up to its image cap, and its profile's share (without loading an image)."""
    config = RunConfig.from_dict(config)
    return _split_rows(load_manifest(config.manifest), config.train_split, config.views, config.max_train_images,
                       config.seed, config.manifest, _train_share(config))


def train_image_count(config: dict | RunConfig) -> int:
    """How many training images a run config trains on (`training_rows`, counted)."""
    return len(training_rows(config))


def _train_share(config: RunConfig) -> float:
    """The share of its training images a run trains on: all, or SMOKE_TRAIN_SHARE in the smoke profile."""
    return SMOKE_TRAIN_SHARE if (config.profile or "").lower() == "smoke" else 1.0


def _draws(config: RunConfig) -> int | None:
    """Training draws per epoch: the config's, cut by the profile's share like the training rows; None: every row."""
    if config.draws_per_epoch is None:
        return None
    return max(1, round(config.draws_per_epoch * _train_share(config)))


def _split_rows(manifest: pd.DataFrame, split: str, views: list[str] | None, limit: int | None, seed: int,
                source: str, share: float = 1.0) -> pd.DataFrame:
    """A split's rows (in the views asked for), whole patients up to `limit` images, then `share` of those; a row
    with `copies` > 1 (training only: the manifest's rule) appears that many times."""
    rows = manifest[manifest["split"] == split]
    if views is not None:
        rows = rows[rows["view"].isin(views)]
    if share < 1.0:  # the smoke profile: a share of what the quick profile would train on
        total = int(copies(rows).sum())
        limit = max(1, round(min(limit or total, total) * share))
    rows = limit_patients(rows, limit, seed)
    rows = rows.loc[rows.index.repeat(copies(rows))].reset_index(drop=True)
    if rows.empty:
        raise ValueError(f"{source}: no images in split {split!r}" + (f" with views {views}" if views else ""))
    return rows


def _fits_in_memory(images: int, image_size: int) -> bool:
    """Whether a run's decoded images (uint8, with room for an augmentation's larger decode) fit CACHE_BYTES."""
    return images * (1.5 * image_size) ** 2 <= CACHE_BYTES


def _check_images(tables: dict[str, pd.DataFrame], sources: dict[str, str], data_root: Path) -> None:
    """Every split's image files exist under data_root, else FileNotFoundError naming the missing ones (count, the
    first few, the manifest, the root), or saying the root is wrong when it holds none of them."""
    fix_root = (f"set the run config's data_root (`python -m cxrcore train` and the chapters take it from "
                f"${DATA_ROOT_ENV}) to the folder the manifest's paths are relative to")
    if not data_root.is_dir():
        raise FileNotFoundError(f"data root {data_root} is not a folder: the data root is wrong; {fix_root}")
    missing = {split: [p for p in rows["path"] if not (data_root / p).is_file()] for split, rows in tables.items()}
    count, total = sum(map(len, missing.values())), sum(map(len, tables.values()))
    if not count:
        return
    manifests = sorted(set(sources.values()))
    if count == total:
        first = data_root / next(iter(tables.values()))["path"].iloc[0]
        raise FileNotFoundError(f"data root {data_root} holds none of the {total} image files of manifest "
                                f"{', '.join(manifests)} (e.g. no {first}): the data root is wrong; {fix_root}")
    per_split = ", ".join(f"{split}: {len(paths)} of {len(tables[split])} ({sources[split]})"
                          for split, paths in missing.items() if paths)
    shown = [str(data_root / path) for paths in missing.values() for path in paths][:SHOWN_MISSING]
    raise FileNotFoundError(f"{count} of {total} image files of manifest {', '.join(manifests)} are missing under "
                            f"data root {data_root} ({per_split}); the first: {shown}. Restore them, or rebuild the "
                            "manifest without them (`python -m data_prep manifest ... --on-missing skip`)")


def split_tables(config: dict | RunConfig) -> dict[str, pd.DataFrame]:
    """The manifest rows of a run's "train", "valid" and "test" images, as its datasets read them (`training_rows`
    for the training split; the test rows from its test manifest when it has one), without loading an image."""
    config = RunConfig.from_dict(config)
    manifest = load_manifest(config.manifest)
    test_source = load_manifest(config.test_manifest) if config.test_manifest else manifest
    return {
        "train": _split_rows(manifest, config.train_split, config.views, config.max_train_images, config.seed,
                             config.manifest, _train_share(config)),
        "valid": _split_rows(manifest, config.valid_split, config.views, config.max_valid_images, config.seed,
                             config.manifest),
        "test": _split_rows(test_source, config.test_split, config.views, config.max_test_images, config.seed,
                            config.test_manifest or config.manifest),
    }


def _datasets(config: RunConfig, preset: Preset, data_root: Path) -> tuple:
    from cxrcore.datasets import ManifestDataset

    tables = split_tables(config)
    _check_images(tables, {"train": config.manifest, "valid": config.manifest,
                           "test": config.test_manifest or config.manifest}, data_root)
    common = {"data_root": data_root, "findings": config.findings, "policy": config.policy,
              "image_size": preset.image_size, "channels": config.channels,
              "cache": _fits_in_memory(sum(map(len, tables.values())), preset.image_size)}
    normalization = config.normalization if isinstance(config.normalization, str) else tuple(config.normalization)
    augment = False if config.feature_cache else preset.augment  # cached features are of the images as they are
    train = ManifestDataset(tables["train"], augment=augment, normalization=normalization, **common)
    fixed = (train.mean, train.std)  # "dataset" statistics come from the training images only
    valid = ManifestDataset(tables["valid"], augment=False, normalization=fixed, **common)
    test = ManifestDataset(tables["test"], augment=False, normalization=fixed, **common)
    return train, valid, test


def _trains_on_gpu(config: RunConfig) -> bool:
    """Whether a run takes the GPU path (uint8 image cache, augmentation on the device): it trains through its
    images on CUDA. On a CPU the PIL path stays: the batch path trains DenseNet-121 at 64 px about 8 % faster there
    (benchmarks appendix), but it draws other augmentations, so every quick-profile result would change."""
    return resolve_device("auto").type == "cuda" and not config.feature_cache


def _device_datasets(datasets: tuple, runs_dir: Path) -> tuple:
    """The datasets on the GPU path: each image decoded once into a uint8 cache under runs_dir/IMAGE_CACHE/<code
    hash> (with every core, by whichever rank of a torchrun job comes first while the others wait; later runs reuse
    it), augmented on the device."""
    from cxrcore.image_cache import device_dataset

    folder = runs_dir / IMAGE_CACHE / code_hash()[:16]
    return tuple(device_dataset(dataset, folder, workers=os.cpu_count() or 1) for dataset in datasets)


def _loss_weights(config: RunConfig, train) -> dict:
    from cxrcore.losses import multiclass_weights, positive_weights

    if config.loss_weighting == "pos_weight":
        return {"pos_weight": positive_weights(train.targets, train.mask)}
    if config.loss_weighting == "paper002":  # with head multiclass3, as RunConfig checks
        return {"class_weight": multiclass_weights(train.targets, train.mask)}
    return {}


# ---------------------------------------------------------------- running


def _read_result(run_dir: Path, key: str) -> Result:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return Result(key=key, run_dir=run_dir, config=json.loads((run_dir / "config.json").read_text()),
                  history=pd.read_csv(run_dir / "history.csv"),
                  predictions=pd.read_csv(run_dir / "predictions.csv", dtype=ID_COLUMNS),
                  metrics=metrics, checkpoint=run_dir / "model.pt", elapsed=float(metrics["elapsed_s"]), cached=True)


def _write_json(path: Path, payload: dict) -> None:
    atomic_write(path, lambda stream: stream.write(json.dumps(payload, indent=2, sort_keys=True, default=str)))


def _train(config: RunConfig, preset: Preset, weights: str | None, work: Path, datasets: tuple,
           progress: bool) -> dict:
    """Train and test in `work`; returns the metrics dict (files written into `work`)."""
    train, valid, test = datasets
    model = build_model(config.arch, len(config.findings), channels=config.channels, large=config.uses_large,
                        meta_features=3 if config.meta else 0, head=config.head, weights=weights,
                        freeze_backbone=config.freeze_backbone, seed=config.seed)
    # the GPU path's workers only slice a memory map and pin it: a few keep the GPU from waiting on the main process
    workers = config.num_workers or (GPU_PATH_WORKERS if hasattr(train, "to_model_input") else 0)
    loader = {"batch_size": preset.batch_size, "num_workers": workers, "seed": config.seed}
    cfg = preset.train_config(seed=config.seed, loss="multiclass3" if config.head == "multiclass3" else "bce",
                              checkpoint_dir=str(work / "checkpoints"), progress=progress)
    draws = _draws(config)
    if config.feature_cache:
        trained, loaders = HeadOnly(model), feature_loaders(model, train, valid, device=cfg.device, draws=draws,
                                                            **loader)
    else:
        lone = (draws or len(train)) % preset.batch_size == 1  # a batch of one image cannot train BatchNorm: dropped
        trained, loaders = model, (make_loader(train, shuffle=True, drop_last=lone, draws=draws, **loader),
                                   make_loader(valid, **loader))
    history = fit(trained, *loaders, cfg=cfg, class_names=config.findings, **_loss_weights(config, train))
    if process_group()[1] != 0:  # under torchrun, rank 0 alone tests and saves
        return {}
    predictions = predict(model, make_loader(test, **loader), class_names=config.findings, device=cfg.device,
                          split="test")
    labels = predictions[config.findings]  # NaN where a label does not count (uncertain under u-multiclass)
    scores = predictions[[score_column(f) for f in config.findings]].to_numpy()
    regression = [f for f in config.findings if is_regression(f)]
    aurocs, maes = target_metrics(labels.to_numpy(), scores, None, config.findings, regression)
    aurocs = aurocs.to_dict()
    history.table.to_csv(work / "history.csv", index=False)
    predictions.to_csv(work / "predictions.csv", index=False)
    save_model(model, work / "model.pt", extra={"findings": list(config.findings), "best_epoch": history.best_epoch})
    shutil.rmtree(work / "checkpoints", ignore_errors=True)  # optimizer state is only needed to resume
    aurocs = {name: None if np.isnan(value) else float(value) for name, value in aurocs.items()}  # JSON: null
    valid_aurocs = [v for v in aurocs.values() if v is not None]
    return {"test_auroc": aurocs, "test_mean_auroc": float(np.mean(valid_aurocs)) if valid_aurocs else None,
            "test_mae": {name: None if np.isnan(value) else float(value) for name, value in maes.items()},
            "best_epoch": history.best_epoch, "select_by": history.select_by,
            "images": {"train": len(train), "valid": len(valid), "test": len(test)},
            "draws_per_epoch": draws or len(train),
            "normalization": {"mean": train.mean, "std": train.std},
            "weights": str(model.weights_report) if model.weights_report else "random initialisation"}


@contextmanager
def _run_lock(runs_dir: Path, key: str) -> Iterator[None]:
    """Hold runs_dir/.work-<key>.lock exclusively (fcntl.flock: released by the kernel when a holder dies); another
    holder is waited for, saying so on stderr. The file is removed on release."""
    path = runs_dir / f".work-{key}.lock"
    runs_dir.mkdir(parents=True, exist_ok=True)
    while True:
        handle = open(path, "a")  # closed on release, below
        try:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                print(f"run {key}: another process is computing it (lock {path}); waiting for it", file=sys.stderr,
                      flush=True)
                fcntl.flock(handle, fcntl.LOCK_EX)
            if path.exists() and os.path.samestat(os.fstat(handle.fileno()), path.stat()):
                break
        except BaseException:
            handle.close()
            raise
        handle.close()  # the holder before us removed this file on release: lock the one at the path now
    try:
        yield
    finally:
        path.unlink(missing_ok=True)  # while holding it: a waiter on this file sees it gone and locks a new one
        handle.close()


def _work_folder(runs_dir: Path, key: str) -> Path:
    """The run's work folder, without what dead writers left: atomic writes' temporary files and a forced rerun's
    trash (only the lock holder writes there, so nothing of it is live); a resumable checkpoint is kept."""
    for trash in runs_dir.glob(f".trash-{key}-*"):
        shutil.rmtree(trash)
    work = runs_dir / f".work-{key}"
    for temporary in work.rglob(".*.tmp"):  # cxrcore.atomic's names: .NAME.XXXXXXXX.tmp
        temporary.unlink()
    work.mkdir(parents=True, exist_ok=True)
    return work


def _discard_unfinished(work: Path) -> None:
    """Remove a failed run's work folder, unless it holds the epoch checkpoint the next run resumes from."""
    if (work / "checkpoints" / "last.pt").is_file():
        print(f"kept {work}: the next run of this config resumes from its last epoch checkpoint", file=sys.stderr)
    else:
        shutil.rmtree(work, ignore_errors=True)


def _publish(work: Path, final: Path) -> None:
    """Rename the finished work folder into place (with force, moving the old run aside first: one rename)."""
    if final.is_dir():
        trash = final.parent / f".trash-{final.name}-{os.getpid()}"
        os.replace(final, trash)
        shutil.rmtree(trash)
    os.replace(work, final)


def _agreed(flag: bool) -> bool:
    """Rank 0's flag on every rank of a process group (torchrun); the flag itself outside one."""
    if not process_group()[0]:
        return flag
    payload = [flag]
    dist.broadcast_object_list(payload, src=0)
    return bool(payload[0])


def _barrier() -> None:
    if process_group()[0]:
        dist.barrier()


def _compute(config: RunConfig, runs_dir: Path, key: str, force: bool, progress: bool) -> bool:
    """Train the run into runs_dir/key under its lock; False when another process finished it meanwhile.

    Under torchrun every rank trains (DistributedDataParallel); rank 0 holds the lock, prepares the work folder, tests,
    writes and publishes, and the ranks meet before and after.
    """
    preset = _resolve_preset(config)
    weights, _ = _resolve_weights(config, runs_dir, execute=True)
    if not config.data_root:
        raise ValueError("run config: 'data_root' is missing (the folder with the sites' layouts)")
    data_root = Path(config.data_root)
    final = runs_dir / key
    lead = process_group()[1] == 0
    with _run_lock(runs_dir, key) if lead else nullcontext():
        if _agreed(final.is_dir() and not force):
            return False
        start = time.perf_counter()
        datasets = _datasets(config, preset, data_root)  # missing images are found here, before any work
        if _trains_on_gpu(config):
            datasets = _device_datasets(datasets, runs_dir)
        work = _work_folder(runs_dir, key) if lead else runs_dir / f".work-{key}"
        _barrier()  # the work folder is ready (a resumable checkpoint in it kept) before any rank reads it
        try:
            metrics = _train(config, preset, weights, work, datasets, progress)
            if lead:
                _write_json(work / "config.json", {"key": key, "run": config.to_dict(), "preset": preset.to_dict(),
                                                   "data_root": str(data_root),
                                                   "key_material": _key_material(config, runs_dir)})
                _write_json(work / "metrics.json", {**metrics, "elapsed_s": time.perf_counter() - start})
                _publish(work, final)
        except BaseException:
            if lead:
                _discard_unfinished(work)
            raise
        _barrier()  # every rank returns the published run
    return True


def run(config: dict | RunConfig, *, runs_dir: str | Path | None = None, force: bool = False,
        progress: bool = False) -> Result:
    """Train, validate and test one configured experiment, or read it back from the run cache.

    A bad config raises ValueError naming the field before any work; missing image files raise FileNotFoundError
    before the first epoch. A second process (or thread) running the same key at once waits for the first (an
    exclusive lock on runs_dir/.work-<key>.lock, a message on stderr), then reads its run from the cache (with
    force: trains again). A failed run leaves nothing in runs_dir, except a work folder with an epoch checkpoint,
    from which the next run of the config resumes.
    """
    config = RunConfig.from_dict(config)
    runs_dir = _runs_dir(runs_dir)
    key = run_key(config, runs_dir=runs_dir)
    final = runs_dir / key
    if _agreed(final.is_dir() and not force) or not _compute(config, runs_dir, key, force, progress):
        return _read_result(final, key)
    result = _read_result(final, key)
    result.cached = False
    return result


def _saved_preset(saved: dict) -> Preset:
    """The resolved preset a finished run recorded in its config.json."""
    return Preset(**{**saved, "betas": tuple(saved["betas"]), "chosen": tuple(saved["chosen"])})


def evaluation_dataset(result: Result, split: str = "valid", manifest: str | Path | None = None) -> ManifestDataset:
    """A finished run's validation or test images as its model saw them: no augmentation, the run's normalization
    (a `cxrcore.datasets.ManifestDataset`; items hold the normalized image, labels and ids). With `manifest`, that
    manifest's `split` images instead (another site's test images, say), prepared the same way."""
    if split not in ("valid", "test"):
        raise ValueError(f"split must be 'valid' or 'test', got {split!r}")
    config = RunConfig.from_dict(result.config["run"])
    if manifest is not None:  # the run's own training images still give "dataset" normalization its statistics
        config = dataclasses.replace(config, test_manifest=str(manifest), test_split=split, max_test_images=None)
        split = "test"
    _, valid, test = _datasets(config, _saved_preset(result.config["preset"]), Path(result.config["data_root"]))
    return valid if split == "valid" else test


def predict_split(result: Result, split: str = "valid", *, manifest: str | Path | None = None, device: str = "auto",
                  num_workers: int = 0) -> pd.DataFrame:
    """A finished run's model on its own validation (or test) images, or on another manifest's: the per-image table
    of `cxrcore.train.predict`. Choose decision thresholds on "valid", never on "test"."""
    dataset = evaluation_dataset(result, split, manifest)
    if resolve_device(device).type == "cuda":  # the GPU path, as runs train there: decoded once, normalized on the GPU
        dataset = _device_datasets((dataset,), result.run_dir.parent)[0]
    loader = make_loader(dataset, batch_size=int(result.config["preset"]["batch_size"]), num_workers=num_workers,
                         seed=int(result.config["run"]["seed"]))
    where = split if manifest is None else f"{split} of {manifest}"
    return predict(result.load_model(), loader, class_names=dataset.findings, device=device, split=where)


# ---------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`python -m cxrcore train CONFIG.json [--runs-dir D] [--force]`."""
    parser.add_argument("config", type=Path, help="JSON file with a run config (keys of cxrcore.runner.RunConfig)")
    parser.add_argument("--runs-dir", type=Path, default=None, help="run cache (default $CXR_RUNS_DIR or ./runs)")
    parser.add_argument("--force", action="store_true", help="train again even if the run is cached")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def _join_torchrun() -> bool:
    """Under `torchrun --nproc_per_node N` (WORLD_SIZE > 1): join the process group, NCCL on CUDA and gloo on CPU,
    each process on its own GPU; False when started as one plain process."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or process_group()[0]:
        return False
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return True


def main(args: argparse.Namespace) -> int:
    """Run the configured experiment and print where it is and its test AUROC (under torchrun: every process trains
    its share of each batch, rank 0 tests, saves and prints)."""
    if not args.config.is_file():
        raise SystemExit(f"config file {args.config} not found")
    try:
        config = json.loads(args.config.read_text())
    except json.JSONDecodeError as err:
        raise SystemExit(f"{args.config}: not valid JSON ({err})") from err
    if not isinstance(config, dict):
        raise SystemExit(f"{args.config}: expected a JSON object of run config fields, got {type(config).__name__}")
    context = settings()  # the environment is read here, at the entry point, and passed down
    config = {"profile": context.profile, "data_root": str(context.data_root), **config}
    try:
        RunConfig.from_dict(config)
    except (ValueError, KeyError) as err:  # a bad field: its message, without a traceback into the checks
        raise SystemExit(f"{args.config}: {err.args[0]}") from err
    joined = _join_torchrun()
    rank = process_group()[1]
    try:
        result = run(config, runs_dir=args.runs_dir or context.runs_dir, force=args.force, progress=not args.quiet)
    finally:
        if joined:
            dist.destroy_process_group()
    if rank != 0:
        return 0  # rank 0 reports
    state = "cached" if result.cached else f"trained in {result.elapsed:.0f} s"
    print(f"run {result.key} ({state}): {result.run_dir}")
    print(result.history.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    for name, value in result.metrics["test_auroc"].items():
        print(f"test AUROC {name}: {value:.3f}" if value is not None else f"test AUROC {name}: undefined")
    for name, value in result.metrics.get("test_mae", {}).items():
        print(f"test MAE {name}: {value:.2f}" if value is not None else f"test MAE {name}: undefined")
    mean = result.metrics["test_mean_auroc"]
    print(f"test mean AUROC: {mean:.3f}" if mean is not None else "test mean AUROC: undefined")
    return 0


__all__ = ["Result", "RunConfig", "add_arguments", "code_hash", "evaluation_dataset", "main", "predict_split",
           "resolved_preset", "run", "run_key"]
