"""Experiment "shortcut": paper 001's chest-drain remark, measured on the synthetic ChestX-ray14 site.

On the demo site, as in ChestX-ray14, most pneumothorax films show a chest drain (the treated cases;
`data_prep.synth.plan.NIH_DRAIN_RATE`) and a few other films do too. `make data` renders every film with a drain
a second time without it (`python -m data_prep synth --counterfactual remove=drain`): the same radiograph, every
other pixel-generating choice unchanged.

* "as published": paper001's ResNet-50 recipe on the official split, the films as they are;
* "drain-free training": the same recipe on the same patients, every training and validation film with a drain
  replaced by its counterfactual: a model that never saw a drain during development.

In the quick profile both train on every training film for QUICK_EPOCHS (paper001's runs: QUICK_TRAIN_IMAGES films,
5 epochs): a shortcut is only worth measuring in a model that has learned something (its mean test AUROC on 1,102
films: about 0.61, on all 2,198: 0.72; benchmarks appendix), and the two are the lab's own comparison, so they
need not match paper001's runs.

Both are scored on the untouched test split: pneumothorax AUROC on the positives with a drain and on those without,
each against all negatives; the class activation map's energy inside the drain and inside the pneumothorax; and the
counterfactual, each test film with a drain scored again without it: the change of the model's score is the drain's
causal effect.
This part needs the synthetic site: no public dataset holds the same film with and without its drain.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.special import logit
from sklearn.metrics import roc_auc_score

from cxrcore.cam import class_activation_map, gradcam
from cxrcore.experiments import paper001
from cxrcore.experiments.evaluation import evaluate
from cxrcore.experiments.localisation import SYNTH_DIR, localisation_row, sign_masks, test_images
from cxrcore.experiments.tables import bootstrap_draws, bootstrap_mean_interval, p_text, results_table
from cxrcore.manifest import load_manifest, write_derived_manifest
from cxrcore.metrics import bootstrap_auroc_ci, delong_test, resample_patients, score_column
from cxrcore.runner import Result, run
from cxrcore.settings import Settings, quick_sized
from data_prep.synth import plan
from data_prep.synth.write import COUNTERFACTUALS

NAME = "shortcut"
FINDING = "Pneumothorax"
SIGN = "drain"
SITE = "nih"
MODELS = ("as published", "drain-free training")
GROUPS = ("positives with a drain", "positives without a drain", "all positives")
MAX_MAP_IMAGES = 24
ALPHA = 0.05  # the significance level of the paired comparison of the twin with the published-style model
QUICK_EPOCHS = 10  # both models' epochs in the quick profile, on every training film (paper001's runs train 5)
DIFFERENCE = "published minus twin"  # the row of `drain_comparison` that is the part learned from the labels
LOGIT_CLIP = 1e-6  # scores are probabilities: clipped before the logit so that a saturated score stays finite


def has_counterfactuals(data_root: Path) -> bool:
    """Whether the data root is a synthetic site rendered with its drain counterfactuals (what the lab needs)."""
    return (Path(data_root) / COUNTERFACTUALS).is_file()


def counterfactual_paths(data_root: Path) -> pd.Series:
    """Original image path -> its drain-free counterfactual's path (`_synth/counterfactuals.csv`)."""
    table_path = Path(data_root) / COUNTERFACTUALS
    if not table_path.is_file():
        raise FileNotFoundError(
            f"{table_path} not found: the shortcut lab needs the synthetic sites rendered with drain counterfactuals "
            f"(`python -m data_prep synth --out {data_root} --force --counterfactual remove=drain`; `make data` "
            "writes them). The real ChestX-ray14 has no counterfactual films: on it, run only the paper001 chapter's "
            "other sections.")
    table = pd.read_csv(table_path)
    table = table[table["removed"] == SIGN]
    return pd.Series(table["counterfactual"].to_numpy(), index=table["path"].to_numpy(), name="counterfactual")


