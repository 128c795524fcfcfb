"""Experiment "multisite": Bajwa et al.'s (paper 000) sequential training across three sites, every model tested on
every site without retraining.

* models (DenseNet-121, paper 000's recipe, its four findings): the NIH baseline is the shared DenseNet-121 source
  model (ChestX-ray14); CheXpert-NET and Hospital-NET start from it on one site each; CheXpert-Hospital-NET starts
  from CheXpert-NET on the hospital site (the chain); "pooled" starts from the NIH baseline on the CheXpert and
  hospital training images together (the alternative the paper does not run). The chain's last stage is also
  trained on the hospital labels of the negation-aware labeler and, on a synthetic site, on the drawn signs
  themselves: the cost of each labeler's noise in AUROC.
* sites: ChestX-ray14 (official test list), CheXpert (frontal train.csv images split patient-wise, the radiologists'
  valid.csv as the test set, as paper 000 does), the hospital (frontal images, reports labelled by paper 000's
  keyword labeler, split patient-wise; its test labels are the drawn signs on a synthetic site, else the keyword
  labeler's).
* the matrix: every model on every site's test split (`cxrcore.experiments.evaluation.evaluate`: inference only,
  cached), per finding and the mean, with patient-bootstrap intervals; a paired t-test and Wilcoxon signed-rank test
  over the finding x site cells (one-sided, they reproduce paper 000's p-values), and DeLong per finding (clustered by
  patient) with Benjamini-Hochberg.
"""
from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import false_discovery_control, wilcoxon
from sklearn.metrics import precision_recall_fscore_support

from cxrcore.experiments import source_models
from cxrcore.experiments.evaluation import evaluate
from cxrcore.experiments.localisation import (
    cam_and_gradcam,
    drawn_sign_paths,
    has_sign_masks,
    localisation_table,
    sign_mask,
    sign_masks,
)
from cxrcore.experiments.source_models import ARCHITECTURES
from cxrcore.experiments.tables import (
    RESULT_COLUMNS,
    bootstrap_draws,
    listed,
    p_text,
    predictions_auroc_table,
    scored_findings,
)
from cxrcore.findings import NIH_HARMONIZED, PAPER000_FINDINGS
from cxrcore.manifest import REQUIRED_COLUMNS, load_manifest, write_derived_manifest
from cxrcore.metrics import bootstrap_mean_difference, delong_test, paired_tests, score_column
from cxrcore.runner import Result, evaluation_dataset, limit_patients, run
from cxrcore.settings import Settings, quick_sized
from data_prep.manifests import HOSPITAL_DIR, read_chexpert, read_hospital
from data_prep.report_labeler import TABLE1_KEYWORDS, explain, read_text_csv
from data_prep.splits import split_patients
from data_prep.synth.plan import CHEXPERT_SIGNS
from data_prep.synth.truth import with_drawn_labels

NAME = "multisite"
FINDINGS = list(PAPER000_FINDINGS)  # the four findings paper 000 trains and tests on at every site
ARCHITECTURE = ARCHITECTURES[0]  # DenseNet-121, paper 000's network
PRESET = "paper000"
QUICK_TRAIN_IMAGES = 500  # training images per site in the quick profile (whole patients)
QUICK_EPOCHS = 4  # every run's epochs in the quick profile (the same for every model)
CHEXPERT_VALID = {"quick": 0.10, "full": 0.05}  # paper 000: 95/5 of train.csv; the demo site needs a larger share
HOSPITAL_FRACTIONS = {"train": 0.6, "valid": 0.1, "test": 0.3}  # paper 000: 85/10/5 by image; a test set worth reading
SPLIT_SEED = 0
SITES = {"ChestX-ray14": "nih", "CheXpert": "chexpert", "hospital": "hospital"}  # site -> its data_prep name
LABELERS = ("keyword", "negation-aware", "drawn signs")
BASELINE = "NIH baseline"
CHAIN = ("NIH baseline", "CheXpert-NET", "CheXpert-Hospital-NET")
PAPER_MODELS = {"NIH baseline": "NIH Baseline", "CheXpert-NET": "CheXpert-NET", "Hospital-NET": "Shifa-NET",
                "CheXpert-Hospital-NET": "CheXpert-Shifa-NET"}  # ours -> paper 000's names (its hospital: SIH)
PAPER_SITES = {"ChestX-ray14": "ChestX-ray14 test", "CheXpert": "CheXpert test", "hospital": "SIH test"}


LABELED_MODELS = {"keyword": "CheXpert-Hospital-NET", "negation-aware": "CheXpert-Hospital-NET, negation-aware labels",
                  "drawn signs": "CheXpert-Hospital-NET, drawn-sign labels"}


