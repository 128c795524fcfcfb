"""Experiment "paper001": Baltruschat et al.'s (paper 001) depth, resolution and patient data.

* data: the ChestX-ray14 site, its 14 findings, the official test list with a 10 % patient-wise validation
  carve-out (the source models' split; paper 001's Table 5). Paper 001's five resamplings are the experiment
  "resampling" (`cxrcore.experiments.resampling`), its drain shortcut the experiment "shortcut".
* recipe: paper 001's from-scratch setup for every run (one input channel, Adam, lr 1e-2, the learning rate halved
  on plateaus, Inception-style crops, +-7 degrees, flips; "-large": twice the input side and the extra max-pool,
  batch 8); in the quick profile every run trains on the same number of whole patients for the same epochs.
* sections:

  - depth: ResNet-38, -50 and -101;
  - resolution: ResNet-50 against ResNet-50-large;
  - patient data: ResNet-50 against ResNet-50-meta (age, sex and projection fused before the head), the
    metadata-only MLP (no image), and age, sex and projection read from the image (one run, the three targets, a
    new head on the ResNet-50 findings model's frozen features: paper 001 used its ResNet-50-large as the feature
    extractor, and trained a model per target).
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pandas as pd
from PIL import Image

from cxrcore.experiments import source_models
from cxrcore.experiments.tables import (
    RESULT_COLUMNS,
    auroc_table,
    bootstrap_draws,
    bootstrap_mean_interval,
    result_row,
    scored_findings,
)
from cxrcore.findings import NIH_HARMONIZED, PATIENT_TARGETS
from cxrcore.metrics import MEAN_ROW, auroc_per_class, bootstrap_auroc_ci, mae, score_column
from cxrcore.models import build_model
from cxrcore.runner import Result, resolved_preset, run
from cxrcore.settings import Settings, quick_sized

NAME = "paper001"
FINDINGS = list(NIH_HARMONIZED)
PRESET = "paper001-scratch"
LARGE_PRESET = "paper001-large"
BASE = "ResNet-50"
DEPTHS = {"ResNet-38": "resnet38", "ResNet-50": "resnet50", "ResNet-101": "resnet101"}
SMALL_FOCAL = ("Nodule", "Mass")  # paper 001: the findings "-large" should help most (fractures are not labelled)
QUICK_TRAIN_IMAGES = 1200  # training images of every run in the quick profile (whole patients)
QUICK_EPOCHS = 5  # every run's epochs in the quick profile
WELL_BELOW_CHANCE = 0.4  # a per-finding AUROC this far under 0.5 ranks the films backwards, worth a word
LEARNED_AUROC = 0.6  # the chapter's line between a network that learned and one that barely started (0.5: chance)
METADATA_IMAGE_SIZE = 32  # the metadata-only model does not look at its images: decode them as small as allowed
SPLIT_SEED = 0
SECTIONS = {
    "depth": tuple(DEPTHS),
    "resolution": (BASE, f"{BASE}-large"),
    "patient data": (BASE, f"{BASE}-meta", "metadata only", "age, sex, projection"),
}


def official_manifest(settings: Settings) -> Path:
    """The ChestX-ray14 official split with a validation carve-out: the source models' manifest."""
    return source_models.source_manifest(settings.data_root, settings.runs_dir / "manifests")


def run_config(manifest: Path, settings: Settings, *, arch: str = DEPTHS[BASE], large: bool = False,
               meta: bool = False, findings: list[str] | None = None, weights: dict | None = None,
               frozen: bool = False) -> dict:
    """Paper 001's from-scratch recipe on one variant (one input channel; "-large" with its own preset); `frozen`:
    only a new head trains, on the features of `weights` computed once."""
    quick = quick_sized(settings.profile)
    overrides = {"epochs": QUICK_EPOCHS} if quick else {}
    if arch == "metadata":
        overrides["image_size"] = METADATA_IMAGE_SIZE
    return {"manifest": str(manifest), "findings": findings or FINDINGS, "data_root": str(settings.data_root),
            "arch": arch, "channels": 1, "preset": LARGE_PRESET if large else PRESET, "policy": "u-ones",
            "meta": meta, "weights": weights, "freeze_backbone": frozen, "feature_cache": frozen, "seed": 0,
            "profile": settings.profile,
            "max_train_images": QUICK_TRAIN_IMAGES if quick else None, "overrides": overrides}


