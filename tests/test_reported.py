"""The papers' reported numbers: book/reported.csv read and shaped by cxrcore.experiments.reported."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cxrcore.experiments.reported import read_reported, reported_matrix, reported_table

CSV = Path(__file__).resolve().parents[1] / "book" / "reported.csv"
PAPER000 = ["Atelectasis", "Cardiomegaly", "Pleural Effusion", "Pneumonia", "No Finding"]
SPLITS = ["positives_train", "positives_valid", "positives_test", "positives_total"]
NAMES_001 = ["ResNet-50 OTS", "ResNet-50 FT", "ResNet-50-1channel", "ResNet-50-large", "ResNet-50-meta OTS",
             "ResNet-50-meta FT", "ResNet-50-1channel-meta", "ResNet-50-large-meta"]


@pytest.fixture
def reported() -> pd.DataFrame:
    """The real book/reported.csv."""
    return read_reported(CSV)


def test_read_reported_keeps_paper_as_string_and_is_fresh(reported: pd.DataFrame) -> None:
    assert set(reported["paper"]) >= {"000", "001", "002", "003"}
    reported.loc[:, "value"] = 0
    assert (read_reported(CSV)["value"] != 0).any()


def test_paper_000_table_4_pivots_to_splits(reported: pd.DataFrame) -> None:
    table = reported_table(reported, "000", "Table 4")
    assert table.index.tolist() == PAPER000 and table.columns.tolist() == SPLITS
    assert table.loc["Atelectasis", "positives_total"] == 11559
    assert table.loc["No Finding", "positives_train"] == 56203
    parts = table[["positives_train", "positives_valid", "positives_test"]].sum(axis=1)
    assert (parts == table["positives_total"]).all()


def test_paper_000_split_tables_of_each_site(reported: pd.DataFrame) -> None:
    sih = reported_table(reported, "000", "Table 3", model="SIH")
    chexpert = reported_table(reported, "000", "Table 5", model="CheXpert")
    assert sih.shape == chexpert.shape == (5, 4)
    assert sih.loc["Pleural Effusion", "positives_total"] == 26316
    assert chexpert.loc["Pneumonia", "positives_test"] == 8
    assert reported_table(reported, "000", "Section 3.1.1 text", model="SIH").loc["all", "images"] == 80035


def test_paper_001_table_2a_matches_its_prevalences(reported: pd.DataFrame) -> None:
    table = reported_table(reported, "001", "Table 2a")
    assert table.shape == (14, 2) and table.index[0] == "Cardiomegaly"
    assert np.allclose(100 * table["positives"] / 112120, table["prevalence_pct"], atol=0.005)


def test_other_index_and_columns(reported: pd.DataFrame) -> None:
    table = reported_table(reported, "001", "Table 3", model="ResNet-50 FT", index="metric", columns="finding")
    assert table.loc["auroc", "Cardiomegaly"] == pytest.approx(0.885)


def test_unknown_table_raises_naming_it(reported: pd.DataFrame) -> None:
    with pytest.raises(ValueError, match="'000'.*'Table 9'.*'SIH'"):
        reported_table(reported, "000", "Table 9", model="SIH")


def test_several_values_per_cell_raise(reported: pd.DataFrame) -> None:
    with pytest.raises(ValueError, match="several values"):
        reported_table(reported, "001", "Table 3")  # eight models share finding x metric


def test_paper_001_table_4_matrix_is_symmetric_with_unit_diagonal(reported: pd.DataFrame) -> None:
    matrix = reported_matrix(reported, "001", "Table 4", NAMES_001)
    assert matrix.index.tolist() == matrix.columns.tolist() == NAMES_001
    assert not matrix.isna().any().any()
    assert np.array_equal(matrix.to_numpy(), matrix.to_numpy().T)
    assert (np.diag(matrix.to_numpy()) == 1).all()
    assert matrix.loc["ResNet-50 FT", "ResNet-50 OTS"] == pytest.approx(0.65)


def test_matrix_rejects_unknown_names_and_tables(reported: pd.DataFrame) -> None:
    with pytest.raises(ValueError, match="not in names"):
        reported_matrix(reported, "001", "Table 4", NAMES_001[:4])
    with pytest.raises(ValueError, match="no reported numbers"):
        reported_matrix(reported, "001", "Table 9", NAMES_001)
    with pytest.raises(ValueError, match="A vs B"):
        reported_matrix(reported, "000", "Table 4", NAMES_001)