def labeler_model(labeler: str) -> str:
    """The chain's last stage trained on one labeler's hospital labels ("keyword" is CheXpert-Hospital-NET)."""
    return LABELED_MODELS[labeler]


def labelers(settings: Settings) -> tuple[str, ...]:
    """The hospital labels on offer: the two report labelers, and the drawn signs where the site is synthetic."""
    return LABELERS if has_sign_masks(settings.data_root) else LABELERS[:2]


def _quick_cut(table: pd.DataFrame, profile: str) -> pd.DataFrame:
    """The table with its training split cut to the quick profile's whole patients (unchanged in the full one)."""
    if not quick_sized(profile):
        return table.reset_index(drop=True)
    train = table[table["split"] == "train"]
    kept = limit_patients(train, QUICK_TRAIN_IMAGES, SPLIT_SEED)
    return table.drop(index=train.index.difference(kept.index)).reset_index(drop=True)


def chexpert_table(settings: Settings) -> pd.DataFrame:
    """CheXpert frontal images: train.csv split patient-wise into train and valid, valid.csv as the test set."""
    table = read_chexpert(settings.data_root)
    table = table[table["view"] == "frontal"].copy()
    trainval = table["split"] == "trainval"
    valid = CHEXPERT_VALID["quick" if quick_sized(settings.profile) else "full"]
    table.loc[trainval, "split"] = split_patients(table[trainval], {"train": 1 - valid, "valid": valid}, SPLIT_SEED)
    return _quick_cut(table, settings.profile)


def hospital_tables(settings: Settings) -> dict[str, pd.DataFrame]:
    """Labeler -> the hospital's frontal images, one patient-wise split, train and valid labelled by that labeler;
    the test labels are the drawn signs on a synthetic site (a perfect reader), else the keyword labeler's.

    Labelling the site's reports takes seconds and the chapter asks for these tables several times: they are
    computed once per settings and version of the site's reports.csv (fresh copies are returned)."""
    reports = settings.data_root / "hospital" / "reports.csv"
    version = reports.stat().st_mtime_ns if reports.is_file() else None  # None: read_hospital names what is missing
    return {name: table.copy() for name, table in _hospital_tables(settings, version).items()}


@functools.lru_cache(maxsize=4)
def _hospital_tables(settings: Settings, reports_version: int | None) -> dict[str, pd.DataFrame]:
    """`hospital_tables`, computed (`reports_version` keys the cache to the reports file's modification time)."""
    keyword = read_hospital(settings.data_root)
    keyword = keyword[keyword["view"] == "frontal"].copy()
    keyword["split"] = split_patients(keyword, HOSPITAL_FRACTIONS, SPLIT_SEED)
    negation = read_hospital(settings.data_root, negation=True).loc[keyword.index, FINDINGS]
    synthetic = has_sign_masks(settings.data_root)
    trained = keyword["split"] != "test"
    tables = {"keyword": keyword, "negation-aware": keyword.copy()}
    tables["negation-aware"].loc[trained, FINDINGS] = negation.loc[trained]
    if synthetic:
        tables["drawn signs"] = with_drawn_labels(keyword, settings.data_root, "hospital", FINDINGS)
        tested = keyword["split"] == "test"
        tables = {name: with_drawn_labels(table, settings.data_root, "hospital", FINDINGS, tested)
                  for name, table in tables.items()}
    return {name: _quick_cut(table, settings.profile) for name, table in tables.items()}


def _columns(table: pd.DataFrame, findings: Sequence[str]) -> pd.DataFrame:
    """A manifest table with exactly the required columns and `findings` (NaN, "not labelled", where it lacks one)."""
    return table.reindex(columns=[*REQUIRED_COLUMNS, *findings])


def manifests(settings: Settings) -> dict[str, Path]:
    """Training manifests: "ChestX-ray14" (the source models'), "CheXpert", "hospital: <labeler>" and "pooled"."""
    out = settings.runs_dir / "manifests"
    chexpert = _columns(chexpert_table(settings), FINDINGS)
    hospital = {name: _columns(table, FINDINGS) for name, table in hospital_tables(settings).items()}
    paths = {"ChestX-ray14": source_models.source_manifest(settings.data_root, out),
             "CheXpert": write_derived_manifest(chexpert, out / f"{NAME}_chexpert.csv")}
    for name, table in hospital.items():
        paths[f"hospital: {name}"] = write_derived_manifest(table, out / f"{NAME}_hospital_{name.split()[0]}.csv")
    pooled = pd.concat([chexpert, hospital["keyword"]], ignore_index=True)
    paths["pooled"] = write_derived_manifest(pooled, out / f"{NAME}_pooled.csv")
    return paths