def drain_rates(data_root: Path) -> tuple[float, float]:
    """The site's drain rates on pneumothorax films and on the others, as its synth_meta.json records them (the
    `data_prep.synth.plan` constants NIH_DRAIN_RATE and NIH_DRAIN_OTHER_RATE where it does not)."""
    meta_path = Path(data_root) / "synth_meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    return (float(meta.get("nih_drain_rate_pneumothorax", plan.NIH_DRAIN_RATE)),
            float(meta.get("nih_drain_rate_other", plan.NIH_DRAIN_OTHER_RATE)))


def drain_paths(data_root: Path) -> set[str]:
    """The site's films with a drawn drain (`_synth/nih_signs.csv`)."""
    signs = pd.read_csv(Path(data_root) / SYNTH_DIR / f"{SITE}_signs.csv")
    return set(signs.loc[(signs["sign"] == SIGN) & (signs["drawn"] == 1), "path"])


def _with_counterfactuals(table: pd.DataFrame, replace: pd.Series, splits: tuple[str, ...]) -> pd.DataFrame:
    """The manifest with every film of `splits` that has a counterfactual replaced by it (labels unchanged)."""
    chosen = table["split"].isin(splits) & table["path"].isin(replace.index)
    return table.assign(path=table["path"].where(~chosen, table["path"].map(replace)))


def drain_free_manifest(settings: Settings) -> Path:
    """The official split with every training and validation film that shows a drain replaced by its
    counterfactual; the test split as it is."""
    table = load_manifest(paper001.official_manifest(settings))
    cleaned = _with_counterfactuals(table, counterfactual_paths(settings.data_root), ("train", "valid"))
    return write_derived_manifest(cleaned, settings.runs_dir / "manifests" / f"{NAME}_drain_free.csv")


def counterfactual_test_manifest(settings: Settings) -> Path:
    """The official split with every test film that shows a drain replaced by its counterfactual."""
    table = load_manifest(paper001.official_manifest(settings))
    cleaned = _with_counterfactuals(table, counterfactual_paths(settings.data_root), ("test",))
    return write_derived_manifest(cleaned, settings.runs_dir / "manifests" / f"{NAME}_counterfactual_test.csv")


def configs(settings: Settings) -> dict[str, dict]:
    """Model name -> run config: paper001's ResNet-50 recipe (in the quick profile every training film for
    QUICK_EPOCHS) on the official split, and the same on the drain-free development films."""
    base = paper001.run_config(paper001.official_manifest(settings), settings)
    if quick_sized(settings.profile):
        base.update(max_train_images=None, overrides={**base["overrides"], "epochs": QUICK_EPOCHS})
    return {MODELS[0]: base, MODELS[1]: {**base, "manifest": str(drain_free_manifest(settings))}}


def stages(settings: Settings) -> list[list[dict]]:
    """One stage: the two models are independent; none on a data root without drain counterfactuals (the real
    ChestX-ray14: `results` and the chapter say what is missing)."""
    return [list(configs(settings).values())] if has_counterfactuals(settings.data_root) else []


def evaluations(settings: Settings) -> list[tuple[dict, Path]]:
    """Both models on the counterfactual test films (none without counterfactuals), as the chapter reads them."""
    if not has_counterfactuals(settings.data_root):
        return []
    return [(config, counterfactual_test_manifest(settings)) for config in configs(settings).values()]


def runs(settings: Settings) -> dict[str, Result]:
    """Model name -> finished run."""
    return {name: run(config, runs_dir=settings.runs_dir) for name, config in configs(settings).items()}


def results(settings: Settings) -> pd.DataFrame:
    """One row per model (RESULT_COLUMNS): mean test AUROC over the 14 findings."""
    return results_table(NAME, paper001.BASE, runs(settings), paper001.FINDINGS, bootstrap_draws(settings))


