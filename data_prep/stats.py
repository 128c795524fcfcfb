"""Label and demographic statistics of the real CheXpert and ChestX-ray14 (NIH) metadata tables.

Both tables are first put in one common form (`chexpert_raw`, `nih_raw`): one row per image with path,
patient_id, study_id, sex (M/F/U), age, view (frontal/lateral), projection (AP/PA/LL/RL, 'unknown' where the
source gives none, i.e. CheXpert's lateral images) and one column per finding holding the source's values:
1 positive, 0 negative, -1 uncertain, NaN not mentioned.
- CheXpert: the train.csv values as they are. patient_id 'patient00001', study_id 'patient00001/study1'.
- NIH: ChestX-ray14 lists positives only, so a finding is 1 where listed and 0 where not: NIH has no
  uncertain and no not-mentioned values. Names are harmonized (Effusion -> Pleural Effusion,
  Pleural_Thickening -> Pleural Thickening) and 'No Finding' is kept as its own column. Every NIH image is
  frontal. patient_id is 'Patient ID'; each image is its own study (study_id = image index without '.png').
Counts are of images (rows), never of patients, unless the row says 'patients'.
"""
from __future__ import annotations

import argparse
import functools
from collections.abc import Sequence

import numpy as np
import pandas as pd

from cxrcore.findings import CHEXPERT_FINDINGS, NIH_FINDINGS, harmonize, source_values
from data_prep.reference import chexpert_table, nih_table

COMMON_COLUMNS = ["path", "patient_id", "study_id", "sex", "age", "view", "projection"]
STATS_POLICIES = ("u-ones", "u-zeros", "u-ignore")
NIH_NO_FINDING = "No Finding"
NIH_COMMON_FINDINGS = [NIH_NO_FINDING, *(harmonize(name) for name in NIH_FINDINGS)]
_SEX = {"Male": "M", "Female": "F", "Unknown": "U", "M": "M", "F": "F"}
VIEWS = ("frontal", "all")


@functools.cache
def _chexpert_read() -> pd.DataFrame:
    return chexpert_table()


@functools.cache
def _nih_read() -> pd.DataFrame:
    return nih_table()


def _chexpert_source() -> pd.DataFrame:
    """The real CheXpert train.csv, read once per process (it takes a few seconds); a copy the caller may change."""
    return _chexpert_read().copy()


def _nih_source() -> pd.DataFrame:
    """The real ChestX-ray14 Data_Entry_2017_v2020.csv, read once per process; a copy the caller may change."""
    return _nih_read().copy()


def _check_views(views: str) -> None:
    """Raise on a views value other than 'frontal' or 'all'."""
    if views not in VIEWS:
        raise ValueError(f"views must be one of {VIEWS}, got {views!r}")


def _map_sex(values: pd.Series, source: str) -> pd.Series:
    """Source sex values to M/F/U; an unknown value raises naming its row."""
    mapped = values.map(_SEX)
    bad = mapped.isna()
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise ValueError(f"{source}: unknown sex value {values.iloc[row]!r} at row {row}")
    return mapped


def chexpert_common(table: pd.DataFrame, views: str = "all") -> pd.DataFrame:
    """A CheXpert train/valid.csv table in the common form (see the module docstring)."""
    _check_views(views)
    parts = table["Path"].str.extract(r"/(?P<patient>patient\d+)/(?P<study>study\d+)/")
    unparsed = parts["patient"].isna()
    if unparsed.any():
        row = int(np.flatnonzero(unparsed.to_numpy())[0])
        raise ValueError(f"CheXpert: cannot read patient/study from Path {table['Path'].iloc[row]!r} at row {row}")
    view = table["Frontal/Lateral"].str.lower()
    if not view.isin(["frontal", "lateral"]).all():
        row = int(np.flatnonzero(~view.isin(["frontal", "lateral"]).to_numpy())[0])
        raise ValueError(f"CheXpert: unknown Frontal/Lateral value {table['Frontal/Lateral'].iloc[row]!r} at row {row}")
    common = pd.DataFrame({
        "path": table["Path"], "patient_id": parts["patient"], "study_id": parts["patient"] + "/" + parts["study"],
        "sex": _map_sex(table["Sex"], "CheXpert"), "age": table["Age"].astype(float), "view": view,
        "projection": table["AP/PA"].fillna("unknown"),
    })
    labels = source_values(table[CHEXPERT_FINDINGS].to_numpy(), CHEXPERT_FINDINGS, table["Path"].tolist())
    common[CHEXPERT_FINDINGS] = labels
    return common[common["view"] == "frontal"].reset_index(drop=True) if views == "frontal" else common


