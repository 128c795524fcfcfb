"""Experiment "paper003": Borhan's (paper 003) bases, frozen vs full training, and rare findings, on CheXpert.

* data: the transfer experiment's CheXpert split (train.csv frontal images, patient-wise 70/10/20), paper 003's 14
  observations under U-Ones; in the quick profile every run trains on the same few hundred whole patients, except
  VGG-16 (an eighth of them) and the leaky protocol (its own by-image split of the pool: `training_images`).
* recipe: paper 003's (Adam, lr 1e-4, its head: global average pooling, dense 1,024, ReLU, sigmoid outputs), from
  the pretrained bases of the transfer experiment (ImageNet when cached, else the shared source models).
* sections:

  - bases: DenseNet-121, ResNet-50 and VGG-16, each frozen (the head trained on cached features) and fully trained;
  - imbalance, on DenseNet-121 (paper 003's best base): nothing | loss weighting (`pos_weight`) | up-sampling (the
    rare findings' positive training images drawn more often, `data_prep.upsample.upsample_rare`, after the
    patient-wise split, in the training split only), each epoch a draw of as many images as the plain run trains on
    (`draws_per_epoch`: the same gradient steps for every variant);
  - leak: paper 003's published protocol (up-sample, then split by image:
    `data_prep.upsample.leaky_upsample_then_split`) beside the correct one (the up-sampling run above), both also
    scored on the site's radiologist-labelled test set (valid.csv), which neither protocol touched; both draw the
    plain run's number of training images an epoch.

* scoring: every run trains under U-Ones and is scored on the certain test (and validation) labels only
  (`tables.certain_labels`, as the transfer experiment scores): a label its labeler called uncertain is no ground
  truth.
"""
from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.calibration import calibration_curve
from sklearn.metrics import brier_score_loss

from cxrcore.cam import energy_inside, pointing_game, top_class_gradcam
from cxrcore.experiments import source_models, transfer
from cxrcore.experiments.localisation import has_sign_masks, sign_mask, test_images
from cxrcore.experiments.source_models import ARCHITECTURES, Architecture
from cxrcore.experiments.tables import (
    RESULT_COLUMNS,
    bootstrap_draws,
    certain_labels,
    predictions_auroc_table,
    result_row,
    scored_findings,
    uncertain_not_scored,
)
from cxrcore.findings import CHEXPERT_FINDINGS
from cxrcore.manifest import copies, load_manifest, write_derived_manifest
from cxrcore.metrics import WeightedAUROC, patient_weights, precision_recall_f1, score_column, thresholds
from cxrcore.models import build_model
from cxrcore.runner import Result, limit_patients, predict_split, run, training_rows
from cxrcore.settings import Settings, quick_sized
from data_prep.manifests import read_chexpert
from data_prep.synth.plan import CHEXPERT_SIGNS
from data_prep.synth.signs import SIGN_IDS
from data_prep.upsample import leaky_upsample_then_split, upsample_rare

NAME = "paper003"
FINDINGS = list(CHEXPERT_FINDINGS)  # paper 003's 14 observations
PRESET = "paper003"
HEAD = "paper003"
BEST_BASE = ARCHITECTURES[0]  # DenseNet-121: paper 003's best base, the one it up-samples
QUICK_TRAIN_IMAGES = 600  # training images of every run in the quick profile (whole patients; VGG-16 an eighth)
QUICK_EPOCHS = 5  # every run's epochs in the quick profile, the same for every arm (8 took 12 min: over the budget)
UPSAMPLE_SHARE = 0.25  # rare findings' positives drawn up to a quarter of the most common finding's
MAX_COPIES = 4
SPLIT_SEED = 0
SECTIONS = {
    "bases": tuple(f"{a.name.split(' (')[0]}, {arm}" for a in ARCHITECTURES for arm in ("frozen", "full")),
    "imbalance": ("nothing", "pos_weight", "up-sampling"),
    "leak": ("correct protocol", "leaky protocol"),
}


def split_table(settings: Settings) -> pd.DataFrame:
    """The transfer experiment's CheXpert split, its training split cut to the quick profile's patients."""
    table = load_manifest(transfer.target_manifest(settings.data_root, settings.runs_dir / "manifests"))
    if not quick_sized(settings.profile):
        return table
    train = table[table["split"] == "train"]
    kept = limit_patients(train, QUICK_TRAIN_IMAGES, SPLIT_SEED)
    return table.drop(index=train.index.difference(kept.index)).reset_index(drop=True)


