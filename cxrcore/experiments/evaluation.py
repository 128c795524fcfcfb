"""Any finished run tested on any manifest's split without retraining; the predictions are cached per run and manifest.

A run's own test predictions come with the run (`cxrcore.runner.run`). Testing it on another site's test split is
inference only: `evaluate` predicts once, writes the table atomically to
`<run folder>/evaluations/<digest>.csv`, and reads it back from then on. The digest covers the manifest file's
bytes, the split and the run's data root, so a changed test manifest is evaluated again and a copy with the same
content is not. Decision thresholds are chosen on a "valid" split, never on "test".
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd

from cxrcore.atomic import atomic_write
from cxrcore.runner import ID_COLUMNS, Result, predict_split

EVALUATIONS_DIR = "evaluations"


def evaluation_key(result: Result, manifest: str | Path, split: str) -> str:
    """Digest of what an evaluation depends on besides the run: the manifest's content, the split, the data root."""
    digest = hashlib.sha256(Path(manifest).read_bytes())
    digest.update(f"\0{split}\0{result.config['data_root']}".encode())
    return digest.hexdigest()[:20]


def evaluation_file(result: Result, manifest: str | Path, split: str = "test") -> Path:
    """Where `evaluate` keeps the run's predictions on that manifest's split."""
    return result.run_dir / EVALUATIONS_DIR / f"{evaluation_key(result, manifest, split)}.csv"


def evaluate(result: Result, manifest: str | Path, split: str = "test", *, device: str = "auto") -> pd.DataFrame:
    """The run's per-image predictions on `split` of `manifest` (`cxrcore.train.predict`'s table, the manifest's
    labels beside the run's scores), predicted once and read from the cache afterwards."""
    if not Path(manifest).is_file():
        raise FileNotFoundError(f"test manifest {manifest} not found")
    path = evaluation_file(result, manifest, split)
    if path.is_file():
        return pd.read_csv(path, dtype=ID_COLUMNS)
    table = predict_split(result, split, manifest=manifest, device=device)
    atomic_write(path, lambda stream: table.to_csv(stream, index=False))
    return table