def _auroc_row(predictions: pd.DataFrame, n_boot: int) -> dict:
    """Pneumothorax AUROC with its patient-bootstrap interval over the given films."""
    table = bootstrap_auroc_ci(predictions[[FINDING]].to_numpy(), predictions[[score_column(FINDING)]].to_numpy(),
                               groups=predictions["patient_id"].to_numpy(), n_boot=n_boot, names=[FINDING])
    return {"auroc": table["auroc"].iloc[0], "low": table["low"].iloc[0], "high": table["high"].iloc[0],
            "positives": int((predictions[FINDING] == 1).sum()), "negatives": int((predictions[FINDING] == 0).sum())}


def _subgroups(labelled: pd.DataFrame, drains: set[str]) -> dict[str, pd.Series]:
    """Group name -> rows of `labelled`: the positives with a drain, those without, and all, each with every
    negative (with or without a drain)."""
    with_drain = labelled["path"].isin(drains)
    negatives = labelled[FINDING] == 0
    return {GROUPS[0]: negatives | with_drain, GROUPS[1]: negatives | ~with_drain, GROUPS[2]: negatives | ~negatives}


def subgroup_table(predictions: pd.DataFrame, drains: set[str], n_boot: int) -> pd.DataFrame:
    """Pneumothorax AUROC on the positives with a drain, on those without, and on all, each against all
    negatives (with or without a drain), with 95 % patient-bootstrap intervals."""
    labelled = predictions[predictions[FINDING].notna()]
    return pd.DataFrame({group: _auroc_row(labelled[rows], n_boot)
                         for group, rows in _subgroups(labelled, drains).items()}).T


def subgroup_gap_reading(published: pd.DataFrame) -> str:
    """Whether `subgroup_table`'s intervals on the positives with and without a drain overlap, and if not, which
    group the model tells from the negatives the better."""
    with_drain, without = published.loc[GROUPS[0]], published.loc[GROUPS[1]]
    if with_drain["low"] > without["high"]:
        return ("The two intervals do not overlap: the model tells the positives with a drain from the negatives "
                "better than those without.")
    if without["low"] > with_drain["high"]:
        return ("The two intervals do not overlap, the other way round: the model tells the positives without a drain "
                "from the negatives better than those with one.")
    return "The two intervals overlap: with this many positives the gap is suggestive, not settled."


def twin_against_published(finished: dict[str, Result], drains: set[str]) -> pd.DataFrame:
    """Per subgroup: the drain-free twin's pneumothorax AUROC minus the published-style model's on the same test
    films, with DeLong's p (paired: both models score the same films; clustered by patient; NaN where the subgroup's
    positives or negatives come from a single patient, which leaves the clustered variance undefined)."""
    published = finished[MODELS[0]].predictions
    labelled = published[published[FINDING].notna()].reset_index(drop=True)
    twin = finished[MODELS[1]].predictions.set_index("path")[score_column(FINDING)].reindex(labelled["path"])
    if twin.isna().any():
        raise ValueError(f"the {MODELS[1]!r} run has no {FINDING} score for {twin.index[twin.isna()][0]}, a test film "
                         f"of the {MODELS[0]!r} run: the two must be tested on the same films")
    rows = {}
    for group, chosen in _subgroups(labelled, drains).items():
        films, twin_scores = labelled[chosen], twin.to_numpy()[chosen.to_numpy()]
        aucs = [roc_auc_score(films[FINDING], scores) for scores in (twin_scores, films[score_column(FINDING)])]
        patients = films.groupby(FINDING)["patient_id"].nunique()  # per label value
        p = (delong_test(films[FINDING], twin_scores, films[score_column(FINDING)], groups=films["patient_id"]).p
             if len(patients) == 2 and patients.min() >= 2 else np.nan)
        rows[group] = {"twin": aucs[0], "published": aucs[1], "difference": aucs[0] - aucs[1], "p": p,
                       "positives": int((films[FINDING] == 1).sum())}
    return pd.DataFrame(rows).T.astype({"positives": int})