def manifests(settings: Settings) -> dict[str, Path]:
    """"plain" and "up-sampled" (the same images, rare positives drawn more often) manifests, and "leaky" (paper 003's
    protocol over the same images; its data root is `leaky_root`)."""
    out = settings.runs_dir / "manifests"
    table = split_table(settings)
    leaky = leaky_upsample_then_split(table.drop(columns="split"), FINDINGS, UPSAMPLE_SHARE,
                                      transfer.TARGET_FRACTIONS, SPLIT_SEED, settings.data_root,
                                      leaky_root(settings), MAX_COPIES)
    return {"plain": write_derived_manifest(table, out / f"{NAME}_plain.csv"),
            "up-sampled": write_derived_manifest(upsample_rare(table, FINDINGS, UPSAMPLE_SHARE, MAX_COPIES),
                                                 out / f"{NAME}_upsampled.csv"),
            "leaky": write_derived_manifest(leaky, out / f"{NAME}_leaky.csv")}


def leaky_root(settings: Settings) -> Path:
    """The leaky run's data root: links to the site's images, one per copy (`leaky_upsample_then_split`)."""
    return settings.runs_dir / "manifests" / f"{NAME}_leaky_root"


def run_config(architecture: Architecture, manifest: Path, settings: Settings, source: dict, *, frozen: bool = False,
               loss_weighting: str = "none", data_root: Path | None = None) -> dict:
    """Paper 003's recipe on one base, frozen (head on cached features) or fully trained."""
    quick = quick_sized(settings.profile)
    return {"manifest": str(manifest), "findings": FINDINGS, "data_root": str(data_root or settings.data_root),
            "arch": architecture.arch, "head": HEAD, "channels": 3, "preset": PRESET, "policy": "u-ones",
            "weights": transfer.pretrained_weights(architecture, source), "seed": 0, "profile": settings.profile,
            "freeze_backbone": frozen, "feature_cache": frozen, "loss_weighting": loss_weighting,
            # the manifest holds the quick profile's patients already; VGG-16 trains on its share of them
            "max_train_images": architecture.quick_images(QUICK_TRAIN_IMAGES) if quick and
            architecture.quick_share < 1 else None,
            "overrides": {"epochs": QUICK_EPOCHS} if quick else {}}


def configs(settings: Settings) -> dict[tuple[str, str], dict]:
    """(section, variant) -> run config; "imbalance: nothing" is "bases: DenseNet-121, full", and "leak: correct
    protocol" is "imbalance: up-sampling" (the same runs)."""
    paths = manifests(settings)
    sources = source_models.configs(settings)
    out = {("bases", f"{a.name.split(' (')[0]}, {arm}"): run_config(a, paths["plain"], settings, sources[a.name],
                                                                    frozen=arm == "frozen")
           for a in ARCHITECTURES for arm in ("frozen", "full")}
    best = sources[BEST_BASE.name]
    out[("imbalance", "nothing")] = out[("bases", f"{BEST_BASE.name}, full")]
    out[("imbalance", "pos_weight")] = run_config(BEST_BASE, paths["plain"], settings, best,
                                                  loss_weighting="pos_weight")
    # every run draws the plain run's number of training images an epoch (the same gradient steps): up-sampling
    # changes which images are drawn, not how long the network trains
    draws = training_draws(paths["plain"])
    out[("imbalance", "up-sampling")] = {**run_config(BEST_BASE, paths["up-sampled"], settings, best),
                                         "draws_per_epoch": draws}
    out[("leak", "correct protocol")] = out[("imbalance", "up-sampling")]
    leaky = run_config(BEST_BASE, paths["leaky"], settings, best, data_root=leaky_root(settings))
    # a pool as large as the correct protocol's up-sampled training split (a profile's share cuts both alike)
    out[("leak", "leaky protocol")] = {**leaky, "max_train_images": training_draws(paths["up-sampled"]),
                                       "draws_per_epoch": draws}
    return out


def training_draws(manifest: Path) -> int:
    """A manifest's training rows with their copies (an up-sampled image counts once per copy)."""
    table = load_manifest(manifest)
    return int(copies(table[table["split"] == "train"]).sum())


