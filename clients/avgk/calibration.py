"""The average-K threshold: the score above which K labels per sample are returned on average.

Pooled (one holder of all scores): with m = ⌈K·n⌉ labels to return over n samples, λ is the
(m+1)-th largest of the n·C scores and S(x) = {j : s_j(x) > λ}; on the calibration set itself,
entries equal to λ fill the sets up to exactly m (Lorieul et al., 2021, as a public adaptation
implements it). With K·n whole, λ is numpy's 'lower' (1 − K/C)-quantile of all the scores.

Federated (the clients hold the scores): each client sends a sparse histogram of its scores on
one fixed grid, the server sums them and takes the bin holding the (m+1)-th largest score; λ is
that bin's upper edge, so it lies within one bin of the pooled λ and never returns more than m.
Scores are log-probabilities (≤ 0) and the grid is uniform in them: a step of 1e-6 in log-score
is at most 1e-6 in score (|e^a − e^b| ≤ |a − b| for a, b ≤ 0), and 1e-6 *relative* near 0,
where a trained model's threshold lies (a grid uniform in score would put thousands of
near-zero scores in its first bin).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor


def label_budget(n: int, k: float) -> int:
    """Labels returned over ``n`` samples at mean size ``k``: ⌈K·n⌉ (float noise forgiven)."""
    return math.ceil(k * n - 1e-9)


def pooled_threshold(scores: Tensor, k: float) -> float:
    """λ of the (n, C) ``scores``: the (⌈K·n⌉ + 1)-th largest of them all."""
    m = label_budget(scores.shape[0], k)
    if not 1 <= m < scores.numel():
        raise ValueError(
            f"average-K needs 1 <= K·n < n·C, got K={k}, n={scores.shape[0]}, C={scores.shape[1]}:"
            " the calibration set is too small for K; raise workload.calibration_fraction"
        )
    return float(scores.flatten().double().topk(m + 1).values[-1])


def calibrated_sets(scores: Tensor, k: float, generator: torch.Generator) -> Tensor:
    """The sets (a bool (n, C) mask) of exactly ⌈K·n⌉ labels on the calibration scores: every
    score above λ, then randomly chosen scores equal to λ until the budget is met."""
    m = label_budget(scores.shape[0], k)
    lam = pooled_threshold(scores, k)
    flat = scores.flatten().double()
    chosen = flat > lam
    ties = torch.nonzero(flat == lam).flatten()
    missing = m - int(chosen.sum())
    chosen[ties[torch.randperm(len(ties), generator=generator)[:missing]]] = True
    return chosen.view(scores.shape)


@dataclass(frozen=True)
class LogGrid:
    """Bins of width ``resolution`` on log-scores in [floor, 0]; lower scores share bin 0."""

    resolution: float = 1e-6
    floor: float = -50.0

    @property
    def size(self) -> int:
        return math.ceil(-self.floor / self.resolution)

    def bins(self, log_scores: Tensor) -> Tensor:
        index = torch.floor((log_scores.double() - self.floor) / self.resolution)
        return index.clamp(0, self.size - 1).long()

    def upper_edge(self, bin: int) -> float:
        return self.floor + (bin + 1) * self.resolution


def histogram(log_scores: Tensor, grid: LogGrid) -> tuple[Tensor, Tensor]:
    """The occupied bins of ``log_scores`` (int64, ascending) and how many scores each holds."""
    bins, counts = torch.unique(grid.bins(log_scores.flatten()), return_counts=True)
    return bins, counts.long()


def merged_threshold(
    histograms: Sequence[tuple[Tensor, Tensor]], samples: int, k: float, grid: LogGrid
) -> float:
    """λ from the clients' histograms of ``samples`` samples in all: the upper edge of the bin
    that holds the (⌈K·n⌉ + 1)-th largest score of their union."""
    bins = torch.cat([b for b, _ in histograms])
    counts = torch.cat([c for _, c in histograms])
    merged, inverse = torch.unique(bins, return_inverse=True)
    summed = torch.zeros(len(merged), dtype=torch.long).scatter_add_(0, inverse, counts)
    m = label_budget(samples, k)
    if not 1 <= m < int(summed.sum()):
        raise ValueError(
            f"average-K needs 1 <= K·n < n·C, got K={k}, n={samples}, {int(summed.sum())} "
            "scores: the calibration set is too small for K; raise workload.calibration_fraction"
        )
    from_top = summed.flip(0).cumsum(0)  # scores in this bin or above, highest bin first
    at = int(torch.searchsorted(from_top, m + 1))  # first bin where the (m+1)-th score falls
    return grid.upper_edge(int(merged.flip(0)[at]))


def set_sizes(log_scores: Tensor, threshold: float) -> Tensor:
    """Each sample's number of labels at ``threshold``."""
    return (log_scores.double() > threshold).sum(dim=1)
