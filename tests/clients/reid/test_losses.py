"""Re-ID losses (notes/workloads-precise.md §1.2) on hand-worked values."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from clients.reid.losses import (
    IGNORE,
    batch_hard_triplet,
    cross_entropy_ls,
    soft_cross_entropy,
    soft_triplet,
)


def _softplus(v: float) -> float:
    return math.log1p(math.exp(v))


def test_triplet_hand_worked() -> None:
    # 1-D points 0, 1 (label 0) and 3, 6 (label 1):
    # anchor 0: d_ap 1, d_an 3; anchor 1: 1, 2; anchor 3: 3, 2; anchor 6: 3, 5.
    x = torch.tensor([[0.0], [1.0], [3.0], [6.0]], requires_grad=True)
    loss = batch_hard_triplet(x, torch.tensor([0, 0, 1, 1]))
    expected = (_softplus(-2) + _softplus(-1) + _softplus(1) + _softplus(-2)) / 4
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-5)
    loss.backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_triplet_skips_anchors_without_pairs_and_outliers() -> None:
    # Label 2 has a single sample (no positive) and -1 is an outlier: only anchors 0, 1 count.
    x = torch.tensor([[0.0], [1.0], [3.0], [100.0]])
    loss = batch_hard_triplet(x, torch.tensor([0, 0, 2, -1]))
    assert float(loss) == pytest.approx((_softplus(-2) + _softplus(-1)) / 2, rel=1e-5)
    zero = batch_hard_triplet(x[:2].requires_grad_(), torch.tensor([0, 0]))
    assert float(zero.detach()) == 0.0 and zero.requires_grad


def test_cross_entropy_label_smoothing() -> None:
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]])
    labels = torch.tensor([0, -1])
    logp = F.log_softmax(logits[0], dim=0)
    target = torch.tensor([0.9 + 0.1 / 3, 0.1 / 3, 0.1 / 3])
    assert float(cross_entropy_ls(logits, labels)) == pytest.approx(float(-(target * logp).sum()))


def test_soft_cross_entropy() -> None:
    p = torch.tensor([[1.0, 0.0]])
    q = torch.tensor([[0.0, 0.0]])
    assert float(soft_cross_entropy(p, q)) == pytest.approx(
        -0.5 * (1 - math.log(1 + math.e)) + 0.5 * math.log(1 + math.e)
    )


def test_soft_triplet_against_a_hand_worked_batch() -> None:
    # Prepare: 1-D features, two people; the teacher's features are the student's doubled
    x = torch.tensor([[0.0], [1.0], [3.0], [5.0]])
    y = torch.tensor([0, 0, 1, 1])
    # Hardest pairs by the student's distances, (d_ap, d_an) per anchor, worked out by hand:
    # 0: pos 1 (1), neg 3 (3); 1: pos 0 (1), neg 3 (2); 2: pos 5 (2), neg 1 (2); 3: pos 3 (2),
    # neg 1 (4). The teacher's distances between the same pairs are twice these.
    pairs = [(1.0, 3.0), (1.0, 2.0), (2.0, 2.0), (2.0, 4.0)]

    def softmax(a: float, b: float) -> tuple[float, float]:
        ea, eb = math.exp(a), math.exp(b)
        return ea / (ea + eb), eb / (ea + eb)

    expected = 0.0
    for ap, an in pairs:
        teacher = softmax(2 * ap, 2 * an)
        student = softmax(ap, an)
        expected -= sum(t * math.log(s) for t, s in zip(teacher, student, strict=True))
    expected /= len(pairs)

    # Execute
    loss = soft_triplet(x, 2 * x, y)

    # Assert: and with the teacher equal to the student, the loss is the pairs' mean entropy
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    same = sum(-sum(p * math.log(p) for p in softmax(a, b)) for a, b in pairs) / len(pairs)
    assert float(soft_triplet(x, x, y)) == pytest.approx(same, rel=1e-5)


def test_soft_triplet_ignores_outliers_and_gives_no_gradient_to_the_teacher() -> None:
    x = torch.tensor([[0.0], [1.0], [3.0], [5.0], [9.0]], requires_grad=True)
    t = torch.tensor([[0.0], [2.0], [6.0], [10.0], [0.0]], requires_grad=True)
    y = torch.tensor([0, 0, 1, 1, IGNORE])
    loss = soft_triplet(x, t, y)
    assert float(loss.detach()) == pytest.approx(float(soft_triplet(x[:4], t[:4], y[:4]).detach()))
    loss.backward()
    assert t.grad is None
    assert x.grad is not None and float(x.grad[4].abs().sum()) == 0.0
