"""Up-sampling rare findings (paper 003): training images positive for a rare finding are drawn more often.

The draws live in the manifest's optional `copies` column (cxrcore.manifest), set on training rows only, after
the patient-wise split: a repeated image never reaches validation or test, and no patient crosses a split.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from cxrcore.manifest import COPIES, copies, require_columns
from data_prep.splits import split_patients


def upsample_rare(table: pd.DataFrame, findings: Sequence[str], share: float, max_copies: int = 8) -> pd.DataFrame:
    """The table with `copies` set so that each finding's positive training images are drawn at least `share` times
    as often as the most common finding's positives, where `max_copies` allows it.

    A finding with P positive training images (label 1) and a target of T = share x the largest P has each of its
    positive images drawn ceil(T / P) times, at most max_copies; an image positive for several rare findings takes
    the largest of their numbers. Findings at or above the target, negative images and every validation and test
    row keep the copies they had (1 without the column)."""
    require_columns(table, ["split", *findings], "upsample_rare")
    if not 0 < share <= 1:
        raise ValueError(f"share={share!r}: expected a number in (0, 1] (the rare findings' target, as a share of the "
                         "most common finding's positives)")
    if not isinstance(max_copies, int) or max_copies < 1:
        raise ValueError(f"max_copies={max_copies!r}: expected a whole number >= 1")
    train = table["split"] == "train"
    positives = (table.loc[train, list(findings)] == 1).sum()
    if positives.max() == 0:
        raise ValueError(f"upsample_rare: no positive training image for any of {list(findings)}")
    target = share * positives.max()
    drawn = copies(table).copy()
    for finding, count in positives.items():
        if 0 < count < target:
            rows = train & (table[finding] == 1)
            wanted = min(int(np.ceil(target / count)), max_copies)
            drawn[rows] = np.maximum(drawn[rows], wanted)
    return table.assign(**{COPIES: drawn.astype(int)})


def positives_drawn(table: pd.DataFrame, findings: Sequence[str]) -> pd.DataFrame:
    """Per finding: positive training images, and positive draws per epoch with the table's `copies`."""
    train = table[table["split"] == "train"]
    positive = train[list(findings)] == 1
    return pd.DataFrame({"positive images": positive.sum(),
                         "positive draws": positive.mul(copies(train), axis=0).sum()}).rename_axis("finding")


def leaky_upsample_then_split(table: pd.DataFrame, findings: Sequence[str], share: float,
                              fractions: Mapping[str, float], seed: int, data_root: Path, link_root: Path,
                              max_copies: int = 8) -> pd.DataFrame:
    """WRONG ON PURPOSE: paper 003's published protocol, kept so that the book can measure its leak.

    1. Up-sample every image before any split (`upsample_rare` over the whole table; it counts and repeats the
       certain positives, label 1, while paper 003's code first set every uncertain label to 1, so it counted and
       repeated uncertain positives too);
    2. split the copies *by image*, each copy on its own, into `fractions`.

    Copies of one image then sit in training and in test, and one patient's images on both sides: the test set
    scores images the model has trained on. The correct protocol splits patient-wise first, then up-samples the
    training split only (`split_patients`, then `upsample_rare`). The manifest it returns records each copy as its
    own file, a symbolic link under `link_root` to the original under `data_root` (`link_root` is the run's data
    root), and its own "patient": the only way it passes the manifest's checks, and exactly the mistake, since it
    treats every image as independent. `link_root` also links each top-level folder of `data_root`, so that the
    run's data root still holds the site's other images (its radiologist-labelled test set, say)."""
    up = upsample_rare(table.assign(split="train"), findings, share, max_copies)
    expanded = up.loc[up.index.repeat(copies(up))].drop(columns=COPIES)
    copy_number = expanded.groupby(level=0).cumcount().to_numpy()
    original = expanded["path"].to_numpy()
    paths = [f"leaky/copy{k}/{path}" for k, path in zip(copy_number, original, strict=True)]
    expanded = expanded.reset_index(drop=True).assign(path=paths, patient_id=paths, study_id=paths)
    expanded["split"] = split_patients(expanded, fractions, seed)  # every copy is its own "patient": by image
    for path, source in zip(paths, original, strict=True):
        _link(Path(data_root) / source, Path(link_root) / path)
    for entry in Path(data_root).iterdir():
        if entry.is_dir() and entry.name != "leaky":
            _link(entry, Path(link_root) / entry.name)
    return expanded


def _link(source: Path, link: Path) -> None:
    """A symbolic link at `link` to `source` (absolute), replacing a link that points elsewhere; never a file."""
    source = source.resolve()
    if not source.exists():
        raise FileNotFoundError(f"leaky protocol: {source} not found under the data root")
    if link.is_symlink() and link.resolve() == source:
        return
    if link.exists() and not link.is_symlink():
        raise FileExistsError(f"leaky protocol: {link} exists and is not a link of ours; remove it or pick another "
                              "link root")
    link.parent.mkdir(parents=True, exist_ok=True)
    link.unlink(missing_ok=True)
    link.symlink_to(source)
