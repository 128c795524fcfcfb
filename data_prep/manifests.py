"""Read each dataset in its real on-disk layout into a manifest: one table per site, one row per image.

The manifest schema (columns and allowed values) and its load/validate/write functions are in cxrcore.manifest.

Layouts read (DATA_ROOT/...):

* ``CheXpert-v1.0-small/train.csv`` and ``valid.csv`` (valid.csv is the test set, as in paper 000),
* ``ChestX-ray14/Data_Entry_2017_v2020.csv``, images in any ``images_NNN/images/``, ``train_val_list.txt``,
  ``test_list.txt``,
* ``hospital/reports.csv`` (Path, PatientID, StudyID, View, Sex, Age, Report), labels from the report labeler.
"""
from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd

from cxrcore.findings import HOSPITAL_FINDINGS
from cxrcore.manifest import FINAL_SPLITS, REQUIRED_COLUMNS, SEXES, require_columns, write_manifest
from data_prep.report_labeler import check_output, label_reports, read_text_csv
from data_prep.splits import nih_official_split, split_patients
from data_prep.tables import NIH_COLUMNS, chexpert_rows, nih_rows
from data_prep.tables import map_values as _map_values
from data_prep.tables import read_csv as _read_csv

log = logging.getLogger(__name__)

CHEXPERT_DIR = "CheXpert-v1.0-small"
NIH_DIR = "ChestX-ray14"
NIH_TABLE = "Data_Entry_2017_v2020.csv"
HOSPITAL_DIR = "hospital"
HOSPITAL_COLUMNS = ["Path", "PatientID", "StudyID", "View", "Sex", "Age", "Report"]


def _manifest(rows: pd.DataFrame, site: str, split: str | np.ndarray) -> pd.DataFrame:
    """Rows of data_prep.tables with the site and split columns added, in the manifest schema's column order."""
    findings = [c for c in rows.columns if c not in REQUIRED_COLUMNS]
    return rows.assign(site=site, split=split)[[*REQUIRED_COLUMNS, *findings]]


# ---------------------------------------------------------------------------------------------- CheXpert
def _chexpert_rows(table: pd.DataFrame, source: Path, split: str) -> pd.DataFrame:
    """Manifest rows from a CheXpert train.csv/valid.csv table (read by data_prep.tables.chexpert_rows)."""
    return _manifest(chexpert_rows(table, source), "chexpert", split)


def read_chexpert(data_root: str | Path) -> pd.DataFrame:
    """CheXpert-v1.0-small train.csv (split 'trainval', carved later) + valid.csv (split 'test', paper 000)."""
    folder = Path(data_root) / CHEXPERT_DIR
    train = _chexpert_rows(_read_csv(folder / "train.csv"), folder / "train.csv", "trainval")
    test = _chexpert_rows(_read_csv(folder / "valid.csv"), folder / "valid.csv", "test")
    return pd.concat([train, test], ignore_index=True)


# ------------------------------------------------------------------------------------------ ChestX-ray14
def locate_nih_images(folder: Path) -> dict[str, str]:
    """Image file name -> path relative to the NIH folder, over every images_NNN/images/ folder."""
    located: dict[str, str] = {}
    for part in sorted(folder.glob("images_*/images")):
        with os.scandir(part) as entries:
            for entry in entries:
                if entry.name in located:
                    raise ValueError(f"{entry.name} found twice: {located[entry.name]} and {part.name}/images")
                located[entry.name] = f"{part.parent.name}/images/{entry.name}"
    return located


