"""`python -m cxrcore bench`: training images/s of the whole pipeline and of the model alone, and their ratio.

Pipeline: decode PNG/JPEG files through ManifestDataset (the book's loader: decode, resize, augment, normalize),
DataLoader, then a full training step; with --device-augment the GPU path instead (a uint8 image cache read through
a memory map, each batch augmented on the device: what the runner trains with on CUDA). Model alone: the same step
on a device-resident random batch. A ratio far below 1 means the input pipeline, not the GPU/CPU compute, limits
training (add --workers, or take the GPU path).
"""
from __future__ import annotations

import argparse
import itertools
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

from cxrcore.losses import masked_bce
from cxrcore.models import build_model
from cxrcore.settings import settings
from cxrcore.train import make_loader, resolve_device

WARMUP_STEPS = 2
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def training_flops(arch: str, size: int, *, channels: int = 3, large: bool = False, meta: bool = False,
                   classes: int = 14) -> float:
    """FLOPs of one training step per image of side `size` (forward and backward, as torch's FlopCounterMode counts
    them; "-large" models take the side their preset gives, already doubled)."""
    model = build_model(arch, classes, channels=channels, large=large, meta_features=3 if meta else 0, seed=0)
    images = torch.zeros(2, channels, size, size)  # 2: BatchNorm needs more than one value per channel
    features = torch.zeros(2, 3)
    with FlopCounterMode(display=False) as counter:
        logits = model(images, features) if meta else model(images)
        logits.sum().backward()
    return counter.get_total_flops() / len(images)