def test_manifests(settings: Settings) -> dict[str, Path]:
    """Site -> its test images with every finding any model of the experiment scores (NaN where the site has no
    label: the NIH baseline scores ChestX-ray14's 14 findings), so every model can be tested on every site."""
    train = manifests(settings)
    sources = {"ChestX-ray14": train["ChestX-ray14"], "CheXpert": train["CheXpert"],
               "hospital": train["hospital: keyword"]}  # every labeler's table has the same test labels
    findings = list(dict.fromkeys([*NIH_HARMONIZED, *FINDINGS]))
    out = settings.runs_dir / "manifests"
    paths = {}
    for site, path in sources.items():
        table = load_manifest(path)
        test = _columns(table[table["split"] == "test"], findings).reset_index(drop=True)
        paths[site] = write_derived_manifest(test, out / f"{NAME}_test_{SITES[site]}.csv")
    return paths


def run_config(manifest: Path, settings: Settings, start: dict) -> dict:
    """Paper 000's recipe for one stage: DenseNet-121 on a manifest, every layer trained from the `start` run."""
    return {"manifest": str(manifest), "findings": FINDINGS, "data_root": str(settings.data_root),
            "arch": ARCHITECTURE.arch, "head": ARCHITECTURE.head, "channels": 3, "preset": PRESET,
            "policy": "u-ones", "seed": 0, "profile": settings.profile, "weights": {"run": start},
            "overrides": {"epochs": QUICK_EPOCHS} if quick_sized(settings.profile) else {}}


def configs(settings: Settings) -> dict[str, dict]:
    """Model name -> run config: the NIH baseline (the shared source model), each stage, pooled, the labelers."""
    paths = manifests(settings)
    baseline = source_models.configs(settings)[ARCHITECTURE.name]
    chexpert = run_config(paths["CheXpert"], settings, baseline)
    out = {BASELINE: baseline, "CheXpert-NET": chexpert,
           "Hospital-NET": run_config(paths["hospital: keyword"], settings, baseline),
           "pooled": run_config(paths["pooled"], settings, baseline)}
    for labeler in labelers(settings):
        out[labeler_model(labeler)] = run_config(paths[f"hospital: {labeler}"], settings, chexpert)
    return out


def stages(settings: Settings) -> list[list[dict]]:
    """The source models, then the models that start from the NIH baseline, then the chain's hospital stages."""
    named = configs(settings)
    second = [c for name, c in named.items() if name in ("CheXpert-NET", "Hospital-NET", "pooled")]
    third = [named[labeler_model(labeler)] for labeler in labelers(settings)]
    return [*source_models.stages(settings), second, third]


def runs(settings: Settings) -> dict[str, Result]:
    """Model name -> finished run (trained now if not in the run cache)."""
    return {name: run(config, runs_dir=settings.runs_dir) for name, config in configs(settings).items()}


def evaluations(settings: Settings) -> list[tuple[dict, Path]]:
    """Every model on every site's test images: what `cross_site_predictions` reads (the command computes them)."""
    tests = test_manifests(settings)
    return [(config, path) for config in configs(settings).values() for path in tests.values()]


def cross_site_predictions(settings: Settings, finished: Mapping[str, Result]) -> dict[tuple[str, str], pd.DataFrame]:
    """(model, site) -> the model's predictions on the site's test images (inference only, cached per run)."""
    tests = test_manifests(settings)
    return {(name, site): evaluate(result, path) for name, result in finished.items() for site, path in tests.items()}


def matrix(predictions: Mapping[tuple[str, str], pd.DataFrame], n_boot: int) -> pd.DataFrame:
    """Long table: model, site, finding ("Mean" for the mean over the site's scored findings), AUROC and 95 %
    patient-bootstrap interval, positives; a finding with too few test positives at a site is left out there."""
    rows = []
    for (name, site), table in predictions.items():
        if not scored_findings(table, FINDINGS):  # no finding has enough positives at this site: nothing to score
            rows.append({"model": name, "site": site, "finding": "Mean", "auroc": np.nan, "low": np.nan,
                         "high": np.nan, "positives": 0})
            continue
        aurocs = predictions_auroc_table(table, FINDINGS, n_boot)
        for finding, row in aurocs.iterrows():
            rows.append({"model": name, "site": site, "finding": finding, "auroc": row["auroc"], "low": row["low"],
                         "high": row["high"], "positives": row["n_pos"]})
    return pd.DataFrame(rows)


def mean_matrix(long: pd.DataFrame, text: bool = False) -> pd.DataFrame:
    """Model x site mean AUROC (or "0.812 (0.78-0.84)" texts), models and sites in their order of appearance."""
    means = long[long["finding"] == "Mean"]
    values = means.assign(text=[f"{a:.3f} ({lo:.2f}-{hi:.2f})" for a, lo, hi in
                                zip(means["auroc"], means["low"], means["high"], strict=True)])
    table = values.pivot(index="model", columns="site", values="text" if text else "auroc")
    return table.reindex(index=pd.unique(means["model"]), columns=pd.unique(means["site"]))


