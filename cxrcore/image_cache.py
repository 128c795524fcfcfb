"""A pre-resized uint8 image cache: every image decoded once, then memory-mapped by every epoch.

Why: a GPU trains DenseNet-121 at 320 px at ~1,500 images/s, and decoding PNG/JPEG files every epoch cannot keep up.
Written once per (image list, side), the cache turns a DataLoader item into a slice of a memory-mapped array; the
augmentation then runs on the GPU.

What it stores, for `out` (by default `cache_path(...)`, `<digest>_<side>.npy`):

* `out`: a .npy array (N, side, side) uint8, row i being `cxrcore.datasets.load_gray_image(data_root / paths[i],
  side)` exactly: the bytes of an 'L' image (8-bit files) as they are, an 'F' image (16-bit files scaled to
  [0, 1]) as round(x * 255) clipped to 0..255. 16-bit files therefore lose their depth beyond 8 bits here, where
  the CPU path keeps float32.
* `out.json` (the sidecar): side, data_root (resolved), count, paths_sha256 and paths (the ordered relative paths).
* while written: `out.partial` (the full-shape array, filled chunk by chunk) and `out.progress.json` (the sidecar's
  keys but paths, plus done: how many leading rows are on disk), replaced atomically after each chunk is flushed; a
  rerun resumes at done. `out.partial` is renamed to `out` when whole, so `out` is whole or absent.
* `out.lock`: writers of one cache (e.g. DDP ranks) take turns on it; the later ones find the cache finished.

The cache is not keyed on the decoder's code: after a change to `load_gray_image`, delete the caches.
"""
from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import logging
import multiprocessing
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from cxrcore.atomic import atomic_write
from cxrcore.datasets import DeviceAugmentedDataset, ManifestDataset, load_gray_image

log = logging.getLogger(__name__)


def _sibling(out: Path, suffix: str) -> Path:
    """A file beside the cache: out with a suffix added (out.json, out.partial, out.progress.json, out.lock)."""
    return out.with_name(out.name + suffix)


def _digest(data_root: str | Path, paths: Sequence[str]) -> str:
    """sha256 (hex) of the resolved data root and the ordered relative paths."""
    key = json.dumps([str(Path(data_root).resolve()), [str(p) for p in paths]])
    return hashlib.sha256(key.encode()).hexdigest()


def cache_path(folder: Path, data_root: Path, paths: Sequence[str], side: int) -> Path:
    """Where the cache of these images at this side lives: folder / f"{digest}_{side}.npy", digest a short sha256 of
    the resolved data root and the ordered relative paths (a different image list or root gets its own file)."""
    return Path(folder) / f"{_digest(data_root, paths)[:16]}_{side}.npy"


def _identity(paths: Sequence[str], data_root: str | Path, side: int) -> dict:
    """What a sidecar or progress file records of the inputs; equal records, same cache."""
    return {"side": side, "data_root": str(Path(data_root).resolve()), "count": len(paths),
            "paths_sha256": _digest(data_root, paths)}