def training_images(configs: Mapping[tuple[str, str], dict]) -> dict[tuple[str, str], int]:
    """(section, variant) -> distinct images each run config trains on (`runner.training_rows`; a leaky copy counts
    as its original image)."""
    return {key: int(_original_paths(training_rows(config)["path"]).nunique()) for key, config in configs.items()}


def _original_paths(paths: pd.Series) -> pd.Series:
    """Manifest paths with the leaky protocol's copy prefix ("leaky/copyK/") taken off."""
    return paths.str.replace(r"^leaky/copy\d+/", "", regex=True)


def training_reading(trained: Mapping[tuple[str, str], int]) -> str:
    """One sentence: how many images the plain run trains on (`trained`: `training_images`), and the runs that train
    on others: VGG-16's (fewer, where the profile cuts them) and the leaky protocol's."""
    common = trained[("imbalance", "nothing")]
    vgg = max(n for (section, variant), n in trained.items() if section == "bases" and variant.startswith("VGG-16"))
    share = next(a.quick_share for a in ARCHITECTURES if a.arch == "vgg16")
    words = source_models.share_words(share)
    exceptions = [f"the VGG-16 runs, which train on {vgg:,} of them (whole patients up to {words}: VGG-16 costs "
                  "several times DenseNet-121's compute per image)"] if vgg < common else []
    exceptions.append(f"the leaky protocol (section 3), which splits the whole pool its own way and trains on "
                      f"{trained[('leak', 'leaky protocol')]:,} distinct images")
    return f"Every run trains on the same {common:,} training images except " + ", and ".join(exceptions)


def vgg_reading(rows: pd.DataFrame, images: int, others: int, from_source: bool) -> str:
    """VGG-16's frozen and full runs against chance (`chance_reading`), after how many training images it had where
    fewer than the other bases' (`others`), and why it fails where neither interval lies wholly above 0.5 and it
    starts from a source run rather than from ImageNet weights."""
    text = chance_reading(rows)
    if images < others:
        text = (f"VGG-16 trains on {images:,} images where the other bases train on {others:,}, so it meets them on "
                f"less data. {text}")
    if from_source and not (rows["ci_low"] > 0.5).any():
        text += (". Its source model collapsed from random weights (the source-models chapter shows why), and paper "
                 "003's head on its features, frozen or trained, does not recover it")
    return text


def stages(settings: Settings) -> list[list[dict]]:
    """The source models first (the bases start from them), then every run (shared runs are keyed once)."""
    return [*source_models.stages(settings), list(configs(settings).values())]


def runs(settings: Settings) -> dict[tuple[str, str], Result]:
    """(section, variant) -> finished run (trained now if not in the run cache), scored on its certain test labels
    (`tables.certain_labels`: an uncertain label is not counted, as in the transfer experiment)."""
    return {key: certain_labels(run(config, runs_dir=settings.runs_dir), FINDINGS)
            for key, config in configs(settings).items()}


def f1_at_half(result: Result) -> dict[str, float]:
    """Micro and macro F1 and subset accuracy of a run's test predictions at 0.5 (counted labels only)."""
    averages = counted_averaged_f1(result.predictions[FINDINGS], _scores(result.predictions), 0.5)
    return {"f1_micro": averages.loc["micro", "f1"], "f1_macro": averages.loc["macro", "f1"],
            "subset_accuracy": averages.loc["subset accuracy", "f1"]}


def results(settings: Settings) -> pd.DataFrame:
    """One row per section and variant: RESULT_COLUMNS, section, variant, F1 averages and subset accuracy at 0.5."""
    draws = bootstrap_draws(settings)
    rows = [{**result_row(NAME, config_model(key), key[1], result, FINDINGS, draws), "section": key[0],
             "variant": key[1], **f1_at_half(result)} for key, result in runs(settings).items()]
    return pd.DataFrame(rows, columns=[*RESULT_COLUMNS, "section", "variant", "f1_micro", "f1_macro",
                                       "subset_accuracy"])


def config_model(key: tuple[str, str]) -> str:
    """The base of a (section, variant): the section "bases" names it, the others use DenseNet-121."""
    return key[1].split(",")[0] if key[0] == "bases" else BEST_BASE.name


def _scores(predictions: pd.DataFrame) -> np.ndarray:
    return predictions[[score_column(f) for f in FINDINGS]].to_numpy()


