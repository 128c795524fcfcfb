"""What a synthetic site really shows: labels from the signs its renderer drew, not from any labeler or label table.

`_synth/<site>_images.csv` lists every image of a site and `_synth/<site>_signs.csv` every sign drawn on it
(`data_prep.synth.write`). A finding is present on an image exactly when its sign was drawn there (an equivocal sign
counts: it is on the image), which makes these the labels a perfect reader would give: the yardstick for a report
labeler's noise and for any model tested on the site.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from data_prep.synth.plan import CHEXPERT_SIGNS

SYNTH_DIR = "_synth"


def drawn_labels(data_root: str | Path, site: str, findings: Sequence[str],
                 signs: Mapping[str, str] = CHEXPERT_SIGNS) -> pd.DataFrame:
    """Per image of a synthetic site (indexed by path): 1.0 where the finding's sign (`signs`) was drawn, else 0.0."""
    unknown = [f for f in findings if f not in signs]
    if unknown:
        raise ValueError(f"no drawn sign stands for {unknown}; known: {sorted(signs)}")
    folder = Path(data_root) / SYNTH_DIR
    tables = [folder / f"{site}_images.csv", folder / f"{site}_signs.csv"]
    for table in tables:
        if not table.is_file():
            raise FileNotFoundError(f"{table} not found: drawn-sign labels exist only for a synthetic site "
                                    f"(python -m data_prep synth)")
    images = pd.read_csv(tables[0], usecols=["path"])["path"]
    drawn = pd.read_csv(tables[1], usecols=["path", "sign", "drawn"]).query("drawn == 1")
    labels = {finding: images.isin(drawn.loc[drawn["sign"] == signs[finding], "path"]).astype(float).to_numpy()
              for finding in findings}
    return pd.DataFrame(labels, index=pd.Index(images, name="path"))


def with_drawn_labels(table: pd.DataFrame, data_root: str | Path, site: str, findings: Sequence[str],
                      rows: pd.Series | None = None) -> pd.DataFrame:
    """A manifest table with the findings' labels of `rows` (default: all) replaced by the drawn signs; an image the
    site's tables do not list raises, naming it."""
    rows = pd.Series(True, index=table.index) if rows is None else rows
    truth = drawn_labels(data_root, site, findings)
    paths = table.loc[rows, "path"]
    missing = paths[~paths.isin(truth.index)]
    if not missing.empty:
        raise ValueError(f"{missing.iloc[0]} (row {missing.index[0]}) is not in {SYNTH_DIR}/{site}_images.csv: "
                         f"no drawn-sign label for it ({len(missing)} such images)")
    out = table.copy()
    out.loc[rows, list(findings)] = truth.loc[paths, list(findings)].to_numpy()
    return out