def cure_reading(paired: pd.DataFrame, comparison: pd.DataFrame, split_sd: float, alpha: float = ALPHA,
                 measure: str = "pneumothorax AUROC") -> str:
    """What `twin_against_published` says of the cure, in words: which differences this test set can detect, how
    much of the treated positives' difference is the drain's (`drain_comparison`'s difference of gaps), and the
    training noise two single-seed runs carry (`split_sd`: the resamplings' SD of `measure`)."""
    treated, untreated, everyone = (paired.loc[group] for group in GROUPS)
    cost, benefit = everyone["difference"], untreated["difference"]
    cost_seen, benefit_seen = everyone["p"] < alpha, untreated["p"] < alpha
    tested = (f"Paired on the same test films (DeLong's test, clustered by patient), the headline difference has "
              f"{_p_words(everyone['p'])} and the difference on the {int(untreated['positives'])} untreated "
              f"positives {_p_words(untreated['p'])}: ")
    if benefit_seen and benefit > 0:
        verdict = ("the cure costs headline AUROC and buys it back where it matters, on the untreated "
                   "pneumothoraces." if cost_seen and cost < 0 else
                   "the cure helps the untreated pneumothoraces, at no headline cost this test set can detect.")
    elif benefit_seen:
        verdict = "the cure did worse on the untreated pneumothoraces."
    elif cost_seen:
        verdict = (f"the headline {'cost' if cost < 0 else 'gain'} is one this test set can detect, the change on the "
                   "untreated positives is not.")
    else:
        verdict = ("neither difference is one this test set can tell apart. The counterfactual above measures the "
                   "drain's effect; what the cure buys needs more untreated positives than this test split holds.")
    drain_part = _drain_part(treated, untreated, comparison.loc[DIFFERENCE])
    return tested + verdict + drain_part + _noise(cost, split_sd, measure)


def _p_words(p: float) -> str:
    """"p = 0.12" (`p_text`), or why a subgroup has no clustered p (NaN in `twin_against_published`)."""
    return "no p (its positives or negatives come from a single patient)" if np.isnan(p) else f"p {p_text(p, 2)}"


def _drain_part(treated: pd.Series, untreated: pd.Series, learned: pd.Series) -> str:
    """The twin's difference on the treated positives beside the untreated ones: the drain's part is the
    published-style model's lead on the treated beyond its lead on the untreated (its gap minus the twin's), said
    only where that interval excludes zero."""
    said = (f" On the positives with a drain the twin scores {treated['difference']:+.3f} against the published-style "
            f"model, on those without {untreated['difference']:+.3f}. What the drain gave the published-style model "
            "on the treated positives is its lead there beyond its lead on the untreated ones, its gap minus the "
            f"twin's: {learned['AUROC gap']:+.3f} ({learned['gap low']:+.3f} to {learned['gap high']:+.3f}). ")
    if learned["gap low"] > 0:
        return said + f"About {learned['AUROC gap']:.3f} of its AUROC there came from the drain it learned."
    weaker = (" The twin is lower with and without a drain alike: a weaker model, not one that lost a shortcut."
              if treated["difference"] < 0 and untreated["difference"] < 0 else "")
    return said + "This run cannot tell it from zero." + weaker


def _noise(cost: float, split_sd: float, measure: str) -> str:
    """Both models are single-seed runs: the headline difference beside the split-to-split SD of the same AUROC."""
    size = "smaller than" if abs(cost) < split_sd else "at least"
    return (f" Both are single training runs, and DeLong's p covers only the sampling of the test patients: the "
            f"resampling section's split-to-split SD of {measure}, {split_sd:.3f}, is the yardstick for what "
            f"another training run could move, and the headline difference ({cost:+.3f}) is {size} that.")


