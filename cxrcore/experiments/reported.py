"""The papers' reported numbers, read from `book/reported.csv` (one row per number) and shaped into tables.

Every number a chapter quotes as "reported" comes from that file. Its columns are
`paper,source,model,arm,arch,finding,metric,value,note`: `paper` is a 3-digit string ("000"), `source` the table,
figure or section that prints the number, `model` the model, dataset or site it describes ("A vs B" for a number
that compares two models), `finding` the finding ("all" for a whole-dataset or whole-model number).
"""
from __future__ import annotations

from collections.abc import Sequence
from os import PathLike

import pandas as pd

COLUMNS = ["paper", "source", "model", "arm", "arch", "finding", "metric", "value", "note"]


def read_reported(path: str | PathLike) -> pd.DataFrame:
    """The reported numbers at `path` as a fresh DataFrame, `paper` kept as a string ("000")."""
    reported = pd.read_csv(path, dtype={"paper": str})
    missing = [c for c in COLUMNS if c not in reported.columns]
    if missing:
        raise ValueError(f"{path}: missing columns {missing}")
    return reported


def _rows(reported: pd.DataFrame, paper: str, source: str, model: str | None = None) -> pd.DataFrame:
    """The rows of one table (one paper and source, and one model if given); ValueError when none match."""
    keep = (reported["paper"] == paper) & (reported["source"] == source)
    if model is not None:
        keep &= reported["model"] == model
    if not keep.any():
        raise ValueError(f"no reported numbers for paper {paper!r}, source {source!r}, model {model!r}")
    return reported[keep]


def reported_table(reported: pd.DataFrame, paper: str, source: str, model: str | None = None,
                   index: str = "finding", columns: str = "metric") -> pd.DataFrame:
    """One table's values pivoted to `index` x `columns`, rows and columns in the file's order."""
    rows = _rows(reported, paper, source, model)
    duplicated = rows.duplicated([index, columns])
    if duplicated.any():
        first = rows.loc[duplicated, [index, columns]].iloc[0].tolist()
        raise ValueError(f"paper {paper!r}, source {source!r}, model {model!r}: several values for {index} x "
                         f"{columns} = {first}; pass a model or other index/columns")
    table = rows.pivot(index=index, columns=columns, values="value")
    table = table.reindex(index=pd.unique(rows[index]), columns=pd.unique(rows[columns]))
    return table.rename_axis(index=index, columns=None)


def reported_matrix(reported: pd.DataFrame, paper: str, source: str, names: Sequence[str]) -> pd.DataFrame:
    """A symmetric `names` x `names` matrix of one table's "A vs B" rows, ones on the diagonal (NaN if unreported)."""
    rows = _rows(reported, paper, source)
    rows = rows[rows["model"].str.contains(" vs ", regex=False)]
    if rows.empty:
        raise ValueError(f"paper {paper!r}, source {source!r} has no \"A vs B\" rows")
    names = list(names)
    matrix = pd.DataFrame(float("nan"), index=names, columns=names)
    for name in names:
        matrix.loc[name, name] = 1.0
    for pair, value in zip(rows["model"], rows["value"], strict=True):
        a, b = pair.split(" vs ", 1)
        unknown = [n for n in (a, b) if n not in matrix.index]
        if unknown:
            raise ValueError(f"paper {paper!r}, source {source!r}: {pair!r} names {unknown} not in names")
        matrix.loc[a, b] = matrix.loc[b, a] = float(value)
    return matrix
