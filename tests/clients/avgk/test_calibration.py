"""The average-K threshold, pooled and federated, on hand-worked scores."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from clients.avgk.calibration import (
    LogGrid,
    calibrated_sets,
    histogram,
    merged_threshold,
    pooled_threshold,
    set_sizes,
)

# Scores in sixteenths (exact in float32); labels are irrelevant to calibration.
# All 12 scores, largest first: 14 10 8 6 6 5 4 3 3 3 1 1.
SCORES = torch.tensor([[8, 5, 3], [10, 3, 3], [14, 1, 1], [6, 6, 4]], dtype=torch.float32) / 16


def test_threshold_is_the_score_after_the_k_n_largest() -> None:
    # K = 1.5, n = 4: 6 labels; the 7th largest score is 4/16, and 6 scores lie above it.
    lam = pooled_threshold(SCORES, 1.5)

    assert lam == 4 / 16
    assert set_sizes(SCORES, lam).tolist() == [2, 1, 1, 2]  # mean 1.5 = K


@pytest.mark.parametrize("k", [1.0, 1.5, 2.0])
def test_threshold_is_numpys_lower_quantile_at_one_minus_k_over_c(k: float) -> None:
    expected = np.quantile(SCORES.numpy().ravel(), 1 - k / 3, method="lower")

    assert pooled_threshold(SCORES, k) == pytest.approx(float(expected), abs=0)


def test_ties_at_the_threshold_fill_the_sets_to_exactly_k_n() -> None:
    # K = 1: 4 labels; the 5th largest is 6/16, tied with the 4th (both in sample 3), so only 3
    # scores lie above it and one of the two 6/16 fills the budget.
    assert pooled_threshold(SCORES, 1.0) == 6 / 16

    for seed in range(4):
        sets = calibrated_sets(SCORES, 1.0, torch.Generator().manual_seed(seed))

        assert sets.sum(dim=1).tolist() == [1, 1, 1, 1]  # mean size exactly K
        assert sets[0, 0] and sets[1, 0] and sets[2, 0]
        assert int(sets[3, :2].sum()) == 1 and not sets[3, 2]


def test_calibrated_sets_have_mean_size_k_on_random_scores() -> None:
    scores = torch.rand(37, 5, generator=torch.Generator().manual_seed(0)).round(decimals=1)

    for k in (1.0, 1.5, 2.7):
        sets = calibrated_sets(scores, k, torch.Generator().manual_seed(1))
        assert int(sets.sum()) == math.ceil(k * 37)


def test_too_few_samples_for_the_budget_are_refused() -> None:
    # K = 2.9 on one sample of 3 classes: ⌈K·n⌉ = 3 labels leaves no score below the threshold.
    with pytest.raises(ValueError, match="K·n < n·C"):
        pooled_threshold(SCORES[:1], 2.9)


# ---- federated: histograms on the log grid -------------------------------------------------


def test_federated_threshold_is_the_pooled_one_for_unbalanced_clients() -> None:
    # Prepare: 3 clients of 3, 40 and 400 samples, log-softmax scores of random logits
    gen = torch.Generator().manual_seed(0)
    clients = [torch.log_softmax(3 * torch.randn(n, 10, generator=gen), 1) for n in (3, 40, 400)]
    grid = LogGrid(resolution=1e-6)
    pooled = torch.cat(clients)

    for k in (1.5, 2.0, 3.0):
        # Execute
        lam = merged_threshold([histogram(s, grid) for s in clients], 443, k, grid)
        exact = pooled_threshold(pooled, k)

        # Assert: within one bin above the pooled λ, and the same sets on the pooled scores
        assert 0 < lam - exact <= grid.resolution + 1e-9
        assert torch.equal(pooled.double() > lam, pooled.double() > exact)
        assert int(set_sizes(pooled, lam).sum()) == math.ceil(k * 443)


def test_federated_threshold_differs_from_the_mean_of_the_clients_own() -> None:
    # Prepare: C = 3, K = 1. Client A: one confident sample; client B: three ambiguous ones.
    a = torch.tensor([[0.9, 0.05, 0.05]]).log()
    b = torch.tensor([[0.4, 0.3, 0.3]] * 3).log()
    grid = LogGrid()

    # Execute
    own = [pooled_threshold(a, 1.0), pooled_threshold(b, 1.0)]
    lam = merged_threshold([histogram(a, grid), histogram(b, grid)], 4, 1.0, grid)

    # Assert: own λ are 0.05 (A's 2nd largest) and 0.3 (B's 4th); the union's 5th largest of
    # {0.9, 0.4 ×3, 0.3 ×6, 0.05 ×2} is 0.3, so the global λ is 0.3 (to the grid) and returns
    # one label each, while the mean of the own λ, log 0.1225, returns 3 to each of B's samples.
    assert own == pytest.approx([math.log(0.05), math.log(0.3)], abs=1e-6)
    assert lam == pytest.approx(math.log(0.3), abs=2e-6)
    both = torch.cat([a, b])
    assert set_sizes(both, lam).tolist() == [1, 1, 1, 1]
    assert set_sizes(both, sum(own) / 2).tolist() == [1, 3, 3, 3]


def test_scores_below_the_floor_share_the_lowest_bin() -> None:
    grid = LogGrid(resolution=0.5, floor=-2.0)

    bins, counts = histogram(torch.tensor([-100.0, -2.0, -1.6, -0.1, 0.0]), grid)

    assert bins.tolist() == [0, 3] and counts.tolist() == [3, 2]