def configs(settings: Settings) -> dict[tuple[str, str], dict]:
    """(section, arm) -> run config; the ResNet-50 of depth, resolution and patient data is one run."""
    official = official_manifest(settings)
    out = {("depth", name): run_config(official, settings, arch=arch) for name, arch in DEPTHS.items()}
    base = out[("depth", BASE)]
    out[("resolution", BASE)] = base
    out[("resolution", f"{BASE}-large")] = run_config(official, settings, large=True)
    out[("patient data", BASE)] = base
    out[("patient data", f"{BASE}-meta")] = run_config(official, settings, meta=True)
    out[("patient data", "metadata only")] = run_config(official, settings, arch="metadata", meta=True)
    out[("patient data", "age, sex, projection")] = run_config(official, settings, findings=list(PATIENT_TARGETS),
                                                               weights={"run": base}, frozen=True)
    return out


def stages(settings: Settings) -> list[list[dict]]:
    """Two stages: every run from random weights, then the patient targets on the ResNet-50's features."""
    unique: dict[str, dict] = {}
    for config in configs(settings).values():
        unique.setdefault(repr(sorted(config.items())), config)
    first = [c for c in unique.values() if c["weights"] is None]
    return [first, [c for c in unique.values() if c["weights"] is not None]]


def runs(settings: Settings) -> dict[tuple[str, str], Result]:
    """(section, arm) -> finished run (trained on demand through the run cache)."""
    return {key: run(config, runs_dir=settings.runs_dir) for key, config in configs(settings).items()}


def finding_runs(finished: dict[tuple[str, str], Result]) -> dict[tuple[str, str], Result]:
    """The runs that predict findings (all but the patient-target run)."""
    return {key: result for key, result in finished.items() if key[1] != "age, sex, projection"}


def results(settings: Settings) -> pd.DataFrame:
    """One row per finding model (RESULT_COLUMNS), the arm named "section: arm"; shared runs appear once each."""
    draws = bootstrap_draws(settings)
    rows = [result_row(NAME, arm, section, result, FINDINGS, draws)
            for (section, arm), result in finding_runs(runs(settings)).items()]
    return pd.DataFrame(rows, columns=RESULT_COLUMNS)


def input_sides(configs: Mapping[tuple[str, str], dict]) -> tuple[int, int]:
    """The input side of the standard arms and of "-large" in the configs' profile (64 and 128 px in the quick one)."""
    return (resolved_preset(configs[("depth", BASE)]).image_size,
            resolved_preset(configs[("resolution", f"{BASE}-large")]).image_size)


def profile_note(profile: str) -> str:
    """A parenthesis on what the profile shrinks of paper 001's setting ("" in the full profile)."""
    if quick_sized(profile):
        return (f" (the {profile} profile shrinks the site, the input sides and the number of epochs to fit two CPU "
                "cores)")
    if profile == "gpu":
        return " (the gpu profile keeps paper 001's input sides, on a smaller site for fewer epochs, to fit one GPU)"
    return ""


def stored_width(manifest: pd.DataFrame, data_root: Path) -> int:
    """The width in pixels of the manifest's first film as stored under data_root (the detail any input can see)."""
    with Image.open(Path(data_root) / manifest["path"].iloc[0]) as image:
        return image.width