def find_images(data_root: Path, limit: int) -> list[Path]:
    """Up to `limit` image files under data_root (relative paths), in a stable order."""
    if not data_root.is_dir():
        return []
    found = (p for p in sorted(data_root.rglob("*")) if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    return [p.relative_to(data_root) for p in itertools.islice(found, limit)]


def write_demo_images(folder: Path, count: int, side: int = 320, seed: int = 0) -> list[Path]:
    """`count` grey PNG radiograph-sized images (noise with a bright blob) for when there is no demo data."""
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        pixels = rng.normal(100, 25, size=(side, side))
        r, c = rng.integers(side // 8, side // 2, size=2)
        pixels[r:r + side // 4, c:c + side // 4] += 80
        path = folder / f"bench_{i:04d}.png"
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path)
        paths.append(path.relative_to(folder))
    return paths


def bench_manifest(paths: list[Path]) -> pd.DataFrame:
    """A manifest (cxrcore.manifest schema) over the images, with one random finding column."""
    rng = np.random.default_rng(0)
    ids = [f"b{i}" for i in range(len(paths))]
    return pd.DataFrame({"path": [str(p) for p in paths], "site": "hospital", "patient_id": ids, "study_id": ids,
                         "view": "frontal", "projection": "PA", "sex": "U", "age": 50.0, "split": "train",
                         "Cardiomegaly": rng.integers(0, 2, len(paths)).astype(float)})


class _Stepper:
    """One training step (forward, masked BCE, backward, Adam) of a model on a device."""

    def __init__(self, arch: str, device: torch.device, precision: str, channels_last: bool, compile: bool):
        self.device = device
        self.channels_last = channels_last
        self.model = build_model(arch, 1, seed=0).to(device)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.forward = torch.compile(self.model) if compile else self.model  # compiled in the warm-up steps
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-4)
        self.autocast = precision == "bf16"

    def __call__(self, images: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> None:
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        images = images.to(self.device, non_blocking=True, memory_format=memory_format)
        target, mask = target.to(self.device, non_blocking=True), mask.to(self.device, non_blocking=True)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            logits = self.forward(images)
        loss = masked_bce(logits, target, mask)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def _timed(stepper: _Stepper, batches, steps: int, batch: int) -> float:
    """Images/s over `steps` steps after WARMUP_STEPS untimed ones."""
    iterator = iter(batches)
    for _ in range(WARMUP_STEPS):
        stepper(*next(iterator))
    stepper.sync()
    start = time.perf_counter()
    for _ in range(steps):
        stepper(*next(iterator))
    stepper.sync()
    return steps * batch / (time.perf_counter() - start)


def bench(arch: str = "densenet121", size: int = 224, batch: int = 32, precision: str = "bf16", steps: int = 10,
          data_root: str | Path | None = None, workers: int | None = None, device: str = "auto", *,
          channels_last: bool = True, cache: bool = False, compile: bool = False,
          device_augment: bool = False) -> pd.DataFrame:
    """One-row table: device, settings, pipeline images/s, model-alone images/s and their ratio.

    data_root: the image files to read (None, or too few there: 320 px PNGs generated in a temporary folder).
    cache: the pipeline reads images decoded once and kept in memory (as the runner does when they fit), read
    through once before timing, with workers=0 (each DataLoader worker would keep a cache of its own).
    device_augment: the GPU path (as the runner trains on CUDA): a uint8 image cache written once (untimed, every
    core) and read through a memory map by the workers, each batch augmented and normalized on the device.
    compile: torch.compile the model; the compilation happens in the untimed warm-up steps."""
    device = resolve_device(device)
    if workers is None:
        workers = 0 if cache else min(8, os.cpu_count() or 1)
    if cache and (workers or device_augment):
        raise ValueError("cache=True measures the in-memory cache of the main process: use workers=0, without "
                         "device_augment")
    needed = batch * (steps + WARMUP_STEPS)
    stepper = _Stepper(arch, device, precision, channels_last, compile)
    # model alone first: DataLoader workers that are still shutting down would otherwise compete for the CPU
    images = torch.randn(batch, 3, size, size, device=device)
    target = torch.randint(0, 2, (batch, 1), device=device).float()
    model_alone = _timed(stepper, itertools.repeat((images, target, torch.ones_like(target))), steps, batch)
    with tempfile.TemporaryDirectory(prefix="cxr-bench-") as tmp:
        root = Path(data_root) if data_root is not None else Path(tmp)  # none given: generated images
        paths = find_images(root, needed)
        source = str(root)
        if len(paths) < needed:
            root, source = Path(tmp), f"{needed} generated 320 px PNGs"
            paths = write_demo_images(root, needed)
        from cxrcore.datasets import ManifestDataset
        from cxrcore.image_cache import device_dataset

        dataset = ManifestDataset(bench_manifest(paths), root, ["Cardiomegaly"], image_size=size, augment="mild",
                                  cache=cache)
        if cache:
            for index in range(len(dataset)):
                dataset[index]  # decode every image once: the timed steps read them from memory
        if device_augment:  # the cache is written here, before the timed steps, with every core
            dataset = device_dataset(dataset, Path(tmp) / "image-cache", workers=os.cpu_count() or 1)
        loader = make_loader(dataset, batch_size=batch, shuffle=True, num_workers=workers, drop_last=True,
                             device=device, distributed=False)
        pipeline = _timed(stepper, _model_batches(loader, device), steps, batch)
        del loader  # stop the workers
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"CPU {platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"
    return pd.DataFrame([{"device": name, "arch": arch, "size": size, "batch": batch, "precision": precision,
                          "channels_last": channels_last, "compile": compile, "threads": torch.get_num_threads(),
                          "workers": workers, "decode_cache": cache, "device_augment": device_augment,
                          "data": source, "pipeline_img_s": round(pipeline, 1),
                          "model_img_s": round(model_alone, 1), "ratio": round(pipeline / model_alone, 3)}])


def _model_batches(loader, device: torch.device):
    """(images, target, mask) of each batch; a GPU-path dataset's uint8 images made model input on the device."""
    prepare = getattr(loader.dataset, "to_model_input", None)
    for batch in loader:
        images = batch["image"]
        if prepare is not None:
            images = prepare(images.to(device, non_blocking=True), batch["seed"])
        yield images, batch["target"], batch["mask"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `python -m cxrcore bench`."""
    parser.add_argument("--arch", default="densenet121", help="model architecture (default densenet121)")
    parser.add_argument("--size", type=int, default=224, help="input side in pixels (default 224)")
    parser.add_argument("--batch", type=int, default=32, help="batch size (default 32)")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default=None,
                        help="bf16 autocast or fp32 (default: bf16 on CUDA, fp32 on CPU)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps after 2 warm-up steps (default 10)")
    parser.add_argument("--data-root", type=Path, default=None,
                        help="folder with PNG/JPEG images (default $CXR_DATA_ROOT); generated if too few")
    parser.add_argument("--workers", type=int, default=None, help="DataLoader workers (default min(8, CPUs))")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--memory-format", choices=("channels_last", "contiguous"), default="channels_last",
                        help="activations' layout (default channels_last, as cxrcore.train uses)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: one per core)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model (compiled while warming up)")
    parser.add_argument("--cache", action="store_true",
                        help="pipeline reads images decoded once into memory (workers=0), as the runner does on CPU")
    parser.add_argument("--device-augment", action="store_true",
                        help="the GPU path: a uint8 image cache (written once, untimed) and augmentation on the device")


def main(args: argparse.Namespace) -> int:
    """Run the benchmark and print its table."""
    device = resolve_device(args.device)
    precision = args.precision or ("bf16" if device.type == "cuda" else "fp32")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    data_root = args.data_root or settings().data_root  # the environment is read here, at the entry point
    table = bench(args.arch, args.size, args.batch, precision, args.steps, data_root, args.workers, args.device,
                  channels_last=args.memory_format == "channels_last", cache=args.cache, compile=args.compile,
                  device_augment=args.device_augment)
    print(table.T.to_string(header=False))
    return 0
