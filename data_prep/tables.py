"""One reader per real metadata table: CheXpert's train.csv / valid.csv and ChestX-ray14's Data_Entry table.

Both `data_prep.stats` (statistics of the real tables torchxrayvision ships) and `data_prep.manifests` (the
on-disk layouts under DATA_ROOT) put the source rows through these functions, so the two give the same values for
the same image. The values are those of the manifest schema (`cxrcore.manifest`):

* ``patient_id``: text; CheXpert ``patient00001`` (from the Path), ChestX-ray14 the 'Patient ID' zero-padded to
  eight digits (``00000001``, as in the image names ``00000001_000.png``).
* ``study_id``: CheXpert ``patient00001/study1``; ChestX-ray14 has no studies, each image is its own
  (``00000001_000``, the image name without ``.png``).
* ``view``: frontal | lateral (every ChestX-ray14 image is frontal).
* ``projection``: the source's AP/PA column (AP, PA, and for a few CheXpert images LL or RL); ``LAT`` for a
  CheXpert lateral image whose AP/PA is empty (lateral, side not recorded).
* ``sex``: M | F | U; ``age``: years as float.
* one column per finding with the source's values: CheXpert 1 / 0 / -1 (uncertain) / NaN (not mentioned);
  ChestX-ray14 lists positives only, so 1 where listed and 0 where not, under the harmonized names
  (Effusion -> Pleural Effusion, ...) plus 'No Finding'.

``path`` is the source's own: CheXpert's Path column (already relative to DATA_ROOT), ChestX-ray14's bare
'Image Index' (the manifest reader replaces it with the images_NNN/images/ folder it finds the file in).
Bad values raise ValueError naming the source, the row and the image.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cxrcore.findings import CHEXPERT_FINDINGS, NIH_FINDINGS, NIH_NO_FINDING, NIH_TO_HARMONIZED, source_values
from cxrcore.manifest import PROJECTIONS, require_columns

ROW_COLUMNS = ["path", "patient_id", "study_id", "view", "projection", "sex", "age"]
CHEXPERT_COLUMNS = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *CHEXPERT_FINDINGS]
NIH_COLUMNS = ["Image Index", "Finding Labels", "Patient ID", "Patient Age", "Patient Gender", "View Position"]
NIH_LABELS = [*NIH_FINDINGS, NIH_NO_FINDING]  # raw names, in the order of the label columns
NIH_LABEL_COLUMNS = [NIH_TO_HARMONIZED[name] for name in NIH_LABELS]  # harmonized names
CHEXPERT_PATH = r"[^/]+/[^/]+/(?P<patient>patient\d+)/(?P<study>study\d+)/[^/]+"
LATERAL_UNRECORDED = "LAT"


def read_csv(path: Path) -> pd.DataFrame:
    """A source CSV, with an error naming it when it is absent."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is the dataset unpacked in its original layout there?")
    return pd.read_csv(path)


def map_values(column: pd.Series, mapping: dict, what: str, source: str | Path, names: pd.Series) -> pd.Series:
    """Map a column's values; an unmapped value raises ValueError naming the row."""
    mapped = column.map(mapping)
    bad = mapped.isna()
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise ValueError(f"{source}: unknown {what} {column.iloc[i]!r} at row {i} ({names.iloc[i]}); "
                         f"known: {sorted(str(k) for k in mapping)}")
    return mapped


def chexpert_rows(table: pd.DataFrame, source: str | Path = "CheXpert train.csv") -> pd.DataFrame:
    """A CheXpert train.csv / valid.csv table, one row per image: ROW_COLUMNS and the CHEXPERT_FINDINGS values."""
    require_columns(table, CHEXPERT_COLUMNS, source)
    names = table["Path"]
    parts = names.str.extract(f"^{CHEXPERT_PATH}$")  # CheXpert-v1.0-small/train/patientNNNNN/studyN/viewN_x.jpg
    unparsed = parts["patient"].isna()
    if unparsed.any():
        i = int(np.flatnonzero(unparsed.to_numpy())[0])
        raise ValueError(f"{source}: cannot read patient/study from Path {names.iloc[i]!r} at row {i}; Path values "
                         "must look like CheXpert-v1.0-small/train/patientNNNNN/studyN/view.jpg")
    view = map_values(table["Frontal/Lateral"], {"Frontal": "frontal", "Lateral": "lateral"}, "Frontal/Lateral",
                      source, names)
    projection = table["AP/PA"].where(table["AP/PA"].notna(), np.where(view == "lateral", LATERAL_UNRECORDED, None))
    rows = pd.DataFrame({
        "path": names,
        "patient_id": parts["patient"],
        "study_id": parts["patient"] + "/" + parts["study"],
        "view": view,
        "projection": map_values(projection, {p: p for p in PROJECTIONS}, "AP/PA", source, names),
        "sex": map_values(table["Sex"], {"Male": "M", "Female": "F", "Unknown": "U"}, "Sex", source, names),
        "age": pd.to_numeric(table["Age"], errors="raise").astype(float),
    }, index=table.index)
    labels = source_values(table[CHEXPERT_FINDINGS].to_numpy(), CHEXPERT_FINDINGS, names.tolist())
    return pd.concat([rows, pd.DataFrame(labels, columns=CHEXPERT_FINDINGS, index=table.index)], axis=1)


def _nih_labels(finding_labels: pd.Series, names: pd.Series, source: str | Path) -> pd.DataFrame:
    """One 1/0 column per harmonized ChestX-ray14 finding (+ No Finding) from the '|'-joined labels."""
    position = {raw: k for k, raw in enumerate(NIH_LABELS)}
    values = np.zeros((len(finding_labels), len(NIH_LABELS)), dtype=float)
    for i, labels in enumerate(finding_labels.astype(str)):
        for label in labels.split("|"):
            if label not in position:
                raise ValueError(f"{source}: unknown finding {label!r} at row {i} ({names.iloc[i]})")
            values[i, position[label]] = 1.0
    return pd.DataFrame(values, columns=NIH_LABEL_COLUMNS, index=finding_labels.index)


def nih_rows(table: pd.DataFrame, source: str | Path = "ChestX-ray14 Data_Entry_2017_v2020.csv") -> pd.DataFrame:
    """A ChestX-ray14 Data_Entry table, one row per image: ROW_COLUMNS (path = the image name) and NIH_LABEL_COLUMNS."""
    require_columns(table, NIH_COLUMNS, source)
    names = table["Image Index"]
    rows = pd.DataFrame({
        "path": names,
        "patient_id": pd.to_numeric(table["Patient ID"], errors="raise").astype(int).map("{:08d}".format),
        "study_id": names.str.removesuffix(".png"),
        "view": "frontal",
        "projection": map_values(table["View Position"], {"PA": "PA", "AP": "AP"}, "View Position", source, names),
        "sex": map_values(table["Patient Gender"], {"M": "M", "F": "F"}, "Patient Gender", source, names),
        "age": pd.to_numeric(table["Patient Age"], errors="raise").astype(float),
    }, index=table.index)
    return pd.concat([rows, _nih_labels(table["Finding Labels"], names, source)], axis=1)