def f1_report(result: Result, cuts: float | pd.Series = 0.5) -> pd.DataFrame:
    """Paper 003's table layout for one run's test set: per finding precision, recall, F1 and support at the cut(s),
    then the micro, macro, weighted and samples averages and the subset accuracy (`counted_averaged_f1`)."""
    truth, scores = result.predictions[FINDINGS], _scores(result.predictions)
    per_finding = precision_recall_f1(truth, scores, cuts if isinstance(cuts, pd.Series) else float(cuts),
                                      names=FINDINGS)[["precision", "recall", "f1", "support"]]
    averages = counted_averaged_f1(truth, scores, cuts).assign(support=int(per_finding["support"].sum()))
    averages.loc["subset accuracy", "support"] = len(truth)  # images, not labels
    return pd.concat([per_finding, averages])


def called_positive(result: Result, cuts: float | pd.Series = 0.5) -> pd.Series:
    """Per finding, the share of the test images with a counted label that the cut(s) call positive."""
    truth, scores = result.predictions[FINDINGS], _scores(result.predictions)
    cut = np.asarray(cuts, dtype=float) if np.isscalar(cuts) else cuts.reindex(FINDINGS).to_numpy(dtype=float)
    called = pd.DataFrame(scores >= cut, columns=FINDINGS, index=truth.index)
    return called.where(truth.notna()).mean().rename("called positive")


def signed(value: float, digits: int = 2) -> str:
    """"+0.12", "-0.03", or "0.00" where the value rounds to zero (never "+0.00" or "-0.00")."""
    text = f"{value:+.{digits}f}"
    return text[1:] if float(text) == 0 else text


def chance_reading(rows: pd.DataFrame) -> str:
    """Where each row's mean-AUROC interval (ci_low, ci_high) lies against 0.5 (chance), one clause per row."""
    def where(row: pd.Series) -> str:
        if row["ci_high"] < 0.5:
            return "wholly below 0.5, worse than chance: it ranks negatives above positives more often than not"
        return "wholly above 0.5" if row["ci_low"] > 0.5 else "across 0.5: it cannot be told from chance"
    return "; ".join(f"{name}'s interval lies {where(row)}" for name, row in rows.iterrows())


def remedy_reading(f1_change: Mapping[str, float], auroc_change: Mapping[str, Mapping[str, float]]) -> str:
    """Which remedy moved the macro F1 at 0.5 and which moved the ranking (the paired mean-AUROC difference's
    interval against zero), one clause per remedy."""
    def ranking(d: Mapping[str, float]) -> str:
        verdict = "lower" if d["high"] < 0 else "higher" if d["low"] > 0 else "within noise"
        return f"the mean AUROC by {signed(d['value'], 3)} ({d['low']:+.3f} to {d['high']:+.3f}: {verdict})"
    return "; ".join(f"{name} changed the macro F1 at 0.5 by {signed(f1_change[name])} and "
                     f"{ranking(auroc_change[name])}" for name in f1_change)


def threshold_reading(tune_gain: float, up_gain: float) -> str:
    """Which lifts the plain model's macro F1 more: thresholds chosen on validation (tune_gain) or up-sampling
    (up_gain, at 0.5); no gain and ties as the two read to two decimals (`signed`)."""
    if float(signed(tune_gain)) <= 0 and float(signed(up_gain)) <= 0:
        return "neither raised the plain model's macro F1"
    if signed(tune_gain) == signed(up_gain):
        return "the two lift the plain model's macro F1 by the same amount, to two decimals"
    if tune_gain > up_gain:
        return ("choosing each finding's threshold on validation lifts the macro F1 of the plain model more than "
                "up-sampling does")
    return "up-sampling lifts the macro F1 at 0.5 more than choosing thresholds on validation lifts the plain model's"


def calibration_verdict(brier: Mapping[str, float], plain: str = "nothing", tolerance: float = 0.1) -> str:
    """Per remedy, whether its scores can be read as probabilities as far as the plain model's can: its mean Brier
    score beside the plain model's, "close" within `tolerance` of it (relative)."""
    def verdict(name: str) -> str:
        ratio = brier[name] / brier[plain]
        if ratio > 1 + tolerance:
            return (f"{name}'s scores should not be read as probabilities without undoing the re-balancing (its Brier "
                    f"score is {ratio:.1f} times the plain model's)")
        if ratio < 1 - tolerance:
            return (f"{name}'s scores are better calibrated than the plain model's (its Brier score is {ratio:.2f} "
                    "times the plain model's)")
        return (f"{name}'s scores are about as calibrated as the plain model's (its Brier score is within "
                f"{tolerance:.0%} of the plain model's)")
    return "; ".join(verdict(name) for name in brier if name != plain)


