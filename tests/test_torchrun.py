"""`torchrun --nproc_per_node 2 -m cxrcore train CONFIG.json` on CPU (gloo): every process trains its share of each
batch, rank 0 tests and publishes one run; it matches one process on the same global batch within a stated
tolerance, and a killed torchrun job resumes from its epoch checkpoint to the uninterrupted job's run."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cxrcore.runner import run_key

PER_PROCESS_BATCH = 8
EPOCHS = 3
# Each process normalises its BatchNorm layers over its own 8 images, one process over all 16, and the batches hold
# other images (DistributedSampler's order is not RandomSampler's): the runs agree in what they learn, not bit for bit
AUROC_TOLERANCE = 0.05


def _write_site(root: Path, n_patients: int = 40) -> Path:
    """Noise films, a bright square where Cardiomegaly is positive; patients split 60/20/20."""
    rng = np.random.default_rng(0)
    rows = []
    for p in range(n_patients):
        split = "train" if p < 0.6 * n_patients else ("valid" if p < 0.8 * n_patients else "test")
        for s in range(2):
            path = f"site/P{p:05d}/S{s}/view1_frontal.png"
            positive = int(rng.integers(0, 2))
            pixels = rng.normal(90, 20, size=(40, 40))
            pixels[10:30, 10:30] += 100 * positive
            (root / path).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(root / path)
            rows.append({"path": path, "site": "hospital", "patient_id": f"{p:05d}", "study_id": f"{p:05d}/{s}",
                         "view": "frontal", "projection": "PA", "sex": "MF"[p % 2], "age": 50, "split": split,
                         "Cardiomegaly": positive})
    manifest = root / "manifest.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    return manifest


def _config(root: Path, batch: int, epochs: int) -> Path:
    manifest = root / "data" / "manifest.csv"
    if not manifest.is_file():
        _write_site(root / "data")
    config = {"manifest": str(manifest), "findings": ["Cardiomegaly"], "arch": "resnet18", "channels": 1,
              "weights": None, "preset": "paper003", "seed": 0,
              "overrides": {"image_size": 32, "epochs": epochs, "batch_size": batch, "lr": 1e-3}}
    path = root / f"config-{batch}-{epochs}.json"
    path.write_text(json.dumps(config))
    return path


def _environment(root: Path, runs: str) -> dict:
    """The job's settings; TMPDIR inside the test's folder, where torchrun leaves its torchelastic_* log folders."""
    temporary = root / "tmp"
    temporary.mkdir(exist_ok=True)
    return {**os.environ, "CXR_PROFILE": "quick", "CXR_DATA_ROOT": str(root / "data"), "CXR_RUNS_DIR": str(root / runs),
            "OMP_NUM_THREADS": "1", "TMPDIR": str(temporary)}


def _command(config: Path, processes: int) -> list[str]:
    train = ["-m", "cxrcore", "train", str(config), "--quiet"]
    if processes == 1:
        return [sys.executable, *train]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes), *train]


def _metrics(root: Path, runs: str) -> tuple[dict, pd.DataFrame, pd.DataFrame]:
    """The one run in a runs folder: its metrics, history and test predictions."""
    (run_dir,) = [p for p in (root / runs).iterdir() if p.is_dir() and not p.name.startswith(".")]
    return (json.loads((run_dir / "metrics.json").read_text()), pd.read_csv(run_dir / "history.csv"),
            pd.read_csv(run_dir / "predictions.csv"))


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The site and the two-process job's run, which both tests compare against."""
    root = tmp_path_factory.mktemp("torchrun")
    job = subprocess.run(_command(_config(root, PER_PROCESS_BATCH, EPOCHS), 2), env=_environment(root, "ddp"),
                         capture_output=True, text=True, timeout=600)
    assert job.returncode == 0, job.stderr[-3000:]
    assert job.stdout.count("test mean AUROC") == 1  # rank 0 alone reports
    return root


def test_two_processes_learn_what_one_learns_on_the_same_global_batch(site):
    one = subprocess.run(_command(_config(site, 2 * PER_PROCESS_BATCH, EPOCHS), 1), env=_environment(site, "one"),
                         capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    (ddp, ddp_history, ddp_predictions), (single, _, _) = _metrics(site, "ddp"), _metrics(site, "one")
    assert ddp["images"] == single["images"]  # rank 0 validated and tested on every image
    assert len(ddp_predictions) == single["images"]["test"] and len(ddp_history) == EPOCHS
    assert single["test_mean_auroc"] > 0.9  # the square is learnable at this size
    assert abs(ddp["test_mean_auroc"] - single["test_mean_auroc"]) <= AUROC_TOLERANCE


def test_a_killed_torchrun_job_resumes_to_the_uninterrupted_jobs_run(site):
    config = _config(site, PER_PROCESS_BATCH, EPOCHS)
    full = {"profile": "quick", "data_root": str(site / "data"), **json.loads(config.read_text())}
    checkpoint = site / "killed" / f".work-{run_key(full, runs_dir=site / 'killed')}" / "checkpoints" / "last.pt"
    job = subprocess.Popen(_command(config, 2), env=_environment(site, "killed"), start_new_session=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not checkpoint.is_file() and job.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(job.pid, signal.SIGKILL)  # torchrun and both workers, after the first epoch's checkpoint
    job.wait()
    assert checkpoint.is_file(), "the job ended before its first checkpoint"
    resumed = subprocess.run(_command(config, 2), env=_environment(site, "killed"), capture_output=True, text=True,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    (killed, killed_history, _), (whole, whole_history, _) = _metrics(site, "killed"), _metrics(site, "ddp")
    assert killed_history["epoch"].tolist() == list(range(1, EPOCHS + 1))
    np.testing.assert_allclose(killed_history["loss"], whole_history["loss"], rtol=1e-5)
    assert killed["test_mean_auroc"] == pytest.approx(whole["test_mean_auroc"], abs=1e-6)
