"""Score the report labelers on the 3,955 real Indiana University (IU) chest X-ray reports.

Text = findings + impression. Reference labels come from each report's major MeSH terms (human indexing,
independent of our keyword lists). A MeSH term is 'Head/qualifier/...'; its head decides the class
(MESH_TO_CLASS, checked against the real vocabulary of the data):
    'Pulmonary Atelectasis/...' -> Atelectasis        'Cardiomegaly/...' (incl. /borderline) -> Cardiomegaly
    'Pleural Effusion/...'      -> Pleural Effusion   'Pneumonia/...' -> Pneumonia       'normal' -> No Finding
Other heads (e.g. 'Pericardial Effusion', 'Opacity', 'Consolidation') are negative for all five classes.
Left out, and counted in `evaluation_summary()`: reports indexed 'No Indexing' (no reference) and reports with
empty findings and impression (nothing to label).
"""
from __future__ import annotations

import argparse
import functools

import pandas as pd
from sklearn.metrics import precision_recall_fscore_support

from data_prep.reference import iu_reports
from data_prep.report_labeler import CLASSES, GENERIC_KEYWORDS, explain, label_reports

MESH_TO_CLASS = {
    "Pulmonary Atelectasis": "Atelectasis",
    "Cardiomegaly": "Cardiomegaly",
    "Pleural Effusion": "Pleural Effusion",
    "Pneumonia": "Pneumonia",
    "normal": "No Finding",
}
NOT_INDEXED = "No Indexing"
# name -> keyword arguments of label_reports (uncertain_as: how an uncertain mention counts)
LABELERS: dict[str, dict] = {
    "keyword": {"negation": False},
    "negex": {"negation": True, "uncertain_as": 1},
    "negex-u0": {"negation": True, "uncertain_as": 0},
    "generic": {"negation": False, "keywords": GENERIC_KEYWORDS},
    "generic-negex": {"negation": True, "uncertain_as": 1, "keywords": GENERIC_KEYWORDS},
}


def mesh_heads(mesh_major: str) -> set[str]:
    """The heads ('Pleural Effusion' of 'Pleural Effusion/left/small') of a ';'-joined MeSH major field."""
    return {term.split("/")[0].strip() for term in str(mesh_major).split(";") if term.strip()}


def reference_labels(mesh_major: pd.Series) -> pd.DataFrame:
    """1/0 reference labels for the five classes from MeSH major fields (index aligned)."""
    heads = mesh_major.map(mesh_heads)
    columns = {cls: heads.map(lambda h, c=cls: int(any(MESH_TO_CLASS.get(x) == c for x in h))) for cls in CLASSES}
    return pd.DataFrame(columns, index=mesh_major.index)


def report_text(reports: pd.DataFrame) -> pd.Series:
    """Findings and impression of each report joined into one text."""
    return (reports["findings"].fillna("") + " " + reports["impression"].fillna("")).str.strip()


@functools.cache
def _iu_reports_read() -> pd.DataFrame:
    return iu_reports()


def cached_iu_reports() -> pd.DataFrame:
    """The real IU reports (data_prep.reference.iu_reports), parsed once per process; a copy the caller may change."""
    return _iu_reports_read().copy()


@functools.cache
def _evaluation_set() -> pd.DataFrame:
    """IU reports with text and reference labels, without 'No Indexing' and empty reports (cached)."""
    reports = cached_iu_reports()
    reports["text"] = report_text(reports)
    usable = ~reports["mesh_major"].map(lambda m: NOT_INDEXED in mesh_heads(m)) & (reports["text"] != "")
    kept = reports[usable].reset_index(drop=True)
    return pd.concat([kept[["report_id", "text", "mesh_major"]], reference_labels(kept["mesh_major"])], axis=1)


def evaluation_set() -> pd.DataFrame:
    """The evaluated IU reports: report_id, text, mesh_major and the five reference label columns."""
    return _evaluation_set().copy()


def evaluation_summary() -> dict[str, int]:
    """How many IU reports there are, how many are evaluated, and why the others are left out."""
    reports = cached_iu_reports()
    not_indexed = reports["mesh_major"].map(lambda m: NOT_INDEXED in mesh_heads(m))
    empty = report_text(reports) == ""
    return {"reports": len(reports), "evaluated": int((~not_indexed & ~empty).sum()),
            "not_indexed": int(not_indexed.sum()), "empty_text": int((empty & ~not_indexed).sum())}


@functools.cache
def _predictions(labeler: str) -> pd.DataFrame:
    """One labeler's 1/0 labels for the evaluation set (cached)."""
    if labeler not in LABELERS:
        raise KeyError(f"unknown labeler {labeler!r}; known: {list(LABELERS)}")
    return label_reports(_evaluation_set()["text"], **LABELERS[labeler])


def evaluate_labelers(labelers: tuple[str, ...] = tuple(LABELERS)) -> pd.DataFrame:
    """Per labeler and class: precision, recall, F1 (sklearn), support and number predicted positive."""
    reference = _evaluation_set()
    rows = []
    for labeler in labelers:
        predicted = _predictions(labeler)
        for cls in CLASSES:
            precision, recall, f1, _ = precision_recall_fscore_support(
                reference[cls], predicted[cls], average="binary", zero_division=0.0)
            rows.append({"labeler": labeler, "class": cls, "precision": precision, "recall": recall, "f1": f1,
                         "support": int(reference[cls].sum()), "predicted": int(predicted[cls].sum())})
    return pd.DataFrame(rows)


def _evidence(text: str, labeler: str, cls: str) -> str:
    """The sentences that made the labeler say `cls` (with their status), or the report text if none."""
    options = LABELERS[labeler]
    mentions = [m for m in explain(text, options["negation"], options.get("keywords")) if m.finding == cls]
    return " | ".join(f"[{m.status}: {m.keyword}] {m.sentence}" for m in mentions) or text


def disagreements(labeler: str, cls: str, n: int = 5) -> pd.DataFrame:
    """The first `n` false positives and `n` false negatives of `labeler` for `cls`, with the evidence."""
    if cls not in CLASSES:
        raise KeyError(f"unknown class {cls!r}; known: {list(CLASSES)}")
    reference = _evaluation_set()
    predicted = _predictions(labeler)[cls]
    parts = []
    for error, wrong in (("false positive", (predicted == 1) & (reference[cls] == 0)),
                         ("false negative", (predicted == 0) & (reference[cls] == 1))):
        rows = reference[wrong].head(n)
        parts.append(pd.DataFrame({
            "report_id": rows["report_id"], "error": error, "mesh_major": rows["mesh_major"],
            "evidence": [_evidence(text, labeler, cls) for text in rows["text"]]}))
    return pd.concat(parts, ignore_index=True)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `python -m data_prep eval-labeler`."""
    parser.add_argument("--format", choices=("table", "csv"), default="table")


def main(args: argparse.Namespace) -> int:
    """Print per-class precision, recall and F1 of each labeler on the IU reports."""
    scores = evaluate_labelers()
    if args.format == "csv":
        print(scores.to_csv(index=False), end="")
        return 0
    summary = evaluation_summary()
    print(f"Indiana University reports: {summary['evaluated']} evaluated of {summary['reports']} "
          f"({summary['not_indexed']} 'No Indexing', {summary['empty_text']} with empty text left out)")
    print(scores.to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    return 0
