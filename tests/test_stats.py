"""`python -m data_prep stats` and the stats API against counts taken directly from the real tables."""
from __future__ import annotations

import argparse
import io
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from cxrcore.findings import CHEXPERT_FINDINGS
from data_prep.manifests import read_chexpert, read_nih
from data_prep.reference import chexpert_table, nih_table
from data_prep.stats import (
    NIH_COMMON_FINDINGS,
    chexpert_common,
    cooccurrence,
    demographics,
    label_counts,
    nih_common,
    overview,
    policy_shares,
)
from data_prep.stats import main as stats_main

CLI_RUNS = {"chexpert": ("chexpert", "--policy", "u-ones"), "nih": ("nih",)}


@pytest.fixture(scope="module")
def cli_runs():
    """`python -m data_prep stats ... --format csv` subprocesses, started together so they overlap the
    in-process table reads (each one spends seconds importing torch and reading its table)."""
    runs = {name: subprocess.Popen([sys.executable, "-m", "data_prep", "stats", *args, "--format", "csv"],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for name, args in CLI_RUNS.items()}
    yield runs
    for run in runs.values():
        if run.poll() is None:
            run.kill()
            run.communicate()


@pytest.fixture(scope="module")
def chexpert(cli_runs) -> pd.DataFrame:
    """The real CheXpert train.csv, read once for this module (after the CLI runs are started)."""
    return chexpert_table()


@pytest.fixture(scope="module")
def nih(cli_runs) -> pd.DataFrame:
    """The real ChestX-ray14 table, read once for this module."""
    return nih_table()


@pytest.fixture(scope="module")
def chexpert_all(chexpert) -> pd.DataFrame:
    """The real CheXpert table in the common form, all views."""
    return chexpert_common(chexpert)


def cli_csv(cli_runs, name: str) -> pd.DataFrame:
    """The parsed CSV output of one of the CLI runs (waits for it)."""
    out, err = cli_runs[name].communicate(timeout=300)
    assert cli_runs[name].returncode == 0, err
    return pd.read_csv(io.StringIO(out))


def test_real_table_sizes(chexpert, nih):
    assert len(chexpert) == 223_414 and len(nih) == 112_120


def test_chexpert_cli_counts_match_pandas(chexpert, cli_runs):
    counts = cli_csv(cli_runs, "chexpert").set_index("finding")
    assert list(counts.index) == CHEXPERT_FINDINGS
    effusion = chexpert["Pleural Effusion"]
    assert counts.loc["Pleural Effusion", "positive"] == (effusion == 1).sum()
    assert counts.loc["Pleural Effusion", "negative"] == (effusion == 0).sum()
    assert counts.loc["Pleural Effusion", "uncertain"] == (effusion == -1).sum()
    assert counts.loc["Pleural Effusion", "not_mentioned"] == effusion.isna().sum()
    for finding in CHEXPERT_FINDINGS:
        column = chexpert[finding]
        assert counts.loc[finding, "positive_after_policy"] == ((column == 1) | (column == -1)).sum(), finding
    totals = counts[["positive", "negative", "uncertain", "not_mentioned"]].sum(axis=1)
    assert (totals == 223_414).all()


def test_policies_change_positive_after_policy(chexpert_all):
    table = chexpert_all
    ones = label_counts(table, CHEXPERT_FINDINGS, "u-ones").set_index("finding")
    zeros = label_counts(table, CHEXPERT_FINDINGS, "u-zeros").set_index("finding")
    ignore = label_counts(table, CHEXPERT_FINDINGS, "u-ignore").set_index("finding")
    plain = label_counts(table, CHEXPERT_FINDINGS)
    assert "positive_after_policy" not in plain.columns
    assert (zeros["positive_after_policy"] == zeros["positive"]).all()
    assert (ignore["positive_after_policy"] == ignore["positive"]).all()
    assert (ones["positive_after_policy"] == ones["positive"] + ones["uncertain"]).all()
    assert ones.loc["Atelectasis", "positive_after_policy"] > 2 * zeros.loc["Atelectasis", "positive_after_policy"]
    with pytest.raises(ValueError, match="policy"):
        label_counts(table, CHEXPERT_FINDINGS, "u-twos")
    shares = policy_shares(table, CHEXPERT_FINDINGS)  # the label counts, as shares of what each policy counts
    n = len(table)
    assert np.allclose(shares["u-zeros"], zeros["positive"] / n)  # not mentioned counts as negative
    assert np.allclose(shares["u-ignore"], ignore["positive"] / (n - ignore["uncertain"]))
    assert np.allclose(shares["u-ones"], ones["positive_after_policy"] / n)
    assert np.allclose(shares["u-multiclass: uncertain class"], ones["uncertain"] / n)


def test_overview_counts_the_real_table(chexpert, chexpert_all):
    summary = overview(chexpert_all)
    parts = chexpert["Path"].str.split("/", n=4, expand=True)
    assert summary["images"] == len(chexpert) and summary["patients"] == parts[2].nunique()
    assert summary["frontal %"] == pytest.approx(100 * (chexpert["Frontal/Lateral"] == "Frontal").mean())
    frontal = chexpert[chexpert["Frontal/Lateral"] == "Frontal"]
    assert summary["AP % of frontal"] == pytest.approx(100 * (frontal["AP/PA"] == "AP").mean())
    assert summary["images per patient (max)"] == parts[2].value_counts().max()


def test_chexpert_frontal_view_and_demographics(chexpert, chexpert_all):
    frontal = chexpert_common(chexpert, views="frontal")
    assert len(frontal) == (chexpert["Frontal/Lateral"] == "Frontal").sum()
    assert set(frontal["view"]) == {"frontal"}
    rows = demographics(chexpert_all).set_index(["field", "value"])["count"]
    parts = chexpert["Path"].str.split("/", n=4, expand=True)  # CheXpert-v1.0-small/train/patientN/studyM/...
    assert rows["patients", "distinct"] == parts[2].nunique()
    assert rows["studies", "distinct"] == (parts[2] + parts[3]).nunique()
    assert rows["sex", "M"] == (chexpert["Sex"] == "Male").sum()
    assert rows["view", "lateral"] == (chexpert["Frontal/Lateral"] == "Lateral").sum()
    assert rows["projection", "PA"] == (chexpert["AP/PA"] == "PA").sum()
    assert rows["age", "mean"] == pytest.approx(chexpert["Age"].mean(), abs=0.01)


def test_nih_cli_counts_match_pandas(nih, cli_runs):
    counts = cli_csv(cli_runs, "nih").set_index("finding")
    listed = nih["Finding Labels"].str.split("|").explode()
    assert counts.loc["Pleural Effusion", "positive"] == (listed == "Effusion").sum()
    assert counts.loc["Pleural Thickening", "positive"] == (listed == "Pleural_Thickening").sum()
    assert counts.loc["No Finding", "positive"] == (nih["Finding Labels"] == "No Finding").sum()
    assert (counts["uncertain"] == 0).all() and (counts["not_mentioned"] == 0).all()
    assert ((counts["positive"] + counts["negative"]) == 112_120).all()
    assert "Effusion" not in counts.index and len(counts) == 15


def test_demographics_cli_csv(nih, capsys):
    args = argparse.Namespace(site="nih", views="all", policy=None, format="csv", demographics=True)
    assert stats_main(args) == 0  # in-process: the subprocess path is covered above, torch import is slow
    rows = pd.read_csv(io.StringIO(capsys.readouterr().out)).set_index(["field", "value"])["count"]
    assert rows["patients", "distinct"] == nih["Patient ID"].nunique() == 30_805
    assert rows["studies", "distinct"] == 112_120


def test_nih_demographics_match_pandas(nih):
    rows = demographics(nih_common(nih)).set_index(["field", "value"])["count"]
    assert rows["images", "all"] == 112_120
    assert rows["patients", "distinct"] == nih["Patient ID"].nunique()
    assert rows["sex", "F"] == (nih["Patient Gender"] == "F").sum()
    assert rows["projection", "AP"] == (nih["View Position"] == "AP").sum()
    assert rows["age", "std"] == pytest.approx(nih["Patient Age"].std(), abs=0.01)


def test_cooccurrence_counts_and_rates(nih):
    table = nih_common(nih)
    findings = ["Atelectasis", "Pleural Effusion", "Cardiomegaly"]
    counts = cooccurrence(table, findings)
    labels = nih["Finding Labels"]
    both = (labels.str.contains("Atelectasis") & labels.str.contains("Effusion")).sum()
    assert counts.loc["Atelectasis", "Pleural Effusion"] == both == counts.loc["Pleural Effusion", "Atelectasis"]
    assert counts.loc["Cardiomegaly", "Cardiomegaly"] == labels.str.contains("Cardiomegaly").sum()
    rates = cooccurrence(table, findings, conditional=True)
    assert np.allclose(np.diag(rates), 1.0)
    atelectasis = labels.str.contains("Atelectasis").sum()
    assert rates.loc["Atelectasis", "Pleural Effusion"] == pytest.approx(both / atelectasis)


def test_bad_values_are_named(chexpert, nih):
    broken = chexpert.head(5).copy()
    broken.loc[3, "Edema"] = 2.0
    with pytest.raises(ValueError, match=r"Edema.*row 3"):
        chexpert_common(broken)
    broken_nih = nih.head(5).copy()
    broken_nih.loc[2, "Finding Labels"] = "Effusion|Pneumonitis"
    with pytest.raises(ValueError, match=r"Pneumonitis.*row 2"):
        nih_common(broken_nih)


def test_stats_and_manifest_agree_on_chexpert_rows(chexpert, chexpert_tree):
    """One reader (data_prep.tables): the stats rows and the manifest rows of the same images hold the same values."""
    manifest = read_chexpert(chexpert_tree.root).set_index("path")
    common = pd.concat([chexpert_common(chexpert_tree.train), chexpert_common(chexpert_tree.valid)]).set_index("path")
    assert list(common.index) == list(manifest.index)
    for column in ("patient_id", "study_id", "sex", "age", "view", "projection", *CHEXPERT_FINDINGS):
        pd.testing.assert_series_equal(common[column], manifest[column], check_dtype=False, check_index_type=False,
                                       obj=column)
    # over the whole real train.csv: laterals without AP/PA are 'LAT' (the manifest schema), never 'unknown'
    table = chexpert_common(chexpert)
    lateral_unrecorded = (chexpert["Frontal/Lateral"] == "Lateral") & chexpert["AP/PA"].isna()
    assert (table["projection"] == "LAT").sum() == lateral_unrecorded.sum() == 32_387
    assert (table.loc[lateral_unrecorded.to_numpy(), "projection"] == "LAT").all()
    assert set(table["projection"]) == {"AP", "PA", "LL", "RL", "LAT"}
    assert demographics(table).set_index(["field", "value"])["count"]["projection", "LAT"] == 32_387


def test_stats_and_manifest_agree_on_nih_rows(nih, nih_tree):
    """The same NIH images get the same zero-padded patient ids, projections, sex, age and labels in both."""
    manifest = read_nih(nih_tree.root)
    manifest.index = manifest["path"].str.rsplit("/", n=1).str[1]  # ChestX-ray14/images_NNN/images/NAME -> NAME
    common = nih_common(nih_tree.table).set_index("path")
    assert sorted(common.index) == sorted(manifest.index)
    manifest = manifest.loc[common.index]
    for column in ("patient_id", "study_id", "sex", "age", "view", "projection", *NIH_COMMON_FINDINGS):
        pd.testing.assert_series_equal(common[column], manifest[column], check_dtype=False, check_index_type=False,
                                       obj=column)
    # over the whole real table: ids are the 8-digit text of the image names, as the manifests write them
    table = nih_common(nih)
    assert table["patient_id"].str.fullmatch(r"\d{8}").all()
    assert (table["patient_id"] == nih["Image Index"].str[:8]).all()
    assert table["patient_id"].iloc[0] == "00000001" and table["patient_id"].nunique() == 30_805
