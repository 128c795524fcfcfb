"""Up-sampling rare findings (paper 003): training images positive for a rare finding are drawn more often.

The draws live in the manifest's optional `copies` column (cxrcore.manifest), set on training rows only, after
the patient-wise split: a repeated image never reaches validation or test, and no patient crosses a split.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from cxrcore.manifest import COPIES, copies, require_columns


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