READINGS = [("forgetting", "CheXpert-Hospital-NET", "CheXpert-NET", "CheXpert"),
            ("forgetting", "CheXpert-Hospital-NET", "NIH baseline", "ChestX-ray14"),
            ("forgetting", "CheXpert-NET", "NIH baseline", "ChestX-ray14"),
            ("gain on the new site", "CheXpert-Hospital-NET", "CheXpert-NET", "hospital"),
            ("gain on the new site", "CheXpert-NET", "NIH baseline", "CheXpert"),
            ("chain vs pooled", "CheXpert-Hospital-NET", "pooled", "CheXpert"),
            ("chain vs pooled", "CheXpert-Hospital-NET", "pooled", "hospital"),
            ("chain vs pooled", "CheXpert-Hospital-NET", "pooled", "ChestX-ray14")]  # (reading, A, B, test site)


def paired_difference(predictions: Mapping[tuple[str, str], pd.DataFrame], a: str, b: str, sites: Sequence[str],
                      n_boot: int) -> dict[str, float]:
    """Model a minus model b in mean AUROC over the finding x site cells of `sites` (each site's scored findings),
    on the same test images, with the paired patient-bootstrap 95 % interval
    (`cxrcore.metrics.bootstrap_mean_difference`; the patients of every site are resampled at once); NaN where no
    finding has enough positives."""
    for site in sites:
        if not predictions[(a, site)]["path"].equals(predictions[(b, site)]["path"]):
            raise ValueError(f"{a} and {b} were not tested on the same {site} images")
    columns = [(site, f) for site in sites for f in scored_findings(predictions[(a, site)], FINDINGS)]
    if not columns:  # no finding has enough positives at these sites: nothing to compare (as in `matrix`)
        return {"difference": np.nan, "low": np.nan, "high": np.nan}
    labels = _stacked(predictions, a, sites, columns, scores=False)
    groups = np.concatenate([site + ": " + predictions[(a, site)]["patient_id"].astype(str).to_numpy()
                             for site in sites])
    result = bootstrap_mean_difference(np.nan_to_num(labels), _stacked(predictions, a, sites, columns, scores=True),
                                       _stacked(predictions, b, sites, columns, scores=True), groups, n_boot=n_boot,
                                       mask=~np.isnan(labels))
    return {"difference": result["difference"], "low": result["low"], "high": result["high"]}


def _stacked(predictions: Mapping[tuple[str, str], pd.DataFrame], model: str, sites: Sequence[str],
             columns: Sequence[tuple[str, str]], scores: bool) -> np.ndarray:
    """One model's labels (NaN off a column's site) or scores (0 there) as an (images of every site in turn) x
    (site, finding) matrix."""
    blocks = []
    for site in sites:
        table = predictions[(model, site)]
        block = np.full((len(table), len(columns)), 0.0 if scores else np.nan)
        for k, (column_site, finding) in enumerate(columns):
            if column_site == site:
                block[:, k] = table[score_column(finding) if scores else finding].to_numpy(float)
        blocks.append(block)
    return np.vstack(blocks)


def paired_readings(predictions: Mapping[tuple[str, str], pd.DataFrame], n_boot: int) -> pd.DataFrame:
    """What the matrix says about forgetting, the gain of each stage and the chain against pooling: one row per
    `READINGS` entry, the difference of mean AUROC on one site and its paired patient-bootstrap interval."""
    rows = []
    for reading, a, b, site in READINGS:
        rows.append({"reading": reading, "models": f"{a} vs {b}", "tested on": site,
                     **paired_difference(predictions, a, b, [site], n_boot)})
    return pd.DataFrame(rows)


def last_trained_site(model: str) -> str:
    """The site a model was last trained on (pooled: the hospital and CheXpert together, reported as None)."""
    return {BASELINE: "ChestX-ray14", "CheXpert-NET": "CheXpert", "Hospital-NET": "hospital"}.get(model, "hospital")


def unseen_sites(model: str) -> list[str]:
    """The sites whose training images a model never saw, neither itself nor the models it started from."""
    seen = {BASELINE: ["ChestX-ray14"], "CheXpert-NET": ["ChestX-ray14", "CheXpert"],
            "Hospital-NET": ["ChestX-ray14", "hospital"]}.get(model, list(SITES))
    return [site for site in SITES if site not in seen]


def site_shifts(means: pd.DataFrame) -> pd.DataFrame:
    """Site shift apart from forgetting: each model's mean AUROC on the sites it never trained on minus that on the
    site it was trained on last (an earlier site's loss is forgetting, read separately)."""
    rows = []
    for name in means.index:
        away = unseen_sites(name)
        if away:
            last = last_trained_site(name)
            rows.append({"model": name, "unseen sites": ", ".join(away), "last trained on": last,
                         "difference": means.loc[name, away].mean() - means.loc[name, last]})
    return pd.DataFrame(rows, columns=["model", "unseen sites", "last trained on", "difference"])


