"""The manifest schema: load, validate, write. A manifest is one table per site, one row per image.

Manifest schema (CSV; every path relative to DATA_ROOT):

==============  =====================================================================================
column          values
==============  =====================================================================================
path            image file relative to DATA_ROOT, e.g. ``CheXpert-v1.0-small/train/patient00001/...``
site            chexpert | nih | hospital | mimic
patient_id      the source's patient id as text (``patient00001``, ``00000001``, ``P000123``)
study_id        unique across the site (``patient00001/study1``, ``00000001_000``, ``S000456``)
view            frontal | lateral
projection      PA | AP | LL | RL | LAT (lateral, side not recorded)
sex             M | F | U (unknown)
age             years (float; may be empty)
split           train | valid | test (``trainval`` only before the validation carve-out)
<finding>       one column per finding (harmonized names, cxrcore.findings): 1, 0, -1 (uncertain) or
                empty (not mentioned), the source's own values; policies are applied when loading
copies          optional: how many times a training image is drawn per epoch (a whole number >= 1; 1 when
                the column is absent), for up-sampling and paper 002's frontal repeats; validation and test
                images are always drawn once
==============  =====================================================================================

The readers of the real on-disk layouts that produce manifests are in data_prep.manifests.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from cxrcore.atomic import atomic_write
from cxrcore.findings import ALL_FINDINGS, source_values

REQUIRED_COLUMNS = ["path", "site", "patient_id", "study_id", "view", "projection", "sex", "age", "split"]
SITES = ("chexpert", "nih", "hospital", "mimic")
VIEWS = ("frontal", "lateral")
PROJECTIONS = ("PA", "AP", "LL", "RL", "LAT")
SEXES = ("M", "F", "U")
FINAL_SPLITS = ("train", "valid", "test")
RAW_SPLITS = ("trainval", "test")  # what the readers give before the validation carve-out
TEXT_COLUMNS = ["path", "site", "patient_id", "study_id", "view", "projection", "sex", "split"]
COPIES = "copies"  # the optional column: times a training image is drawn per epoch


def require_columns(table: pd.DataFrame, columns: Sequence[str], source: str | Path) -> None:
    """Raise ValueError naming the columns a source table lacks."""
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise ValueError(f"{source}: missing columns {missing}; found {list(table.columns)}")


def assert_patient_disjoint(df: pd.DataFrame, split_col: str = "split") -> None:
    """Raise ValueError naming the patients (and their rows) that have images in more than one split."""
    for col in ("patient_id", split_col):
        if col not in df.columns:
            raise ValueError(f"column {col!r} missing; have {list(df.columns)}")
    n_splits = df.groupby("patient_id", sort=True)[split_col].nunique()
    leaking = n_splits[n_splits > 1].index.tolist()
    if leaking:
        first = leaking[0]
        rows = df.index[df["patient_id"] == first].tolist()
        splits = sorted(df.loc[df["patient_id"] == first, split_col].astype(str).unique())
        raise ValueError(
            f"patient {first!r} has images in splits {splits} (rows {rows[:10]}); "
            f"{len(leaking)} patient(s) in two splits in all: {leaking[:5]}"
        )


# ------------------------------------------------------------------------------------------ validation
def finding_columns(df: pd.DataFrame) -> list[str]:
    """The finding columns of a manifest, in table order."""
    return [c for c in df.columns if c not in REQUIRED_COLUMNS and c != COPIES]


def copies(df: pd.DataFrame) -> pd.Series:
    """How many times each row is drawn per epoch: the `copies` column, or 1 for every row without it."""
    return df[COPIES].astype(int) if COPIES in df.columns else pd.Series(1, index=df.index)


def _check_copies(df: pd.DataFrame) -> None:
    """`copies` holds whole numbers >= 1, and only training rows are drawn more than once."""
    values = pd.to_numeric(df[COPIES], errors="coerce")
    bad = values.isna() | (values < 1) | (values % 1 != 0)
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise ValueError(f"manifest column 'copies': {df[COPIES].iloc[i]!r} at row {i} ({df['path'].iloc[i]}) is "
                         "not a whole number >= 1")
    repeated = (values > 1) & (df["split"] != "train")
    if repeated.any():
        i = int(np.flatnonzero(repeated.to_numpy())[0])
        raise ValueError(f"manifest: copies={int(values.iloc[i])} at row {i} ({df['path'].iloc[i]}) in split "
                         f"{df['split'].iloc[i]!r}: only training images may be drawn more than once (validation and "
                         "test images are scored once each)")


def _check_allowed(df: pd.DataFrame, column: str, allowed: Sequence[str]) -> None:
    """Raise ValueError naming the first row whose value is not allowed."""
    bad = ~df[column].isin(allowed)
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise ValueError(f"manifest column {column!r}: value {df[column].iloc[i]!r} at row {i} "
                         f"({df['path'].iloc[i]}) not in {list(allowed)}")


def validate_manifest(df: pd.DataFrame, splits: Sequence[str] = FINAL_SPLITS) -> pd.DataFrame:
    """Check columns, allowed values, unique paths and patient-disjoint splits; returns df, raises ValueError."""
    require_columns(df, REQUIRED_COLUMNS, "manifest")
    unknown = [c for c in finding_columns(df) if c not in ALL_FINDINGS]
    if unknown:
        raise ValueError(f"manifest: unknown columns {unknown}; findings must be one of {ALL_FINDINGS}")
    if not finding_columns(df):
        raise ValueError("manifest has no finding columns")
    for col in ("path", "patient_id", "study_id"):
        empty = df[col].isna() | (df[col].astype(str).str.strip() == "")
        if empty.any():
            raise ValueError(f"manifest column {col!r} empty at rows {np.flatnonzero(empty.to_numpy())[:10].tolist()}")
    for column, allowed in (("site", SITES), ("view", VIEWS), ("projection", PROJECTIONS), ("sex", SEXES),
                            ("split", splits)):
        _check_allowed(df, column, allowed)
    age = pd.to_numeric(df["age"], errors="coerce")
    bad_age = (age.isna() & df["age"].notna()) | (age < 0)
    if bad_age.any():
        i = int(np.flatnonzero(bad_age.to_numpy())[0])
        raise ValueError(f"manifest: age {df['age'].iloc[i]!r} at row {i} ({df['path'].iloc[i]}) is not a number >= 0")
    if COPIES in df.columns:
        _check_copies(df)
    duplicated = df["path"].duplicated(keep=False)
    if duplicated.any():
        rows = np.flatnonzero(duplicated.to_numpy())
        raise ValueError(f"manifest: duplicate path {df['path'].iloc[rows[0]]!r} at rows {rows[:10].tolist()}")
    source_values(df[finding_columns(df)].to_numpy(), finding_columns(df), df["path"].tolist())
    assert_patient_disjoint(df.reset_index(drop=True))
    return df


# ------------------------------------------------------------------------------------------------- I/O
def write_manifest(df: pd.DataFrame, path: str | Path, force: bool = False) -> Path:
    """Validate and write a manifest CSV atomically; an existing file is only replaced with force=True."""
    path = Path(path)
    if path.exists() and not force:
        raise FileExistsError(f"{path} exists; pass force=True (--force) to overwrite it")
    validate_manifest(df)
    return atomic_write(path, lambda stream: df.to_csv(stream, index=False))


def write_derived_manifest(df: pd.DataFrame, path: str | Path) -> Path:
    """Write a manifest that a chapter or experiment derives itself, unless the file already holds exactly this
    table (so its modification time, and anything keyed on it, only changes when the content does)."""
    path = Path(path)
    if path.is_file() and path.read_text() == df.to_csv(index=False):
        return path
    return write_manifest(df, path, force=True)


def load_manifest(path: str | Path, splits: Sequence[str] = FINAL_SPLITS) -> pd.DataFrame:
    """Read and validate a manifest CSV (ids stay text: leading zeros are kept)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest {path} not found")
    df = pd.read_csv(path, dtype={c: str for c in TEXT_COLUMNS}, keep_default_na=False,
                     na_values={c: [""] for c in ["age", *ALL_FINDINGS]})
    for column in finding_columns(df):
        if df[column].dtype == object or pd.api.types.is_string_dtype(df[column]):
            source_values(df[[column]].to_numpy(), [column], df["path"].tolist())  # names the bad row
        df[column] = df[column].astype(float)
    df["age"] = pd.to_numeric(df["age"], errors="raise").astype(float)
    return validate_manifest(df, splits)
