"""The benchmark command: a real (tiny) measurement on the CPU, from generated PNG files."""
from __future__ import annotations

from pathlib import Path

import pytest

from cxrcore.bench import bench


def test_bench_measures_pipeline_and_model_on_cpu(tmp_path: Path) -> None:
    table = bench("resnet18", size=32, batch=2, precision="fp32", steps=1, data_root=tmp_path, workers=0,
                  device="cpu")
    row = table.iloc[0]
    assert row["device"].startswith("CPU") and row["arch"] == "resnet18" and row["size"] == 32
    assert row["data"] == "6 generated 320 px PNGs"  # the empty folder holds no images: 2 x (1 + 2 warm-up) made
    assert row["pipeline_img_s"] > 0 and row["model_img_s"] > 0
    # images/s are rounded to 0.1 and the ratio to 0.001: they agree within that rounding, however slow the CPU
    assert abs(row["ratio"] * row["model_img_s"] - row["pipeline_img_s"]) <= 0.05 * (1 + row["ratio"]) + \
        0.0005 * row["model_img_s"] + 1e-9


def test_bench_with_the_decode_cache_and_contiguous_layout(tmp_path: Path) -> None:
    table = bench("resnet18", size=32, batch=2, precision="fp32", steps=1, data_root=tmp_path, device="cpu",
                  channels_last=False, cache=True)
    row = table.iloc[0]
    assert row["decode_cache"] and not row["channels_last"] and row["workers"] == 0
    assert row["pipeline_img_s"] > 0
    with pytest.raises(ValueError, match="workers=0"):
        bench("resnet18", size=32, batch=2, steps=1, data_root=tmp_path, device="cpu", cache=True, workers=2)


def test_bench_on_the_gpu_path_runs_on_cpu_in_bf16(tmp_path: Path) -> None:
    """The GPU path (uint8 image cache, augmentation on the device) end to end, on the CPU under bf16 autocast, its
    memory map read by two DataLoader workers."""
    table = bench("resnet18", size=32, batch=2, precision="bf16", steps=1, data_root=tmp_path, device="cpu",
                  device_augment=True, workers=2)
    row = table.iloc[0]
    assert row["device_augment"] and row["precision"] == "bf16" and row["workers"] == 2
    assert row["pipeline_img_s"] > 0
    with pytest.raises(ValueError, match="without device_augment"):
        bench("resnet18", size=32, batch=2, steps=1, data_root=tmp_path, device="cpu", cache=True,
              device_augment=True)