def headline_reading(paired: pd.DataFrame, comparison: pd.DataFrame, alpha: float = ALPHA) -> str:
    """Why the shortcut-free model's headline AUROC is lower (or may be), said as "because the test set rewards the
    shortcut" only where it is lower overall, not lower on the untreated positives, and the published-style model's
    gap exceeds the twin's (`drain_comparison`: the difference in differences)."""
    everyone, untreated = paired.loc[GROUPS[2]], paired.loc[GROUPS[1]]
    general = ("Wherever a test set rewards the shortcut, the shortcut-free model's headline number can come out the "
               "lower one:")
    if not (everyone["difference"] < 0 and everyone["p"] < alpha):
        return general
    if untreated["difference"] >= 0 and comparison.loc[DIFFERENCE, "gap low"] > 0:
        return ("Here the shortcut-free model's headline number is the lower one, because the test set still rewards "
                "the shortcut:")
    why = ("it is lower on the untreated positives too" if untreated["difference"] < 0 else
           "its loss on the treated positives cannot be told from its loss on the untreated ones")
    return (f"Here the shortcut-free model's headline number is the lower one, but {why}, so the test set's reward "
            "for the shortcut does not explain it. In general, " + general[0].lower() + general[1:])


def _logit(scores: np.ndarray) -> np.ndarray:
    """The logit of probability scores (clipped at LOGIT_CLIP): the score before the sigmoid."""
    return logit(np.clip(np.asarray(scores, dtype=float), LOGIT_CLIP, 1 - LOGIT_CLIP))


def paired_films(finished: dict[str, Result], drains: set[str], settings: Settings) -> pd.DataFrame:
    """Per labelled pneumothorax test film: path, patient, label, whether it shows a drain, and each model's score
    on the film ("<model>") and on its drain-free counterfactual ("<model>, drain removed"; the film's own where it
    has none)."""
    published = finished[MODELS[0]].predictions
    films = published.loc[published[FINDING].notna(), ["path", "patient_id", FINDING]].reset_index(drop=True)
    films["drain"] = films["path"].isin(drains)
    for name, result in finished.items():
        scores = result.predictions.set_index("path")[score_column(FINDING)].reindex(films["path"])
        if scores.isna().any():
            raise ValueError(f"the {name!r} run has no {FINDING} score for {scores.index[scores.isna()][0]}: the "
                             "models must be tested on the same films")
        removed = counterfactual_scores(result, settings)["score without the drain"].reindex(films["path"])
        films[name] = scores.to_numpy()
        films[f"{name}, drain removed"] = removed.fillna(scores).to_numpy()
    return films


def _auroc(labels: np.ndarray, scores: np.ndarray, chosen: np.ndarray) -> float:
    """AUROC over the chosen rows (NaN where they hold a single class, as a bootstrap draw may)."""
    picked = labels[chosen]
    return float(roc_auc_score(picked, scores[chosen])) if 0 < picked.sum() < len(picked) else float("nan")


def _comparison(films: pd.DataFrame) -> pd.DataFrame:
    """`drain_comparison`'s point values on one set of films (all of them, or one bootstrap draw)."""
    positive, drain = films[FINDING].to_numpy() == 1, films["drain"].to_numpy()
    rows = {}
    for name in MODELS:
        score, logit = films[name].to_numpy(), _logit(films[name].to_numpy())
        change = (_logit(films[f"{name}, drain removed"].to_numpy()) - logit)[positive & drain].mean()
        spread = float(np.std(logit[~positive], ddof=1))
        rows[name] = {"AUROC gap": _auroc(positive, score, ~positive | drain) - _auroc(positive, score,
                                                                                          ~positive | ~drain),
                      "logit change": change, "negatives' logit SD": spread, "effect (SD)": change / spread}
    table = pd.DataFrame(rows).T
    table.loc[DIFFERENCE] = table.loc[MODELS[0]] - table.loc[MODELS[1]]
    table.loc[DIFFERENCE, "negatives' logit SD"] = np.nan  # a difference of spreads means nothing here
    return table


