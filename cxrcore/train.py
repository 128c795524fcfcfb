"""One plain-PyTorch training loop for every chapter: Adam, ReduceLROnPlateau, best-epoch selection, checkpoints.

Runs on CPU, on one GPU (bf16 autocast, channels_last) and on several GPUs under
`torchrun --nproc_per_node N` (DistributedDataParallel; rank 0 validates, logs and saves).
"""
from __future__ import annotations

import dataclasses
import math
import os
import random
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, RandomSampler, Sampler
from torch.utils.data.distributed import DistributedSampler
from tqdm import tqdm

from cxrcore.findings import is_regression, target_scale
from cxrcore.losses import masked_bce, multiclass_ce
from cxrcore.metrics import predictions_frame, target_metrics
from cxrcore.models import atomic_save, probabilities, unwrap

SELECT_BY = ("val_loss", "mean_auroc", "last")
SCHEDULERS = ("plateau", "onecycle", "none")
# config fields that may differ between a crashed run and its resumption
_RESUME_FREE = {"epochs", "progress", "resume", "checkpoint_dir", "device", "compile"}
# an epoch whose mean training loss exceeds this multiple of the chance loss has diverged (see `fit`)
DIVERGED_FACTOR = 50.0
# On a GPU the training loop reads its images' and losses' finiteness back every this many steps, not every step:
# each read waits for the device, and two waits a step left it idle while the next kernels were launched.
GPU_CHECK_EVERY = 32


@dataclass
class TrainConfig:
    """Hyper-parameters and machinery switches of `fit`."""

    epochs: int = 10
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    scheduler: str = "plateau"  # plateau (on validation loss) | onecycle (warm-up, cosine decay, per step) | none
    plateau_factor: float = 0.1
    plateau_patience: int = 5
    warmup_fraction: float = 0.1  # onecycle: share of the steps spent raising the learning rate to lr
    select_by: str = "val_loss"  # which epoch's weights to keep: val_loss | mean_auroc | last
    loss: str = "bce"  # bce (sigmoid per finding) | multiclass3 (paper 002)
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "auto"  # auto (bf16 autocast on CUDA, fp32 on CPU) | fp32 | bf16
    channels_last: bool = True  # NHWC activations: faster on CUDA and on CPU (oneDNN), see the benchmarks appendix
    compile: bool = False  # torch.compile the model
    checkpoint_dir: str | None = None  # last.pt each epoch + best.pt; resume from last.pt after a crash
    resume: bool = True
    restore_best: bool = True  # load the selected epoch's weights into the model at the end
    progress: bool = True
    max_steps_per_epoch: int | None = None

    def __post_init__(self) -> None:
        if self.select_by not in SELECT_BY:
            raise ValueError(f"select_by={self.select_by!r}: expected one of {SELECT_BY}")
        if self.scheduler not in SCHEDULERS:
            raise ValueError(f"scheduler={self.scheduler!r}: expected one of {SCHEDULERS}")
        if not 0 < self.warmup_fraction < 1:
            raise ValueError(f"warmup_fraction={self.warmup_fraction}: expected a value between 0 and 1")
        if self.loss not in ("bce", "multiclass3"):
            raise ValueError(f"loss={self.loss!r}: expected 'bce' or 'multiclass3'")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ValueError(f"precision={self.precision!r}: expected auto, fp32 or bf16")
        self.betas = tuple(self.betas)

    def to_dict(self) -> dict:
        """Plain JSON-able dict (also stored in checkpoints)."""
        return {**dataclasses.asdict(self), "betas": list(self.betas)}


@dataclass
class History:
    """Per-epoch table (epoch, loss, val_loss, auroc_<finding>..., mae_<regression target> (age, in years)...,
    mean_auroc, lr, images_per_s, seconds)."""

    table: pd.DataFrame
    best_epoch: int
    select_by: str
    checkpoint_dir: Path | None = None

    @property
    def best(self) -> pd.Series:
        """The row of the selected epoch."""
        return self.table.set_index("epoch").loc[self.best_epoch]


