"""DICOM -> 8-bit PNG on the real CR chest radiograph RG1_UNCR.dcm (MONOCHROME1, 15 bit, 1955 x 1841)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from cxrcore.cli import dispatch
from data_prep.__main__ import COMMANDS
from data_prep.dicom import dicom_to_array, dicom_to_png

RG1 = Path(get_testdata_file("RG1_UNCR.dcm"))


def read_png(path: Path) -> np.ndarray:
    """Pixels of a PNG, checked to be 8-bit grayscale."""
    with Image.open(path) as image:
        assert image.mode == "L"
        return np.asarray(image)


def test_real_radiograph(tmp_path: Path) -> None:
    pixels = read_png(dicom_to_png(RG1, tmp_path / "rg1.png", size=256))
    assert pixels.dtype == np.uint8 and pixels.shape == (256, round(1841 * 256 / 1955))
    height, width = pixels.shape
    rows = slice(int(0.3 * height), int(0.6 * height))
    spine = pixels[rows, int(0.45 * width):int(0.55 * width)].mean()
    lungs = [pixels[rows, int(a * width):int(b * width)].mean() for a, b in ((0.2, 0.35), (0.65, 0.8))]
    assert all(spine > lung + 40 for lung in lungs)  # after MONOCHROME1 inversion: lungs dark, mediastinum bright


def test_monochrome1_is_inverted(tmp_path: Path) -> None:
    dataset = pydicom.dcmread(RG1)
    assert dataset.PhotometricInterpretation == "MONOCHROME1"
    dataset.PhotometricInterpretation = "MONOCHROME2"  # the same pixels, declared the other way round
    dataset.save_as(tmp_path / "mono2.dcm")
    inverted = read_png(dicom_to_png(RG1, tmp_path / "mono1.png", size=300)).astype(int)
    plain = read_png(dicom_to_png(tmp_path / "mono2.dcm", tmp_path / "mono2.png", size=300)).astype(int)
    assert np.abs(inverted - (255 - plain)).max() <= 1  # rounding only
    assert inverted.mean() > plain.mean()


def test_window(tmp_path: Path) -> None:
    full = dicom_to_array(RG1)
    narrow = dicom_to_array(RG1, window=(8000, 6000))
    assert full.shape == narrow.shape == (1955, 1841) and full.dtype == np.float32
    assert (narrow == 0).mean() > (full == 0).mean()  # a narrow window saturates more pixels
    with pytest.raises(ValueError, match="width"):
        dicom_to_array(RG1, window=(8000, 0))


def test_overwrite_and_errors(tmp_path: Path) -> None:
    out = dicom_to_png(RG1, tmp_path / "rg1.png", size=64)
    with pytest.raises(FileExistsError, match="force"):
        dicom_to_png(RG1, out, size=64)
    dicom_to_png(RG1, out, size=128, force=True)
    assert max(read_png(out).shape) == 128
    assert [p.name for p in tmp_path.iterdir()] == ["rg1.png"]  # no temporary file left
    broken = tmp_path / "broken.dcm"
    broken.write_bytes(RG1.read_bytes()[:4000])
    with pytest.raises(ValueError, match="broken.dcm"):
        dicom_to_png(broken, tmp_path / "broken.png")
    assert not (tmp_path / "broken.png").exists()


def test_cli(tmp_path: Path) -> None:
    argv = ["dicom", str(RG1), "--out", str(tmp_path), "--size", "100"]
    assert dispatch(COMMANDS, "python -m data_prep", "", argv) == 0
    assert max(read_png(tmp_path / "RG1_UNCR.png").shape) == 100
    with pytest.raises(SystemExit, match="--force"):
        dispatch(COMMANDS, "python -m data_prep", "", argv)
