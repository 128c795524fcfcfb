"""Subgroup AUROC: a run's test films split by the film's projection, the patient's sex or age band; each subgroup's
mean AUROC and the gap between two subgroups, with 95 % intervals from one patient bootstrap.

One draw resamples the patients of the whole test split, and every subgroup is scored on its films in that draw: a
patient with AP and PA films is drawn into both subgroups at once, so the gap's interval carries what the two
subgroups share. Within one split (projection, sex or age band) every subgroup is averaged over the same findings:
those with at least `MIN_POSITIVES` positives in each of its known subgroups.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from cxrcore.experiments.tables import MIN_POSITIVES, scored_findings
from cxrcore.metrics import WeightedAUROC, patient_weights, score_column

UNKNOWN = "unknown"
AGE_BANDS = ("under 40", "40-59", "60 and over")
AGE_EDGES = (0.0, 40.0, 60.0, np.inf)
SUBGROUPS = {"projection": ("PA", "AP"), "sex": ("M", "F"), "age band": AGE_BANDS}  # the known values, in order
COMPARISONS = (("projection", "AP", "PA"), ("sex", "F", "M"), ("age band", "60 and over", "under 40"))
TABLE_COLUMNS = ["split", "subgroup", "label", "images", "patients", "findings", "mean_auroc", "ci_low", "ci_high"]
GAP_COLUMNS = ["split", "comparison", "findings", "gap", "ci_low", "ci_high"]


def subgroup_columns(predictions: pd.DataFrame, manifest: pd.DataFrame) -> pd.DataFrame:
    """Each predicted film's projection, sex and age band from the manifest row of its path ("unknown" where the
    manifest does not know); raises naming the films the manifest lacks."""
    rows = manifest.drop_duplicates("path").set_index("path").reindex(predictions["path"])
    missing = rows["projection"].isna().to_numpy()
    if missing.any():
        paths = predictions["path"][missing].tolist()
        raise ValueError(f"{len(paths)} predicted films are not in the manifest, first {paths[:5]}")
    bands = pd.cut(rows["age"], bins=list(AGE_EDGES), right=False, labels=list(AGE_BANDS))
    known = {"projection": rows["projection"], "sex": rows["sex"], "age band": bands.astype(object)}
    return pd.DataFrame({split: column.where(column.isin(SUBGROUPS[split]), UNKNOWN).to_numpy()
                         for split, column in known.items()}, index=predictions.index)


def split_findings(predictions: pd.DataFrame, members: pd.Series, findings: Sequence[str]) -> list[str]:
    """The findings with at least MIN_POSITIVES positives in every known subgroup of one split."""
    scored = [set(scored_findings(predictions[(members == value).to_numpy()], findings))
              for value in members.unique() if value != UNKNOWN]
    return [f for f in findings if all(f in each for each in scored)]


FindingAUROCs = list[tuple[np.ndarray, WeightedAUROC]]  # per finding: (the films it counts, their weighted AUROC)


def _subgroup_aurocs(labels: np.ndarray, scores: np.ndarray, inside: np.ndarray) -> FindingAUROCs:
    """One weighted AUROC per finding (column) over the subgroup's films with a counted label, if it has both values."""
    aurocs = []
    for k in range(labels.shape[1]):
        rows = inside & ~np.isnan(labels[:, k])
        if np.unique(labels[rows, k]).size == 2:
            aurocs.append((rows, WeightedAUROC(labels[rows, k], scores[rows, k])))
    return aurocs


def _mean(aurocs: FindingAUROCs, weights: np.ndarray) -> float:
    """Mean over the findings of the AUROC under the films' bootstrap weights (NaN if no finding is defined)."""
    values = [auroc(weights[rows]) for rows, auroc in aurocs]
    defined = [v for v in values if not np.isnan(v)]
    return float(np.mean(defined)) if defined else np.nan


def _interval(draws: np.ndarray) -> tuple[float, float]:
    """The 95 % percentile interval of the defined draws (NaN if none is defined)."""
    defined = draws[~np.isnan(draws)]
    return tuple(np.percentile(defined, [2.5, 97.5])) if defined.size else (np.nan, np.nan)