def counted_averaged_f1(truth: pd.DataFrame, scores: np.ndarray, cuts: float | pd.Series = 0.5) -> pd.DataFrame:
    """`metrics.averaged_f1` (micro, macro, weighted, samples, subset accuracy) over the counted labels only: an
    uncertain label (NaN) is left out of every average, and an image's samples F1 and subset accuracy use its
    counted labels; with every label known the two agree."""
    labels = truth.to_numpy(dtype=float)
    counted = ~np.isnan(labels)
    cut = np.asarray(cuts, dtype=float) if np.isscalar(cuts) else cuts.reindex(truth.columns).to_numpy(dtype=float)
    called = (scores >= cut) & counted
    positive = (labels == 1) & counted
    hits, false, missed = called & positive, called & ~positive, ~called & positive
    per_class = _prf(hits.sum(0), false.sum(0), missed.sum(0))
    support = positive.sum(0)
    weights = support / support.sum() if support.sum() else np.zeros_like(support, dtype=float)
    rows = {"micro": _prf(hits.sum(), false.sum(), missed.sum()), "macro": per_class.mean(axis=1),
            "weighted": per_class @ weights, "samples": _prf(hits.sum(1), false.sum(1), missed.sum(1)).mean(axis=1)}
    table = pd.DataFrame(rows, index=["precision", "recall", "f1"]).T
    table.loc["subset accuracy"] = [np.nan, np.nan, float((called == positive).all(axis=1).mean())]
    return table.rename_axis("average")


def _prf(hits: np.ndarray, false: np.ndarray, missed: np.ndarray) -> np.ndarray:
    """(3, ...) precision, recall and F1 from counts, 0 where undefined (scikit-learn's zero_division=0)."""
    hits, false, missed = (np.asarray(x, dtype=float) for x in (hits, false, missed))
    precision = np.divide(hits, hits + false, out=np.zeros_like(hits), where=hits + false > 0)
    recall = np.divide(hits, hits + missed, out=np.zeros_like(hits), where=hits + missed > 0)
    f1 = np.divide(2 * hits, 2 * hits + false + missed, out=np.zeros_like(hits), where=2 * hits + false + missed > 0)
    return np.stack([precision, recall, f1])


def validation_cuts(result: Result) -> pd.Series:
    """Per finding, the threshold that maximises F1 on the run's validation images' certain labels (0.5 where one
    label value only)."""
    manifest = load_manifest(result.config["run"]["manifest"])
    valid = uncertain_not_scored(predict_split(result, "valid"), manifest, FINDINGS)  # the labels the test scores
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # a finding without a validation positive: no threshold
        cuts = thresholds(valid[FINDINGS], _scores(valid), "f1", names=FINDINGS)
    return cuts.fillna(0.5)


def calibration_table(result: Result) -> pd.DataFrame:
    """Per finding with both label values among the test films: the share positive, the mean score and the Brier
    score (sklearn): whether a run's scores can be read as probabilities, which AUROC and F1 never ask."""
    rows = {}
    for finding in FINDINGS:
        known = result.predictions[finding].notna().to_numpy()
        labels = result.predictions[finding].to_numpy()[known]
        scores = result.predictions[score_column(finding)].to_numpy()[known]
        if np.unique(labels).size == 2:
            rows[finding] = {"test prevalence": labels.mean(), "mean score": scores.mean(),
                             "Brier score": brier_score_loss(labels, scores)}
    return pd.DataFrame.from_dict(rows, orient="index")


def reliability_curve(result: Result, bins: int = 10) -> pd.DataFrame:
    """The test films' known labels of every finding pooled, in `bins` equal-width score bins: each bin's mean score,
    share positive and label count (sklearn's `calibration_curve`, with the counts it leaves out)."""
    truth = result.predictions[FINDINGS].to_numpy()
    known = ~np.isnan(truth)
    labels, scores = truth[known], _scores(result.predictions)[known]
    share, mean_score = calibration_curve(labels, scores, n_bins=bins, strategy="uniform")
    counts = np.bincount(np.searchsorted(np.linspace(0, 1, bins + 1)[1:-1], scores), minlength=bins)  # sklearn's bins
    return pd.DataFrame({"mean score": mean_score, "share positive": share, "labels": counts[counts > 0]})


