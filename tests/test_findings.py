"""Finding names, harmonization and the uncertainty policies, checked on the real CheXpert train.csv."""
from __future__ import annotations

import numpy as np
import pytest
from layouts import chexpert_reference, nih_reference

from cxrcore.findings import (
    CHEXPERT_FINDINGS,
    NIH_FINDINGS,
    NIH_HARMONIZED,
    POLICIES,
    apply_policy,
    harmonize,
)


def test_finding_names_match_the_real_tables() -> None:
    assert list(chexpert_reference().columns[5:19]) == CHEXPERT_FINDINGS
    raw = {label for labels in nih_reference()["Finding Labels"] for label in labels.split("|")}
    assert raw == {*NIH_FINDINGS, "No Finding"}


def test_harmonize() -> None:
    assert harmonize("Effusion") == "Pleural Effusion"
    assert harmonize("Pleural_Thickening") == "Pleural Thickening"
    assert harmonize("Pleural Effusion") == "Pleural Effusion"
    assert all(harmonize(name) == name for name in CHEXPERT_FINDINGS)
    assert len(set(NIH_HARMONIZED)) == 14 and "Effusion" not in NIH_HARMONIZED
    with pytest.raises(ValueError, match="Pleural Efusion"):
        harmonize("Pleural Efusion")


@pytest.fixture(scope="module")
def real_values() -> np.ndarray:
    """All 223,414 real CheXpert rows' source values (N, 14)."""
    return chexpert_reference()[CHEXPERT_FINDINGS].to_numpy()


@pytest.mark.parametrize("policy", POLICIES)
def test_policy_counts_on_real_chexpert(real_values: np.ndarray, policy: str) -> None:
    table = chexpert_reference()[CHEXPERT_FINDINGS]
    positive, uncertain = (table == 1).sum().to_numpy(), (table == -1).sum().to_numpy()
    blank_or_negative = ((table == 0) | table.isna()).sum().to_numpy()
    targets, mask = apply_policy(real_values, policy, CHEXPERT_FINDINGS)
    assert targets.shape == mask.shape == real_values.shape
    if policy == "u-multiclass":
        assert targets.dtype == np.int64
        np.testing.assert_array_equal((targets == 2).sum(0), uncertain)
        np.testing.assert_array_equal((targets == 1).sum(0), positive)
        np.testing.assert_array_equal((targets == 0).sum(0), blank_or_negative)
        assert mask.all()
        return
    assert targets.dtype == mask.dtype == np.float32
    expected_positive = positive + uncertain if policy == "u-ones" else positive
    np.testing.assert_array_equal(targets.sum(0), expected_positive)
    expected_masked = uncertain if policy == "u-ignore" else np.zeros(14)
    np.testing.assert_array_equal((mask == 0).sum(0), expected_masked)
    assert set(np.unique(targets)) <= {0.0, 1.0}


def test_not_mentioned_and_no_finding(real_values: np.ndarray) -> None:
    table = chexpert_reference()[CHEXPERT_FINDINGS]
    targets, mask = apply_policy(real_values, "u-ignore", CHEXPERT_FINDINGS)
    blank = table.isna().to_numpy()
    assert (targets[blank] == 0).all() and (mask[blank] == 1).all()
    no_finding = CHEXPERT_FINDINGS.index("No Finding")
    np.testing.assert_array_equal(targets[:, no_finding] == 1, (table["No Finding"] == 1).to_numpy())


def test_per_finding_policy(real_values: np.ndarray) -> None:
    table = chexpert_reference()[CHEXPERT_FINDINGS]
    # CheXpert paper's best mix for two findings: U-Ones for Atelectasis/Edema, U-Zeros for the rest
    policy = {f: "u-zeros" for f in CHEXPERT_FINDINGS} | {"Atelectasis": "u-ones", "Edema": "u-ones"}
    targets, _ = apply_policy(real_values, policy, CHEXPERT_FINDINGS)
    for name in ("Atelectasis", "Cardiomegaly"):
        k = CHEXPERT_FINDINGS.index(name)
        expected = table[name].isin([1, -1]) if name == "Atelectasis" else table[name] == 1
        assert targets[:, k].sum() == expected.sum()
    with pytest.raises(ValueError, match="missing findings"):
        apply_policy(real_values, {"Atelectasis": "u-ones"}, CHEXPERT_FINDINGS)
    with pytest.raises(ValueError, match="mixed"):
        apply_policy(real_values, policy | {"Edema": "u-multiclass"}, CHEXPERT_FINDINGS)
    with pytest.raises(ValueError, match="unknown policy"):
        apply_policy(real_values, "u-maybe", CHEXPERT_FINDINGS)


@pytest.mark.parametrize("bad", [2.0, 0.5, "yes"])
def test_unknown_value_names_finding_and_row(bad: object) -> None:
    values = chexpert_reference()[CHEXPERT_FINDINGS].head(6).to_numpy().astype(object)
    values[3, CHEXPERT_FINDINGS.index("Edema")] = bad
    with pytest.raises(ValueError, match=r"'Edema' at row 3"):
        apply_policy(values, "u-ones", CHEXPERT_FINDINGS)


def test_text_values_and_row_names() -> None:
    values = np.array([["1", "", "-1"], ["0", "1.0", " "]], dtype=object)
    targets, mask = apply_policy(values, "u-ignore", ["Edema", "Fracture", "Pneumonia"])
    np.testing.assert_array_equal(targets, [[1, 0, 0], [0, 1, 0]])
    np.testing.assert_array_equal(mask, [[1, 1, 0], [1, 1, 1]])
    values[1, 0] = "maybe"
    with pytest.raises(ValueError, match=r"row 1 \(b.png\)"):
        apply_policy(values, "u-ones", ["Edema", "Fracture", "Pneumonia"], row_names=["a.png", "b.png"])
    with pytest.raises(ValueError, match="shape"):
        apply_policy(values, "u-ones", ["Edema"])
