"""Sample whole real patients (all their studies and views) from the real tables, renumbered synthetically."""

from __future__ import annotations

import functools
import re

import numpy as np
import pandas as pd

from cxrcore.findings import CHEXPERT_FINDINGS
from data_prep import reference

VALID_FRACTION = 0.1  # CheXpert-style valid.csv share of the site's images
NIH_TEST_FRACTION = 0.2  # patient-wise, as the real test_list.txt (about 23 % of images)
CHEXPERT_PATH = re.compile(r"^CheXpert-v1\.0-small/train/patient(\d+)/study(\d+)/(view\d+_(?:frontal|lateral)\.jpg)$")


@functools.cache
def chexpert_table() -> pd.DataFrame:
    """The real CheXpert train table with parsed patient, study and file name (cached: it takes seconds)."""
    table = reference.chexpert_table()
    parts = table["Path"].str.extract(CHEXPERT_PATH)
    if parts.isna().any().any():
        bad = table.loc[parts.isna().any(axis=1), "Path"].iloc[0]
        raise ValueError(f"unexpected CheXpert path layout in the reference table: {bad}")
    return table.assign(_patient=parts[0].astype(int), _study=parts[1].astype(int), _file=parts[2])


def _take_patients(rng: np.random.Generator, counts: pd.Series, n_images: int) -> list:
    """Random whole patients (index of counts: images per patient) until about n_images images are covered."""
    order = counts.index.to_numpy()[rng.permutation(len(counts))]
    cumulative = np.cumsum(counts.loc[order].to_numpy())
    stop = int(np.searchsorted(cumulative, n_images)) + 1
    return list(order[:stop])


def sample_chexpert(rng: np.random.Generator, n_images: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, valid) tables in the real train.csv columns; valid patients have no uncertain label (NaN -> 0)."""
    table = chexpert_table()
    n_valid = max(2, round(VALID_FRACTION * n_images))
    certain = ~(table[CHEXPERT_FINDINGS] == -1).any(axis=1).groupby(table["_patient"]).any()
    counts = table.groupby("_patient").size()
    valid_ids = _take_patients(rng, counts[certain[counts.index].to_numpy()], n_valid)
    rest = counts.drop(valid_ids)
    train_ids = _take_patients(rng, rest, n_images - n_valid)
    train = _renumber(table, train_ids, "train", first=1)
    valid = _renumber(table, valid_ids, "valid", first=len(train_ids) + 1)
    valid[CHEXPERT_FINDINGS] = valid[CHEXPERT_FINDINGS].fillna(0.0)
    return train, valid


def _renumber(table: pd.DataFrame, patient_ids: list, split: str, first: int) -> pd.DataFrame:
    """Rows of the chosen patients with paths renumbered patient{first:05d}.. keeping real studies and views."""
    new_number = {old: first + i for i, old in enumerate(patient_ids)}
    rows = table[table["_patient"].isin(new_number)].copy()
    rows["_new"] = rows["_patient"].map(new_number)
    rows = rows.sort_values(["_new", "_study", "_file"], ascending=[True, False, True], kind="stable")
    rows["Path"] = [
        f"CheXpert-v1.0-small/{split}/patient{n:05d}/study{s}/{f}"
        for n, s, f in zip(rows["_new"], rows["_study"], rows["_file"], strict=True)
    ]
    return rows.reset_index(drop=True)


def sample_nih(rng: np.random.Generator, n_images: int, size: int) -> pd.DataFrame:
    """Whole real NIH patients renumbered 1..; image size columns describe our files; adds _split and _folder."""
    table = reference.nih_table()
    counts = table.groupby("Patient ID").size()
    chosen = _take_patients(rng, counts, n_images)
    new_number = {old: i + 1 for i, old in enumerate(chosen)}
    rows = table[table["Patient ID"].isin(new_number)].copy()
    rows["Patient ID"] = rows["Patient ID"].map(new_number)
    suffix = rows["Image Index"].str.extract(r"_(\d{3})\.png$")[0]
    rows["Image Index"] = [f"{p:08d}_{s}.png" for p, s in zip(rows["Patient ID"], suffix, strict=True)]
    rows = rows.sort_values("Image Index").reset_index(drop=True)
    # spacing scaled so our size x spacing = the real field of view
    rows["OriginalImagePixelSpacing[x"] = (
        rows["OriginalImagePixelSpacing[x"] * rows["OriginalImage[Width"] / size
    ).round(4)
    rows["y]"] = (rows["y]"] * rows["Height]"] / size).round(4)
    rows["OriginalImage[Width"], rows["Height]"] = size, size
    test_patients = set(rng.permutation(len(chosen))[: round(NIH_TEST_FRACTION * len(chosen))] + 1)
    rows["_split"] = np.where(rows["Patient ID"].isin(test_patients), "test", "train")
    rows["_folder"] = [f"images_{1 + i * 12 // len(rows):03d}" for i in range(len(rows))]
    return rows


SEX_WORDS = {
    "F": re.compile(r"\b(female|woman|girl|she|her)\b", re.I),
    "M": re.compile(r"\b(male|man|boy|he|his)\b", re.I),
}
PORTABLE = re.compile(r"\b(portable|supine|AP view|semi-?upright)\b", re.I)


def sample_hospital(rng: np.random.Generator, n_images: int) -> pd.DataFrame:
    """Real IU reports (one study per patient), one row per image; sex from the text where stated, else sampled."""
    reports = reference.iu_reports()
    reports = reports[reports["image_ids"].str.len() > 0].reset_index(drop=True)
    counts = reports["image_ids"].str.count(";") + 1
    chosen = _take_patients(rng, counts, n_images)
    demographics = reference.nih_table()[["Patient Age", "Patient Gender"]].to_numpy()
    rows = []
    for number, index in enumerate(chosen, start=1):
        rows.extend(_hospital_rows(rng, reports.loc[index], number, counts[index], demographics))
    return pd.DataFrame(rows)


def _hospital_rows(rng, report: pd.Series, number: int, n_images: int, demographics: np.ndarray) -> list[dict]:
    """The image rows of one report: first view frontal (PA, or AP if the text says portable), second lateral."""
    text = " ".join([report["indication"], report["findings"], report["impression"]])
    age, sex = demographics[rng.integers(len(demographics))]
    stated = [code for code, pattern in SEX_WORDS.items() if pattern.search(text)]
    sex = stated[0] if len(stated) == 1 else sex
    frontal = "AP" if PORTABLE.search(text) else "PA"
    body = " ".join(
        part
        for part in (
            f"FINDINGS: {report['findings']}" if report["findings"] else "",
            f"IMPRESSION: {report['impression']}" if report["impression"] else "",
        )
        if part
    )
    out = []
    for view_number in range(1, n_images + 1):
        view = "LL" if view_number == 2 else frontal
        kind = "lateral" if view == "LL" else "frontal"
        out.append(
            {
                "Path": f"images/P{number:06d}/S{number:06d}/view{view_number}_{kind}.png",
                "PatientID": f"P{number:06d}",
                "StudyID": f"S{number:06d}",
                "View": view,
                "Sex": sex,
                "Age": int(age),
                "Report": body,
                "_mesh": report["mesh_major"],
                "_report_id": report["report_id"],
                "_sex_source": "report" if len(stated) == 1 else "sampled",
            }
        )
    return out