def verdict(row: Mapping[str, float]) -> str:
    """"higher", "lower" or "within": where a paired interval ({"low", "high"}) lies against zero."""
    return "higher" if row["low"] > 0 else "lower" if row["high"] < 0 else "within"


def interval_text(row: Mapping[str, float]) -> str:
    """"+0.316 (+0.25 to +0.38)": a paired difference and its 95 % interval."""
    return f"{row['difference']:+.3f} ({row['low']:+.3f} to {row['high']:+.3f})"


def stage_reading(model: str, site: str, row: Mapping[str, float], images: int, quick: bool) -> str:
    """What one fine-tuning stage's paired difference on its own site says."""
    if verdict(row) == "higher":
        return f"{model} gains on {site}, and the paired interval excludes zero"
    if verdict(row) == "lower":
        few = "only " if quick else ""
        return (f"{model} is worse on {site} than the model it started from, and the paired interval excludes zero: "
                f"on {few}{images:,} training images, fine-tuning at paper 000's rate undid more than it taught")
    return f"{model}'s paired interval on {site} includes zero: no gain shows"


def forgetting_reading(rows: pd.DataFrame) -> str:
    """What the forgetting rows of `paired_readings` (the chain's last stage on the earlier sites) say."""
    lost = [site for site, row in rows.set_index("tested on").iterrows() if verdict(row) == "lower"]
    if not lost:
        return ("no paired interval lies below zero: at this test size the later stage's cost on the earlier sites "
                "does not show")
    kept = [site for site in rows["tested on"] if site not in lost]
    return (f"the paired interval lies below zero on {' and '.join(lost)}" +
            (f" (not on {' and '.join(kept)})" if kept else "") +
            ": fine-tuning on the next site overwrites part of what an earlier one taught")


def pool_reading(rows: pd.DataFrame) -> str:
    """What the chain-vs-pooled rows of `paired_readings` say, site by site."""
    by_site = rows.set_index("tested on")
    chain = [site for site, row in by_site.iterrows() if verdict(row) == "higher"]
    pooled = [site for site, row in by_site.iterrows() if verdict(row) == "lower"]
    if not chain and not pooled:
        return ("every paired interval includes zero: with the same images and the same start, the order of the "
                "stages does not show")
    parts = ([f"the chain beats pooling on {', '.join(chain)}"] if chain else []) + \
        ([f"pooling beats the chain on {', '.join(pooled)}"] if pooled else [])
    return "; ".join(parts) + " (paired intervals that exclude zero)"


def label_reading(row: Mapping[str, float]) -> str:
    """What the paired difference drawn-sign labels minus keyword labels, on the hospital, says."""
    if verdict(row) == "higher":
        return "The keyword labels cost the hospital stage AUROC on the images it was trained for: the paired " \
               "interval lies above zero."
    if verdict(row) == "lower":
        return "The keyword labels did better here than the drawn signs: the paired interval lies below zero."
    return "The paired interval includes zero: at this test size the labels' cost does not show beyond chance."


def label_lesson(difference: float, q: float, recall: float) -> str:
    """Whether DeLong's test on pneumonia (drawn-sign labels minus keyword labels: difference, BH q) shows the cost
    of the keyword labels' pneumonia recall, shows the opposite, or shows nothing."""
    numbers = f"drawn signs minus keyword labels {difference:+.3f} (q {p_text(q, 2)})"
    if q >= 0.05:
        return f"On pneumonia it did not show: {numbers}, although the keyword labels' recall on pneumonia was " \
               f"{recall:.2f}."
    if difference > 0:
        return f"On pneumonia it shows: {numbers}, the cost of the keyword labels' recall of {recall:.2f} on " \
               "pneumonia."
    return f"On pneumonia the test shows the opposite: {numbers}, the keyword labels better although their recall " \
           f"on pneumonia was {recall:.2f}."


def chain_reading(row: Mapping[str, float], best: str) -> str:
    """What the chain's last stage minus the NIH baseline, over every finding x site cell, says beside the paper."""
    text = {"higher": "the chain beat the baseline, its paired interval above zero, as in the paper",
            "lower": "unlike the paper, the chain did worse than the baseline, its paired interval below zero",
            "within": "unlike the paper, the chain did not beat the baseline: the paired interval includes zero"
            }[verdict(row)]
    return text + (f"; the best average of all models is {best}'s" if best != "CheXpert-Hospital-NET" else "")


