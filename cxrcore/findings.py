"""Finding names of CheXpert and ChestX-ray14, their harmonization, and the uncertainty label policies.

Source values in a manifest are the labelers' own: 1 (positive), 0 (negative), -1 (uncertain) and empty/NaN
(not mentioned in the report). A *policy* turns them into training targets and a loss mask when a dataset is
loaded; manifests never carry policy-mapped values.

Conventions, and why:

* **Not mentioned (NaN) -> negative** (target 0, mask 1). CheXpert's labeler leaves a finding blank when the
  report does not mention it; Irvin et al. (2019) and the papers built on CheXpert train with blanks as
  negatives, because a radiologist who does not mention e.g. a pneumothorax is implicitly reporting its absence.
  ChestX-ray14 only lists positives, so its manifest already stores 0 for every finding not listed.
* **No Finding** follows the same rule, with no special derivation: it is positive only where the source says
  1, and blank -> 0. In CheXpert's labeler "No Finding" is 1 exactly when no pathology is positive or uncertain;
  Support Devices does not count (in the real train.csv 8,918 images have No Finding = 1 together with a
  positive or uncertain Support Devices, and none with any other finding). We never recompute it from the other
  columns: after U-Zeros an image whose findings were all uncertain has every target 0 including No Finding,
  which is what the source says and what the published U-Zeros runs trained on. CheXpert never writes -1 for
  No Finding; if a source did, the chosen policy would apply to it like to any other finding.
"""
from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

# CheXpert's 14 observations, in the column order of its train.csv.
CHEXPERT_FINDINGS = [
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
]

# ChestX-ray14's 14 raw label names, as they appear in Data_Entry_2017's "Finding Labels" ('|'-joined).
NIH_FINDINGS = [
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
]
NIH_NO_FINDING = "No Finding"  # ChestX-ray14 writes this label alone when none of the 14 is present

# Raw ChestX-ray14 name -> harmonized name. Only Effusion has a CheXpert equivalent under another name. We do
# not fold Mass/Nodule into "Lung Lesion" nor Infiltration into "Lung Opacity": the CheXpert categories are
# broader, and folding would change positives' meaning. Names without an equivalent keep theirs, with spaces.
NIH_TO_HARMONIZED = {
    "Atelectasis": "Atelectasis",
    "Cardiomegaly": "Cardiomegaly",
    "Effusion": "Pleural Effusion",
    "Infiltration": "Infiltration",
    "Mass": "Mass",
    "Nodule": "Nodule",
    "Pneumonia": "Pneumonia",
    "Pneumothorax": "Pneumothorax",
    "Consolidation": "Consolidation",
    "Edema": "Edema",
    "Emphysema": "Emphysema",
    "Fibrosis": "Fibrosis",
    "Pleural_Thickening": "Pleural Thickening",
    "Hernia": "Hernia",
    NIH_NO_FINDING: "No Finding",
}
NIH_HARMONIZED = [NIH_TO_HARMONIZED[name] for name in NIH_FINDINGS]

# The four findings paper 000 (Bajwa et al.) trains on at all three sites; the hospital site's labeler emits them.
PAPER000_FINDINGS = ["Atelectasis", "Cardiomegaly", "Pleural Effusion", "Pneumonia"]
HOSPITAL_FINDINGS = [*PAPER000_FINDINGS, "No Finding"]

# Every harmonized name a manifest may carry as a finding column.
ALL_FINDINGS = list(dict.fromkeys([*CHEXPERT_FINDINGS, *NIH_HARMONIZED]))

POLICIES = ("u-ignore", "u-zeros", "u-ones", "u-multiclass")
ALLOWED_VALUES = (1.0, 0.0, -1.0)  # plus NaN

# Patient targets (paper 001, section 3: age, sex and view position read off the image). A run config lists them
# with (or instead of) findings; their targets come from the manifest's own columns, not from finding columns:
# age: years / AGE_SCALE, regressed through the same sigmoid output (binary cross entropy with the scaled age as
# a soft target has its minimum at the true age), reported back in years; sex: 1 male, 0 female (U not counted);
# projection: 1 AP, 0 PA (paper 001 encodes AP as true; lateral projections are not counted).
PATIENT_TARGETS = ("age", "sex", "projection")
REGRESSION_TARGETS = ("age",)
AGE_SCALE = 100.0  # ages above it are not counted (ChestX-ray14's few ages over 100 are typing errors, e.g. 414)
_BINARY_PATIENT_CODES = {"sex": ("sex", {"M": 1.0, "F": 0.0}), "projection": ("projection", {"AP": 1.0, "PA": 0.0})}


def harmonize(name: str) -> str:
    """Harmonized name of a CheXpert or ChestX-ray14 finding (e.g. 'Effusion' -> 'Pleural Effusion')."""
    if name in NIH_TO_HARMONIZED:
        return NIH_TO_HARMONIZED[name]
    if name in ALL_FINDINGS:
        return name
    raise ValueError(f"unknown finding {name!r}; known: {sorted(set(ALL_FINDINGS) | set(NIH_TO_HARMONIZED))}")


