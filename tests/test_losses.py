"""Losses against computations written out independently (numpy, by the formulas)."""
from __future__ import annotations

import numpy as np
import torch

from cxrcore.losses import masked_bce, multiclass_ce, multiclass_weights, positive_weights


def _numpy_bce(z, y, m, pos_weight=None, class_weight=None):
    p = 1 / (1 + np.exp(-z))
    pw = np.ones(z.shape[1]) if pos_weight is None else pos_weight
    cw = np.ones(z.shape[1]) if class_weight is None else class_weight
    total, count = 0.0, 0
    for i in range(z.shape[0]):
        for k in range(z.shape[1]):
            if m[i, k]:
                total += -cw[k] * (pw[k] * y[i, k] * np.log(p[i, k]) + (1 - y[i, k]) * np.log(1 - p[i, k]))
                count += 1
    return total / count


def _example(seed=0, b=6, k=4):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(b, k))
    y = rng.integers(0, 2, size=(b, k)).astype(float)
    m = (rng.random((b, k)) > 0.4).astype(float)
    return z, y, m


def test_masked_bce_matches_formula():
    z, y, m = _example()
    got = masked_bce(torch.tensor(z), torch.tensor(y), torch.tensor(m))
    np.testing.assert_allclose(got.item(), _numpy_bce(z, y, m), rtol=1e-6)


def test_masked_bce_with_pos_and_class_weights():
    z, y, m = _example(1)
    pw, cw = np.array([1.0, 3.0, 0.5, 2.0]), np.array([2.0, 1.0, 1.0, 0.25])
    got = masked_bce(torch.tensor(z), torch.tensor(y), torch.tensor(m), pos_weight=torch.tensor(pw),
                     class_weight=torch.tensor(cw))
    np.testing.assert_allclose(got.item(), _numpy_bce(z, y, m, pw, cw), rtol=1e-6)


def test_masked_entries_have_no_influence():
    z, y, m = _example(2)
    logits = torch.tensor(z, requires_grad=True)
    loss = masked_bce(logits, torch.tensor(y), torch.tensor(m))
    loss.backward()
    assert torch.all(logits.grad[torch.tensor(m) == 0] == 0)
    changed = z.copy()
    changed[m == 0] = 50.0  # wild logits and flipped targets where masked
    flipped = np.where(m == 0, 1 - y, y)
    again = masked_bce(torch.tensor(changed), torch.tensor(flipped), torch.tensor(m))
    torch.testing.assert_close(loss.detach(), again)


def test_all_masked_is_zero_not_nan():
    loss = masked_bce(torch.randn(2, 3, requires_grad=True), torch.ones(2, 3), torch.zeros(2, 3))
    assert loss.item() == 0.0
    loss.backward()


def _numpy_ce(z, y, m, w=None, binary_only=False):
    total, count = 0.0, 0
    for i in range(z.shape[0]):
        for k in range(z.shape[1]):
            if not m[i, k] or (binary_only and y[i, k] == 2):
                continue
            logits = z[i, k, :2] if binary_only else z[i, k]
            log_p = logits - np.log(np.exp(logits).sum())
            weight = 1.0 if (w is None or binary_only) else w[k, y[i, k]]
            total += -weight * log_p[y[i, k]]
            count += 1
    return total / count


def test_multiclass_ce_matches_paper002_formula():
    rng = np.random.default_rng(3)
    z = rng.normal(size=(5, 4, 3))
    y = rng.integers(0, 3, size=(5, 4))
    m = (rng.random((5, 4)) > 0.2).astype(float)
    w = rng.uniform(0.5, 5, size=(4, 3))
    args = (torch.tensor(z), torch.tensor(y), torch.tensor(m))
    np.testing.assert_allclose(multiclass_ce(*args).item(), _numpy_ce(z, y, m), rtol=1e-6)
    np.testing.assert_allclose(multiclass_ce(*args, torch.tensor(w)).item(), _numpy_ce(z, y, m, w), rtol=1e-6)
    np.testing.assert_allclose(multiclass_ce(*args, torch.tensor(w), binary_only=True).item(),
                               _numpy_ce(z, y, m, binary_only=True), rtol=1e-6)


def test_multiclass_weights_are_total_over_count():
    target = torch.tensor([[0, 1], [0, 2], [1, 2], [0, 2]])  # finding 0: N=3 P=1 U=0; finding 1: N=0 P=1 U=3
    weights = multiclass_weights(target)
    torch.testing.assert_close(weights, torch.tensor([[4 / 3, 4.0, 0.0], [0.0, 4.0, 4 / 3]]))
    masked = multiclass_weights(target, torch.tensor([[1, 1], [1, 1], [1, 1], [0, 1]]))
    torch.testing.assert_close(masked[0], torch.tensor([3 / 2, 3.0, 0.0]))


def test_positive_weights():
    target = torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 0.0], [1.0, 0.0]])
    torch.testing.assert_close(positive_weights(target), torch.tensor([1.0, 1.0]))
    torch.testing.assert_close(positive_weights(target, torch.tensor([[1.0, 1], [1, 1], [1, 1], [0, 1]])),
                               torch.tensor([2.0, 1.0]))
