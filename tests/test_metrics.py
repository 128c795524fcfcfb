"""Metrics checked against values computed here independently: pair counts, DeLong written out, hand sums."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from cxrcore import metrics


def pairwise_auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Mann-Whitney count over every positive/negative pair (ties count 1/2)."""
    pos, neg = scores[labels == 1], scores[labels == 0]
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return wins / (pos.size * neg.size)


def slow_delong(labels: np.ndarray, score_a: np.ndarray, score_b: np.ndarray) -> tuple[float, float]:
    """DeLong 1988 written out: psi kernel, structural components V10/V01, their covariances; returns (z, p)."""
    def components(scores):
        pos, neg = scores[labels == 1], scores[labels == 0]
        psi = np.array([[1.0 if x > y else 0.5 if x == y else 0.0 for y in neg] for x in pos])
        return psi.mean(), psi.mean(axis=1), psi.mean(axis=0)

    auc_a, v10_a, v01_a = components(score_a)
    auc_b, v10_b, v01_b = components(score_b)
    m, n = v10_a.size, v01_a.size

    def cov(u, v, size):
        return np.sum((u - u.mean()) * (v - v.mean())) / (size - 1)

    var = (cov(v10_a, v10_a, m) + cov(v10_b, v10_b, m) - 2 * cov(v10_a, v10_b, m)) / m
    var += (cov(v01_a, v01_a, n) + cov(v01_b, v01_b, n) - 2 * cov(v01_a, v01_b, n)) / n
    z = (auc_a - auc_b) / np.sqrt(var)
    return z, 2 * (1 - stats.norm.cdf(abs(z)))


@pytest.fixture
def scored() -> tuple[np.ndarray, np.ndarray]:
    """Three classes, 120 images, scores rounded to create ties, some labels missing (NaN)."""
    rng = np.random.default_rng(7)
    labels = rng.integers(0, 2, size=(120, 3)).astype(float)
    scores = np.round(labels * [0.8, 0.3, 0.0] + rng.normal(size=(120, 3)), 1)
    labels[rng.random((120, 3)) < 0.1] = np.nan
    return labels, scores


def test_auroc_matches_pairwise_count_with_ties_and_mask(scored):
    labels, scores = scored
    mask = np.ones_like(labels)
    mask[:20, 0] = 0
    got = metrics.auroc_per_class(pd.DataFrame(labels, columns=["A", "B", "C"]), scores, mask=mask)
    assert list(got.index) == ["A", "B", "C"]
    for k, name in enumerate(got.index):
        keep = ~np.isnan(labels[:, k]) & (mask[:, k] > 0)
        assert got[name] == pytest.approx(pairwise_auroc(labels[keep, k], scores[keep, k]), abs=1e-12)
    assert got["A"] > 0.6 and abs(got["C"] - 0.5) < 0.15


def test_auroc_single_label_class_is_nan_with_warning():
    labels = np.array([[1, 0], [1, 1], [1, 0], [1, 1]], dtype=float)
    scores = np.array([[0.1, 0.2], [0.3, 0.9], [0.5, 0.1], [0.7, 0.8]])
    with pytest.warns(UserWarning, match="'first'"):
        got = metrics.auroc_per_class(labels, scores, names=["first", "second"])
    assert np.isnan(got["first"]) and got["second"] == 1.0


def test_uncertain_label_counted_is_an_error_naming_the_class():
    with pytest.raises(ValueError, match="Edema.*-1"):
        metrics.auroc_per_class(np.array([1, 0, -1.0]), np.array([0.2, 0.3, 0.4]), names=["Edema"])
    with pytest.raises(ValueError, match="shape"):
        metrics.auroc_per_class(np.zeros((3, 2)), np.zeros((3, 3)))


def test_resample_patients_draws_whole_patients():
    groups = np.array(["p1"] * 5 + ["p2"] * 2 + ["p3", "p4", "p5"])
    rng = np.random.default_rng(3)
    for _ in range(50):
        drawn = metrics.resample_patients(groups, rng)
        copies = np.bincount(drawn, minlength=groups.size)
        for patient in np.unique(groups):
            assert np.unique(copies[groups == patient]).size == 1, f"{patient} split by the draw"
        assert sum(copies[groups == p][0] for p in np.unique(groups)) == 5  # 5 patients drawn


