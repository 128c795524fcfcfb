"""DICOM radiographs to 8-bit PNG, the way ChestX-ray14 was made (1024 px, 8 bit) from its DICOM originals.

Order of operations (DICOM PS3.3 C.11): stored values -> modality LUT (rescale slope/intercept) -> VOI LUT or
window (the file's own, or one given) -> scaled to [0, 1] -> MONOCHROME1 inverted so that air is black and
bone white (MONOCHROME1 stores high values as dark) -> resized keeping the aspect ratio -> 8 bit.
"""
from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.pixels import apply_modality_lut, apply_voi_lut

from cxrcore.atomic import atomic_write


def dicom_to_array(src: str | Path, window: Sequence[float] | None = None) -> np.ndarray:
    """The radiograph as (H, W) float32 in [0, 1], display-ready (bright = dense); window is (center, width)."""
    src = Path(src)
    try:
        dataset = pydicom.dcmread(src)
        stored = dataset.pixel_array
    except Exception as err:  # pydicom raises many types for broken files; name the file
        raise ValueError(f"cannot read DICOM pixel data from {src}: {err}") from err
    if stored.ndim != 2:
        raise ValueError(f"{src}: expected one grayscale frame, got pixel array of shape {stored.shape}")
    values = apply_modality_lut(stored, dataset).astype(np.float64)  # rescale slope/intercept
    if window is not None:
        center, width = (float(v) for v in window)
        if width <= 0:
            raise ValueError(f"window width must be > 0, got {width}")
        low, high = center - width / 2, center + width / 2
    else:
        values = np.asarray(apply_voi_lut(values, dataset), dtype=np.float64)  # the file's VOI LUT / window
        low, high = float(values.min()), float(values.max())
    if high <= low:
        raise ValueError(f"{src}: the image is flat (no contrast to map to 8 bit)")
    image = np.clip((values - low) / (high - low), 0.0, 1.0)
    if dataset.get("PhotometricInterpretation", "MONOCHROME2") == "MONOCHROME1":
        image = 1.0 - image
    return image.astype(np.float32)


def fit_size(shape: tuple[int, int], size: int) -> tuple[int, int]:
    """(width, height) whose longer side is size, keeping the aspect ratio of an (H, W) shape."""
    height, width = shape
    scale = size / max(height, width)
    return max(1, round(width * scale)), max(1, round(height * scale))


def dicom_to_png(
    src: str | Path, dst: str | Path, size: int = 1024, window: Sequence[float] | None = None, force: bool = False
) -> Path:
    """Convert one DICOM file to an 8-bit grayscale PNG whose longer side is `size`; atomic, no silent overwrite."""
    dst = Path(dst)
    if size < 1:
        raise ValueError(f"size (--size) must be a positive number of pixels, got {size}")
    if dst.exists() and not force:
        raise FileExistsError(f"{dst} exists; pass force=True (--force) to overwrite it")
    image = dicom_to_array(src, window)
    resized = Image.fromarray(image).resize(fit_size(image.shape, size), Image.Resampling.LANCZOS)
    pixels = np.rint(np.clip(np.asarray(resized), 0.0, 1.0) * 255.0).astype(np.uint8)
    return atomic_write(dst, lambda stream: Image.fromarray(pixels).save(stream, format="PNG"), binary=True)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`python -m data_prep dicom SRC... --out DIR [--size N] [--window C W] [--force]`."""
    parser.add_argument("src", nargs="+", type=Path, help="DICOM files")
    parser.add_argument("--out", required=True, type=Path, help="folder for the PNG files (SRC stem + .png)")
    parser.add_argument("--size", type=int, default=1024, help="longer side in pixels (default 1024, as ChestX-ray14)")
    parser.add_argument("--window", type=float, nargs=2, metavar=("CENTER", "WIDTH"), default=None,
                        help="window to apply instead of the file's VOI LUT / window")
    parser.add_argument("--force", action="store_true", help="overwrite existing PNG files")


def main(args: argparse.Namespace) -> int:
    """Convert every SRC into --out; stops before writing anything if an input is missing or an output exists
    without --force."""
    missing = [str(src) for src in args.src if not src.is_file()]
    if missing:
        raise SystemExit(f"dicom: {len(missing)} input(s) not found, e.g. {missing[:3]}; nothing was converted")
    if args.out.exists() and not args.out.is_dir():
        raise SystemExit(f"dicom: --out {args.out} is a file; give a folder for the PNG files")
    targets = [args.out / f"{src.stem}.png" for src in args.src]
    existing = [str(t) for t in targets if t.exists()]
    if existing and not args.force:
        raise SystemExit(f"{len(existing)} output(s) exist, e.g. {existing[:3]}; pass --force to overwrite")
    if len(set(targets)) != len(targets):
        raise SystemExit("two inputs share a file name stem; convert them into different --out folders")
    for src, dst in zip(args.src, targets, strict=True):
        try:
            dicom_to_png(src, dst, size=args.size, window=args.window, force=args.force)
        except ValueError as err:  # the message names the file; no traceback
            raise SystemExit(f"dicom: {err}") from err
        print(f"{src} -> {dst}")
    return 0