def parameter_counts() -> pd.DataFrame:
    """Trainable and total parameters of each base with paper 003's head over the 14 findings, frozen and full;
    "keras total" adds BatchNorm's moving means and variances, which Keras (paper 003's) counts as parameters."""
    rows = []
    for architecture in ARCHITECTURES:
        net = build_model(architecture.arch, len(FINDINGS), channels=3, head=HEAD, freeze_backbone=True)
        total = sum(p.numel() for p in net.parameters())
        head = sum(p.numel() for p in net.parameters() if p.requires_grad)
        moving = sum(b.numel() for name, b in net.named_buffers() if name.endswith(("running_mean", "running_var")))
        base = architecture.name.split(" (")[0]
        rows += [{"base": base, "training": "frozen", "trainable": head, "total": total, "keras total": total + moving},
                 {"base": base, "training": "full", "trainable": total, "total": total, "keras total": total + moving}]
    return pd.DataFrame(rows)


def seen_in_training(leaky: Result, manifest: Path) -> dict[str, float]:
    """Of the leaky run's test images: the share that are copies of an image it trained on, and the share whose
    patient it trained on (another image of theirs, or the same one); and how many distinct images it trained on."""
    table = load_manifest(manifest)
    original = _original_paths(table["path"])
    patient = original.str.extract(r"(patient\d+)")[0]
    trained_paths = set(training_rows(leaky.config["run"])["path"])
    trained_images = set(original[table["path"].isin(trained_paths)])
    trained_patients = set(patient[table["path"].isin(trained_paths)])
    test = table["split"] == "test"
    return {"test images": int(test.sum()), "distinct images trained on": len(trained_images),
            "copies of a trained image": float(original[test].isin(trained_images).mean()),
            "of a trained patient": float(patient[test].isin(trained_patients).mean())}


def clean_predictions(settings: Settings, finished: Mapping[tuple[str, str], Result]) -> dict[str, pd.DataFrame]:
    """Each leak protocol's model on the radiologist-labelled test set (valid.csv), uncertain labels not scored."""
    manifest = clean_test_manifest(settings)
    table = load_manifest(manifest)
    return {variant: uncertain_not_scored(predict_split(finished[("leak", variant)], "test", manifest=manifest),
                                          table, FINDINGS) for variant in SECTIONS["leak"]}


def leak_table(settings: Settings, finished: Mapping[tuple[str, str], Result] | None = None,
               clean: Mapping[str, pd.DataFrame] | None = None) -> pd.DataFrame:
    """Each protocol's mean AUROC, micro F1 and share of positive labels (pooled, as micro F1 pools them) on its own
    test split and on the radiologist-labelled test set that neither touched (`clean_predictions`, computed if not
    given), certain labels only."""
    finished = finished or runs(settings)
    clean = clean or clean_predictions(settings, finished)
    draws = bootstrap_draws(settings)
    rows = []
    for variant in SECTIONS["leak"]:
        for test_set, predictions in (("own test split", finished[("leak", variant)].predictions),
                                      ("radiologists' test set (valid.csv)", clean[variant])):
            mean = predictions_auroc_table(predictions, FINDINGS, draws).loc["Mean"]
            f1 = counted_averaged_f1(predictions[FINDINGS], _scores(predictions), 0.5).loc["micro", "f1"]
            rows.append({"protocol": variant, "test set": test_set, "test_images": len(predictions),
                         "mean_auroc": mean["auroc"], "ci_low": mean["low"], "ci_high": mean["high"],
                         "f1_micro": f1, "prevalence": float(np.nanmean(predictions[FINDINGS].to_numpy(dtype=float)))})
    return pd.DataFrame(rows)


def patients(predictions: pd.DataFrame) -> np.ndarray:
    """Each image's patient, from its path where the path names one (the leaky manifest makes every copy its own
    "patient", and the bootstrap must resample a real patient's images together), else its patient_id."""
    named = predictions["path"].astype(str).str.extract(r"(patient\d+)")[0]
    return named.fillna(predictions["patient_id"].astype(str)).to_numpy()