def test_patient_weights_count_the_images_of_each_drawn_patient() -> None:
    groups = np.array(["p3", "p1", "p3", "p2", "p1", "p3"])  # patients of 2, 1 and 3 images, out of order
    draws = list(metrics.patient_weights(groups, n_boot=20, rng=7))
    rng = np.random.default_rng(7)
    for weights in draws:
        assert weights.shape == (6,) and weights.dtype == float
        assert np.array_equal(weights, np.bincount(metrics.resample_patients(groups, rng), minlength=6))
        for patient in np.unique(groups):
            assert np.unique(weights[groups == patient]).size == 1, f"{patient} split by the draw"
        assert sum(weights[groups == p][0] for p in np.unique(groups)) == 3  # 3 patients drawn
    continued = np.random.default_rng(7)
    halves = [list(metrics.patient_weights(groups, 10, continued)) for _ in range(2)]
    assert np.array_equal(np.stack(halves[0] + halves[1]), np.stack(draws))  # a Generator goes on where it stopped


def test_bootstrap_draw_equals_auroc_of_the_repeated_rows(scored):
    labels, scores = scored
    groups = np.repeat(np.arange(40), 3)
    for seed in range(5):
        drawn = metrics.resample_patients(groups, np.random.default_rng(seed))
        table = metrics.bootstrap_auroc_ci(labels, scores, groups, n_boot=1, seed=seed)
        for k in range(3):
            rows = drawn[~np.isnan(labels[drawn, k])]
            expected = pairwise_auroc(labels[rows, k], scores[rows, k])
            assert table["low"].iloc[k] == pytest.approx(expected, abs=1e-12)
            assert table["high"].iloc[k] == pytest.approx(expected, abs=1e-12)


def test_weighted_auroc_is_the_auroc_of_the_repeated_rows() -> None:
    rng = np.random.default_rng(3)
    labels, scores = rng.integers(0, 2, 60).astype(float), rng.integers(0, 8, 60) / 8  # ties
    auroc = metrics.WeightedAUROC(labels, scores)
    weights = rng.integers(0, 3, 60)
    rows = np.repeat(np.arange(60), weights)
    assert auroc(weights.astype(float)) == pytest.approx(pairwise_auroc(labels[rows], scores[rows]), abs=1e-12)
    assert np.isnan(auroc(np.where(labels == 1, 1.0, 0.0)))  # no negative drawn: undefined


def test_bootstrap_ci_contains_estimate_and_widens_for_a_many_image_patient():
    # One patient with 60 positive, confidently scored images; ten patients with a single image each.
    rng = np.random.default_rng(0)
    labels = np.r_[np.ones(60), [1, 1, 1, 1, 1, 0, 0, 0, 0, 0]]
    scores = np.r_[rng.uniform(0.8, 1.0, 60), [0.1, 0.2, 0.6, 0.3, 0.5, 0.4, 0.7, 0.35, 0.55, 0.65]]
    patients = np.r_[["big"] * 60, [f"p{i}" for i in range(10)]]
    by_patient = metrics.bootstrap_auroc_ci(labels, scores, patients, n_boot=400, seed=1).iloc[0]
    by_image = metrics.bootstrap_auroc_ci(labels, scores, np.arange(70), n_boot=400, seed=1).iloc[0]
    assert by_patient.low <= by_patient.auroc <= by_patient.high
    assert by_image.low <= by_image.auroc <= by_image.high
    # Without "big" in a draw the AUROC collapses; image resampling almost never loses all 60 images.
    assert by_patient.high - by_patient.low > 2 * (by_image.high - by_image.low)
    assert 380 < by_patient.n_boot <= 400  # a draw with no negative patient has no AUROC