def drain_comparison(films: pd.DataFrame, n_boot: int, seed: int = 0) -> pd.DataFrame:
    """Per model, and published minus twin (the part learned from the labels): the pneumothorax AUROC gap (positives
    with a drain minus those without, each against all negatives), the mean logit change on removing the drain from
    the positives that show one, the SD of the model's logits on the test negatives, and that change in units of
    the SD ("effect (SD)", free of each model's base score and spread); gap, logit change and effect with 95 %
    paired patient-bootstrap intervals (one draw of patients, with all their films, for both models)."""
    point = _comparison(films)
    rng = np.random.default_rng(seed)
    patients = films["patient_id"].to_numpy()
    measures = ["AUROC gap", "logit change", "effect (SD)"]
    draws = np.stack([_comparison(films.iloc[resample_patients(patients, rng)])[measures].to_numpy()
                      for _ in range(n_boot)])
    low, high = np.nanpercentile(draws, [2.5, 97.5], axis=0)
    for k, prefix in enumerate(("gap", "logit", "effect")):
        point[f"{prefix} low"], point[f"{prefix} high"] = low[:, k], high[:, k]
    return point[["AUROC gap", "gap low", "gap high", "logit change", "logit low", "logit high",
                  "negatives' logit SD", "effect (SD)", "effect low", "effect high"]]


def gap_reading(comparison: pd.DataFrame) -> str:
    """The twin's AUROC gap beside the published-style model's, and what their difference says of a learned
    shortcut."""
    twin, learned = comparison.loc[MODELS[1]], comparison.loc[DIFFERENCE]
    said = (f"The twin, which never saw a drain in training, shows a gap of {twin['AUROC gap']:+.3f} "
            f"({twin['gap low']:+.3f} to {twin['gap high']:+.3f}); the published-style model's gap minus the twin's "
            f"is {learned['AUROC gap']:+.3f} ({learned['gap low']:+.3f} to {learned['gap high']:+.3f}, paired patient "
            "bootstrap): ")
    if learned["gap low"] > 0:
        return said + ("that part of the gap came from training on films where drains went with the pneumothorax "
                       "label, a shortcut learned from the labels; the twin's gap is what a drain does to a detector "
                       "that never learned it.")
    if learned["gap high"] < 0:
        return said + ("the published-style model's gap is the smaller one, so none of it can be put down to a "
                       "shortcut learned from the labels.")
    if twin["gap low"] > 0:
        return said + ("the two gaps cannot be told apart. A drain lifts the treated positives as far up the ranking "
                       "of a model that never saw one, so the published-style model's gap shows that drains raise "
                       "pneumothorax scores, not that it learned them as a shortcut.")
    return said + "the two gaps cannot be told apart, so neither shows a shortcut learned from the labels."


def effect_reading(comparison: pd.DataFrame) -> str:
    """The drain's counterfactual effect on both models on the logit scale and in units of each model's spread, and
    how much of the published-style model's effect is learned from the labels (published minus twin)."""
    published, twin, learned = (comparison.loc[row] for row in (*MODELS, DIFFERENCE))
    spreads = published["negatives' logit SD"], twin["negatives' logit SD"]
    said = (f"On the logit scale (the score before the sigmoid, which does not shrink near 0 as probabilities do) "
            f"removing the drain moves the published-style model by {published['logit change']:+.2f} and the twin by "
            f"{twin['logit change']:+.2f} (a difference of {learned['logit change']:+.2f}, {learned['logit low']:+.2f} "
            f"to {learned['logit high']:+.2f}), and the published-style model's scores are spread "
            f"{spreads[0] / spreads[1]:.1f} times as widely as the twin's (the SD of the logits on the test negatives: "
            f"{spreads[0]:.2f} against {spreads[1]:.2f}). "
            f"In units of each model's own spread, the drain's effect is {published['effect (SD)']:+.2f} SD on the "
            f"published-style model and {twin['effect (SD)']:+.2f} SD on the twin, a difference of "
            f"{learned['effect (SD)']:+.2f} ({learned['effect low']:+.2f} to {learned['effect high']:+.2f}, paired "
            "patient bootstrap). ")
    if learned["effect high"] < 0:
        share = learned["effect (SD)"] / published["effect (SD)"]
        return said + (f"About {share:.0%} of the published-style model's drain effect is learned from the labels "
                       "(published minus twin); the rest, the twin's own effect, is what a drain looks like to a "
                       "pneumothorax detector that never saw one.")
    if learned["effect low"] > 0:
        return said + ("The twin moves further: no part of the drain's effect can be put down to a shortcut learned "
                       "from the labels.")
    alike = (" What a drain does to the published-style model's score it does as much to a twin that never saw one: "
             "to a detector trained on these films, a drain looks like pneumothorax evidence."
             if twin["effect high"] < 0 else "")
    return said + ("The interval includes zero: this run finds no part of the drain's effect that was learned from "
                   "the labels." + alike)