def resolve_policy(policy: str | Mapping[str, str], findings: Sequence[str]) -> list[str]:
    """One policy name per finding; a mapping must name every finding and use one kind (binary or multiclass)."""
    if isinstance(policy, str):
        per_finding = [policy] * len(findings)
    elif isinstance(policy, Mapping):
        missing = [f for f in findings if f not in policy]
        extra = [f for f in policy if f not in findings]
        if missing or extra:
            raise ValueError(f"per-finding policy: missing findings {missing}, unknown findings {extra}")
        per_finding = [policy[f] for f in findings]
    else:
        raise TypeError(f"policy must be a name or a mapping finding -> name, got {type(policy).__name__}")
    unknown = sorted({p for p in per_finding if p not in POLICIES})
    if unknown:
        raise ValueError(f"unknown policy {unknown}; choose from {POLICIES}")
    if "u-multiclass" in per_finding and len(set(per_finding)) > 1:
        raise ValueError("u-multiclass gives class indices, it cannot be mixed with binary policies")
    return per_finding


def source_values(values: np.ndarray, findings: Sequence[str], row_names: Sequence[str] | None = None) -> np.ndarray:
    """The (N, K) source values as float64, checked to be 1, 0, -1 or NaN; anything else -> ValueError."""
    array = np.asarray(values)
    if array.ndim != 2 or array.shape[1] != len(findings):
        raise ValueError(f"label values have shape {array.shape}; expected (N, {len(findings)}) for {list(findings)}")
    if array.dtype.kind in "biuf":
        numeric = array.astype(np.float64)  # (N, K)
        not_numeric = np.zeros(array.shape, dtype=bool)
    else:  # object/str cells (e.g. read as text): anything that is neither a number nor empty is bad
        table = pd.DataFrame(array.astype(object))
        numeric = table.apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
        was_empty = table.isna().to_numpy() | table.map(lambda v: isinstance(v, str) and not v.strip()).to_numpy()
        not_numeric = np.isnan(numeric) & ~was_empty
    bad = not_numeric | ~(np.isnan(numeric) | np.isin(numeric, ALLOWED_VALUES))
    if bad.any():
        row, col = (int(i[0]) for i in np.nonzero(bad))
        where = f"row {row}" + (f" ({row_names[row]})" if row_names is not None else "")
        raise ValueError(
            f"unknown label value {array[row, col]!r} for finding {findings[col]!r} at {where}; "
            f"allowed: 1, 0, -1 or empty ({int(bad.sum())} bad cells in all)"
        )
    return numeric


def apply_policy(
    values: np.ndarray,
    policy: str | Mapping[str, str],
    findings: Sequence[str],
    row_names: Sequence[str] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Map source values (N, K) of 1/0/-1/NaN to (targets, mask) under a policy or a per-finding mapping of policies.

    u-ignore: uncertain -> target 0, mask 0 (left out of the loss); u-zeros: -1 -> 0; u-ones: -1 -> 1 (paper 000);
    u-multiclass: int64 class indices 0 negative, 1 positive, 2 uncertain, mask all 1 (paper 002).
    NaN (not mentioned) -> negative with mask 1 under every policy. `row_names` (e.g. paths) name bad rows.
    """
    per_finding = resolve_policy(policy, findings)
    numeric = source_values(values, findings, row_names)
    positive = numeric == 1.0
    uncertain = numeric == -1.0
    mask = np.ones(numeric.shape, dtype=np.float32)
    if per_finding and per_finding[0] == "u-multiclass":
        targets = np.where(uncertain, 2, positive.astype(np.int64)).astype(np.int64)
        return targets, mask
    targets = positive.astype(np.float32)
    for k, name in enumerate(per_finding):
        if name == "u-ones":
            targets[uncertain[:, k], k] = 1.0
        elif name == "u-ignore":
            mask[uncertain[:, k], k] = 0.0
    return targets, mask


def is_regression(name: str) -> bool:
    """Whether a target is regressed (age) rather than classified (findings, sex, projection)."""
    return name in REGRESSION_TARGETS


def target_scale(name: str) -> float:
    """What a target's model output (a sigmoid in [0, 1]) is multiplied by to give its value: AGE_SCALE for age."""
    return AGE_SCALE if name == "age" else 1.0


def patient_targets(table: pd.DataFrame, names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(targets, mask), each (N, K) float32, of patient targets from a manifest's age, sex and projection columns.

    A value that cannot count (age missing or above AGE_SCALE, sex U, a lateral projection) gets mask 0; ages above
    AGE_SCALE are named in a warning, since they are errors in the source rather than old patients."""
    targets = np.zeros((len(table), len(names)), dtype=np.float32)
    mask = np.zeros_like(targets)
    for k, name in enumerate(names):
        if name == "age":
            age = pd.to_numeric(table["age"], errors="coerce").to_numpy(dtype=float)
            too_old = age > AGE_SCALE
            if too_old.any():
                first = table["path"].to_numpy()[too_old][:3].tolist() if "path" in table else []
                warnings.warn(f"{int(too_old.sum())} image(s) with an age above {AGE_SCALE:g} not counted as age "
                              f"targets (source errors?), e.g. {first}", UserWarning, stacklevel=2)
            counted = np.isfinite(age) & ~too_old
            targets[counted, k] = age[counted] / AGE_SCALE
        elif name in _BINARY_PATIENT_CODES:
            column, codes = _BINARY_PATIENT_CODES[name]
            coded = table[column].map(codes).to_numpy(dtype=float)
            counted = np.isfinite(coded)
            targets[counted, k] = coded[counted]
        else:
            raise ValueError(f"{name!r} is not a patient target; patient targets are {list(PATIENT_TARGETS)}")
        mask[counted, k] = 1.0
    return targets, mask