def test_delong_matches_structural_components_written_out(scored):
    labels, scores = scored
    keep = ~np.isnan(labels[:, 0])
    y = labels[keep, 0]
    a = scores[keep, 0]
    b = np.round(a + np.random.default_rng(1).normal(scale=1.0, size=a.size), 1)
    result = metrics.delong_test(y, a, b)
    z, p = slow_delong(y, a, b)
    assert result.auc_a == pytest.approx(pairwise_auroc(y, a), abs=1e-12)
    assert result.auc_b == pytest.approx(pairwise_auroc(y, b), abs=1e-12)
    assert result.z == pytest.approx(z, rel=1e-9)
    assert result.p == pytest.approx(p, rel=1e-7)
    assert metrics.delong_test(y, b, a).z == pytest.approx(-z, rel=1e-9)
    same = metrics.delong_test(y, a, a)
    assert same.z == 0 and same.p == 1


def slow_clustered_variance(labels: np.ndarray, score_a: np.ndarray, score_b: np.ndarray,
                            patients: np.ndarray) -> float:
    """Var(AUROC A - AUROC B) by Obuchowski (1997) written out: psi over every pair, per-patient sums V10(X_i) and
    V01(Y_i), the S10, S01 and S11 terms of each test and across the two tests."""
    def components(scores):
        pos, neg = scores[labels == 1], scores[labels == 0]
        psi = np.array([[1.0 if x > y else 0.5 if x == y else 0.0 for y in neg] for x in pos])
        return psi.mean(), psi.mean(axis=1), psi.mean(axis=0)

    names = list(dict.fromkeys(patients))
    pos_of, neg_of = patients[labels == 1], patients[labels == 0]
    m_i = np.array([(pos_of == name).sum() for name in names])
    n_i = np.array([(neg_of == name).sum() for name in names])
    m, n, size = m_i.sum(), n_i.sum(), len(names)
    i10, i01 = (m_i > 0).sum(), (n_i > 0).sum()
    parts = []
    for scores in (score_a, score_b):
        auc, v10, v01 = components(scores)
        parts.append((np.array([v10[pos_of == name].sum() for name in names]) - m_i * auc,
                      np.array([v01[neg_of == name].sum() for name in names]) - n_i * auc))

    def covariance(r, s):
        (a_r, b_r), (a_s, b_s) = parts[r], parts[s]
        s10 = i10 / ((i10 - 1) * m) * np.sum(a_r * a_s)
        s01 = i01 / ((i01 - 1) * n) * np.sum(b_r * b_s)
        s11 = size / (size - 1) * (np.sum(a_r * b_s) + np.sum(a_s * b_r))
        return s10 / m + s01 / n + s11 / (m * n)

    return covariance(0, 0) + covariance(1, 1) - 2 * covariance(0, 1)


def test_clustered_delong_matches_obuchowski_written_out(scored):
    labels, scores = scored
    keep = ~np.isnan(labels[:, 0])
    y, a = labels[keep, 0], scores[keep, 0]
    b = np.round(a + np.random.default_rng(1).normal(scale=1.0, size=a.size), 1)
    patients = np.array([f"p{i}" for i in np.random.default_rng(2).integers(0, 30, size=a.size)])  # 1-9 images
    result = metrics.delong_test(y, a, b, groups=patients)
    z = (pairwise_auroc(y, a) - pairwise_auroc(y, b)) / np.sqrt(slow_clustered_variance(y, a, b, patients))
    assert result.z == pytest.approx(z, rel=1e-9)
    assert result.p == pytest.approx(2 * stats.norm.sf(abs(z)), rel=1e-7)


def test_clustered_delong_is_delong_for_one_image_per_patient(scored):
    labels, scores = scored
    keep = ~np.isnan(labels[:, 1])
    y, a = labels[keep, 1], scores[keep, 1]
    b = np.round(a + np.random.default_rng(3).normal(scale=0.7, size=a.size), 1)
    clustered = metrics.delong_test(y, a, b, groups=np.arange(y.size))
    assert clustered.z == pytest.approx(metrics.delong_test(y, a, b).z, rel=1e-9)


