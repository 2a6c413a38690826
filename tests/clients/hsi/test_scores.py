"""OA, AA and κ against hand-worked matrices and scikit-learn; summed matrices = pooled pixels."""

from __future__ import annotations

import pytest
import torch
from sklearn.metrics import cohen_kappa_score

from clients.hsi.scores import confusion, scores


def test_hand_worked_matrix() -> None:
    # rows: truth; columns: predicted. N = 20, right = 8 + 5 + 3 = 16.
    m = torch.tensor([[8.0, 2.0, 0.0], [1.0, 5.0, 0.0], [0.0, 1.0, 3.0]])
    s = scores(m)
    assert s["oa"] == pytest.approx(16 / 20)
    assert s["aa"] == pytest.approx((8 / 10 + 5 / 6 + 3 / 4) / 3)
    # p_e = (10·9 + 6·8 + 4·3) / 400 = 150 / 400
    assert s["kappa"] == pytest.approx((0.8 - 0.375) / (1 - 0.375))
    assert s["acc_class1"] == pytest.approx(5 / 6)


def test_a_class_without_test_pixels_is_left_out_of_aa() -> None:
    m = torch.tensor([[3.0, 1.0, 0.0], [0.0, 0.0, 0.0], [0.0, 2.0, 2.0]])
    s = scores(m)
    assert s["aa"] == pytest.approx((3 / 4 + 2 / 4) / 2)
    assert "acc_class1" not in s


def test_kappa_matches_scikit_learn_on_random_labels() -> None:
    g = torch.Generator().manual_seed(0)
    truth = torch.randint(0, 5, (500,), generator=g)
    noisy = torch.where(
        torch.rand(500, generator=g) < 0.6, truth, torch.randint(0, 5, (500,), generator=g)
    )
    s = scores(confusion(truth, noisy, 5))
    assert s["kappa"] == pytest.approx(cohen_kappa_score(truth.numpy(), noisy.numpy()))
    assert s["oa"] == pytest.approx(float((truth == noisy).float().mean()))


def test_summed_client_matrices_score_as_the_pooled_pixels_and_averages_do_not() -> None:
    g = torch.Generator().manual_seed(1)
    parts = []
    for n, right in ((300, 0.9), (40, 0.3), (120, 0.6)):  # tiles of unequal size and quality
        truth = torch.randint(0, 4, (n,), generator=g)
        wrong = torch.randint(0, 4, (n,), generator=g)
        parts.append((truth, torch.where(torch.rand(n, generator=g) < right, truth, wrong)))
    summed = sum(confusion(t, p, 4) for t, p in parts)
    pooled = confusion(torch.cat([t for t, _ in parts]), torch.cat([p for _, p in parts]), 4)
    assert torch.equal(summed, pooled)
    assert scores(summed) == scores(pooled)
    averaged = sum(scores(confusion(t, p, 4))["kappa"] for t, p in parts) / len(parts)
    assert abs(averaged - scores(summed)["kappa"]) > 0.01