def learned_summary(comparison: pd.DataFrame) -> str:
    """One clause for the chapter's summary: the drain's effect on both models in units of their spread, and whether
    any of the published-style model's is shown to be learned from the labels."""
    published, twin, learned = (comparison.loc[row] for row in (*MODELS, DIFFERENCE))
    said = (f"in units of each model's spread of scores, {published['effect (SD)']:+.2f} SD against "
            f"{twin['effect (SD)']:+.2f} SD for the twin that never saw a drain: ")
    if learned["effect high"] < 0:
        return said + f"about {learned['effect (SD)'] / published['effect (SD)']:.0%} of it learned from the labels"
    return said + "no part of it shown to be learned from the labels"


def drain_rate_prediction(comparison: pd.DataFrame, published: pd.DataFrame) -> str:
    """What this run's measurements predict for a site with fewer treated pneumothoraces (`published`: the
    published-style model's `subgroup_table`)."""
    learned, twin = comparison.loc[DIFFERENCE], comparison.loc[MODELS[1]]
    headline = (f"the headline pneumothorax AUROC should move towards the untreated positives' (here "
                f"{published.loc[GROUPS[1], 'auroc']:.3f}), since fewer test positives carry a drain")
    if learned["gap low"] > 0:
        return (headline + f"; and the gap between positives with and without a drain should shrink towards the "
                f"twin's (here {twin['AUROC gap']:+.3f}), the part no label taught, since fewer drains go with the "
                "label in training.")
    gap = (f"The gap between positives with and without a drain need not shrink: here the twin, which never saw a "
           f"drain, shows as large a gap ({twin['AUROC gap']:+.3f}), so what a drain does to the score did not come "
           "from how often drains went with the label." if twin["gap low"] > 0 else
           "This run shows no part of the gap between positives with and without a drain learned from the labels, "
           "so it predicts no change there.")
    return (headline + ". " + gap + " With a tenth of the positives treated, the treated group holds a handful of "
            "films: expect a wide interval.")


def counterfactual_scores(result: Result, settings: Settings) -> pd.DataFrame:
    """Per test film with a drain: its pneumothorax label, the model's score on the film and on its counterfactual,
    and the change (counterfactual minus original)."""
    original = result.predictions.set_index("path")
    replace = counterfactual_paths(settings.data_root)
    replace = replace[replace.index.isin(original.index)]
    without = evaluate(result, counterfactual_test_manifest(settings)).set_index("path")
    table = pd.DataFrame({"patient_id": original.loc[replace.index, "patient_id"],
                          FINDING: original.loc[replace.index, FINDING],
                          "score": original.loc[replace.index, score_column(FINDING)],
                          "score without the drain": without.loc[replace.to_numpy(), score_column(FINDING)].to_numpy()})
    return table.assign(change=table["score without the drain"] - table["score"])


def counterfactual_pairs(finished: dict[str, Result], settings: Settings) -> pd.DataFrame:
    """Per test film with a drain (index: its path): its counterfactual's path, its pneumothorax label, and each
    model's score on the film ("<model>") and on the counterfactual ("<model>, drain removed")."""
    replace = counterfactual_paths(settings.data_root)
    table = None
    for name, result in finished.items():
        scores = counterfactual_scores(result, settings)
        if table is None:
            table = pd.DataFrame({"counterfactual": replace.loc[scores.index], FINDING: scores[FINDING]})
        table[name] = scores["score"]
        table[f"{name}, drain removed"] = scores["score without the drain"]
    return table.sort_values([FINDING, next(iter(finished))], ascending=False)


