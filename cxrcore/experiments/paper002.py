"""Experiment "paper002": Wei and Jethani's questions (paper 002) on the CheXpert site, with DenseNet-121.

* data: the CheXpert layout's train.csv split patient-wise 90/10 into training and validation; the test images are
  valid.csv, every view: its labels are radiologists' and certain, as the CheXpert competition and paper 002 score.
* recipe: paper 002's (Adam, lr 1e-4, 3 epochs, the model after the last epoch), fine-tuned from the pretrained
  DenseNet-121 of the transfer experiment (ImageNet when cached, else the shared source model).
* sections, each a set of variants with the other two knobs at the baseline (every view, ImageNet statistics,
  U-Ones); the baseline is one run shared by the three sections:

  - views (paper 002 section 5.2.1): frontal+lateral | frontal, repeated (paper 002's substitution) | frontal,
    same count (further patients) | frontal, fewer (`data_prep.splits.view_arms`);
  - normalization: ImageNet mean/std | the training images' own statistics | none;
  - uncertainty: U-Ignore | U-Zeros | U-Ones | U-MultiClass (a 3-class softmax head, paper 002's weighted loss).
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from cxrcore.datasets import IMAGENET_MEAN, IMAGENET_STD, ManifestDataset, compute_normalization
from cxrcore.experiments import source_models, transfer
from cxrcore.experiments.tables import (
    MIN_POSITIVES,
    RESULT_COLUMNS,
    bootstrap_draws,
    listed,
    pairwise_delong,
    patient_bootstrap_pairs,
    predictions_auroc_table,
    result_row,
    scored_findings,
)
from cxrcore.manifest import assert_patient_disjoint, load_manifest, write_derived_manifest
from cxrcore.metrics import aggregate, bootstrap_mean_difference, score_column
from cxrcore.presets import profile_preset
from cxrcore.runner import Result, predict_split, run
from cxrcore.settings import Settings, quick_sized
from data_prep.manifests import CHEXPERT_DIR, HOSPITAL_DIR, NIH_DIR, read_chexpert, read_hospital, read_nih
from data_prep.splits import VIEW_ARMS, split_patients, view_arms

NAME = "paper002"
ARCHITECTURE = source_models.ARCHITECTURES[0]  # DenseNet-121, paper 002's network
FINDINGS = transfer.TARGET_FINDINGS
PRESET = "paper002"
FRACTIONS = {"train": 0.9, "valid": 0.1}  # of train.csv's patients; valid.csv is the test set
QUICK_TRAIN_IMAGES = 600  # training images of every variant in the quick profile (whole patients)
SPLIT_SEED = 0
SECTIONS = {
    "views": VIEW_ARMS,
    "normalization": ("imagenet", "dataset", "none"),
    "uncertainty": ("u-ignore", "u-zeros", "u-ones", "u-multiclass"),
}
BASELINE = {"views": "frontal+lateral", "normalization": "imagenet", "uncertainty": "u-ones"}
STUDY_COLUMNS = ["study_mean_auroc_max", "study_mean_auroc_mean"]  # views aggregated per study, by max and mean
SITES = {"CheXpert": (CHEXPERT_DIR, read_chexpert), "ChestX-ray14": (NIH_DIR, read_nih),
         "hospital": (HOSPITAL_DIR, read_hospital)}  # name -> (folder under the data root, reader)
STATISTICS_IMAGES = 256  # images drawn per site for its pixel statistics
# patient-bootstrap draws per comparison: cheap (two weighted AUROCs a draw, seconds for every test of the chapter),
# and a p value from a few hundred draws could not go below 0.007
PAIR_DRAWS = 2_000
HEADINGS = {"views": "lateral views", "normalization": "normalization statistics",
            "uncertainty": "uncertain labels"}  # each section as the chapter's headings name it
REPORTED_BASELINE = "DenseNet-121 baseline (ImageNet-pretrained; all layers fine-tuned)"  # models in reported.csv
REPORTED_FRONTAL = "DenseNet-121 frontal views only (same image count)"


def site_table(data_root: Path) -> pd.DataFrame:
    """The CheXpert site, every view: train.csv split patient-wise into train/valid, valid.csv as "test"."""
    table = read_chexpert(data_root).reset_index(drop=True)
    trainval = table["split"] == "trainval"
    table.loc[trainval, "split"] = split_patients(table[trainval], FRACTIONS, seed=SPLIT_SEED).to_numpy()
    assert_patient_disjoint(table)
    return table


def train_images(table: pd.DataFrame, profile: str) -> int:
    """Training images of every variant: a few hundred in the quick profile, else every frontal training image
    (so that the frontal-only variant can match the frontal+lateral variant's count)."""
    if quick_sized(profile):
        return QUICK_TRAIN_IMAGES
    return int(((table["split"] == "train") & (table["view"] == "frontal")).sum())


def input_side(profile: str) -> int:
    """The variants' input side in a profile: paper 002's, or the quick profile's."""
    return profile_preset(PRESET, profile).image_size


def pixel_statistics(settings: Settings, n: int = STATISTICS_IMAGES) -> pd.DataFrame:
    """Each site's grey pixel mean and standard deviation in [0, 1] (n of its images drawn with a fixed seed, at the
    variants' input side), for the sites whose folders are under the data root, then ImageNet's (the mean over its
    three channels) as the last row."""
    rows = []
    for site, (folder, read) in SITES.items():
        if not (settings.data_root / folder).is_dir():
            continue  # the real downloads have no hospital site: there is nothing to measure
        table = read(settings.data_root)
        images = ManifestDataset(table, settings.data_root, [], image_size=input_side(settings.profile), channels=1,
                                 normalization="none")
        (mean,), (std,) = compute_normalization(images, n)
        rows.append({"site": site, "images": len(table), "measured on": min(n, len(table)), "mean": mean,
                     "std": std})
    rows.append({"site": "ImageNet (mean of R, G, B)", "images": None, "measured on": None,
                 "mean": sum(IMAGENET_MEAN) / 3, "std": sum(IMAGENET_STD) / 3})
    return pd.DataFrame(rows).astype({"images": "Int64", "measured on": "Int64"}).set_index("site")


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def view_manifests(settings: Settings) -> dict[str, Path]:
    """View variant -> its manifest (training rows of the variant; validation and test rows of the site)."""
    table = site_table(settings.data_root)
    arms = view_arms(table, train_images(table, settings.profile), seed=SPLIT_SEED)
    out = settings.runs_dir / "manifests"
    return {name: write_derived_manifest(arm, out / f"paper002_views_{_slug(name)}.csv") for name, arm in arms.items()}


def variant_config(manifest: Path, settings: Settings, source: dict, *, policy: str = "u-ones",
                   normalization: str = "imagenet") -> dict:
    """Run config of one variant: paper 002's recipe from the pretrained DenseNet-121."""
    multiclass = policy == "u-multiclass"
    return {"manifest": str(manifest), "findings": FINDINGS, "data_root": str(settings.data_root),
            "arch": ARCHITECTURE.arch, "head": "multiclass3" if multiclass else ARCHITECTURE.head, "channels": 3,
            "preset": PRESET, "policy": policy, "normalization": normalization,
            "loss_weighting": "paper002" if multiclass else "none",
            "weights": transfer.pretrained_weights(ARCHITECTURE, source), "seed": 0, "profile": settings.profile}


def configs(settings: Settings) -> dict[tuple[str, str], dict]:
    """(section, variant) -> run config; the baseline variant of each section is the same run."""
    manifests = view_manifests(settings)
    source = source_models.configs(settings)[ARCHITECTURE.name]
    baseline = manifests[BASELINE["views"]]
    out = {("views", name): variant_config(path, settings, source) for name, path in manifests.items()}
    out |= {("normalization", name): variant_config(baseline, settings, source, normalization=name)
            for name in SECTIONS["normalization"]}
    out |= {("uncertainty", name): variant_config(baseline, settings, source, policy=name)
            for name in SECTIONS["uncertainty"]}
    return out


def stages(settings: Settings) -> list[list[dict]]:
    """The source model first, then every variant (the trainer keys runs, so the shared baseline trains once)."""
    return [[source_models.configs(settings)[ARCHITECTURE.name]], list(configs(settings).values())]


def runs(settings: Settings) -> dict[tuple[str, str], Result]:
    """(section, variant) -> finished run (trained now if not in the run cache)."""
    return {key: run(config, runs_dir=settings.runs_dir) for key, config in configs(settings).items()}


def labelled(finished: Mapping[tuple[str, str], Result]) -> tuple[dict[str, Result], dict[str, list[str]]]:
    """The runs keyed "section: variant", and each section's keys (the groups `tables.pairwise_delong` compares)."""
    results = {f"{section}: {variant}": result for (section, variant), result in finished.items()}
    groups: dict[str, list[str]] = {}
    for section, variant in finished:
        groups.setdefault(section, []).append(f"{section}: {variant}")
    return results, groups


def comparisons(finished: Mapping[tuple[str, str], Result]) -> pd.DataFrame:
    """DeLong's test clustered by patient per finding for every pair of variants within a section (and DeLong's
    original p beside it), with Benjamini-Hochberg q values across all of the experiment's tests (the variants must
    have been tested on the same images)."""
    results, groups = labelled(finished)
    first = next(iter(results.values())).predictions
    for name, result in results.items():
        if not result.predictions["path"].equals(first["path"]):
            raise ValueError(f"{name} was not tested on the same images as the other variants")
    findings = scored_findings(first, FINDINGS)
    if not findings:
        raise ValueError(f"no finding has {MIN_POSITIVES} positive test images: there is nothing to compare")
    scores = {name: result.predictions for name, result in results.items()}
    return pairwise_delong(first, scores, groups, findings, patients=first["patient_id"])


def patient_comparisons(finished: Mapping[tuple[str, str], Result], n_boot: int = PAIR_DRAWS) -> pd.DataFrame:
    """`comparisons` with each difference's paired patient bootstrap added (`tables.patient_bootstrap_pairs`: its
    interval, p and BH q values): the same correction for one patient's correlated images as the clustered test,
    by resampling patients instead of a variance formula."""
    delong = comparisons(finished)
    results, _ = labelled(finished)
    first = next(iter(results.values())).predictions
    scores = {name: result.predictions for name, result in results.items()}
    return patient_bootstrap_pairs(delong, first, scores, first["patient_id"], n_boot)


def sections_named(sections: object) -> str:
    """The sections among `sections` (keys of SECTIONS) by the chapter's headings, in the chapter's order."""
    present = set(sections)
    return listed(HEADINGS[s] for s in SECTIONS if s in present)


def views_verdict(gaps: Mapping[str, Mapping[str, float]]) -> str:
    """Frontal+lateral against each frontal-only variant (its name -> the paired difference, with "low" and "high"),
    in words: where the lateral views helped, where their help is not shown, where they hurt."""
    above = [name for name, gap in gaps.items() if gap["low"] > 0]
    below = [name for name, gap in gaps.items() if gap["high"] < 0]
    unsure = [name for name in gaps if name not in above and name not in below]
    if len(above) == len(gaps):
        return (f"{'Both' if len(gaps) == 2 else 'Every'} per-image paired interval{'s' if len(gaps) > 1 else ''} "
                f"lie{'' if len(gaps) > 1 else 's'} above zero: at this test size the lateral views helped.")
    parts = [f"against {listed(above)} the interval lies above zero: there the lateral views helped"] if above else []
    if unsure:
        parts.append(f"against {listed(unsure)} the interval includes zero: there the lateral views' help is not "
                     "shown at this test size")
    if below:
        parts.append(f"against {listed(below)} the interval lies wholly below zero: there the lateral views hurt")
    return "Not every per-image paired interval lies above zero: " + "; ".join(parts) + "."


def reported_views_drop(reported: pd.DataFrame) -> dict[str, str]:
    """Paper 002's frontal-only result in words, for the glue keys r002_views_change, r002_views_gap_no_lesion and
    r002_lesion_reading (from book/reported.csv): the printed means; the mean of Table 2's per-finding values where it
    differs from the printed one; and whether leaving Lung Lesion out removes most of the difference, by each mean."""
    rows = reported.query("paper == '002' and metric == 'auroc'")
    baseline = float(rows.query("finding == 'Mean' and model == @REPORTED_BASELINE")["value"].iloc[0])
    table = rows.query("source == 'Table 2' and model == @REPORTED_FRONTAL").set_index("finding")["value"]
    printed, per_finding = float(table["Mean"]), table.drop(index="Mean").astype(float)
    without = rows.query("finding == 'Mean without Lung Lesion'").set_index("model")["value"].astype(float)
    lesion_gap = without[REPORTED_BASELINE] - without[REPORTED_FRONTAL]
    gaps = {"printed": baseline - printed, "listed": baseline - per_finding.mean()}
    change = (f"{'lowered' if gaps['printed'] > 0 else 'raised'} it by {abs(gaps['printed']):.4f}, from {baseline:.4f} "
              f"to {printed:.4f} as printed")
    mostly = {name: abs(lesion_gap) < abs(gap) / 2 for name, gap in gaps.items()}  # Lung Lesion carries most of it
    if round(per_finding.mean(), 4) == round(printed, 4):
        reading = ("Set against the difference with it, most of the difference comes from that one finding: that is "
                   "this book's reading, not the paper's." if mostly["printed"] else
                   "Set against the difference with it, most of the difference stays without that finding.")
        return {"r002_views_change": change, "r002_views_gap_no_lesion": f"{lesion_gap:+.4f}",
                "r002_lesion_reading": reading}
    free = per_finding.drop(index="Lung Lesion").mean()
    change += (f"; but the {len(per_finding)} per-finding values its Table 2 lists average {per_finding.mean():.4f}, "
               f"not {printed:.4f}, a change of {-gaps['listed']:+.4f} from the baseline")
    if round(free, 4) == round(without[REPORTED_FRONTAL], 4):
        change += (f" (without Lung Lesion they average {free:.4f}, the paper's own figure, so it is the printed "
                   "mean that does not fit the table)")
    side = {name: "less" if most else "more" for name, most in mostly.items()}
    if mostly["printed"] == mostly["listed"]:
        reading = ("Set against the difference with it, by either mean, most of the difference "
                   + ("comes from that one finding: that is this book's reading, not the paper's." if mostly["printed"]
                      else "stays without that finding."))
    else:
        by, other = ("the printed mean", "the listed values") if mostly["printed"] else ("the listed values",
                                                                                         "the printed mean")
        reading = (f"Whether most of the difference comes from that one finding depends on which mean is right: "
                   f"{abs(lesion_gap):.4f} is {side['printed']} than half of the printed difference "
                   f"({abs(gaps['printed']):.4f}) and {side['listed']} than half of the listed values' "
                   f"({abs(gaps['listed']):.4f}), so by {by} most of it comes from Lung Lesion (this book's reading, "
                   f"not the paper's), and by {other} most of it stays without that finding.")
    return {"r002_views_change": change, "r002_views_gap_no_lesion": f"{lesion_gap:+.4f}",
            "r002_lesion_reading": reading}


def by_test_view(finished: Mapping[tuple[str, str], Result], table: pd.DataFrame, n_boot: int) -> pd.DataFrame:
    """Each view variant's mean test AUROC (95 % CI) over every test image, the frontal ones and the lateral ones (a
    variant trained on frontal images meets its first lateral view at test time); `table` is `site_table`. A subset
    in which no finding has MIN_POSITIVES positives gets no row."""
    view_of = table.set_index("path")["view"]
    rows = []
    for (section, variant), result in finished.items():
        if section != "views":
            continue
        predictions = result.predictions
        views = view_of.reindex(predictions["path"])
        if views.isna().any():
            raise ValueError(f"{variant}: test image {views.index[views.isna()][0]} is not in the site table")
        views = views.to_numpy()
        for name, keep in (("every view", np.full(len(views), True)), ("frontal", views == "frontal"),
                           ("lateral", views == "lateral")):
            subset = predictions[keep]
            scored = scored_findings(subset, FINDINGS)
            if not scored:
                continue
            mean = predictions_auroc_table(subset, FINDINGS, n_boot).loc["Mean"]
            rows.append({"variant": variant, "test views": name, "test_images": int(keep.sum()),
                         "findings scored": len(scored), "mean_auroc": mean["auroc"], "ci_low": mean["low"],
                         "ci_high": mean["high"]})
    return pd.DataFrame(rows)


def study_means(result: Result, n_boot: int) -> dict[str, float]:
    """Mean test AUROC with each study's views aggregated by max and by mean (paper 002 scores studies)."""
    return {f"study_mean_auroc_{how}": predictions_auroc_table(result.predictions, FINDINGS, n_boot, level="study",
                                                               how=how).loc["Mean", "auroc"]
            for how in ("max", "mean")}


def paired_difference(a: Result, b: Result, n_boot: int, level: str = "image", how: str = "mean"
                      ) -> dict[str, float]:
    """Run a minus run b in mean test AUROC (the findings with enough positive test images), per image or per study
    (each study's views joined by `how`), with the paired patient-bootstrap 95 % interval: both runs scored on the
    same resampled patients in every draw."""
    x, y = a.predictions, b.predictions
    if not x["path"].equals(y["path"]):
        raise ValueError(f"runs {a.key} and {b.key} were not tested on the same images")
    scored = scored_findings(x, FINDINGS)
    if level == "study":
        x, y = (aggregate(t, "study_id", how, scored) for t in (x, y))
    elif level != "image":
        raise ValueError(f"level must be image|study, got {level!r}")
    labels = x[scored]
    result = bootstrap_mean_difference(labels.fillna(0).to_numpy(), x[[score_column(f) for f in scored]].to_numpy(),
                                       y[[score_column(f) for f in scored]].to_numpy(), x["patient_id"].to_numpy(),
                                       n_boot=n_boot, mask=labels.notna().to_numpy())
    return {"difference": result["difference"], "low": result["low"], "high": result["high"]}


def training_labels(result: Result) -> pd.DataFrame:
    """Per finding, the run's training labels by class (negative, positive, uncertain; a finding not mentioned is
    negative, as every policy reads it), the uncertain share, and paper 002's U-MultiClass class weights
    (all labels / the class's count: `cxrcore.losses.multiclass_weights`)."""
    manifest = load_manifest(result.config["run"]["manifest"])
    train = manifest.loc[manifest["split"] == "train", FINDINGS].fillna(0)
    counts = pd.DataFrame({"negative": (train == 0).sum(), "positive": (train == 1).sum(),
                           "uncertain": (train == -1).sum()})
    weights = counts.rdiv(counts.sum(axis=1), axis=0).where(counts > 0, 0.0).add_prefix("weight, ")
    return counts.assign(**{"uncertain share": counts["uncertain"] / len(train)}).join(weights)


def results(settings: Settings) -> pd.DataFrame:
    """One row per section and variant: RESULT_COLUMNS, then section, variant and the per-study mean AUROCs."""
    draws = bootstrap_draws(settings)
    rows = [{**result_row(NAME, ARCHITECTURE.name, "fine-tuned", result, FINDINGS, draws),
             "section": section, "variant": variant, **study_means(result, draws)}
            for (section, variant), result in runs(settings).items()]
    return pd.DataFrame(rows, columns=[*RESULT_COLUMNS, "section", "variant", *STUDY_COLUMNS])


def cross_site(settings: Settings) -> pd.DataFrame:
    """Normalization variant x test site: mean AUROC with its interval, on the CheXpert test images and on the
    ChestX-ray14 site's official test images (its other detector style)."""
    other = source_models.source_manifest(settings.data_root, settings.runs_dir / "manifests")
    draws = bootstrap_draws(settings)
    variants = configs(settings)
    rows = []
    for variant in SECTIONS["normalization"]:  # only these runs: the other sections' are not needed here
        result = run(variants[("normalization", variant)], runs_dir=settings.runs_dir)
        for site, predictions in (("CheXpert (own test)", result.predictions),
                                  ("ChestX-ray14 (other site)", predict_split(result, "test", manifest=other))):
            mean = predictions_auroc_table(predictions, FINDINGS, draws).loc["Mean"]
            rows.append({"normalization": variant, "test site": site, "test_images": len(predictions),
                         "mean_auroc": mean["auroc"], "ci_low": mean["low"], "ci_high": mean["high"]})
    return pd.DataFrame(rows)