# ---------------------------------------------------------------- helpers


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """auto -> this rank's GPU if CUDA is available (LOCAL_RANK under torchrun), else CPU."""
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return torch.device("cpu")
    return torch.device(name)


def process_group() -> tuple[bool, int, int]:
    """(joined, rank, world size) of torch.distributed's default process group; (False, 0, 1) outside one."""
    if dist.is_available() and dist.is_initialized():
        return True, dist.get_rank(), dist.get_world_size()
    return False, 0, 1


def _seed_worker(worker_id: int) -> None:
    # workers inherit a torch seed from the loader's generator; derive numpy/random from it for augmentations
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)  # noqa: NPY002 - legacy global RNG some augmentation libraries read
    random.seed(seed)


def item_seed(seed: int, epoch: int, index: int, repeat: int = 0) -> int:
    """The augmentation seed of dataset item `index` in one epoch of a run, drawn for the `repeat`-th time in that
    epoch (0 unless an epoch draws more items than there are): a function of these alone."""
    return int(np.random.SeedSequence([seed, epoch, index, repeat]).generate_state(1, np.uint64)[0] >> 1)


class EpochPermutation(Sampler):
    """A shuffled pass over `size` items, drawn from (seed, epoch) alone, as DistributedSampler draws it: a resumed
    run repeats the interrupted epoch's order whatever the loader's workers drew before. `draws` items an epoch
    (default `size`); more draws than items walk through several permutations."""

    def __init__(self, size: int, seed: int, draws: int | None = None) -> None:
        self.size, self.seed, self.draws, self.epoch = size, seed, size if draws is None else draws, 0

    def set_epoch(self, epoch: int) -> None:
        """The epoch whose order the next pass draws."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        epoch_seed = np.random.SeedSequence([self.seed, self.epoch]).generate_state(1, np.uint64)[0] >> 1
        generator = torch.Generator().manual_seed(int(epoch_seed))
        return iter(RandomSampler(range(self.size), num_samples=self.draws, generator=generator))

    def __len__(self) -> int:
        return self.draws


class ItemSeeds(Sampler):
    """Each index an inner sampler yields, paired with its augmentation seed (`item_seed`): an item is augmented
    the same way whichever worker loads it, so a resumed epoch repeats the interrupted one exactly, with persistent
    DataLoader workers too (their own RNG streams would not). `set_epoch` also reaches the inner sampler."""

    def __init__(self, indices: Sampler, seed: int) -> None:
        self.indices, self.seed, self.epoch = indices, seed, 0

    def set_epoch(self, epoch: int) -> None:
        """The epoch the next pass draws its seeds for."""
        self.epoch = epoch
        if hasattr(self.indices, "set_epoch"):
            self.indices.set_epoch(epoch)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        repeats: Counter[int] = Counter()
        for index in self.indices:
            yield index, item_seed(self.seed, self.epoch, index, repeats[index])
            repeats[index] += 1

    def __len__(self) -> int:
        return len(self.indices)


def make_loader(dataset: Dataset, *, batch_size: int, shuffle: bool = False, seed: int = 0, num_workers: int = 0,
                drop_last: bool = False, distributed: bool | None = None, device: str | torch.device | None = None,
                prefetch_factor: int | None = None, draws: int | None = None) -> DataLoader:
    """DataLoader with pinned memory on CUDA, persistent workers, and, when shuffled, an order drawn from (seed,
    epoch) alone (`EpochPermutation`, or DistributedSampler under DDP) and per-item augmentation seeds (`ItemSeeds`,
    for datasets that take them): what a resumed run needs to repeat an epoch exactly.

    `distributed=None`: under an initialised process group a shuffled (training) loader is sharded across the ranks;
    an evaluation loader (not shuffled) stays whole, because rank 0 alone validates and predicts on it.
    `draws`: a shuffled loader yields this many items an epoch, drawn without replacement (a fresh permutation each
    epoch; more draws than items walk through several), instead of every item once.
    """
    device = resolve_device("auto" if device is None else device)
    distributed = (process_group()[0] and shuffle) if distributed is None else distributed
    if draws is not None and (not shuffle or distributed or draws < 1):
        raise ValueError(f"draws={draws}: a whole number of draws per epoch needs shuffle=True and no "
                         f"DistributedSampler (shuffle={shuffle}, distributed={distributed})")
    generator = torch.Generator().manual_seed(seed)
    sampler = None
    if distributed:
        _, rank, world = process_group()
        sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=shuffle, seed=seed,
                                     drop_last=drop_last)
    elif shuffle:
        sampler = EpochPermutation(len(dataset), seed, draws)
    if sampler is not None and shuffle and getattr(dataset, "takes_item_seeds", False):
        sampler = ItemSeeds(sampler, seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, sampler=sampler,
                      num_workers=num_workers, pin_memory=device.type == "cuda", drop_last=drop_last,
                      persistent_workers=num_workers > 0, generator=generator,
                      worker_init_fn=_seed_worker if num_workers > 0 else None,
                      prefetch_factor=prefetch_factor if num_workers > 0 else None)


def _rng_state(loader: DataLoader) -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "loader": loader.generator.get_state() if loader.generator is not None else None}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict, loader: DataLoader) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_as_tuple(state["python"]))
    if state.get("loader") is not None and loader.generator is not None:
        loader.generator.set_state(state["loader"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(value: object) -> object:
    return tuple(_as_tuple(v) for v in value) if isinstance(value, list | tuple) else value


def _batch_to(batch: dict, device: torch.device, channels_last: bool, prepare: Callable | None = None
              ) -> tuple[torch.Tensor, ...]:
    """Images, targets, masks and non-image features on the device; `prepare` (a dataset's `to_model_input`) turns
    a uint8 batch into the model's input there (datasets.DeviceAugmentedDataset)."""
    images = batch["image"]  # (B, C, H, W), or (B, F) backbone features (cxrcore.features), or uint8 (B, 1, S, S)
    if prepare is not None:
        images = prepare(images.to(device, non_blocking=True), batch.get("seed"))
    memory_format = torch.channels_last if channels_last and images.ndim == 4 else torch.contiguous_format
    images = images.to(device, non_blocking=True, memory_format=memory_format)
    target = batch["target"].to(device, non_blocking=True)  # (B, K) float, or long for multiclass3
    mask = batch["mask"].to(device, non_blocking=True)  # (B, K)
    features = batch.get("features")
    features = features.to(device, non_blocking=True) if features is not None else None  # (B, 3)
    return images, target, mask, features


class _StepChecks:
    """The training steps' image and loss finiteness, kept on the device and read back every `every` steps (at the
    latest at the epoch's end); raises as the per-step checks would, naming the first bad step."""

    def __init__(self, epoch: int, every: int, lr: float) -> None:
        self.epoch, self.every, self.lr = epoch, every, lr
        self.pending: list[tuple[int, torch.Tensor, torch.Tensor, list]] = []  # (step, (B,) images finite, loss, paths)

    def add(self, step: int, images: torch.Tensor, loss: torch.Tensor, batch: dict) -> None:
        """Queue a step's checks; read them back when `every` steps are queued."""
        finite = torch.isfinite(images).flatten(1).all(dim=1)  # (B,) bool, on the device
        self.pending.append((step, finite, loss.detach(), list(batch.get("path", []))))
        if len(self.pending) >= self.every:
            self.check()

    def check(self) -> None:
        """Read the queued steps back (one wait for the device) and raise at the first bad one."""
        if not self.pending:
            return
        status = torch.stack([torch.stack([finite.all(), torch.isfinite(loss)])
                              for _, finite, loss, _ in self.pending]).tolist()  # (steps, 2) bools
        for (step, finite, loss, paths), (images_ok, loss_ok) in zip(self.pending, status, strict=True):
            if not images_ok:
                _raise_bad_images(finite, paths, f"in the training batch at epoch {self.epoch}, step {step}")
            if not loss_ok:
                raise FloatingPointError(f"training diverged: the loss is {float(loss)} at epoch {self.epoch}, "
                                         f"step {step} (its {len(finite)} images are finite); lower the learning "
                                         f"rate (lr={self.lr:g})")
        self.pending.clear()


def _raise_bad_images(finite: torch.Tensor, paths: Sequence[str], where: str) -> None:
    """Raise naming the images of a batch whose (B,) `finite` flag is False."""
    bad = (~finite).nonzero().flatten().tolist()
    named = list(paths) or [f"batch item {i}" for i in range(len(finite))]
    raise FloatingPointError(f"{len(bad)} image(s) with NaN/inf pixel values {where}: {[named[i] for i in bad]}; "
                             "check those files (a float image holding NaN, or a normalization std of 0)")


def _check_images(images: torch.Tensor, batch: dict, where: str) -> None:
    """Raise naming the images of a batch that hold NaN/inf values (one test per batch, per image only on failure)."""
    if bool(torch.isfinite(images.sum())):  # one reduction (5x cheaper than isfinite().all()): NaN/inf propagate
        return
    finite = torch.isfinite(images.flatten(1)).all(dim=1)
    if not bool(finite.all()):  # else the sum of finite values overflowed
        _raise_bad_images(finite, list(batch.get("path", [])), where)


def _check_scores(prob: np.ndarray, ids: dict, split: str) -> None:
    """Raise naming the images whose predicted probabilities are NaN/inf (their pixels were checked finite)."""
    bad = np.flatnonzero(~np.isfinite(prob.reshape(len(prob), -1)).all(axis=1))
    if bad.size:
        paths = [ids["path"][i] for i in bad[:5]]
        raise FloatingPointError(f"the model gives NaN/inf scores for {bad.size} of the {len(prob)} {split} images, "
                                 f"first {paths}; their pixels are finite, so the model's weights hold NaN/inf "
                                 "(a diverged run or a corrupt checkpoint): retrain with a lower learning rate")


def _forward(model: nn.Module, images: torch.Tensor, features: torch.Tensor | None, uses_meta: bool) -> torch.Tensor:
    return model(images, features) if uses_meta else model(images)


class _Criterion:
    """The training loss and the validation loss for cfg.loss."""

    def __init__(self, kind: str, pos_weight: torch.Tensor | None, class_weight: torch.Tensor | None, device):
        self.kind = kind
        self.pos_weight = pos_weight.to(device) if pos_weight is not None else None
        self.class_weight = class_weight.to(device) if class_weight is not None else None

    def train(self, logits, target, mask) -> torch.Tensor:
        if self.kind == "multiclass3":
            return multiclass_ce(logits, target, mask, self.class_weight)
        return masked_bce(logits, target, mask, pos_weight=self.pos_weight, class_weight=self.class_weight)

    def valid(self, logits, target, mask) -> torch.Tensor:
        if self.kind == "multiclass3":  # paper 002: uncertain masked out, softmax over negative/positive
            return multiclass_ce(logits, target, mask, binary_only=True)
        return masked_bce(logits, target, mask, pos_weight=self.pos_weight, class_weight=self.class_weight)


# ---------------------------------------------------------------- evaluation


@torch.no_grad()
def _collect(model: nn.Module, loader: DataLoader, device: torch.device, *, autocast: bool, channels_last: bool,
             split: str, criterion: _Criterion | None = None) -> dict:
    """Run the model over a loader: probabilities, targets, masks, ids and (optionally) the mean loss.

    NaN/inf images or scores raise a FloatingPointError naming `split` and the images' paths.
    """
    uses_meta = bool(getattr(unwrap(model), "meta_features", 0))
    was_training = model.training
    model.eval()
    probs, targets, masks, ids = [], [], [], {"path": [], "patient_id": [], "study_id": []}
    loss_sum, loss_weight = 0.0, 0.0
    prepare = getattr(loader.dataset, "to_model_input", None)
    for batch in loader:
        images, target, mask, features = _batch_to(batch, device, channels_last, prepare)
        _check_images(images, batch, f"in the {split} images")
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            logits = _forward(model, images, features, uses_meta)
        if criterion is not None:
            counted = float(mask.sum()) if criterion.kind == "bce" else float((mask * (target != 2)).sum())
            loss_sum += float(criterion.valid(logits, target, mask)) * counted
            loss_weight += counted
        probs.append(probabilities(logits).cpu())
        targets.append(target.cpu())
        masks.append(mask.cpu())
        for key in ids:
            ids[key].extend(batch.get(key, [""] * len(images)))
    model.train(was_training)
    prob = torch.cat(probs).numpy()
    _check_scores(prob, ids, split)
    return {"prob": prob, "target": torch.cat(targets).numpy(), "mask": torch.cat(masks).numpy(), "ids": ids,
            "loss": loss_sum / loss_weight if loss_weight else float("nan"), "counted": loss_weight}


def _binary_view(target: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Targets/masks for AUROC: multiclass targets (0/1/2) count only where not uncertain."""
    if np.issubdtype(target.dtype, np.integer):
        return (target == 1).astype(float), mask * (target != 2)
    return target, mask


def _in_units(names: Sequence[str], target: np.ndarray, prob: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Targets and outputs (N, K) in each target's units (age in years, the rest as they are), and the names of
    the regression targets among `names`."""
    scale = np.array([target_scale(name) for name in names], dtype=float)  # (K,)
    return target * scale, prob * scale, [name for name in names if is_regression(name)]


def predict(model: nn.Module, loader: DataLoader, *, class_names: Sequence[str] | None = None,
            device: str | torch.device = "auto", precision: str = "auto", split: str = "predicted") -> pd.DataFrame:
    """Per-image table in cxrcore.metrics' format: path, patient_id, study_id, <finding> (label 0/1, NaN where not
    counted; uncertain under u-multiclass), <finding>_score (probability).

    A NaN/inf image or score raises a FloatingPointError naming `split` (e.g. "test") and the images' paths.
    """
    device = resolve_device(device) if isinstance(device, str) else device
    model = model.to(device)
    autocast = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    out = _collect(model, loader, device, autocast=autocast, channels_last=False, split=split)
    names = list(class_names) if class_names is not None else [f"class_{k}" for k in range(out["prob"].shape[1])]
    target, mask = _binary_view(out["target"], out["mask"])
    target, prob, regression = _in_units(names, target, out["prob"])
    return predictions_frame(target, prob, names, ids=out["ids"], mask=mask, regression=regression)


# ---------------------------------------------------------------- training


def _checkpoint_paths(cfg: TrainConfig) -> tuple[Path | None, Path | None]:
    if cfg.checkpoint_dir is None:
        return None, None
    root = Path(cfg.checkpoint_dir)
    return root / "last.pt", root / "best.pt"


def _improved(select_by: str, value: float, best: float | None) -> bool:
    if select_by == "last" or best is None:
        return True
    if math.isnan(value):
        return False
    return value < best if select_by == "val_loss" else value > best


def _check_resume_config(saved: dict, cfg: TrainConfig, path: Path) -> None:
    current = cfg.to_dict()
    differs = [key for key in current if key not in _RESUME_FREE and saved.get(key) != current[key]]
    if differs:
        raise ValueError(f"{path} was written with a different training config ({', '.join(differs)}); "
                         "delete it or point checkpoint_dir elsewhere to start afresh")


class _Trainer:
    """State of one `fit` call; methods are the loop's steps."""

    def __init__(self, model: nn.Module, train_loader: DataLoader, valid_loader: DataLoader, cfg: TrainConfig,
                 class_names: Sequence[str] | None, pos_weight, class_weight):
        self.cfg = cfg
        self.distributed, self.rank, self.world = process_group()
        self.device = resolve_device(cfg.device)
        self.autocast = cfg.precision == "bf16" or (cfg.precision == "auto" and self.device.type == "cuda")
        self.channels_last = cfg.channels_last
        self.plain = unwrap(model).to(self.device)  # saved / evaluated; `self.model` is what trains
        if self.channels_last:
            self.plain = self.plain.to(memory_format=torch.channels_last)
        self.uses_meta = bool(getattr(self.plain, "meta_features", 0))
        self.model: nn.Module = self.plain
        if self.distributed:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = nn.parallel.DistributedDataParallel(self.plain, device_ids=device_ids)
        if cfg.compile:
            self.model = torch.compile(self.model)
        self.train_loader, self.valid_loader = train_loader, valid_loader
        self.prepare = getattr(train_loader.dataset, "to_model_input", None)  # the GPU path's batch augmentation
        self.class_names = list(class_names) if class_names is not None else None
        self.criterion = _Criterion(cfg.loss, pos_weight, class_weight, self.device)
        params = [p for p in self.plain.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
        self.scheduler = self._scheduler()
        self.records: list[dict] = []
        self.best_epoch, self.best_metric, self.best_state = 0, None, None
        self.start_epoch = 1
        self.last_path, self.best_path = _checkpoint_paths(cfg)

    def steps_per_epoch(self) -> int:
        steps = len(self.train_loader)
        return steps if self.cfg.max_steps_per_epoch is None else min(steps, self.cfg.max_steps_per_epoch)

    def _scheduler(self):
        if self.cfg.scheduler == "plateau":
            return torch.optim.lr_scheduler.ReduceLROnPlateau(
                self.optimizer, mode="min", factor=self.cfg.plateau_factor, patience=self.cfg.plateau_patience)
        total = self.cfg.epochs * self.steps_per_epoch()
        warmup = max(2, round(self.cfg.warmup_fraction * total))  # OneCycleLR needs two steps in each phase
        if self.cfg.scheduler == "onecycle" and total >= warmup + 2:  # stepped after every batch; betas left alone
            return torch.optim.lr_scheduler.OneCycleLR(
                self.optimizer, max_lr=self.cfg.lr, total_steps=total, pct_start=warmup / total,
                anneal_strategy="cos", cycle_momentum=False)
        return None  # also a one-cycle run too short to have one (a few steps: the fixed rate)

    # -- persistence
    def resume(self) -> None:
        if not (self.cfg.resume and self.last_path is not None and self.last_path.is_file()):
            return
        checkpoint = torch.load(self.last_path, map_location=self.device, weights_only=True)
        _check_resume_config(checkpoint["config"], self.cfg, self.last_path)
        self.plain.load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(checkpoint["scheduler"])
        self.records = list(checkpoint["history"])
        self.best_epoch, self.best_metric = checkpoint["best_epoch"], checkpoint["best_metric"]
        if self.best_path is not None and self.best_path.is_file():
            self.best_state = torch.load(self.best_path, map_location="cpu", weights_only=True)["model"]
        _set_rng_state(checkpoint["rng"], self.train_loader)
        self.start_epoch = checkpoint["epoch"] + 1

    def save(self, epoch: int, improved: bool) -> None:
        if self.rank != 0 or self.last_path is None:
            return
        if improved:
            atomic_save({"model": self.plain.state_dict(), "epoch": epoch}, self.best_path)
        atomic_save({"model": self.plain.state_dict(), "optimizer": self.optimizer.state_dict(),
                     "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
                     "epoch": epoch, "history": self.records, "best_epoch": self.best_epoch,
                     "best_metric": self.best_metric, "rng": _rng_state(self.train_loader),
                     "config": self.cfg.to_dict()}, self.last_path)

    # -- one epoch
    def train_epoch(self, epoch: int) -> tuple[float, float, float, float]:
        """Mean training loss (over ranks), its chance loss (logits 0 on the same labels), images/s and seconds."""
        if hasattr(self.train_loader.sampler, "set_epoch"):  # EpochPermutation, ItemSeeds, DistributedSampler
            self.train_loader.sampler.set_epoch(epoch)
        self.model.train()
        images_seen, start = 0, time.perf_counter()
        # sums kept as device tensors: reading them per step would make the CPU wait for the GPU every step
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        chance_sum = torch.zeros((), device=self.device)
        checks = _StepChecks(epoch, GPU_CHECK_EVERY if self.device.type == "cuda" else 1, self.cfg.lr)
        total = self.steps_per_epoch()
        bar = tqdm(total=total, desc=f"epoch {epoch}/{self.cfg.epochs}", leave=False, mininterval=1.0,
                   disable=not self.cfg.progress or self.rank != 0)
        for step, batch in enumerate(self.train_loader, start=1):
            images, target, mask, features = _batch_to(batch, self.device, self.channels_last, self.prepare)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
                logits = _forward(self.model, images, features, self.uses_meta)
            loss = self.criterion.train(logits, target, mask)
            checks.add(step, images, loss, batch)  # on the CPU: checked now, before the step changes the weights
            chance_sum += self.criterion.train(torch.zeros_like(logits), target, mask).detach() * len(images)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            if self.cfg.scheduler == "onecycle" and self.scheduler is not None:
                self.scheduler.step()
            loss_sum += loss.detach().double() * len(images)
            images_seen += len(images)
            bar.update(1)
            if not checks.pending:  # just read back: the device has caught up, so reading the loss costs no wait
                elapsed = time.perf_counter() - start
                bar.set_postfix(loss=f"{float(loss_sum) / images_seen:.4f}",
                                img_s=f"{images_seen * self.world / elapsed:.1f}")
            if step >= total:
                break
        checks.check()
        bar.close()
        seconds = time.perf_counter() - start
        totals = torch.stack([loss_sum, torch.tensor(float(images_seen), dtype=torch.float64, device=self.device),
                              chance_sum.double()])
        if self.distributed:
            dist.all_reduce(totals)
        loss_sum, images_all, chance_sum = totals.tolist()
        return loss_sum / max(images_all, 1.0), chance_sum / max(images_all, 1.0), images_all / seconds, seconds

    def check_diverged(self, epoch: int, loss: float, chance: float) -> None:
        """Stop a run whose training loss diverged (the rule is in `fit`'s docstring)."""
        if loss > DIVERGED_FACTOR * chance:
            raise FloatingPointError(
                f"training diverged at epoch {epoch}: mean training loss {loss:.3g} is {loss / chance:.0f} times the "
                f"loss of predicting 0.5 for every label ({chance:.3g}; the limit is {DIVERGED_FACTOR:g} times); "
                f"lower the learning rate (lr={self.cfg.lr:g}, try {self.cfg.lr / 10:g})")

    def check_validation(self, epoch: int, val: dict) -> None:
        """Stop a run whose validation loss is NaN/inf where labels count (before it is saved or selected)."""
        if val["val_counted"] and not math.isfinite(val["val_loss"]):
            raise FloatingPointError(f"training diverged at epoch {epoch}: the validation loss is {val['val_loss']}; "
                                     f"lower the learning rate (lr={self.cfg.lr:g}, try {self.cfg.lr / 10:g})")

    def validate(self) -> dict:
        """Validation loss and per-class AUROC (rank 0 computes, every rank receives)."""
        payload = [None]
        if self.rank == 0:
            out = _collect(self.plain, self.valid_loader, self.device, autocast=self.autocast,
                           channels_last=self.channels_last, split="validation", criterion=self.criterion)
            names = self.class_names or [f"class_{k}" for k in range(out["prob"].shape[1])]
            self.class_names = names
            target, mask = _binary_view(out["target"], out["mask"])
            target, prob, regression = _in_units(names, target, out["prob"])
            with warnings.catch_warnings():  # an undefined AUROC is recorded as NaN in the history table
                warnings.simplefilter("ignore")
                aurocs, maes = target_metrics(target, prob, mask, names, regression)
            values = [v for v in aurocs.to_numpy() if not math.isnan(v)]
            payload = [{"val_loss": out["loss"], "val_counted": out["counted"], "aurocs": aurocs.to_dict(),
                        "maes": maes.to_dict(), "mean_auroc": float(np.mean(values)) if values else float("nan")}]
        if self.distributed:
            dist.broadcast_object_list(payload, src=0)
        return payload[0]

    def run(self, on_epoch_end: Callable[[int, History], None] | None) -> History:
        for epoch in range(self.start_epoch, self.cfg.epochs + 1):
            epoch_start = time.perf_counter()
            lr = self.optimizer.param_groups[0]["lr"]
            loss, chance, images_per_s, _ = self.train_epoch(epoch)
            self.check_diverged(epoch, loss, chance)
            val = self.validate()
            self.check_validation(epoch, val)
            if self.cfg.scheduler == "plateau":
                self.scheduler.step(val["val_loss"])
            record = {"epoch": epoch, "loss": loss, "val_loss": val["val_loss"],
                      **{f"auroc_{name}": value for name, value in val["aurocs"].items()},
                      **{f"mae_{name}": value for name, value in val["maes"].items()},
                      "mean_auroc": val["mean_auroc"], "lr": lr, "images_per_s": images_per_s,
                      "seconds": time.perf_counter() - epoch_start}
            self.records.append(record)
            metric = val["val_loss"] if self.cfg.select_by == "val_loss" else val["mean_auroc"]
            improved = _improved(self.cfg.select_by, metric, self.best_metric)
            if improved:
                self.best_epoch, self.best_metric = epoch, metric
                if self.cfg.restore_best:
                    self.best_state = {k: v.detach().to("cpu", copy=True) for k, v in self.plain.state_dict().items()}
            self.save(epoch, improved)
            if self.distributed:
                dist.barrier()
            if self.cfg.progress and self.rank == 0:
                print(f"epoch {epoch}: loss {loss:.4f} val_loss {val['val_loss']:.4f} "
                      f"mean AUROC {val['mean_auroc']:.3f} lr {lr:.2g} {images_per_s:.1f} img/s", flush=True)
            if on_epoch_end is not None:
                on_epoch_end(epoch, self.history())
        self.restore_best()
        return self.history()

    def restore_best(self) -> None:
        # every rank selected the same epoch (the metric comes from rank 0), so each restores its own copy
        if self.cfg.restore_best and self.best_state is not None:
            self.plain.load_state_dict(self.best_state)

    def history(self) -> History:
        checkpoint_dir = Path(self.cfg.checkpoint_dir) if self.cfg.checkpoint_dir else None
        return History(pd.DataFrame(self.records), self.best_epoch, self.cfg.select_by, checkpoint_dir)


def fit(model: nn.Module, train_loader: DataLoader, valid_loader: DataLoader, *, cfg: TrainConfig,
        class_names: Sequence[str] | None = None, pos_weight: torch.Tensor | None = None,
        class_weight: torch.Tensor | None = None,
        on_epoch_end: Callable[[int, History], None] | None = None) -> History:
    """Train with Adam (+ ReduceLROnPlateau), validate each epoch, keep the best epoch; resumable from checkpoints.

    A diverged run raises a FloatingPointError (so no caller saves it as a result): a non-finite training loss at
    any step, an epoch whose mean training loss exceeds DIVERGED_FACTOR (50) times the chance loss (the same
    criterion with logits 0, i.e. probability 0.5 for every label: ln 2 for unweighted BCE; predicting the
    prevalences scores at most that), or a NaN/inf validation loss. The validation loss has no upper limit:
    BatchNorm's running statistics after a few steps give validation losses of 1e4 times chance while training is
    healthy (ResNet-18, lr 1e-2, three steps an epoch). NaN/inf images raise naming their paths.

    Seeds torch/python RNGs from cfg.seed inside a forked RNG scope, so the caller's global RNG state is untouched.
    `class_weight` is (K,) for bce or (K, 3) for multiclass3; `on_epoch_end(epoch, history)` runs after each epoch.
    """
    devices = [resolve_device(cfg.device).index or 0] if resolve_device(cfg.device).type == "cuda" else []
    python_state = random.getstate()
    try:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(cfg.seed)
            random.seed(cfg.seed)
            trainer = _Trainer(model, train_loader, valid_loader, cfg, class_names, pos_weight, class_weight)
            trainer.resume()
            return trainer.run(on_epoch_end)
    finally:
        random.setstate(python_state)