def test_clustered_delong_counts_copies_of_a_patient_once(scored):
    """Each film copied three times within its patient: DeLong's films-as-independent p shrinks, the clustered
    test gives the p of the films without copies."""
    labels, scores = scored
    keep = ~np.isnan(labels[:, 0])
    y, a = labels[keep, 0], scores[keep, 0]
    b = np.round(a + np.random.default_rng(4).normal(scale=1.0, size=a.size), 1)
    copies = [np.repeat(v, 3) for v in (y, a, b)]
    original = metrics.delong_test(y, a, b)
    clustered = metrics.delong_test(*copies, groups=np.repeat(np.arange(y.size), 3))
    assert clustered.z == pytest.approx(original.z, rel=1e-9)
    assert abs(metrics.delong_test(*copies).z) > 1.6 * abs(original.z)  # about sqrt(3) times


def test_clustered_delong_needs_two_patients_per_class():
    with pytest.raises(ValueError, match="positives from at least 2 patients"):
        metrics.delong_test([1, 1, 0, 0, 0], [0.9, 0.8, 0.1, 0.2, 0.3], [0.5, 0.4, 0.3, 0.2, 0.6],
                            groups=["a", "a", "b", "c", "d"])
    with pytest.raises(ValueError, match="groups has 3 entries"):
        metrics.delong_test([1, 1, 0, 0], [0.9, 0.8, 0.1, 0.2], [0.5, 0.4, 0.3, 0.2], groups=["a", "b", "c"])


def test_delong_needs_both_classes():
    with pytest.raises(ValueError, match="2 positives"):
        metrics.delong_test([1, 0, 0, 0], [0.1, 0.2, 0.3, 0.4], [0.4, 0.3, 0.2, 0.1])


def test_aggregate_by_patient_and_study():
    frame = metrics.predictions_frame(
        y_true=np.array([[1, 0], [0, 0], [0, 1], [1, 1], [0, 0]]),
        y_score=np.array([[0.2, 0.1], [0.6, 0.3], [0.4, 0.9], [0.8, 0.5], [0.1, 0.2]]),
        findings=["Edema", "Cardiomegaly"],
        ids={"patient_id": ["a", "a", "a", "b", "b"], "study_id": ["s1", "s1", "s2", "s1", "s1"]},
        mask=np.array([[1, 1], [1, 0], [1, 1], [1, 1], [1, 1]]),
    )
    assert np.isnan(frame.loc[1, "Cardiomegaly"])
    mean = metrics.aggregate(frame, by="patient_id", how="mean").set_index("patient_id")
    assert mean.loc["a", "Edema_score"] == pytest.approx((0.2 + 0.6 + 0.4) / 3)
    assert mean.loc["a", "Edema"] == 1 and mean.loc["b", "Cardiomegaly"] == 1
    assert mean.loc["a", "n_images"] == 3
    top = metrics.aggregate(frame, by="study_id", how="max")
    assert len(top) == 3  # "s1" of patient a and "s1" of patient b are different studies
    study = top.set_index(["patient_id", "study_id"]).loc[("a", "s1")]
    assert study["Cardiomegaly_score"] == 0.3 and study["Cardiomegaly"] == 0  # masked label ignored
    with pytest.raises(ValueError, match="patient_id"):
        metrics.aggregate(frame.drop(columns="patient_id"))


def test_thresholds_on_a_hand_checked_example():
    # scores sorted: .1(0) .2(1) .3(1) .6(0) .7(1) .9(1) .95(1); J = TPR - FPR peaks at t=.7 (0.6 - 0);
    # F1 peaks at t=.2 (precision 5/6, recall 1).
    y = np.array([0, 1, 1, 0, 1, 1, 1])
    s = np.array([0.1, 0.2, 0.3, 0.6, 0.7, 0.9, 0.95])
    assert metrics.thresholds(y, s, "youden") == 0.7
    assert metrics.thresholds(y, s, "f1") == 0.2
    assert metrics.thresholds(y, s, "0.5") == 0.5
    table = metrics.precision_recall_f1(y, s, "youden", names=["X"])
    assert table.loc["X", ["precision", "recall", "f1"]].tolist() == pytest.approx([1.0, 0.6, 0.75])
    fixed = metrics.precision_recall_f1(y, s, "0.5", names=["X"]).loc["X"]
    assert [fixed.precision, fixed.recall, fixed.f1] == pytest.approx([0.75, 0.6, 2 / 3])
    assert metrics.precision_recall_f1(y, s, {"X": 0.2}, names=["X"]).loc["X", "f1"] == pytest.approx(10 / 11)


