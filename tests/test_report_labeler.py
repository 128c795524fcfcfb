"""The keyword labeler of paper 000 (Table 1) and its negation/uncertainty-aware variant, API and CLI."""
from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest

from data_prep.report_labeler import CLASSES, GENERIC_KEYWORDS, TABLE1_KEYWORDS, explain, label_reports

TABLE1_PAIRS = [(cls, keyword) for cls, keywords in TABLE1_KEYWORDS.items() for keyword in keywords]


def labels(text: str, **options) -> dict[str, int]:
    """The five labels of one text as a dict."""
    return label_reports([text], **options).iloc[0].to_dict()


def only(cls: str) -> dict[str, int]:
    """Labels with `cls` 1 and every other class 0."""
    return {c: int(c == cls) for c in CLASSES}


def test_table1_is_the_papers():
    assert TABLE1_KEYWORDS["Pleural Effusion"] == (
        "bilateral pleural effusion", "right sided pleural effusion", "left sided pleural effusion")
    assert len(TABLE1_PAIRS) == 16 and set(TABLE1_KEYWORDS) == set(CLASSES)


@pytest.mark.parametrize(("cls", "keyword"), TABLE1_PAIRS)
def test_each_table1_keyword_triggers_its_class_in_both_labelers(cls, keyword):
    text = f"Portable chest. {keyword.upper()} is seen."
    assert labels(text) == only(cls)
    assert labels(text, negation=True) == only(cls)


def test_keyword_labeler_has_no_negation_the_variant_has():
    text = "No bilateral pleural effusion. No cardiomegaly."
    assert labels(text) == {**only("Pleural Effusion"), "Cardiomegaly": 1}
    assert labels(text, negation=True) == {c: 0 for c in CLASSES}
    statuses = {m.finding: m.status for m in explain(text, negation=True)}
    assert statuses == {"Pleural Effusion": "negated", "Cardiomegaly": "negated"}


def test_table1_needs_the_laterality_words_for_effusion_generic_vocabulary_does_not():
    text = "There is no pleural effusion."
    assert labels(text)["Pleural Effusion"] == 0  # Table 1 has no bare 'pleural effusion'
    assert labels(text, keywords=GENERIC_KEYWORDS)["Pleural Effusion"] == 1
    assert labels(text, negation=True, keywords=GENERIC_KEYWORDS)["Pleural Effusion"] == 0


@pytest.mark.parametrize("text", [
    "Possible left lower lobe atelectasis.",
    "Atelectasis cannot be excluded.",
    "Opacity may represent atelectasis.",
    "Findings suggestive of atelectasis.",
])
def test_uncertain_mentions_follow_uncertain_as(text):
    assert [m.status for m in explain(text, negation=True)] == ["uncertain"]
    assert labels(text)["Atelectasis"] == 1
    assert labels(text, negation=True)["Atelectasis"] == 1  # default U-Ones
    assert labels(text, negation=True, uncertain_as=0)["Atelectasis"] == 0


@pytest.mark.parametrize(("text", "expected"), [
    ("No cardiomegaly, but there is bibasilar atelectasis.", {"Cardiomegaly": 0, "Atelectasis": 1}),
    ("Cardiomegaly is ruled out. Atelectasis has resolved.", {"Cardiomegaly": 0, "Atelectasis": 0}),
    ("No change in the bilateral pleural effusion.", {"Pleural Effusion": 1}),
    ("Lungs free of air space consolidation.", {"Pneumonia": 0}),
    ("No pneumothorax. Atelectasis at the left base.", {"Atelectasis": 1}),
])
def test_negation_scope(text, expected):
    got = labels(text, negation=True)
    assert {k: got[k] for k in expected} == expected


def test_xxxx_tokens_do_not_widen_the_window_but_real_words_do():
    hidden = "No " + "XXXX " * 12 + "cardiomegaly."
    far = "No " + "small faint old stable vague odd mild left lower " + "cardiomegaly."
    assert labels(hidden, negation=True)["Cardiomegaly"] == 0
    assert labels(far, negation=True)["Cardiomegaly"] == 1
    assert explain("Normal chest x-XXXX. Cardiomegaly.", negation=True)[0].sentence == "cardiomegaly."


def test_no_finding_rule():
    text = "Normal study. Cardiomegaly."
    assert labels(text) == {**only("No Finding"), "Cardiomegaly": 1}  # paper: keyword presence only
    assert labels(text, negation=True) == only("Cardiomegaly")  # variant: not with a stated disease
    assert labels("Normal study.", negation=True) == only("No Finding")


def test_index_is_aligned_and_empty_text_is_all_zero():
    texts = pd.Series(["Cardiomegaly.", "", None], index=["a", "b", "c"])
    result = label_reports(texts)
    assert list(result.index) == ["a", "b", "c"] and list(result.columns) == list(CLASSES)
    assert result.loc["a", "Cardiomegaly"] == 1 and result.loc[["b", "c"]].to_numpy().sum() == 0


def run_cli(*args: str) -> subprocess.CompletedProcess:
    """`python -m data_prep label-reports ...` in a subprocess."""
    return subprocess.run([sys.executable, "-m", "data_prep", "label-reports", *args],
                          capture_output=True, text=True, timeout=120)


@pytest.fixture
def reports_csv(tmp_path):
    """A small reports CSV in tmp_path with an id column, a text column and an unrelated column."""
    table = pd.DataFrame({
        "id": ["r1", "r2", "r3"],
        "Report": ["No bilateral pleural effusion.", "Possible atelectasis. Normal study.", "Zone infiltrates."],
        "site": ["x", "y", "z"],
    })
    path = tmp_path / "reports.csv"
    table.to_csv(path, index=False)
    return path, table


@pytest.mark.parametrize("negation", [False, True])
def test_cli_round_trip(reports_csv, tmp_path, negation):
    path, table = reports_csv
    out = tmp_path / "labeled.csv"
    result = run_cli("--in", str(path), "--text-column", "Report", "--out", str(out), *(["--negation"] * negation))
    assert result.returncode == 0, result.stderr
    written = pd.read_csv(out, dtype={"id": str})
    assert list(written.columns) == [*table.columns, *CLASSES]
    pd.testing.assert_frame_equal(written[table.columns], table)
    expected = label_reports(table["Report"], negation=negation)
    pd.testing.assert_frame_equal(written[list(CLASSES)], expected, check_dtype=False)


def test_cli_missing_column_is_named(reports_csv, tmp_path):
    path, _ = reports_csv
    result = run_cli("--in", str(path), "--text-column", "Findings", "--out", str(tmp_path / "o.csv"))
    assert result.returncode != 0
    assert "'Findings'" in result.stderr and not (tmp_path / "o.csv").exists()


def test_cli_refuses_to_overwrite_without_force(reports_csv, tmp_path):
    path, _ = reports_csv
    out = tmp_path / "labeled.csv"
    out.write_text("keep me\n")
    refused = run_cli("--in", str(path), "--text-column", "Report", "--out", str(out))
    assert refused.returncode != 0 and "--force" in refused.stderr
    assert out.read_text() == "keep me\n"
    forced = run_cli("--in", str(path), "--text-column", "Report", "--out", str(out), "--force")
    assert forced.returncode == 0, forced.stderr
    assert pd.read_csv(out)["Pneumonia"].tolist() == [0, 0, 1]
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