def borrowed_scores(table: pd.DataFrame, finding: str) -> pd.DataFrame:
    """How well each finding's score ranks one finding's test labels (one model's predictions on one site): AUROC,
    and DeLong's p (clustered by patient) against the finding's own score; a score that ranks another finding's
    images as well as that finding's own output has learned something the findings share (an abnormal film), not the
    finding itself."""
    counted = table[finding].notna().to_numpy()
    labels, own = table.loc[counted, finding], table.loc[counted, score_column(finding)]
    rows = []
    for other in FINDINGS:
        if score_column(other) in table.columns:
            test = delong_test(labels, table.loc[counted, score_column(other)], own,
                               groups=table.loc[counted, "patient_id"])
            rows.append({"score": other, "AUROC": test.auc_a, "p against its own score": np.nan if other == finding
                         else test.p})
    return pd.DataFrame(rows).set_index("score")


def borrowed_reading(borrowed: pd.DataFrame, finding: str) -> str:
    """What `borrowed_scores` says about a finding's output trained on the keyword labels: whether the other
    findings' scores rank its test images as well as its own score, worse (DeLong p < 0.05) or better."""
    own = borrowed.loc[finding, "AUROC"]
    others = borrowed.drop(index=finding)
    text = (f"the other findings' scores rank the {finding.lower()} test images at "
            + ", ".join(f"{name} {auc:.3f}" for name, auc in others["AUROC"].items())
            + f", against {own:.3f} for its own score, and DeLong's test ")
    p = others["p against its own score"]
    below = others[(p < 0.05) & (others["AUROC"] < own)].index.tolist()
    above = others[(p < 0.05) & (others["AUROC"] > own)].index.tolist()
    pairs = ", ".join(f"{name} p {p_text(value, 2)}" for name, value in p.items())
    if not below and not above:
        return text + (f"separates none of them from it ({pairs}): what this {finding.lower()} output ranks is "
                       "mostly what every finding's output ranks, an abnormal film, which the keyword labels teach "
                       "through the other findings' labels too")
    if not above:
        return text + (f"puts {listed(below)} below it ({pairs}): the {finding.lower()} output has learned something "
                       "of its own, and the keyword labels did not stop it")
    return text + (f"puts {listed(above)} above it" + (f" and {listed(below)} below it" if below else "")
                   + f" ({pairs}): another finding's output ranks these images better than the {finding.lower()} "
                   f"output itself, so the keyword labels taught it less about {finding.lower()} than the other "
                   "findings' labels taught about an abnormal film")


def significant_reading(significant: pd.DataFrame) -> str:
    """Per model, how many of the DeLong tests that survive BH (rows of `delong_table`) find it better than the
    baseline and how many worse, with the test sites of each; "none" for no rows."""
    if significant.empty:
        return "none"
    parts = []
    for model, rows in significant.groupby("model"):
        better, worse = rows[rows["difference"] > 0], rows[rows["difference"] < 0]
        parts.append(f"{model} better than the baseline in {len(better)}"
                     + (f" ({', '.join(better['site'].unique())})" if len(better) else "")
                     + f", worse in {len(worse)}" + (f" ({', '.join(worse['site'].unique())})" if len(worse) else ""))
    return "; ".join(parts)


def wilcoxon_floor(n: int) -> dict[str, float]:
    """The smallest one-sided p-value a Wilcoxon signed-rank test over n pairs can give: exact, and by the normal
    approximation (what reproduces paper 000's p-values)."""
    gains = np.arange(1, n + 1, dtype=float)  # every pair moves the same way: the most extreme outcome
    return {method: float(wilcoxon(gains, alternative="greater", method=method).pvalue)
            for method in ("exact", "approx")}


def cells(long: pd.DataFrame) -> pd.DataFrame:
    """Model x (finding, site) AUROCs: the cells the paired tests run over (paper 000's Table 7 layout)."""
    per_finding = long[long["finding"] != "Mean"]
    return per_finding.pivot_table(index="model", columns=["finding", "site"], values="auroc").reindex(
        pd.unique(per_finding["model"]))


def paired_table(long: pd.DataFrame, models: Sequence[str], baseline: str = BASELINE) -> pd.DataFrame:
    """Paper 000's statistics as reproduced: each model against the baseline over the finding x site cells, paired
    t-test and Wilcoxon signed-rank, two-sided and one-sided ("greater", which reproduces the paper's p-values)."""
    table = cells(long)
    rows = []
    for name in models:
        both = paired_tests(table.loc[name], table.loc[baseline])
        greater = paired_tests(table.loc[name], table.loc[baseline], alternative="greater", wilcoxon_method="approx")
        rows.append({"model": name, "against": baseline, "cells": both["n"], "mean difference": both["mean_diff"],
                     "t-test p": both["t_p"], "Wilcoxon p": both["wilcoxon_p"],
                     "t-test p (one-sided)": greater["t_p"], "Wilcoxon p (one-sided)": greater["wilcoxon_p"]})
    return pd.DataFrame(rows)