def nih_common(table: pd.DataFrame) -> pd.DataFrame:
    """A ChestX-ray14 Data_Entry table in the common form (see the module docstring)."""
    listed = table["Finding Labels"].str.split("|")
    known = {*NIH_FINDINGS, NIH_NO_FINDING}
    for row, names in enumerate(listed):
        unknown = [n for n in names if n not in known]
        if unknown:
            raise ValueError(f"NIH: unknown finding {unknown} in row {row} ({table['Image Index'].iloc[row]})")
    common = pd.DataFrame({
        "path": table["Image Index"], "patient_id": table["Patient ID"].astype(str),
        "study_id": table["Image Index"].str.removesuffix(".png"), "sex": _map_sex(table["Patient Gender"], "NIH"),
        "age": table["Patient Age"].astype(float), "view": "frontal", "projection": table["View Position"],
    })
    for raw in [NIH_NO_FINDING, *NIH_FINDINGS]:
        common[harmonize(raw) if raw != NIH_NO_FINDING else raw] = listed.map(lambda n, r=raw: r in n).astype(float)
    return common


def chexpert_raw(views: str = "all") -> pd.DataFrame:
    """The real CheXpert train.csv in the common form; views 'frontal' keeps frontal images only."""
    return chexpert_common(_chexpert_source(), views)


def nih_raw(views: str = "all") -> pd.DataFrame:
    """The real ChestX-ray14 table in the common form (all its images are frontal, so views changes nothing)."""
    _check_views(views)
    return nih_common(_nih_source())


def site_findings(site: str) -> list[str]:
    """The finding columns of a site's common-form table."""
    return list(CHEXPERT_FINDINGS) if site == "chexpert" else list(NIH_COMMON_FINDINGS)


def label_counts(table: pd.DataFrame, findings: Sequence[str], policy: str | None = None) -> pd.DataFrame:
    """Per finding: counts of positive (1), negative (0), uncertain (-1), not mentioned (NaN) source values.

    With a policy, positive_after_policy is what training sees as positive: u-ones counts uncertain as
    positive; u-zeros (uncertain -> 0) and u-ignore (uncertain masked out) count the positives only.
    """
    if policy is not None and policy not in STATS_POLICIES:
        raise ValueError(f"policy must be one of {STATS_POLICIES}, got {policy!r}")
    missing = [f for f in findings if f not in table.columns]
    if missing:
        raise ValueError(f"table has no column(s) {missing}")
    values = source_values(table[list(findings)].to_numpy(), list(findings))  # (N, K)
    counts = pd.DataFrame({
        "finding": list(findings),
        "positive": (values == 1).sum(axis=0), "negative": (values == 0).sum(axis=0),
        "uncertain": (values == -1).sum(axis=0), "not_mentioned": np.isnan(values).sum(axis=0),
    })
    if policy is not None:
        counts["positive_after_policy"] = counts["positive"] + (counts["uncertain"] if policy == "u-ones" else 0)
    return counts


def demographics(table: pd.DataFrame) -> pd.DataFrame:
    """Rows (field, value, count): images, distinct patients and studies, sex, view, projection, age mean/std."""
    rows = [("images", "all", len(table)), ("patients", "distinct", table["patient_id"].nunique()),
            ("studies", "distinct", table["study_id"].nunique())]
    for field in ("sex", "view", "projection"):
        rows += [(field, str(value), int(count)) for value, count in table[field].value_counts().items()]
    age = table["age"].dropna()
    rows += [("age", "mean", round(float(age.mean()), 2)), ("age", "std", round(float(age.std()), 2)),
             ("age", "missing", int(table["age"].isna().sum()))]
    return pd.DataFrame(rows, columns=["field", "value", "count"], dtype=object)  # ints stay ints, age is float


def cooccurrence(table: pd.DataFrame, findings: Sequence[str], conditional: bool = False) -> pd.DataFrame:
    """Images positive (1) for both findings; conditional=True gives P(column positive | row positive)."""
    positive = (pd.DataFrame(source_values(table[list(findings)].to_numpy(), list(findings)),
                             columns=list(findings)) == 1).astype(np.int64)  # (N, K)
    counts = positive.T @ positive  # (K, K), diagonal = positives per finding
    if not conditional:
        return counts
    diagonal = np.diag(counts.to_numpy()).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        return counts.div(np.where(diagonal > 0, diagonal, np.nan), axis=0)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `python -m data_prep stats`."""
    parser.add_argument("site", choices=("chexpert", "nih"), help="which real metadata table")
    parser.add_argument("--policy", choices=STATS_POLICIES, help="add positive_after_policy under this policy")
    parser.add_argument("--views", choices=VIEWS, default="all", help="frontal: frontal images only")
    parser.add_argument("--format", choices=("table", "csv"), default="table")
    parser.add_argument("--demographics", action="store_true", help="sex, view, patients, studies, age instead")


def main(args: argparse.Namespace) -> int:
    """Print label counts (or demographics) of one real table as an aligned table or CSV."""
    table = chexpert_raw(args.views) if args.site == "chexpert" else nih_raw(args.views)
    result = demographics(table) if args.demographics else label_counts(table, site_findings(args.site), args.policy)
    if args.format == "csv":
        print(result.to_csv(index=False), end="")
    else:
        print(f"{args.site} ({args.views} views): {len(table):,} images")
        print(result.to_string(index=False))
    return 0
