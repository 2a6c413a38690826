"""Pseudo-labels and the two-head loss on hand-worked batches."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from clients.avgk.pseudo_labels import pseudo_labels, two_head_loss

PROBS = torch.tensor([[0.5, 0.3, 0.1, 0.1], [0.1, 0.2, 0.6, 0.1]])
LABELS = torch.tensor([0, 1])


def test_batch_scope_spends_the_extras_where_the_softmax_is_largest() -> None:
    # K = 1.5, B = 2: one extra positive; the largest non-true entry of the batch is row 1's 0.6.
    targets, carry = pseudo_labels(PROBS, LABELS, 1.5, "batch", True, 0.0)

    assert targets.tolist() == [[1, 0, 0, 0], [0, 1, 1, 0]]
    assert carry == 0.0


def test_sample_scope_gives_each_sample_its_own_share() -> None:
    # K = 1.5: running budget 0, 0.5, 1.0 rounds to 0, 1, 1, so row 0 gets its top other (0.3).
    targets, _ = pseudo_labels(PROBS, LABELS, 1.5, "sample", True, 0.0)

    assert targets.tolist() == [[1, 1, 0, 0], [0, 1, 0, 0]]


def test_a_fractional_budget_is_carried_to_the_next_batch() -> None:
    # K = 1.25, B = 2: 0.5 extras rounds up to 1 (carry -0.5), then 0.5 - 0.5 = 0 extras.
    first, carry = pseudo_labels(PROBS, LABELS, 1.25, "batch", True, 0.0)
    second, carry = pseudo_labels(PROBS, LABELS, 1.25, "batch", True, carry)

    assert int(first.sum()) == 3 and int(second.sum()) == 2  # 4 true labels + 1 extra
    assert int(first.sum() + second.sum()) == 1.25 * 4
    assert carry == 0.0


def test_without_the_true_label_k_per_sample_go_to_the_largest_entries() -> None:
    targets, _ = pseudo_labels(PROBS, LABELS, 2.0, "batch", False, 0.0)

    assert targets.tolist() == [[1, 1, 0, 0], [0, 1, 1, 0]]  # 0.6, 0.5, 0.3, 0.2


def test_two_head_loss_weights_and_reductions() -> None:
    gen = torch.Generator().manual_seed(0)
    zs, zm = torch.randn(2, 4, generator=gen), torch.randn(2, 4, generator=gen)
    targets = torch.tensor([[1.0, 0, 1, 0], [0, 1, 0, 0]])
    ce = F.cross_entropy(zs, LABELS)
    bce = F.binary_cross_entropy_with_logits(zm, targets)  # mean over the 8 entries

    only_ce, _ = two_head_loss(zs, zm, LABELS, targets, 0.0, "mean")
    mean, _ = two_head_loss(zs, zm, LABELS, targets, 0.5, "mean")
    summed, _ = two_head_loss(zs, zm, LABELS, targets, 0.5, "sum_classes")

    assert only_ce == pytest.approx(float(ce))
    assert mean == pytest.approx(float(ce + 0.5 * bce))
    assert summed == pytest.approx(float(ce + 0.5 * 4 * bce), rel=1e-6)
