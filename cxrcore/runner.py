"""Run one experiment from a config and cache it on disk, so a rebuilt book reuses finished runs.

A run lives in `runs_dir/<key>/` where key = hash(canonical config JSON with the resolved preset, the manifest
file's content, the weights file's content, the source of the cxrcore package). The directory is written under
`runs_dir/.work-<key>/` (where a crashed run also resumes from its last epoch checkpoint) and renamed into place
when complete, so a run directory is either whole or absent.

CLI: `python -m cxrcore train CONFIG.json [--runs-dir D] [--force]`.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

import cxrcore
from cxrcore.atomic import atomic_write
from cxrcore.features import HeadOnly, feature_loaders
from cxrcore.manifest import load_manifest
from cxrcore.metrics import auroc_per_class, score_column
from cxrcore.models import build_model, load_model, save_model
from cxrcore.presets import Preset, get_preset, quick_profile_preset, with_overrides
from cxrcore.settings import settings
from cxrcore.train import fit, make_loader, predict

if TYPE_CHECKING:
    from cxrcore.datasets import ManifestDataset

LOSS_WEIGHTING = ("none", "pos_weight", "paper002")
ID_COLUMNS = {"path": str, "patient_id": str, "study_id": str}
CACHE_BYTES = 2 * 1024**3  # decoded images are kept in memory (decoded once per run) when they take less than this


@dataclass
class RunConfig:
    """Everything that defines one experiment (the JSON config of `python -m cxrcore train`)."""

    manifest: str  # manifest CSV (cxrcore.manifest schema)
    findings: list[str]
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
    profile: str | None = None  # quick | full (required to run); quick applies presets.quick_profile_preset()
    seed: int = 0
    train_split: str = "train"
    valid_split: str = "valid"
    test_split: str = "test"
    test_manifest: str | None = None  # test on another site's manifest (its test_split rows)
    views: list[str] | None = None  # keep only these views, e.g. ["frontal"]
    max_train_images: int | None = None  # random whole patients (seeded) up to this many images
    max_valid_images: int | None = None
    max_test_images: int | None = None
    normalization: str | list = "imagenet"  # imagenet | dataset (training images' statistics) | none | [mean, std]
    loss_weighting: str = "none"  # none | pos_weight (negatives/positives) | paper002 (3-class weights)
    num_workers: int = 0  # machinery only: not part of the key

    @classmethod
    def from_dict(cls, config: dict | RunConfig) -> RunConfig:
        """Build from a dict; unknown keys raise naming them and the valid ones."""
        if isinstance(config, RunConfig):
            return config
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(config) - set(names))
        if unknown:
            raise ValueError(f"unknown run config key(s) {unknown}; valid keys: {names}")
        missing = [name for name in ("manifest", "findings") if name not in config]
        if missing:
            raise ValueError(f"run config lacks required key(s) {missing}")
        run_config = cls(**config)
        if run_config.feature_cache and not run_config.freeze_backbone:
            raise ValueError("feature_cache=True needs freeze_backbone=True: only a frozen backbone's features are "
                             "the same every epoch")
        if run_config.loss_weighting not in LOSS_WEIGHTING:
            raise ValueError(f"loss_weighting={run_config.loss_weighting!r}: expected one of {LOSS_WEIGHTING}")
        return run_config

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
        raise ValueError("run config: 'profile' is missing (quick or full; `python -m cxrcore train` fills it from "
                         "$CXR_PROFILE)")
    profile = config.profile.lower()
    if profile not in ("quick", "full"):
        raise ValueError(f"profile={profile!r}: expected quick or full")
    preset = get_preset(config.preset)
    return with_overrides(quick_profile_preset(preset) if profile == "quick" else preset, config.overrides)


def _runs_dir(runs_dir: str | Path | None) -> Path:
    if runs_dir is None:
        raise ValueError("runs_dir is missing: pass the run cache folder (settings.runs_dir)")
    return Path(runs_dir)


def _resolve_weights(config: RunConfig, runs_dir: Path, *, execute: bool) -> tuple[str | None, str | None]:
    """(weights argument for build_model, content hash of the weights file or None)."""
    weights = config.weights
    if weights is None or weights == "imagenet":
        return weights, None
    if isinstance(weights, dict):
        if set(weights) != {"run"}:
            raise ValueError(f"weights dict must be {{'run': CONFIG}}, got keys {sorted(weights)}")
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
    return {"config": hashed, "preset": preset.to_dict(), "manifest": _file_hash(config.manifest),
            "test_manifest": _file_hash(config.test_manifest) if config.test_manifest else None,
            "weights": weights_hash, "code": code_hash()}


def run_key(config: dict | RunConfig, *, runs_dir: str | Path | None = None) -> str:
    """The cache key of a config (without running it)."""
    config = RunConfig.from_dict(config)
    material = _key_material(config, _runs_dir(runs_dir))
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:20]


# ---------------------------------------------------------------- data


def _limit_patients(rows: pd.DataFrame, max_images: int | None, seed: int) -> pd.DataFrame:
    """Whole patients in a seeded random order, up to max_images images."""
    if max_images is None or len(rows) <= max_images:
        return rows
    patients = rows["patient_id"].unique()
    order = np.random.default_rng(seed).permutation(len(patients))
    per_patient = rows.groupby("patient_id").size()
    cumulative = per_patient.loc[patients[order]].cumsum()
    keep = set(cumulative.index[cumulative <= max_images])
    return rows[rows["patient_id"].isin(keep)]


def _split_rows(manifest: pd.DataFrame, split: str, views: list[str] | None, limit: int | None, seed: int,
                source: str) -> pd.DataFrame:
    rows = manifest[manifest["split"] == split]
    if views is not None:
        rows = rows[rows["view"].isin(views)]
    rows = _limit_patients(rows, limit, seed).reset_index(drop=True)
    if rows.empty:
        raise ValueError(f"{source}: no images in split {split!r}" + (f" with views {views}" if views else ""))
    return rows


def _fits_in_memory(images: int, image_size: int) -> bool:
    """Whether a run's decoded images (uint8, with room for an augmentation's larger decode) fit CACHE_BYTES."""
    return images * (1.5 * image_size) ** 2 <= CACHE_BYTES


def _datasets(config: RunConfig, preset: Preset, data_root: Path) -> tuple:
    from cxrcore.datasets import AUGMENTATIONS, ManifestDataset

    if preset.augment not in (False, True, *AUGMENTATIONS):
        raise ValueError(f"preset {preset.name}: augmentation {preset.augment!r} is not implemented by "
                         f"cxrcore.datasets (it has {AUGMENTATIONS}); set overrides={{'augment': ...}} to choose one")

    manifest = load_manifest(config.manifest)
    test_source = load_manifest(config.test_manifest) if config.test_manifest else manifest
    tables = {
        "train": _split_rows(manifest, config.train_split, config.views, config.max_train_images, config.seed,
                             config.manifest),
        "valid": _split_rows(manifest, config.valid_split, config.views, config.max_valid_images, config.seed,
                             config.manifest),
        "test": _split_rows(test_source, config.test_split, config.views, config.max_test_images, config.seed,
                            config.test_manifest or config.manifest),
    }
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


def _loss_weights(config: RunConfig, train) -> dict:
    from cxrcore.losses import multiclass_weights, positive_weights

    if config.loss_weighting == "pos_weight":
        return {"pos_weight": positive_weights(train.targets, train.mask)}
    if config.loss_weighting == "paper002":
        if config.head != "multiclass3":
            raise ValueError("loss_weighting='paper002' needs head='multiclass3' (and policy 'u-multiclass')")
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


def _train(config: RunConfig, preset: Preset, weights: str | None, work: Path, data_root: Path, progress: bool) -> dict:
    """Train and test in `work`; returns the metrics dict (files written into `work`)."""
    start = time.perf_counter()
    train, valid, test = _datasets(config, preset, data_root)
    if (config.head == "multiclass3") == train.targets.dtype.is_floating_point:
        raise ValueError("head='multiclass3' and policy 'u-multiclass' (targets 0/1/2) go together; "
                         f"got head={config.head!r} with policy={config.policy!r}")
    model = build_model(config.arch, len(config.findings), channels=config.channels, large=config.large,
                        meta_features=3 if config.meta else 0, head=config.head, weights=weights,
                        freeze_backbone=config.freeze_backbone, seed=config.seed)
    loader = {"batch_size": preset.batch_size, "num_workers": config.num_workers, "seed": config.seed}
    cfg = preset.train_config(seed=config.seed, loss="multiclass3" if config.head == "multiclass3" else "bce",
                              checkpoint_dir=str(work / "checkpoints"), progress=progress)
    if config.feature_cache:
        trained, loaders = HeadOnly(model), feature_loaders(model, train, valid, device=cfg.device, **loader)
    else:
        trained, loaders = model, (make_loader(train, shuffle=True, **loader), make_loader(valid, **loader))
    history = fit(trained, *loaders, cfg=cfg, class_names=config.findings, **_loss_weights(config, train))
    predictions = predict(model, make_loader(test, **loader), class_names=config.findings, device=cfg.device)
    labels = predictions[config.findings]  # NaN where a label does not count (uncertain under u-multiclass)
    scores = predictions[[score_column(f) for f in config.findings]].to_numpy()
    aurocs = auroc_per_class(labels.fillna(0).to_numpy(), scores, labels.notna().to_numpy(), config.findings).to_dict()
    history.table.to_csv(work / "history.csv", index=False)
    predictions.to_csv(work / "predictions.csv", index=False)
    save_model(model, work / "model.pt", extra={"findings": list(config.findings), "best_epoch": history.best_epoch})
    shutil.rmtree(work / "checkpoints", ignore_errors=True)  # optimizer state is only needed to resume
    aurocs = {name: None if np.isnan(value) else float(value) for name, value in aurocs.items()}  # JSON: null
    valid_aurocs = [v for v in aurocs.values() if v is not None]
    return {"test_auroc": aurocs, "test_mean_auroc": float(np.mean(valid_aurocs)) if valid_aurocs else None,
            "best_epoch": history.best_epoch, "select_by": history.select_by,
            "images": {"train": len(train), "valid": len(valid), "test": len(test)},
            "normalization": {"mean": train.mean, "std": train.std},
            "weights": str(model.weights_report) if model.weights_report else "random initialisation",
            "elapsed_s": time.perf_counter() - start}


def run(config: dict | RunConfig, *, runs_dir: str | Path | None = None, force: bool = False,
        progress: bool = False) -> Result:
    """Train, validate and test one configured experiment, or read it back from the run cache."""
    config = RunConfig.from_dict(config)
    runs_dir = _runs_dir(runs_dir)
    key = run_key(config, runs_dir=runs_dir)
    final = runs_dir / key
    if final.is_dir() and not force:
        return _read_result(final, key)
    preset = _resolve_preset(config)
    weights, _ = _resolve_weights(config, runs_dir, execute=True)
    if not config.data_root:
        raise ValueError("run config: 'data_root' is missing (the folder with the sites' layouts)")
    data_root = Path(config.data_root)
    work = runs_dir / f".work-{key}"
    work.mkdir(parents=True, exist_ok=True)
    metrics = _train(config, preset, weights, work, data_root, progress)
    _write_json(work / "config.json", {"key": key, "run": config.to_dict(), "preset": preset.to_dict(),
                                       "data_root": str(data_root), "key_material": _key_material(config, runs_dir)})
    _write_json(work / "metrics.json", metrics)
    if final.is_dir():  # force: move the old run aside first so the new one appears in one rename
        trash = runs_dir / f".trash-{key}-{os.getpid()}"
        os.replace(final, trash)
        shutil.rmtree(trash)
    os.replace(work, final)
    result = _read_result(final, key)
    result.cached = False
    return result


def _saved_preset(saved: dict) -> Preset:
    """The resolved preset a finished run recorded in its config.json."""
    return Preset(**{**saved, "betas": tuple(saved["betas"]), "chosen": tuple(saved["chosen"])})


def evaluation_dataset(result: Result, split: str = "valid") -> ManifestDataset:
    """A finished run's validation or test images as its model saw them: no augmentation, the run's normalization
    (a `cxrcore.datasets.ManifestDataset`; items hold the normalized image, labels and ids)."""
    if split not in ("valid", "test"):
        raise ValueError(f"split must be 'valid' or 'test', got {split!r}")
    config = RunConfig.from_dict(result.config["run"])
    _, valid, test = _datasets(config, _saved_preset(result.config["preset"]), Path(result.config["data_root"]))
    return valid if split == "valid" else test


def predict_split(result: Result, split: str = "valid", *, device: str = "auto", num_workers: int = 0) -> pd.DataFrame:
    """A finished run's model on its own validation (or test) images: the per-image table of
    `cxrcore.train.predict`. Choose decision thresholds on "valid", never on "test"."""
    dataset = evaluation_dataset(result, split)
    loader = make_loader(dataset, batch_size=int(result.config["preset"]["batch_size"]), num_workers=num_workers,
                         seed=int(result.config["run"]["seed"]))
    return predict(result.load_model(), loader, class_names=dataset.findings, device=device)


# ---------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`python -m cxrcore train CONFIG.json [--runs-dir D] [--force]`."""
    parser.add_argument("config", type=Path, help="JSON file with a run config (keys of cxrcore.runner.RunConfig)")
    parser.add_argument("--runs-dir", type=Path, default=None, help="run cache (default $CXR_RUNS_DIR or ./runs)")
    parser.add_argument("--force", action="store_true", help="train again even if the run is cached")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def main(args: argparse.Namespace) -> int:
    """Run the configured experiment and print where it is and its test AUROC."""
    if not args.config.is_file():
        raise SystemExit(f"config file {args.config} not found")
    try:
        config = json.loads(args.config.read_text())
    except json.JSONDecodeError as err:
        raise SystemExit(f"{args.config}: not valid JSON ({err})") from err
    context = settings()  # the environment is read here, at the entry point, and passed down
    config = {"profile": context.profile, "data_root": str(context.data_root), **config}
    result = run(config, runs_dir=args.runs_dir or context.runs_dir, force=args.force, progress=not args.quiet)
    state = "cached" if result.cached else f"trained in {result.elapsed:.0f} s"
    print(f"run {result.key} ({state}): {result.run_dir}")
    print(result.history.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    for name, value in result.metrics["test_auroc"].items():
        print(f"test AUROC {name}: {value:.3f}" if value is not None else f"test AUROC {name}: undefined")
    mean = result.metrics["test_mean_auroc"]
    print(f"test mean AUROC: {mean:.3f}" if mean is not None else "test mean AUROC: undefined")
    return 0


__all__ = ["Result", "RunConfig", "add_arguments", "code_hash", "evaluation_dataset", "main", "predict_split",
           "resolved_preset", "run", "run_key"]