def auroc_draws(tables: Sequence[pd.DataFrame], findings: Sequence[str], n_boot: int, seed: int = 0) -> np.ndarray:
    """(tables, 1 + n_boot, findings) AUROC of predictions tables of the same images in the same order: [:, 0] on
    the images as they are, then patient-bootstrap draws, each resampling the patients once for every table (so a
    difference between tables is paired); NaN where a draw lacks a label value."""
    paths = tables[0]["path"].to_numpy()
    if any(not np.array_equal(table["path"].to_numpy(), paths) for table in tables[1:]):
        raise ValueError("auroc_draws pairs predictions of the same images in the same order")
    weights = [np.ones(len(paths)), *patient_weights(patients(tables[0]), n_boot, seed)]
    out = np.full((len(tables), n_boot + 1, len(findings)), np.nan)
    for t, table in enumerate(tables):
        for k, finding in enumerate(findings):
            counted = table[finding].notna().to_numpy()
            auc = WeightedAUROC(table[finding].to_numpy()[counted], table[score_column(finding)].to_numpy()[counted])
            out[t, :, k] = [auc(w[counted]) for w in weights]
    return out


def _mean_over(draws: np.ndarray, axis: int = -1) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a draw where no finding is defined gives NaN
        return np.nanmean(draws, axis=axis)


def _interval(draws: np.ndarray) -> dict[str, float]:
    """{"value", "low", "high"}: draws[0] and the 95 % percentile interval of the bootstrap draws[1:]."""
    rest = draws[1:][~np.isnan(draws[1:])]
    low, high = np.percentile(rest, [2.5, 97.5]) if rest.size else (np.nan, np.nan)
    return {"value": float(draws[0]), "low": float(low), "high": float(high)}


def _aligned(*tables: pd.DataFrame) -> list[pd.DataFrame]:
    return [table.sort_values("path", kind="stable").reset_index(drop=True) for table in tables]


def paired_difference(a: pd.DataFrame, b: pd.DataFrame, n_boot: int, seed: int = 0) -> dict[str, float]:
    """Mean AUROC of predictions a minus b on the same images, over the findings with enough test positives
    (`tables.scored_findings`), with a 95 % paired patient-bootstrap interval: {"value", "low", "high"}."""
    a, b = _aligned(a, b)
    draws = _mean_over(auroc_draws((a, b), scored_findings(a, FINDINGS), n_boot, seed))
    return _interval(draws[0] - draws[1])


def _own_split_draws(predictions: pd.DataFrame, findings: Sequence[str], n_boot: int, seed: int) -> np.ndarray:
    return auroc_draws([predictions], findings, n_boot, seed)[0]


def leak_test(own: Mapping[str, pd.DataFrame], clean: Mapping[str, pd.DataFrame], n_boot: int) -> pd.DataFrame:
    """Rows "inflation" (leaky minus correct mean AUROC, each on its own test split: different images, so each
    split's patients are resampled on their own), "untouched" (the same on valid.csv, paired: the same images) and
    "leak" (inflation minus untouched: the part of the own-split gain the untouched test set does not confirm);
    columns value, low, high (95 % bootstrap)."""
    correct, leaky = SECTIONS["leak"]
    own_means = {v: _mean_over(_own_split_draws(own[v], scored_findings(own[v], FINDINGS), n_boot, seed))
                 for v, seed in ((leaky, 1), (correct, 2))}
    inflation = own_means[leaky] - own_means[correct]
    a, b = _aligned(clean[leaky], clean[correct])
    paired = _mean_over(auroc_draws((a, b), scored_findings(a, FINDINGS), n_boot, 3))
    untouched = paired[0] - paired[1]
    return pd.DataFrame({"inflation": _interval(inflation), "untouched": _interval(untouched),
                         "leak": _interval(inflation - untouched)}).T


def leak_reading(test: pd.DataFrame) -> str:
    """What `leak_test` shows, chosen from its intervals: how the two models compare on the untouched test set, and
    whether the own-split gain exceeds what that set confirms."""
    inflation, untouched, leak = (test.loc[row] for row in ("inflation", "untouched", "leak"))
    if inflation["value"] <= 0:
        return ("the leaky protocol's own test score is not higher here: at this scale too few test images are copies "
                "of trained ones for the leak to show in the mean")
    clean = ("the leaky model is also better on the untouched test set" if untouched["low"] > 0 else
             "the leaky model is worse on the untouched test set" if untouched["high"] < 0 else
             "on the untouched test set the paired difference is within noise (its interval includes zero)")
    verdict = ("its gain on its own split exceeds what the untouched test set confirms, and that excess is the leak, "
               "not a better model" if leak["low"] > 0 else
               "the untouched test set shows a larger gain than the own split: no sign of a leak" if leak["high"] < 0
               else "the untouched test set is too small to tell the own-split gain from a real one")
    return f"{clean}; {verdict}"