def subgroup_aurocs(predictions: pd.DataFrame, manifest: pd.DataFrame, findings: Sequence[str], n_boot: int,
                    seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(one row per subgroup: images, patients, findings averaged, mean AUROC and interval; one row per comparison of
    COMPARISONS: the gap between its two subgroups' mean AUROCs and its interval), from one patient bootstrap."""
    members = subgroup_columns(predictions, manifest)
    patients = predictions["patient_id"].to_numpy()
    groups = [(split, value) for split in SUBGROUPS for value in [*SUBGROUPS[split], UNKNOWN]
              if (members[split] == value).any()]
    used = {split: split_findings(predictions, members[split], findings) for split in SUBGROUPS}
    labels = {split: predictions[used[split]].to_numpy(dtype=float) for split in SUBGROUPS}
    scores = {split: predictions[[score_column(f) for f in used[split]]].to_numpy(dtype=float) for split in SUBGROUPS}
    inside = {(s, v): (members[s] == v).to_numpy() for s, v in groups}
    aurocs = {(s, v): _subgroup_aurocs(labels[s], scores[s], inside[s, v]) for s, v in groups}

    def means(weights: np.ndarray) -> dict:
        return {group: _mean(aurocs[group], weights) for group in groups}

    point = means(np.ones(len(predictions)))
    draws = [means(weights) for weights in patient_weights(patients, n_boot, seed)]
    rows = []
    for s, v in groups:
        images = int(inside[s, v].sum())
        low, high = _interval(np.array([d[s, v] for d in draws]))
        rows.append({"split": s, "subgroup": v, "label": f"{s}: {v} ({images:,} films)", "images": images,
                     "patients": int(pd.unique(patients[inside[s, v]]).size), "findings": len(used[s]),
                     "mean_auroc": point[s, v], "ci_low": low, "ci_high": high})
    gaps = []
    for s, a, b in COMPARISONS:
        low, high = _interval(np.array([d.get((s, a), np.nan) - d.get((s, b), np.nan) for d in draws]))
        gaps.append({"split": s, "comparison": f"{a} - {b}", "findings": len(used[s]),
                     "gap": point.get((s, a), np.nan) - point.get((s, b), np.nan), "ci_low": low, "ci_high": high})
    return pd.DataFrame(rows, columns=TABLE_COLUMNS), pd.DataFrame(gaps, columns=GAP_COLUMNS)


Z_95, Z_80_POWER = 1.96, 0.84  # two-sided 95 % interval; one-sided 80 % power


def patients_needed(gap: pd.Series, patients: int) -> tuple[float, float]:
    """About how many test patients a gap would need, were it the true one, for its interval to exclude zero half the
    time (the side of the interval that faces zero shrunk to the gap), and 80 % of the time (that times
    ((1.96 + 0.84) / 1.96)^2): interval widths shrink with the square root of the patients."""
    if gap["gap"] == 0:
        return np.inf, np.inf
    facing_zero = gap["gap"] - gap["ci_low"] if gap["gap"] > 0 else gap["ci_high"] - gap["gap"]
    even = patients * (facing_zero / abs(gap["gap"])) ** 2
    return even, even * ((Z_95 + Z_80_POWER) / Z_95) ** 2


def gap_reading(gaps: pd.DataFrame, patients: int) -> str:
    """Sentences on which gaps' intervals exclude zero, how wide the intervals are, and, where none excludes it, about
    how many test patients the largest gap would need (`patients_needed`)."""
    measured = gaps[gaps["gap"].notna() & gaps["ci_low"].notna()]
    if measured.empty:
        return (f"No split has a finding with at least {MIN_POSITIVES} positives in each of its subgroups on these "
                f"{patients:,} test patients, so no gap is measured.")
    widths = measured["ci_high"] - measured["ci_low"]
    width = f"{widths.min():.2f} to {widths.max():.2f} wide"
    clear = measured[(measured["ci_low"] > 0) | (measured["ci_high"] < 0)]
    if not clear.empty:
        named = "; ".join(f"{row.comparison} ({'below' if row.ci_high < 0 else 'above'} zero)"
                          for row in clear.itertuples())
        return f"The interval excludes zero for {named}: a gap this test split can see. The intervals are {width}."
    largest = measured.loc[measured["gap"].abs().idxmax()]
    even, powered = patients_needed(largest, patients)
    facing_zero = largest["gap"] - largest["ci_low"] if largest["gap"] > 0 else largest["ci_high"] - largest["gap"]
    return (f"No gap's interval excludes zero: on {patients:,} test patients the intervals are {width}, so this test "
            "split cannot tell these subgroups apart, which is not the same as showing that they are served alike. "
            f"Were the largest gap, {largest['comparison']} ({largest['gap']:+.3f}), the true one: the side of its "
            f"interval that faces zero reaches {facing_zero:.3f} from the estimate, and would shrink to the gap itself "
            f"at about {even:,.0f} test patients, a study that would exclude zero only about half the time; to exclude "
            f"it 80 % of the time takes about {powered:,.0f} (((1.96 + 0.84) / 1.96)² = "
            f"{((Z_95 + Z_80_POWER) / Z_95) ** 2:.1f} times as many; interval widths shrink with the square root of "
            "the patients).")
