"""Experiment "paper003": Borhan's (paper 003) bases, frozen vs full training, and rare findings, on CheXpert.

* data: the transfer experiment's CheXpert split (train.csv frontal images, patient-wise 70/10/20), paper 003's 14
  observations under U-Ones; in the quick profile every run trains on the same few hundred whole patients.
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
"""
from __future__ import annotations

import warnings
from collections.abc import Mapping
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
    predictions_auroc_table,
    result_row,
)
from cxrcore.findings import CHEXPERT_FINDINGS
from cxrcore.manifest import copies, load_manifest, write_derived_manifest
from cxrcore.metrics import averaged_f1, precision_recall_f1, score_column, thresholds
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


def stages(settings: Settings) -> list[list[dict]]:
    """The source models first (the bases start from them), then every run (shared runs are keyed once)."""
    return [*source_models.stages(settings), list(configs(settings).values())]


def runs(settings: Settings) -> dict[tuple[str, str], Result]:
    """(section, variant) -> finished run (trained now if not in the run cache)."""
    return {key: run(config, runs_dir=settings.runs_dir) for key, config in configs(settings).items()}


def f1_at_half(result: Result) -> dict[str, float]:
    """Micro and macro F1 and subset accuracy of a run's test predictions at 0.5."""
    averages = averaged_f1(result.predictions[FINDINGS], _scores(result.predictions), 0.5)
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
    then the micro, macro, weighted and samples averages and the subset accuracy (`metrics.averaged_f1`)."""
    truth, scores = result.predictions[FINDINGS], _scores(result.predictions)
    per_finding = precision_recall_f1(truth, scores, cuts if isinstance(cuts, pd.Series) else float(cuts),
                                      names=FINDINGS)[["precision", "recall", "f1", "support"]]
    averages = averaged_f1(truth, scores, cuts).assign(support=int(per_finding["support"].sum()))
    averages.loc["subset accuracy", "support"] = len(truth)  # images, not labels
    return pd.concat([per_finding, averages])


def validation_cuts(result: Result) -> pd.Series:
    """Per finding, the threshold that maximises F1 on the run's validation images (0.5 where one label only)."""
    valid = predict_split(result, "valid")
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
    original = table["path"].str.replace(r"^leaky/copy\d+/", "", regex=True)
    patient = original.str.extract(r"(patient\d+)")[0]
    trained_paths = set(training_rows(leaky.config["run"])["path"])
    trained_images = set(original[table["path"].isin(trained_paths)])
    trained_patients = set(patient[table["path"].isin(trained_paths)])
    test = table["split"] == "test"
    return {"test images": int(test.sum()), "distinct images trained on": len(trained_images),
            "copies of a trained image": float(original[test].isin(trained_images).mean()),
            "of a trained patient": float(patient[test].isin(trained_patients).mean())}


def leak_table(settings: Settings, finished: Mapping[tuple[str, str], Result] | None = None) -> pd.DataFrame:
    """Each protocol's mean AUROC and micro F1 on its own test split and on the radiologist-labelled test set that
    neither touched, with what the leaky test split shares with its training images."""
    finished = finished or runs(settings)
    draws = bootstrap_draws(settings)
    clean = clean_test_manifest(settings)
    rows = []
    for variant in SECTIONS["leak"]:
        result = finished[("leak", variant)]
        for test_set, predictions in (("own test split", result.predictions),
                                      ("radiologists' test set (valid.csv)",
                                       predict_split(result, "test", manifest=clean))):
            mean = predictions_auroc_table(predictions, FINDINGS, draws).loc["Mean"]
            f1 = averaged_f1(predictions[FINDINGS], _scores(predictions), 0.5).loc["micro", "f1"]
            rows.append({"protocol": variant, "test set": test_set, "test_images": len(predictions),
                         "mean_auroc": mean["auroc"], "ci_low": mean["low"], "ci_high": mean["high"],
                         "f1_micro": f1})
    return pd.DataFrame(rows)


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