def learning_summary(histories: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """Per run: its best validation mean AUROC, that epoch, and the last epoch's validation mean AUROC."""
    rows = {name: {"best validation AUROC": float(history["mean_auroc"].max()),
                   "best epoch": int(history.loc[history["mean_auroc"].idxmax(), "epoch"]),
                   "last epoch's validation AUROC": float(history["mean_auroc"].iloc[-1])}
            for name, history in histories.items()}
    return pd.DataFrame(rows).T.astype({"best epoch": int})


def parameters(arch: str, large: bool = False, meta: bool = False) -> int:
    """Trainable parameters of a variant with paper 001's 14 outputs and one input channel."""
    net = build_model(arch, len(FINDINGS), channels=1, large=large, meta_features=3 if meta else 0)
    return sum(p.numel() for p in net.parameters() if p.requires_grad)


def depth_table(finished: dict[tuple[str, str], Result], n_boot: int) -> pd.DataFrame:
    """Per depth: parameters, seconds per epoch, mean test AUROC with its 95 % patient-bootstrap interval."""
    rows = {}
    for name, arch in DEPTHS.items():
        result = finished[("depth", name)]
        mean = auroc_table(result, FINDINGS, n_boot).loc["Mean"]
        rows[name] = {"parameters (M)": parameters(arch) / 1e6,
                      "seconds per epoch": float(result.history["seconds"].mean()),
                      "mean AUROC": mean["auroc"], "low": mean["low"], "high": mean["high"]}
    return pd.DataFrame(rows).T.astype(float)


def per_finding(finished: dict[tuple[str, str], Result], section: str, n_boot: int) -> pd.DataFrame:
    """Finding x arm test AUROC of a section's runs (findings with enough positives in every arm's test set)."""
    arms = {arm: result for (part, arm), result in finished.items() if part == section}
    tables = {arm: auroc_table(result, FINDINGS, n_boot) for arm, result in arms.items() if
              result.config["run"]["findings"] == FINDINGS}
    table = pd.DataFrame({arm: table["auroc"] for arm, table in tables.items()}).astype(float).dropna()
    return table.drop(index=MEAN_ROW, errors="ignore")  # findings only: the mean over them is not one of them


def resolution_table(finished: dict[tuple[str, str], Result], n_boot: int) -> pd.DataFrame:
    """Per finding: AUROC of ResNet-50 and ResNet-50-large, the gain, and whether it is a small focal sign."""
    table = per_finding(finished, "resolution", n_boot)
    table = table.assign(gain=table[f"{BASE}-large"] - table[BASE])
    return table.assign(small_focal=table.index.isin(SMALL_FOCAL)).sort_values("gain", ascending=False)


def patient_target_table(result: Result, n_boot: int, seed: int = 0) -> pd.DataFrame:
    """Age MAE (years, with a patient-bootstrap interval), and sex and projection AUROC with intervals, read from
    the image by the patient-target run."""
    predictions = result.predictions
    rows = {}
    for target in ("sex", "projection"):
        counted = predictions[target].notna()
        interval = bootstrap_auroc_ci(predictions.loc[counted, [target]].to_numpy(),
                                      predictions.loc[counted, [score_column(target)]].to_numpy(),
                                      groups=predictions.loc[counted, "patient_id"].to_numpy(), n_boot=n_boot,
                                      seed=seed, names=[target])
        rows[target] = {"metric": "AUROC", "value": interval["auroc"].iloc[0], "low": interval["low"].iloc[0],
                        "high": interval["high"].iloc[0]}
    aged = predictions[predictions["age"].notna()]
    low, high = bootstrap_mean_interval((aged["age"] - aged[score_column("age")]).abs(), aged["patient_id"], n_boot,
                                        seed)
    rows["age"] = {"metric": "MAE (years)", "value": mae(aged["age"], aged[score_column("age")]), "low": low,
                   "high": high}
    return pd.DataFrame(rows).T


def metadata_only_auroc(finished: dict[tuple[str, str], Result]) -> pd.Series:
    """Per-finding test AUROC of the metadata-only MLP (findings with enough test positives)."""
    predictions = finished[("patient data", "metadata only")].predictions
    scored = scored_findings(predictions, FINDINGS)
    return auroc_per_class(predictions[scored].to_numpy(), predictions[[score_column(f) for f in scored]].to_numpy(),
                           names=scored)


def difference_reading(difference: float, half: float) -> str:
    """A difference of two models' mean test AUROC against half a 95 % interval: what this run can see of it."""
    if abs(difference) < half:
        return "within half an interval: not separable from the test set's noise"
    return f"more than half an interval {'better' if difference > 0 else 'worse'}"


def direction_reading(difference: float, reported: float, half: float) -> str:
    """Whether this run's difference goes the paper's way, said only of a difference beyond half an interval."""
    if abs(difference) < half:
        return "so its sign says nothing of the paper's direction"
    return "the paper's direction" if (difference > 0) == (reported > 0) else "against the paper's direction"


def _its(names: list[str], singular: str, plural: str) -> str:
    """"its interval reaches" or "their intervals reach", by the number of names."""
    return f"its interval {singular}" if len(names) == 1 else f"their intervals {plural}"


def below_chance_reading(table: pd.DataFrame, limit: float = WELL_BELOW_CHANCE) -> str:
    """The findings of the metadata-only model's `auroc_table` whose AUROC lies below `limit` (well under chance), with
    their positives and intervals, what that means, and the mean without them; "" where there are none."""
    findings = table.drop(index=MEAN_ROW, errors="ignore")
    low = findings[findings["auroc"] < limit]
    if low.empty:
        return ""
    listed = ", ".join(f"{name} {row['auroc']:.3f} ({row['low']:.3f}-{row['high']:.3f}, {int(row['n_pos'])} test "
                       "positives)" for name, row in low.iterrows())
    reaching, below = low.index[low["high"] >= 0.5].tolist(), low.index[low["high"] < 0.5].tolist()
    chance = (f" {' and '.join(reaching)}: {_its(reaching, 'reaches', 'reach')} 0.5, and with so few positives "
              "chance alone can do that." if reaching else "") + (
        f" {' and '.join(below)}: {_its(below, 'lies', 'lie')} wholly below 0.5, so the sampling of the test "
        "patients alone does not explain it: the link differs between the training and the test patients."
        if below else "")
    return (f"Well below 0.5: {listed}. Below 0.5 a model ranks the films backwards: the link between the patient data "
            "and the finding that it learned on the training films runs the other way on these test films." + chance
            + f" Without them the mean over the findings would be {findings['auroc'].drop(low.index).mean():.3f}.")