def delong_table(predictions: Mapping[tuple[str, str], pd.DataFrame], models: Sequence[str],
                 baseline: str = BASELINE, sites: Sequence[str] | None = None) -> pd.DataFrame:
    """DeLong's test (clustered by patient) of each model against the baseline per finding and site (findings with
    enough positives; every site, or `sites`), with Benjamini-Hochberg q values over every test in the table."""
    rows = []
    for (name, site), table in predictions.items():
        if name not in models or (sites is not None and site not in sites):
            continue
        base = predictions[(baseline, site)]
        for finding in scored_findings(table, FINDINGS):
            counted = table[finding].notna().to_numpy()
            test = delong_test(table[finding][counted], table[score_column(finding)][counted],
                               base[score_column(finding)][counted], groups=table["patient_id"][counted])
            rows.append({"model": name, "site": site, "finding": finding, "AUROC": test.auc_a,
                         "baseline AUROC": test.auc_b, "difference": test.auc_a - test.auc_b, "p": test.p})
    out = pd.DataFrame(rows, columns=["model", "site", "finding", "AUROC", "baseline AUROC", "difference", "p"])
    out["q (BH)"] = false_discovery_control(out["p"].to_numpy(), method="bh") if len(out) else []
    return out


def labeler_noise(settings: Settings) -> pd.DataFrame:
    """Per labeler and finding: how its hospital training labels agree with the drawn signs (precision, recall,
    F1 of its positives, and the share of images it labels wrongly); synthetic sites only."""
    tables = hospital_tables(settings)
    truth = tables["drawn signs"]
    train = truth["split"] == "train"
    rows = []
    for labeler in LABELERS[:2]:
        for finding in FINDINGS:
            y, y_hat = truth.loc[train, finding].to_numpy(int), tables[labeler].loc[train, finding].to_numpy(int)
            precision, recall, f1, _ = precision_recall_fscore_support(y, y_hat, average="binary", zero_division=0)
            rows.append({"labeler": labeler, "finding": finding, "drawn": int(y.sum()), "labelled": int(y_hat.sum()),
                         "precision": precision, "recall": recall, "F1": f1,
                         "wrong labels": float(np.mean(y != y_hat))})
    return pd.DataFrame(rows)


def keyword_matches(settings: Settings, finding: str) -> pd.DataFrame:
    """The hospital's training images that the keyword labeler (paper 000's Table 1, no negation detection) marks
    positive for a finding: the keywords matched in each report, whether negation detection reads every one of those
    matches as negated, and whether the sign is drawn (synthetic sites; NaN elsewhere)."""
    tables = hospital_tables(settings)
    keyword = tables["keyword"]
    train = keyword[(keyword["split"] == "train") & (keyword[finding] == 1)]
    reports = read_text_csv(settings.data_root / HOSPITAL_DIR / "reports.csv")
    text = dict(zip(HOSPITAL_DIR + "/" + reports["Path"].astype(str), reports["Report"], strict=True))
    drawn = tables["drawn signs"].set_index("path")[finding] if "drawn signs" in tables else pd.Series(dtype=float)
    rows = []
    for path in train["path"]:
        found = [m for m in explain(text[path], negation=True, keywords=TABLE1_KEYWORDS) if m.finding == finding]
        rows.append({"path": path, "keywords": "; ".join(dict.fromkeys(m.keyword for m in found)),
                     "negated": bool(found) and all(m.status == "negated" for m in found),
                     "drawn": drawn.get(path, np.nan)})
    return pd.DataFrame(rows, columns=["path", "keywords", "negated", "drawn"])


def site_localisation(result: Result, tests: Mapping[str, Path], data_root: Path, finding: str, n: int
                      ) -> tuple[pd.DataFrame, dict]:
    """CAM and Grad-CAM of one finding on up to n of each site's test images with its sign drawn. Returns the scores
    against the drawn masks (one row per site and map: `localisation.localisation_table`, with the images scored)
    and, for a figure, each site's first such image, its maps and its mask ({"sites", "images", "maps", "masks"});
    sites with no such image are left out of both; images and each method's maps are (sites, side, side)."""
    sign, index = CHEXPERT_SIGNS[finding], result.config["run"]["findings"].index(finding)
    tables, shown = [], {"sites": [], "images": [], "maps": {}, "masks": []}
    for site, manifest in tests.items():
        listed = evaluation_dataset(result, "test", manifest).manifest["path"].tolist()
        paths = drawn_sign_paths(data_root, SITES[site], sign, listed, n)
        if not paths:
            continue
        grey, maps = cam_and_gradcam(result, paths, index, manifest)  # (N, side, side) each
        table = localisation_table(maps, functools.partial(sign_masks, data_root, paths, sign), "sign")
        tables.append(table.assign(finding=finding, site=site, images=len(paths)))
        shown["sites"].append(site)
        shown["images"].append(grey[0].numpy())
        shown["masks"].append(sign_mask(data_root, paths[0], grey.shape[-1], sign))
        for method, method_maps in maps.items():
            shown["maps"].setdefault(method, []).append(method_maps[0])
    if not tables:
        raise ValueError(f"no test image of any site has a drawn {sign} ({finding})")
    scores = pd.concat(tables).rename_axis("map").reset_index().set_index(["finding", "site", "map"])
    shown["images"] = np.stack(shown["images"])  # (sites, side, side)
    shown["maps"] = {method: np.stack(maps) for method, maps in shown["maps"].items()}
    return scores, shown


