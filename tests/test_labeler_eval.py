"""Scoring the report labelers on the real Indiana University reports against their MeSH indexing."""
from __future__ import annotations

import argparse
import io

import pandas as pd
import pytest

from data_prep import labeler_eval
from data_prep.labeler_eval import (
    LABELERS,
    cached_iu_reports,
    disagreements,
    evaluate_labelers,
    evaluation_set,
    evaluation_summary,
)
from data_prep.report_labeler import CLASSES

MESH_PATTERNS = {  # a major MeSH term whose head is the class's term, written independently of the module
    "Atelectasis": r"(?:^|;)\s*Pulmonary Atelectasis\s*(?:/|;|$)",
    "Cardiomegaly": r"(?:^|;)\s*Cardiomegaly\s*(?:/|;|$)",
    "Pleural Effusion": r"(?:^|;)\s*Pleural Effusion\s*(?:/|;|$)",
    "Pneumonia": r"(?:^|;)\s*Pneumonia\s*(?:/|;|$)",
    "No Finding": r"(?:^|;)\s*normal\s*(?:/|;|$)",
}


@pytest.fixture(scope="module")
def iu() -> pd.DataFrame:
    """The real IU reports with their text, minus those without MeSH indexing or text."""
    reports = cached_iu_reports().copy()  # the real table as data_prep.reference parses it, read once
    reports["text"] = (reports["findings"] + " " + reports["impression"]).str.strip()
    return reports[(reports["mesh_major"] != "No Indexing") & (reports["text"] != "")].reset_index(drop=True)


@pytest.fixture(scope="module")
def scores() -> pd.DataFrame:
    """evaluate_labelers() on the real reports, computed once."""
    return evaluate_labelers()


def test_summary_accounts_for_every_report(iu):
    summary = evaluation_summary()
    assert summary["reports"] == 3955
    assert summary["evaluated"] + summary["not_indexed"] + summary["empty_text"] == 3955
    assert summary["evaluated"] == len(iu) == len(evaluation_set())


def test_one_row_per_labeler_and_class_with_sane_scores(scores):
    assert len(scores) == len(LABELERS) * len(CLASSES)
    assert set(zip(scores["labeler"], scores["class"], strict=True)) == {(lab, c) for lab in LABELERS for c in CLASSES}
    for column in ("precision", "recall", "f1"):
        assert scores[column].between(0, 1).all(), column
    positive = (scores["precision"] + scores["recall"]) > 0
    harmonic = 2 * scores["precision"] * scores["recall"] / (scores["precision"] + scores["recall"])
    assert (scores.loc[positive, "f1"] - harmonic[positive]).abs().max() < 1e-9


def test_supports_are_the_mesh_positives(scores, iu):
    for cls, pattern in MESH_PATTERNS.items():
        expected = iu["mesh_major"].str.contains(pattern, regex=True).sum()
        assert expected > 0
        assert (scores.loc[scores["class"] == cls, "support"] == expected).all(), cls


def test_keyword_labeler_predictions_are_plain_substring_counts(scores, iu):
    text = iu["text"].str.lower().str.split().str.join(" ")
    keyword = scores[scores["labeler"] == "keyword"].set_index("class")
    assert keyword.loc["Cardiomegaly", "predicted"] == text.str.contains("cardiomegaly|enlarged cardiac size").sum()
    assert keyword.loc["Atelectasis", "predicted"] == text.str.contains("atelectasis|atelectatic bands").sum()


def test_negation_only_removes_positives_of_the_same_vocabulary(scores):
    by = scores.set_index(["labeler", "class"])["predicted"]
    for cls in CLASSES:
        if cls != "No Finding":  # the variant's No Finding rule differs, it is not a subset by construction
            assert by["negex", cls] <= by["keyword", cls], cls
            assert by["negex-u0", cls] <= by["negex", cls], cls


def test_disagreements_are_real_errors(iu):
    reference = evaluation_set().set_index("report_id")
    for labeler, cls in (("keyword", "Pneumonia"), ("generic-negex", "Pleural Effusion")):
        wrong = disagreements(labeler, cls, n=3)
        assert 0 < len(wrong) <= 6 and (wrong["evidence"].str.len() > 0).all()
        for row in wrong.itertuples():
            truth = reference.loc[row.report_id, cls]
            assert truth == (0 if row.error == "false positive" else 1)
    with pytest.raises(KeyError, match="Pneumothorax"):
        disagreements("keyword", "Pneumothorax")


def test_cli_csv_is_the_api_table(scores, capsys):
    assert labeler_eval.main(argparse.Namespace(format="csv")) == 0
    printed = pd.read_csv(io.StringIO(capsys.readouterr().out))
    pd.testing.assert_frame_equal(printed, scores, check_exact=False, atol=1e-12)
