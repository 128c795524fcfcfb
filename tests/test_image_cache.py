"""The uint8 image cache on real files: rows equal the CPU path's decode byte for byte, the same bytes whatever the
workers and chunks, resumed after a real kill or a failed file without redoing finished chunks, and errors that name
their file."""
from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import pickle
import signal
import time
from pathlib import Path

import numpy as np
import pytest
from layouts import NIHTree, write_image
from PIL import Image
from pydicom.data import get_testdata_file

from cxrcore.datasets import load_gray_image
from cxrcore.image_cache import ImageCache, cache_path, open_image_cache, write_image_cache
from data_prep.dicom import dicom_to_array, dicom_to_png

RG1 = Path(get_testdata_file("RG1_UNCR.dcm"))  # a real CR chest radiograph, 1955 x 1841
SIDE = 48
FORK = multiprocessing.get_context("fork")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def done_count(out: Path) -> int:
    """How many leading rows the progress file of an unfinished cache records as written."""
    return json.loads(out.with_name(out.name + ".progress.json").read_text())["done"]


@pytest.fixture()
def mixed(tmp_path: Path) -> tuple[Path, list[str]]:
    """A root with 8-bit PNGs and JPEGs of different sizes and aspect ratios, an RGB PNG, a 16-bit PNG and the real
    radiograph as an 8-bit PNG; the relative paths, the 16-bit one last."""
    root = tmp_path / "root"
    files = [write_image(root / f"png8/{i}.png", "png8", shape=shape, seed=i)
             for i, shape in enumerate([(40, 32), (64, 64), (30, 90), (200, 150)])]
    files += [write_image(root / f"jpeg/{i}.jpg", "jpeg", shape=shape, seed=10 + i)
              for i, shape in enumerate([(40, 32), (120, 100), (333, 250)])]
    files.append(write_image(root / "rgb.png", "rgb", shape=(50, 40), seed=20))
    files.append(dicom_to_png(RG1, root / "real/rg1.png", size=256))
    files.append(write_image(root / "png16.png", "png16", shape=(70, 60), seed=30))
    return root, [str(f.relative_to(root)) for f in files]


