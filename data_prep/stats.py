"""Label and demographic statistics of the real CheXpert and ChestX-ray14 (NIH) metadata tables.

Both tables are first put in one common form (`chexpert_raw`, `nih_raw`) by the same readers that build the
manifests (`data_prep.tables.chexpert_rows` / `nih_rows`), so an image has the same values here as in its
manifest: one row per image with path, patient_id, study_id, sex (M/F/U), age, view (frontal/lateral),
projection (AP/PA/LL/RL as the source gives it, LAT for CheXpert's lateral images whose AP/PA is empty) and one
column per finding holding the source's values: 1 positive, 0 negative, -1 uncertain, NaN not mentioned.
- CheXpert: the train.csv values as they are. patient_id 'patient00001', study_id 'patient00001/study1'.
- NIH: ChestX-ray14 lists positives only, so a finding is 1 where listed and 0 where not: NIH has no
  uncertain and no not-mentioned values. Names are harmonized (Effusion -> Pleural Effusion,
  Pleural_Thickening -> Pleural Thickening) and 'No Finding' is kept as its own column. Every NIH image is
  frontal. patient_id is 'Patient ID' zero-padded to eight digits ('00000001', as in the image names); each
  image is its own study (study_id = image index without '.png'); path is the image index.
Counts are of images (rows), never of patients, unless the row says 'patients'.
"""
from __future__ import annotations

import argparse
import functools
from collections.abc import Sequence

import numpy as np
import pandas as pd

from cxrcore.findings import CHEXPERT_FINDINGS, NIH_FINDINGS, apply_policy, harmonize, source_values
from data_prep.reference import chexpert_table, nih_table
from data_prep.tables import chexpert_rows, nih_rows

COMMON_COLUMNS = ["path", "patient_id", "study_id", "sex", "age", "view", "projection"]
STATS_POLICIES = ("u-ones", "u-zeros", "u-ignore")
NIH_NO_FINDING = "No Finding"
NIH_COMMON_FINDINGS = [NIH_NO_FINDING, *(harmonize(name) for name in NIH_FINDINGS)]
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


def chexpert_common(table: pd.DataFrame, views: str = "all") -> pd.DataFrame:
    """A CheXpert train/valid.csv table in the common form (see the module docstring)."""
    _check_views(views)
    common = chexpert_rows(table)[[*COMMON_COLUMNS, *CHEXPERT_FINDINGS]]
    return common[common["view"] == "frontal"].reset_index(drop=True) if views == "frontal" else common


def nih_common(table: pd.DataFrame) -> pd.DataFrame:
    """A ChestX-ray14 Data_Entry table in the common form (see the module docstring)."""
    return nih_rows(table)[[*COMMON_COLUMNS, *NIH_COMMON_FINDINGS]]


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


def overview(table: pd.DataFrame) -> dict:
    """Size and demographics of one common-form table: images, patients, studies, views, sex, projection, age."""
    per_patient = table.groupby("patient_id").size()
    frontal = table["view"] == "frontal"
    return {"images": len(table), "patients": table["patient_id"].nunique(), "studies": table["study_id"].nunique(),
            "images per patient (mean)": per_patient.mean(), "images per patient (max)": per_patient.max(),
            "frontal %": 100 * frontal.mean(), "male %": 100 * (table["sex"] == "M").mean(),
            "AP % of frontal": 100 * (table.loc[frontal, "projection"] == "AP").mean(),
            "age mean": table["age"].mean(), "age std": table["age"].std()}


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


def policy_shares(table: pd.DataFrame, findings: Sequence[str]) -> pd.DataFrame:
    """Per finding: the positive share of the labels each policy counts (u-zeros, u-ignore, u-ones), and the share
    of images in U-MultiClass's uncertain class."""
    values = table[list(findings)].to_numpy()
    shares = {}
    for policy in ("u-zeros", "u-ignore", "u-ones"):  # uncertain as negative, left out, as positive
        targets, mask = apply_policy(values, policy, list(findings))
        shares[policy] = (targets * mask).sum(axis=0) / mask.sum(axis=0)  # positives among counted labels
    classes, _ = apply_policy(values, "u-multiclass", list(findings))
    shares["u-multiclass: uncertain class"] = (classes == 2).mean(axis=0)
    return pd.DataFrame(shares, index=list(findings))