def test_spearman_matrix_on_a_hand_example():
    preds = {"a": np.array([1, 2, 3, 4, 5.0]), "b": np.array([2, 1, 4, 3, 5.0]), "c": np.array([5, 4, 3, 2, 1.0])}
    got = metrics.spearman_matrix(preds)
    # a vs b: rank differences (-1, 1, -1, 1, 0) -> 1 - 6 * 4 / (5 * 24) = 0.8
    assert got.loc["a", "b"] == pytest.approx(0.8)
    assert got.loc["a", "c"] == pytest.approx(-1.0)
    assert got.loc["b", "c"] == pytest.approx(stats.spearmanr(preds["b"], preds["c"]).statistic)
    two = metrics.spearman_matrix({"a": preds["a"], "b": preds["b"]})
    assert two.to_numpy() == pytest.approx(np.array([[1, 0.8], [0.8, 1]]))


def test_paired_tests_match_scipy_and_name_dropped_pairs():
    a = pd.Series([0.81, 0.75, 0.90, 0.66, 0.70, np.nan], index=list("ABCDEF"))
    b = pd.Series([0.78, 0.70, 0.88, 0.67, 0.61, 0.70], index=list("ABCDEF"))
    with pytest.warns(UserWarning, match="F"):
        got = metrics.paired_tests(a, b)
    x, y = a.iloc[:5].to_numpy(), b.iloc[:5].to_numpy()
    assert got["n"] == 5 and got["mean_diff"] == pytest.approx(np.mean(x - y))
    assert got["t_p"] == pytest.approx(stats.ttest_rel(x, y).pvalue)
    assert got["wilcoxon_p"] == pytest.approx(stats.wilcoxon(x, y).pvalue)
    with pytest.warns(UserWarning, match="F"):
        greater = metrics.paired_tests(a, b, alternative="greater", wilcoxon_method="approx")
    assert greater["t_p"] == pytest.approx(got["t_p"] / 2)  # a > b on average: half the two-sided p
    assert greater["wilcoxon_p"] == pytest.approx(stats.wilcoxon(x, y, alternative="greater", method="approx").pvalue)


def test_mae():
    assert metrics.mae([30, 40, 50], [35, 40, 41]) == pytest.approx(14 / 3)


def test_summarize_gives_the_chapter_table(scored):
    labels, scores = scored
    names = ["Edema", "Atelectasis", "Fracture"]
    ids = {"patient_id": np.repeat([f"p{i}" for i in range(60)], 2), "study_id": np.tile(["s1", "s2"], 60)}
    frame = metrics.predictions_frame(labels, scores, names, ids=ids)
    table = metrics.summarize(frame, names, n_boot=200)
    assert list(table.index) == [*names, "Mean"]
    assert table.loc["Mean", "auroc"] == pytest.approx(table.loc[names, "auroc"].mean())
    assert (table["low"] <= table["auroc"]).all() and (table["auroc"] <= table["high"]).all()
    assert table.loc["Edema", "auroc"] == pytest.approx(metrics.auroc_per_class(labels, scores)["class 0"])
    assert table.loc["Edema", "AUROC (95% CI)"].startswith(f"{table.loc['Edema', 'auroc']:.3f} (")
    per_patient = metrics.summarize(frame, names, level="patient", n_boot=50)
    assert per_patient.loc["Edema", "n_pos"] + per_patient.loc["Edema", "n_neg"] <= 60