def test_rows_equal_the_cpu_decode(mixed: tuple[Path, list[str]], tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    root, paths = mixed
    out = write_image_cache(paths, root, SIDE, tmp_path / "cache.npy", progress=True)
    assert f"image cache {SIDE}px" in capsys.readouterr().err  # the tqdm bar
    images = np.load(out)
    assert images.shape == (len(paths), SIDE, SIDE) and images.dtype == np.uint8
    for row, path in zip(images[:-1], paths[:-1], strict=True):
        image = load_gray_image(root / path, SIDE)
        assert image.mode == "L"
        np.testing.assert_array_equal(row, np.asarray(image), err_msg=path)
    image16 = load_gray_image(root / paths[-1], SIDE)
    assert image16.mode == "F"
    scaled = np.clip(np.round(np.asarray(image16, dtype=np.float64) * 255), 0, 255)
    np.testing.assert_array_equal(images[-1], scaled.astype(np.uint8))
    assert len(np.unique(images[-1])) > 20  # the scaling kept the picture (not all 0 or all 255)
    sidecar = json.loads((tmp_path / "cache.npy.json").read_text())
    assert sidecar["paths"] == paths and sidecar["side"] == SIDE and sidecar["count"] == len(paths)
    assert sidecar["data_root"] == str(root.resolve())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache.npy", "cache.npy.json", "cache.npy.lock", "root"]


def test_same_bytes_whatever_workers_and_chunk(mixed: tuple[Path, list[str]], tmp_path: Path) -> None:
    root, paths = mixed
    serial = write_image_cache(paths, root, SIDE, tmp_path / "serial.npy", workers=1, chunk=3)
    pooled = write_image_cache(paths, root, SIDE, tmp_path / "pooled.npy", workers=2, chunk=5)
    assert sha256(serial) == sha256(pooled)
    assert (tmp_path / "serial.npy.json").read_text() == (tmp_path / "pooled.npy.json").read_text()


@pytest.fixture()
def big(tmp_path: Path) -> tuple[Path, list[str]]:
    """16 rows cycling over 3 full-size (1955 x 1841) PNGs of the real radiograph (as is, flipped, rolled), hard-linked:
    tens of milliseconds to decode each, so a writer can be killed midway."""
    root = tmp_path / "big"
    root.mkdir()
    pixels = np.rint(dicom_to_array(RG1) * 255).astype(np.uint8)
    for name, variant in (("a", pixels), ("b", pixels[:, ::-1]), ("c", np.roll(pixels, 300, axis=0))):
        Image.fromarray(np.ascontiguousarray(variant)).save(root / f"{name}.png", compress_level=1)
    paths = [f"row{i:02d}.png" for i in range(16)]
    for i, path in enumerate(paths):
        os.link(root / f"{'abc'[i % 3]}.png", root / path)
    return root, paths


def test_resumes_after_a_kill_without_redoing_finished_chunks(big: tuple[Path, list[str]], tmp_path: Path) -> None:
    root, paths = big
    reference = write_image_cache(paths, root, SIDE, tmp_path / "reference.npy")
    out = tmp_path / "cache.npy"
    writer = FORK.Process(target=write_image_cache, args=(paths, root, SIDE, out), kwargs={"chunk": 1})
    writer.start()
    progress = out.with_name(out.name + ".progress.json")
    deadline = time.monotonic() + 120
    while writer.is_alive() and time.monotonic() < deadline:
        if progress.exists() and done_count(out) >= 1:
            break
        time.sleep(0.002)
    os.kill(writer.pid, signal.SIGKILL)
    writer.join()
    assert writer.exitcode == -signal.SIGKILL, "the writer finished before it could be killed"
    assert not out.exists() and out.with_name("cache.npy.partial").exists()
    done = done_count(out)
    assert 1 <= done < len(paths)
    for path in paths[:done]:  # finished rows' files gone: decoding one of them again would raise
        (root / path).unlink()
    assert write_image_cache(paths, root, SIDE, out, chunk=4) == out
    assert sha256(out) == sha256(reference)
    assert not progress.exists() and not out.with_name("cache.npy.partial").exists()


def test_resumes_after_a_corrupt_file(mixed: tuple[Path, list[str]], tmp_path: Path) -> None:
    root, paths = mixed
    reference = write_image_cache(paths, root, SIDE, tmp_path / "reference.npy")
    bad = root / paths[4]
    good = bad.read_bytes()
    bad.write_bytes(good[: len(good) // 3])  # a truncated JPEG
    out = tmp_path / "cache.npy"
    with pytest.raises(OSError, match=f"row 4: cannot decode image file {bad}"):
        write_image_cache(paths, root, SIDE, out, chunk=2)
    assert not out.exists() and done_count(out) == 4  # chunks [0, 2) and [2, 4) finished
    bad.write_bytes(good)
    for path in paths[:4]:
        (root / path).unlink()
    write_image_cache(paths, root, SIDE, out, chunk=2)
    assert sha256(out) == sha256(reference)


def test_unreadable_partial_of_these_inputs_starts_over(mixed: tuple[Path, list[str]], tmp_path: Path,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    root, paths = mixed
    reference = write_image_cache(paths, root, SIDE, tmp_path / "reference.npy")
    missing = root / paths[5]
    good = missing.read_bytes()
    missing.unlink()
    out = tmp_path / "cache.npy"
    with pytest.raises(FileNotFoundError, match=f"row 5: image file {missing} not found"):
        write_image_cache(paths, root, SIDE, out, chunk=1)
    assert done_count(out) == 5
    partial = tmp_path / "cache.npy.partial"
    partial.write_bytes(partial.read_bytes()[:100])  # a cut-short array of these very inputs
    missing.write_bytes(good)
    write_image_cache(paths, root, SIDE, out)
    assert f"{partial}: missing or not a" in caplog.text
    assert sha256(out) == sha256(reference)


def test_writers_of_one_cache_take_turns(mixed: tuple[Path, list[str]], tmp_path: Path) -> None:
    root, paths = mixed
    reference = write_image_cache(paths, root, SIDE, tmp_path / "reference.npy")
    out = tmp_path / "cache.npy"
    writers = [FORK.Process(target=write_image_cache, args=(paths, root, SIDE, out), kwargs={"chunk": 1})
               for _ in range(2)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(timeout=120)
    assert [w.exitcode for w in writers] == [0, 0]
    assert sha256(out) == sha256(reference)


def test_errors_name_their_file(mixed: tuple[Path, list[str]], tmp_path: Path) -> None:
    root, paths = mixed
    missing = [*paths[:2], "png8/nope.png", *paths[2:]]
    with pytest.raises(FileNotFoundError, match=f"row 2: image file {root / 'png8/nope.png'} not found"):
        write_image_cache(missing, root, SIDE, tmp_path / "missing.npy")

    out = write_image_cache(paths, root, SIDE, tmp_path / "cache.npy")
    before = sha256(out)
    for other, side in ((paths[:-1], SIDE), (paths[::-1], SIDE), (paths, SIDE + 1)):
        with pytest.raises(ValueError, match=f"{out} belongs to an image cache of other inputs"):
            write_image_cache(other, root, side, out)
    with pytest.raises(ValueError, match="data_root"):
        write_image_cache(paths, tmp_path, SIDE, out)
    assert sha256(out) == before  # never overwritten

    sidecar = tmp_path / "cache.npy.json"
    meta = json.loads(sidecar.read_text())
    sidecar.write_text(json.dumps({**meta, "paths": paths[:-1]}))
    with pytest.raises(ValueError, match=f"{out}: a uint8 array of shape .* lists {len(paths) - 1} images"):
        ImageCache(out)
    sidecar.write_text(json.dumps({**meta, "side": SIDE * 2}))
    with pytest.raises(ValueError, match=f"{out}: .* at side {SIDE * 2}"):
        ImageCache(out)
    sidecar.unlink()
    with pytest.raises(FileExistsError, match=f"{out} exists without its sidecar"):
        write_image_cache(paths, root, SIDE, out)


def test_unfinished_cache_of_other_inputs_is_not_overwritten(mixed: tuple[Path, list[str]], tmp_path: Path) -> None:
    root, paths = mixed
    bad = root / paths[3]
    bad.write_bytes(b"not an image")
    out = tmp_path / "cache.npy"
    with pytest.raises(OSError, match=f"row 3: cannot decode image file {bad}"):
        write_image_cache(paths, root, SIDE, out, chunk=1)
    partial = tmp_path / "cache.npy.partial"
    progress = tmp_path / "cache.npy.progress.json"
    before = sha256(partial), progress.read_text()
    with pytest.raises(ValueError, match=f"{progress} belongs to an image cache of other inputs .*side"):
        write_image_cache(paths, root, SIDE + 1, out)
    with pytest.raises(ValueError, match=f"{progress} belongs to an image cache of other inputs .*paths_sha256"):
        write_image_cache(paths[1:], root, SIDE, out)
    assert (sha256(partial), progress.read_text()) == before
    progress.unlink()
    with pytest.raises(FileExistsError, match=f"{partial} exists without its progress file"):
        write_image_cache(paths, root, SIDE, out)


def test_cache_path_is_keyed_on_list_root_and_side(tmp_path: Path) -> None:
    paths = ["a/1.png", "a/2.png"]
    key = cache_path(tmp_path, tmp_path / "root", paths, 320)
    assert key == cache_path(tmp_path, tmp_path / "root", list(paths), 320)  # stable
    assert key == cache_path(tmp_path, tmp_path / "sub" / ".." / "root", paths, 320)  # the resolved root
    assert key.parent == tmp_path and key.name.endswith("_320.npy")
    others = [cache_path(tmp_path, tmp_path / "root", paths[::-1], 320),
              cache_path(tmp_path, tmp_path / "root", paths[:1], 320),
              cache_path(tmp_path, tmp_path / "other", paths, 320),
              cache_path(tmp_path, tmp_path / "root", paths, 224)]
    assert len({key, *others}) == 5


def test_open_image_cache_on_a_real_layout(nih_tree: NIHTree, tmp_path: Path) -> None:
    root = nih_tree.root
    paths = [str(p.relative_to(root)) for p in sorted(root.glob("ChestX-ray14/images_*/images/*.png"))]
    assert len(paths) == len(nih_tree.table) and len({Path(p).parts[1] for p in paths}) == 2
    cache = open_image_cache(paths, root, SIDE, tmp_path / "caches", workers=2)
    assert cache.path == cache_path(tmp_path / "caches", root, paths, SIDE)
    assert isinstance(cache.images, np.memmap) and not cache.images.flags.writeable
    assert len(cache) == len(paths) and cache.paths == paths and cache.side == SIDE
    item = cache[3]
    assert item.flags.writeable and item.dtype == np.uint8 and item.shape == (SIDE, SIDE)
    np.testing.assert_array_equal(item, np.asarray(load_gray_image(root / paths[3], SIDE)))
    written = cache.path.stat().st_mtime_ns
    again = open_image_cache(paths, root, SIDE, tmp_path / "caches")  # finished: opened, not rewritten
    assert again.path.stat().st_mtime_ns == written
    assert len(pickle.dumps(cache)) < 1000  # pickled by path, not with its array
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(cache)).images, cache.images)