def localisation_reading(scores: pd.DataFrame) -> tuple[str, str]:
    """What `site_localisation`'s scores say: each finding's and map's range of energy inside the sign over its
    share of the image, across sites; and a sentence on the all-zero maps (empty when there are none)."""
    ranges = []
    for (finding, method), rows in scores.groupby(level=["finding", "map"], sort=False):
        ratio = rows["energy / area"].dropna()
        ranges.append(f"{finding}, {method}: " + (f"{ratio.min():.2f} to {ratio.max():.2f}" if len(ratio) else
                                                  "every map all zero"))
    zero = scores.xs("Grad-CAM", level="map")
    zero_total, images = int(zero["all-zero maps"].sum()), int(zero["images"].sum())
    if zero_total == 0:
        return "; ".join(ranges), ""
    per_finding = zero.groupby(level="finding", sort=False)[["all-zero maps", "images"]].sum()
    where = ", ".join(f"{finding} {int(r['all-zero maps'])} of {int(r['images'])}" for finding, r in
                      per_finding.iterrows())
    return "; ".join(ranges), (
        f"Grad-CAM was all zero on {zero_total} of the {images} images ({where}). For a "
        "linear output on average-pooled features Grad-CAM is the CAM with its negative part cut off, so a film on "
        "which the model found evidence against the finding everywhere, less of it in some places than in others, "
        "gets an empty map; the CAM, scaled per image, still shows where the evidence for the finding is highest, "
        "which is why the figures show both.")


def localisation_chance(scores: pd.DataFrame) -> str:
    """Whether `site_localisation`'s energy / area intervals (images resampled) set any site's map apart from 1,
    the share of a map that ignores the sign: a site comparison means something only where one does."""
    bounded = scores.dropna(subset=["energy / area low", "energy / area high"])
    if bounded.empty:
        return "No site has two scored maps of a finding: there is no interval to read."
    above = bounded[bounded["energy / area low"] > 1]
    if above.empty:
        return (f"Every one of the {len(bounded)} site intervals (images resampled) includes 1 or lies below it: on "
                f"{int(bounded['images'].min())} to {int(bounded['images'].max())} images per site these maps are not "
                "shown to put more of their energy on the sign than a map that ignores it, so they cannot tell a "
                "site where the model learned the sign from one where it did not.")
    where = ", ".join(f"{finding} {method} at {site}" for finding, site, method in above.index)
    return (f"The interval (images resampled) lies above 1 for {where}, and includes 1 or lies below it for the other "
            f"{len(bounded) - len(above)} of {len(bounded)}: only those maps single out the sign beyond chance.")


def reported_matrix(reported: pd.DataFrame) -> pd.DataFrame:
    """Paper 000's Table 6 as model x site (our names), for the side-by-side with `mean_matrix`."""
    rows = reported[(reported["paper"] == "000") & (reported["source"] == "Table 6")]
    table = rows.pivot(index="model", columns="arm", values="value")
    table = table.rename(index={v: k for k, v in PAPER_MODELS.items()},
                         columns={v: k for k, v in PAPER_SITES.items()})
    return table.reindex(index=list(PAPER_MODELS), columns=[*SITES, "average"])


def results(settings: Settings) -> pd.DataFrame:
    """One row per model and test site (RESULT_COLUMNS): mean AUROC over the site's scored findings."""
    finished = runs(settings)
    long = matrix(cross_site_predictions(settings, finished), bootstrap_draws(settings))
    means = long[long["finding"] == "Mean"]
    rows = []
    for row in means.itertuples():
        result = finished[row.model]
        rows.append({"experiment": NAME, "model": row.model, "arm": f"tested on {row.site}",
                     "train_images": result.metrics["images"]["train"],
                     "test_images": int(len(evaluate(result, test_manifests(settings)[row.site]))),
                     "mean_auroc": row.auroc, "ci_low": row.low, "ci_high": row.high, "seconds": result.elapsed})
    return pd.DataFrame(rows, columns=RESULT_COLUMNS)