def _read_json(path: Path) -> dict:
    """A JSON file's object; a missing or unreadable file raises naming it."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{path} not found") from err
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"cannot read {path}: {err}") from err


def _check_same(path: Path, recorded: dict, identity: dict) -> None:
    """Raise naming `path` if its record is of other inputs than `identity`."""
    differ = [f"{k} {recorded.get(k)!r} recorded, {v!r} asked" for k, v in identity.items() if recorded.get(k) != v]
    if differ:
        raise ValueError(f"{path} belongs to an image cache of other inputs ({'; '.join(differ)}): delete it to "
                         "write this cache there, or write to another path")


def _decode(path: Path, side: int) -> np.ndarray:
    """(side, side) uint8 of one file as the CPU path decodes it: 'L' bytes as they are, 'F' as round(x * 255)."""
    image = load_gray_image(path, side)
    if image.mode == "L":
        return np.asarray(image)
    return np.clip(np.rint(np.asarray(image, dtype=np.float64) * 255), 0, 255).astype(np.uint8)


def _decoded(files: Sequence[Path], side: int, workers: int) -> Iterator[np.ndarray]:
    """The decoded images of `files` in their order, from `workers` processes (or this one)."""
    decode = functools.partial(_decode, side=side)
    if workers == 1 or len(files) <= 1:
        yield from map(decode, files)
        return
    # fork, as DataLoader workers do: a spawned worker would spend seconds importing torch before its first image
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    with multiprocessing.get_context(method).Pool(min(workers, len(files))) as pool:
        yield from pool.imap(decode, files, chunksize=4)  # imap keeps the order, whatever worker finishes first


def _open_partial(out: Path, identity: dict) -> tuple[np.memmap, int]:
    """The unfinished (N, side, side) array at out.partial and how many leading rows of it are done: resumed when its
    progress file records these inputs, created (done 0) when there is none."""
    partial, progress = _sibling(out, ".partial"), _sibling(out, ".progress.json")
    shape = (identity["count"], identity["side"], identity["side"])
    if progress.exists():
        recorded = _read_json(progress)
        _check_same(progress, recorded, identity)
        if recorded["done"] > 0:
            with contextlib.suppress(OSError, ValueError):
                images = np.lib.format.open_memmap(partial, mode="r+")
                if images.shape == shape and images.dtype == np.uint8:
                    return images, recorded["done"]
            log.warning("%s: missing or not a %s uint8 array; these inputs' cache starts over", partial, shape)
    elif partial.exists():
        raise FileExistsError(f"{partial} exists without its progress file {progress}: not known to be these "
                              "images' cache; delete it to write this cache there")
    _record_progress(out, identity, 0)  # first, so a partial file without a progress file is never ours
    return np.lib.format.open_memmap(partial, mode="w+", dtype=np.uint8, shape=shape), 0


def _record_progress(out: Path, identity: dict, done: int) -> None:
    """Atomically record that the first `done` rows of out.partial are on disk."""
    atomic_write(_sibling(out, ".progress.json"), lambda stream: json.dump({**identity, "done": done}, stream))


def _fill(images: np.memmap, start: int, files: Sequence[Path], side: int, workers: int, chunk: int,
          finished: Callable[[int], None], progress: bool) -> None:
    """Decode rows start.. into `images`, calling finished(done) after each chunk is flushed to disk; a file that
    cannot be decoded raises naming it and its row."""
    with contextlib.closing(_decoded(files[start:], side, workers)) as rows, \
            tqdm(total=len(files), initial=start, disable=not progress, desc=f"image cache {side}px", unit="img",
                 mininterval=1.0) as bar:
        for begin in range(start, len(files), chunk):
            end = min(begin + chunk, len(files))
            for index in range(begin, end):
                try:
                    images[index] = next(rows)
                except (OSError, ValueError) as err:
                    raise type(err)(f"row {index}: {err}") from err
            images.flush()
            finished(end)
            bar.update(end - begin)


def _check_finished(out: Path, identity: dict) -> None:
    """Raise naming the file unless `out` is a finished cache of these inputs."""
    sidecar = _sibling(out, ".json")
    if not sidecar.exists():
        raise FileExistsError(f"{out} exists without its sidecar {sidecar}: not a finished image cache; delete it to "
                              "write this cache there")
    _check_same(out, _read_json(sidecar), identity)


def write_image_cache(paths: Sequence[str], data_root: str | Path, side: int, out: str | Path, *, workers: int = 1,
                      chunk: int = 1024, progress: bool = False) -> Path:
    """Decode every image once at side x side into a uint8 (N, side, side) .npy at `out` (with a JSON sidecar
    listing the paths, side and data root); returns `out`. Already complete: returns at once. Interrupted: resumes
    from the last finished chunk."""
    out, paths = Path(out), [str(p) for p in paths]
    if not paths or side < 1 or workers < 1 or chunk < 1:
        raise ValueError(f"an image cache needs images, side, workers and chunk >= 1 (got {len(paths)} images, "
                         f"side {side}, workers {workers}, chunk {chunk})")
    identity = _identity(paths, data_root, side)
    if out.exists():
        _check_finished(out, identity)
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(_sibling(out, ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released by the kernel when the holder dies
        if out.exists():  # finished by the writer we waited for
            _check_finished(out, identity)
            return out
        images, done = _open_partial(out, identity)
        files = [Path(data_root) / p for p in paths]
        _fill(images, done, files, side, workers, chunk, functools.partial(_record_progress, out, identity), progress)
        del images  # unmapped before the rename
        atomic_write(_sibling(out, ".json"), lambda stream: json.dump({**identity, "paths": paths}, stream))
        os.replace(_sibling(out, ".partial"), out)
        _sibling(out, ".progress.json").unlink()
    return out


class ImageCache:
    """A finished cache opened read-only (memory-mapped): `images` (N, side, side) uint8, `paths`, `side`."""

    def __init__(self, out: str | Path) -> None:
        self.path = Path(out)
        sidecar = _sibling(self.path, ".json")
        meta = _read_json(sidecar)
        try:
            self.images = np.load(self.path, mmap_mode="r")  # (N, side, side) uint8, read-only np.memmap
        except (OSError, ValueError) as err:
            raise ValueError(f"cannot open image cache {self.path}: {err}") from err
        self.paths: list[str] = meta["paths"]
        self.side: int = meta["side"]
        self.data_root = Path(meta["data_root"])
        expected = (len(self.paths), self.side, self.side)
        if self.images.shape != expected or self.images.dtype != np.uint8:
            raise ValueError(f"{self.path}: a {self.images.dtype} array of shape {self.images.shape}, its sidecar "
                             f"{sidecar} lists {len(self.paths)} images at side {self.side}")

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> np.ndarray:
        return np.array(self.images[index])  # (side, side) uint8, a writeable copy (torch.from_numpy needs one)

    def __getstate__(self) -> dict:
        return {"path": self.path}  # a pickled memmap would carry its whole array to each spawned worker

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["path"])


def open_image_cache(paths: Sequence[str], data_root: str | Path, side: int, folder: str | Path, *,
                     workers: int = 1, progress: bool = False) -> ImageCache:
    """The cache of these images at this side under `folder`, written first if missing or unfinished."""
    out = cache_path(Path(folder), Path(data_root), paths, side)
    return ImageCache(write_image_cache(paths, data_root, side, out, workers=workers, progress=progress))


def device_dataset(dataset: ManifestDataset, folder: str | Path, *, workers: int = 1) -> DeviceAugmentedDataset:
    """The dataset on the GPU path, its images cached under `folder` at its decode size (written first by `workers`
    processes when missing; several processes asking at once take turns, the later ones find it written)."""
    paths = dataset.manifest["path"].astype(str).tolist()
    cache = open_image_cache(paths, dataset.data_root, dataset.decode_size, folder, workers=workers)
    return DeviceAugmentedDataset(dataset, cache)