def test_bootstrap_mean_difference_is_paired():
    rng = np.random.default_rng(0)
    n = 400
    labels = rng.integers(0, 2, size=(n, 2))
    groups = np.repeat(np.arange(n // 2), 2)
    shared = rng.normal(size=(n, 2))  # what both models get wrong alike
    score_a = labels + shared + 0.3 * rng.normal(size=(n, 2))
    score_b = labels + shared + 0.6 * rng.normal(size=(n, 2))
    result = metrics.bootstrap_mean_difference(labels, score_a, score_b, groups, n_boot=300, seed=0)
    expected = np.mean([metrics.roc_auc_score(labels[:, k], score_a[:, k])
                        - metrics.roc_auc_score(labels[:, k], score_b[:, k]) for k in range(2)])
    assert result["difference"] == pytest.approx(expected)
    assert result["low"] < result["difference"] < result["high"] and result["n_boot"] == 300
    own = metrics.bootstrap_auroc_ci(labels, score_a, groups, n_boot=300, include_mean=True).loc["Mean"]
    assert result["high"] - result["low"] < own["high"] - own["low"]  # pairing cancels the shared noise
    same = metrics.bootstrap_mean_difference(labels, score_a, score_a, groups, n_boot=50)
    assert same["difference"] == 0 and same["low"] == 0 and same["high"] == 0


def test_averaged_f1_matches_counts_by_hand():
    """Four images, two findings; image 3 misses its B: micro P 3/3, R 3/4; subset accuracy 3/4."""
    truth = pd.DataFrame({"A": [1, 0, 1, 0], "B": [0, 1, 1, 0]})
    scores = np.array([[0.9, 0.2], [0.4, 0.7], [0.6, 0.3], [0.1, 0.1]])
    table = metrics.averaged_f1(truth, scores, 0.5)
    assert list(table.index) == [*metrics.AVERAGES, "subset accuracy"]
    assert table.loc["micro", ["precision", "recall"]].tolist() == [1.0, 0.75]
    assert table.loc["micro", "f1"] == pytest.approx(2 * 0.75 / 1.75)
    assert table.loc["macro", "f1"] == pytest.approx((1.0 + 2 / 3) / 2)  # A: F1 1; B: P 1, R 1/2
    assert table.loc["weighted", "f1"] == pytest.approx((2 * 1.0 + 2 * 2 / 3) / 4)  # supports 2 and 2
    assert table.loc["subset accuracy", "f1"] == 0.75
    lower_b = metrics.averaged_f1(truth, scores, {"A": 0.5, "B": 0.25})  # per-class cuts: image 3's B found
    assert lower_b.loc["subset accuracy", "f1"] == 1.0 and lower_b.loc["micro", "f1"] == 1.0
    with pytest.raises(ValueError, match=r"missing labels for \['B'\]"):
        metrics.averaged_f1(truth.assign(B=[0, 1, np.nan, 0]), scores)
    with pytest.raises(ValueError, match=r"no threshold given for \['B'\]"):
        metrics.averaged_f1(truth, scores, {"A": 0.5})


def test_fold_summary_as_paper_001_reports_resamplings():
    folds = pd.DataFrame({"fold": [0, 1, 2] * 2, "finding": ["Mass"] * 3 + ["Hernia"] * 3,
                          "auroc": [0.70, 0.74, 0.78, 0.90, 0.80, 0.85]})
    summary = metrics.fold_summary(folds)
    assert list(summary.index) == ["Mass", "Hernia"]  # in the table's order
    assert summary.loc["Mass", "mean"] == pytest.approx(0.74) and summary.loc["Mass", "std"] == pytest.approx(0.04)
    assert (summary.loc["Hernia", ["min", "max", "folds"]].tolist() == [0.80, 0.90, 3])
    with pytest.raises(ValueError, match=r"\('Hernia', 2\)"):
        metrics.fold_summary(folds.iloc[:-1])
    with pytest.raises(ValueError, match="at least 2 folds"):
        metrics.fold_summary(folds[folds["fold"] == 0])