def leak_by_finding(own: Mapping[str, pd.DataFrame], upsampled: Sequence[str], n_boot: int) -> pd.DataFrame:
    """Per finding scored on both protocols' own test splits: each protocol's AUROC and leaky minus correct with a
    95 % bootstrap interval (each split's patients resampled on their own); then the mean difference over the
    up-sampled findings, over the others, and the first minus the second."""
    correct, leaky = SECTIONS["leak"]
    findings = [f for f in scored_findings(own[correct], FINDINGS) if f in scored_findings(own[leaky], FINDINGS)]
    on = {v: _own_split_draws(own[v], findings, n_boot, seed) for v, seed in ((leaky, 1), (correct, 2))}
    difference = on[leaky] - on[correct]  # (1 + n_boot, findings)
    rows = {f: {"up-sampled": f in upsampled, correct: on[correct][0, k], leaky: on[leaky][0, k],
                **_interval(difference[:, k])} for k, f in enumerate(findings)}
    chosen = np.array([f in upsampled for f in findings])
    means = {"mean, up-sampled": _mean_over(difference[:, chosen]), "mean, others": _mean_over(difference[:, ~chosen])}
    means["up-sampled minus others"] = means["mean, up-sampled"] - means["mean, others"]
    rows.update({name: _interval(draws) for name, draws in means.items()})
    return pd.DataFrame.from_dict(rows, orient="index")


def upsampled_leak_reading(table: pd.DataFrame) -> str:
    """Whether the leak lifts the up-sampled findings' AUROC more than the others', from `leak_by_finding`."""
    row = table.loc["up-sampled minus others"]
    if np.isnan(row["value"]):
        return "too few up-sampled findings have enough test positives in both splits to compare"
    if row["low"] > 0:
        return "the leak lifts the up-sampled findings' AUROC more than the others', as the copies lead one to expect"
    if row["high"] < 0:
        return "the leak lifts the up-sampled findings' AUROC less than the others', against that expectation"
    return ("the two do not differ beyond noise: over a handful of test positives per finding the bootstrap "
            "interval of the difference includes zero")


def clean_test_manifest(settings: Settings) -> Path:
    """The CheXpert valid.csv frontal images (radiologists' labels) as a test split."""
    table = read_chexpert(settings.data_root)
    table = table[(table["split"] == "test") & (table["view"] == "frontal")].reset_index(drop=True)
    return write_derived_manifest(table, settings.runs_dir / "manifests" / f"{NAME}_radiologists_test.csv")


def top_class_maps(result: Result, data_root: Path, n: int) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """Paper 003's figures: Grad-CAM of each of the first n test images' highest-scoring finding. Returns the grey
    images and the maps ((n, side, side) each) and a table: the top finding, its score and label, whether its map is
    all zero (no evidence for it anywhere after Grad-CAM's ReLU), and, where the synthetic site drew that finding's
    sign on the image, the map's energy inside the sign against the sign's share of the image and whether the map's
    peak falls inside it."""
    predictions = result.predictions.iloc[:n]
    images = test_images(result, predictions["path"].tolist())
    maps, top = top_class_gradcam(result.load_model(), images)
    side, masks_here = images.shape[-1], has_sign_masks(data_root)
    rows = []
    for i, (_, row) in enumerate(predictions.iterrows()):
        finding = FINDINGS[int(top[i])]
        sign = CHEXPERT_SIGNS.get(finding)
        mask = sign_mask(data_root, row["path"], side, sign) if masks_here and sign in SIGN_IDS else None
        drawn = mask is not None and bool(mask.any())
        rows.append({"path": row["path"], "top finding": finding, "score": row[score_column(finding)],
                     "label": row[finding], "all-zero map": bool(maps[i].max() == 0), "sign drawn": drawn,
                     "energy inside the sign": energy_inside(maps[i], mask) if drawn else np.nan,
                     "sign's share of the image": float(mask.mean()) if drawn else np.nan,
                     "peak inside": pointing_game(maps[i], mask) if drawn else None})
    return images[:, 0].numpy(), maps, pd.DataFrame(rows)