def _read_list(path: Path) -> set[str]:
    """Image names of an official split list, one per line."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: the official ChestX-ray14 split lists come with the download")
    return {line.strip() for line in path.read_text().splitlines() if line.strip()}


def read_nih(data_root: str | Path, on_missing: str = "raise") -> pd.DataFrame:
    """ChestX-ray14 Data_Entry_2017_v2020.csv with images found in images_NNN/images and the official split lists.

    on_missing='skip' drops (and logs) images absent from every images folder, e.g. when only some of the
    twelve archives were downloaded; the default raises naming them.
    """
    folder = Path(data_root) / NIH_DIR
    table = _read_csv(folder / NIH_TABLE)
    source = folder / NIH_TABLE
    require_columns(table, NIH_COLUMNS, source)
    located = locate_nih_images(folder)
    found = table["Image Index"].isin(located)
    if not found.all():
        missing = table.loc[~found, "Image Index"].tolist()
        if on_missing != "skip":
            raise FileNotFoundError(f"{len(missing)} image(s) of {source.name} are in no {NIH_DIR}/images_NNN/images "
                                    f"folder, e.g. {missing[:5]}; pass on_missing='skip' to leave them out")
        log.warning("ChestX-ray14: %d of %d images not downloaded, left out", len(missing), len(table))
        table = table[found].reset_index(drop=True)
    test, trainval = _read_list(folder / "test_list.txt"), _read_list(folder / "train_val_list.txt")
    names = table["Image Index"]
    in_test, in_trainval = names.isin(test), names.isin(trainval)
    if (in_test & in_trainval).any() or not (in_test | in_trainval).all():
        bad = names[(in_test == in_trainval)].tolist()
        raise ValueError(f"{len(bad)} image(s) in both or neither official list, e.g. {bad[:5]}")
    rows = nih_rows(table, source)
    rows["path"] = NIH_DIR + "/" + names.map(located)
    return _manifest(rows, "nih", np.where(in_test, "test", "trainval"))


# -------------------------------------------------------------------------------------------- hospital
def _hospital_labels(reports: pd.Series, source: Path, negation: bool) -> pd.DataFrame:
    """Labels of the reports from data_prep.report_labeler, checked to be 1/0 in the expected columns."""
    labels = label_reports(reports.fillna("").astype(str).tolist(), negation=negation)
    require_columns(labels, HOSPITAL_FINDINGS, "report labeler output")
    if len(labels) != len(reports):
        raise ValueError(f"report labeler returned {len(labels)} rows for {len(reports)} reports of {source}")
    values = labels[HOSPITAL_FINDINGS].to_numpy(dtype=float)
    if not np.isin(values, (0.0, 1.0)).all():
        raise ValueError("report labeler returned values other than 1/0")
    return pd.DataFrame(values, columns=HOSPITAL_FINDINGS, index=reports.index)


def _ages(column: pd.Series, source: Path, names: pd.Series) -> pd.Series:
    """Ages in years as float (empty stays empty); a value that is not a number raises naming its row."""
    ages = pd.to_numeric(column, errors="coerce").astype(float)
    bad = ages.isna() & column.notna()
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise ValueError(f"{source}: Age {column.iloc[i]!r} at row {i} ({names.iloc[i]}) is not a number of years")
    return ages


def read_hospital(data_root: str | Path, negation: bool = False, encoding: str = "utf-8") -> pd.DataFrame:
    """The hospital site: hospital/reports.csv (text in `encoding`), images under hospital/images, labels by the
    keyword labeler (paper 000's Table 1 keywords without negation detection by default, as the paper did)."""
    folder = Path(data_root) / HOSPITAL_DIR
    source = folder / "reports.csv"
    if not source.is_file():
        raise FileNotFoundError(f"{source} not found: the hospital site is a reports.csv with columns "
                                f"{HOSPITAL_COLUMNS} and its images under {folder}")
    table = read_text_csv(source, encoding)
    require_columns(table, HOSPITAL_COLUMNS, source)
    views = {"PA": ("frontal", "PA"), "AP": ("frontal", "AP"), "LL": ("lateral", "LL")}
    pairs = _map_values(table["View"], views, "View", source, table["Path"])
    manifest = pd.DataFrame({
        "path": HOSPITAL_DIR + "/" + table["Path"].astype(str),
        "site": "hospital",
        "patient_id": table["PatientID"].astype(str),
        "study_id": table["StudyID"].astype(str),
        "view": pairs.str[0],
        "projection": pairs.str[1],
        "sex": _map_values(table["Sex"].fillna("U"), {s: s for s in SEXES}, "Sex", source, table["Path"]),
        "age": _ages(table["Age"], source, table["Path"]),
        "split": "trainval",
    })
    return pd.concat([manifest, _hospital_labels(table["Report"], source, negation)], axis=1)


READERS = {"chexpert": read_chexpert, "nih": read_nih, "hospital": read_hospital}


# ----------------------------------------------------------------------------------------- file checks
def check_files(df: pd.DataFrame, data_root: str | Path, on_missing: str = "raise") -> pd.DataFrame:
    """Rows whose image file exists under data_root; a missing file raises naming it unless on_missing='skip'."""
    if on_missing not in ("raise", "skip"):
        raise ValueError(f"on_missing must be 'raise' or 'skip', got {on_missing!r}")
    root = Path(data_root)
    exists = np.array([(root / p).is_file() for p in df["path"]], dtype=bool)
    if exists.all():
        return df
    missing = df["path"][~exists].tolist()
    if on_missing == "raise":
        raise FileNotFoundError(f"image file {root / missing[0]} not found ({len(missing)} missing in all, "
                                f"e.g. {missing[:3]})")
    log.warning("%d of %d image files missing under %s, left out (e.g. %s)", len(missing), len(df), root, missing[:3])
    return df[exists]


# ------------------------------------------------------------------------------------------------- CLI
def assign_splits(df: pd.DataFrame, site: str, seed: int, valid_fraction: float | None = None) -> pd.DataFrame:
    """The papers' splits: CheXpert 95/5 of train.csv (valid.csv = test), NIH official test + carve-out, hospital
    random 85/10/5 (paper 000); all patient-wise and seeded."""
    df = df.copy()
    if site == "nih":
        df["split"] = nih_official_split(df, 0.1 if valid_fraction is None else valid_fraction, seed)
    elif site == "chexpert":
        valid = 0.05 if valid_fraction is None else valid_fraction
        trainval = df["split"] == "trainval"
        df.loc[trainval, "split"] = split_patients(df[trainval], {"train": 1 - valid, "valid": valid}, seed)
    elif site == "hospital":
        valid = 0.10 if valid_fraction is None else valid_fraction
        df["split"] = split_patients(df, {"train": 0.95 - valid, "valid": valid, "test": 0.05}, seed)
    else:
        raise ValueError(f"unknown site {site!r}")
    return df


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`python -m data_prep manifest {chexpert,nih,hospital} --root DATA_ROOT --out CSV`."""
    parser.add_argument("site", choices=sorted(READERS), help="which dataset layout to read")
    parser.add_argument("--root", required=True, type=Path, help="DATA_ROOT holding the dataset folder")
    parser.add_argument("--out", required=True, type=Path, help="manifest CSV to write")
    parser.add_argument("--split-seed", type=int, default=0, help="seed of the patient-wise splits (default 0)")
    parser.add_argument("--valid-fraction", type=float, default=None,
                        help="validation fraction (default: chexpert 0.05, nih 0.1, hospital 0.1)")
    parser.add_argument("--on-missing", choices=("raise", "skip"), default="raise",
                        help="missing image files: stop (default) or leave them out, logging the count")
    parser.add_argument("--negation", action="store_true",
                        help="hospital: label reports with the negation-aware labeler instead of paper 000's")
    parser.add_argument("--encoding", default="utf-8",
                        help="hospital: text encoding of reports.csv (default utf-8; e.g. cp1252 if saved by Excel)")
    parser.add_argument("--force", action="store_true", help="overwrite an existing manifest")


def _read_site(args: argparse.Namespace) -> pd.DataFrame:
    """The manifest of `args.site`: read from its layout, split, image files checked."""
    if args.site == "nih":
        df = read_nih(args.root, args.on_missing)
    elif args.site == "hospital":
        df = read_hospital(args.root, negation=args.negation, encoding=args.encoding)
    else:
        df = read_chexpert(args.root)
    df = assign_splits(df, args.site, args.split_seed, args.valid_fraction)
    return check_files(df, args.root, args.on_missing).reset_index(drop=True)


def main(args: argparse.Namespace) -> int:
    """Read, split, check files and write one site's manifest."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    check_output(args.out, args.force, "manifest")
    if args.encoding != "utf-8" and args.site != "hospital":
        raise SystemExit(f"manifest: --encoding applies to the hospital site's reports.csv only, not {args.site}")
    try:
        df = _read_site(args)
        write_manifest(df, args.out, force=args.force)
    except (OSError, ValueError) as err:  # a message naming the file and row, without a traceback
        raise SystemExit(f"manifest: {err}") from err
    counts = df["split"].value_counts().reindex(FINAL_SPLITS, fill_value=0)
    print(f"wrote {args.out}: {len(df)} images of {df['patient_id'].nunique()} patients "
          f"({', '.join(f'{k} {v}' for k, v in counts.items())})")
    return 0