def mean_change(scores: pd.DataFrame, n_boot: int, seed: int = 0) -> pd.DataFrame:
    """Mean score change on removing the drain, for the positives and the negatives that had one, with 95 %
    patient-bootstrap intervals (patients resampled with all their films)."""
    rows = {}
    for name, label in (("pneumothorax positives", 1.0), ("negatives", 0.0)):
        group = scores[scores[FINDING] == label]
        if group.empty:
            continue
        low, high = bootstrap_mean_interval(group["change"], group["patient_id"], n_boot, seed)
        rows[name] = {"films": len(group), "mean change": float(group["change"].mean()), "low": low, "high": high,
                      "mean score with the drain": float(group["score"].mean())}
    return pd.DataFrame(rows).T


def counterfactual_reading(change: pd.Series) -> str:
    """What a `mean_change` row's interval says of the drain's effect: it lowers the score, raises it, or this run
    cannot tell."""
    if change["high"] < 0:
        return ("The interval lies wholly below zero: removing the drain lowers the score, and nothing else changed, "
                "so the drain caused that part of it.")
    if change["low"] > 0:
        return ("The interval lies wholly above zero: removing the drain raises the score, and nothing else changed, "
                "so on these films the drain held the score down.")
    return "The interval includes zero: this run cannot tell the drain's effect from no effect."


def counterfactual_auroc(result: Result, settings: Settings, n_boot: int) -> pd.DataFrame:
    """Pneumothorax AUROC on the test split as it is and with every drain removed (the counterfactual films)."""
    as_is = result.predictions
    without = evaluate(result, counterfactual_test_manifest(settings))
    return pd.DataFrame({"films as they are": _auroc_row(as_is[as_is[FINDING].notna()], n_boot),
                         "drains removed": _auroc_row(without[without[FINDING].notna()], n_boot)}).T


def map_paths(result: Result, drains: set[str], limit: int = MAX_MAP_IMAGES) -> list[str]:
    """Test films that are pneumothorax positives with a drain (the first `limit`, in the test order)."""
    predictions = result.predictions
    chosen = predictions[(predictions[FINDING] == 1) & predictions["path"].isin(drains)]
    return chosen["path"].tolist()[:limit]


def cam_energy(finished: dict[str, Result], settings: Settings, paths: list[str]) -> pd.DataFrame:
    """Per model: the share of its pneumothorax class activation map's energy inside the drain and inside the
    pneumothorax, on positives with a drain, each beside the region's share of the image, how many maps were flat
    (all zero), and how many of the same films' Grad-CAM maps were.

    The map is CAM (Zhou et al.), each scaled to [0, 1]: with a linear head after global average pooling Grad-CAM is
    the same map divided by its area, clipped at zero; a model whose pneumothorax score is low puts negative evidence
    everywhere, where Grad-CAM's clip leaves nothing to read and CAM still ranks the positions."""
    rows = {}
    for name, result in finished.items():
        images, model, finding = test_images(result, paths), result.load_model(), paper001.FINDINGS.index(FINDING)
        maps = class_activation_map(model, images, finding)
        side = maps.shape[-1]
        flat_gradcam = gradcam(model, images, finding).max(axis=(1, 2)) <= 0  # (N,): no positive evidence anywhere
        row = {"films": len(paths), "all-zero Grad-CAM maps": int(flat_gradcam.sum())}
        for sign in (SIGN, "pneumothorax"):
            scores = localisation_row(maps, sign_masks(settings.data_root, paths, sign, side), sign)
            row[f"energy inside the {sign}"] = scores[f"energy inside the {sign}"]
            row[f"{sign}'s share of the image"] = scores[f"{sign}'s share of the image"]
            row["all-zero maps"] = scores["all-zero maps"]  # a flat map: not in the energies
        rows[name] = row
    return pd.DataFrame(rows).T
