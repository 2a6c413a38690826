"""Mean around the median: per coordinate, the mean of the n − f values closest to the median."""

from __future__ import annotations

import torch
from pydantic import NonNegativeInt
from torch import Tensor

from fedsim.registry import AGGREGATORS, Params
from strategies.aggregators.median import sorted_median
from strategies.pipeline import RoundInfo, Stage, stateless


def mean_around_median(updates: Tensor, keep: int) -> Tensor:
    """Per coordinate, the mean of the ``keep`` values closest to the coordinate-wise median.

    Ties in distance go to the smaller value, so the result does not depend on the row order.
    In sorted order the values kept are a window: the n − keep dropped are the farthest from
    the median, so they come off the two ends; one sort, no argsort over (n, d).
    """
    n = updates.shape[0]
    drop = n - keep
    ordered = updates.sort(dim=0).values
    if drop == 0:
        return ordered.mean(dim=0)
    median = sorted_median(ordered)
    # the t-th smallest value is dropped iff it is farther than the value it competes with at
    # the top (strictly: on a tie the larger value goes), so this counts the drops on the left
    start = (median - ordered[:drop] > ordered[n - drop :] - median).sum(dim=0)
    rows = torch.arange(n, device=updates.device)[:, None]
    kept = (rows >= start) & (rows < start + keep)
    return torch.where(kept, ordered, 0).sum(dim=0) / keep


class MeamedParams(Params):
    f: NonNegativeInt = 1  # byzantine clients tolerated; n − f values are averaged per coordinate


@AGGREGATORS.register("meamed", MeamedParams)
def meamed(p: MeamedParams) -> Stage:
    """Per coordinate, the mean of the n − f values closest to the median.

    Xie, Koyejo and Gupta, 2018, "Generalized Byzantine-tolerant SGD".
    """

    def aggregate(updates: Tensor, info: RoundInfo) -> Tensor:
        n = updates.shape[0]
        if n <= 2 * p.f:
            raise ValueError(f"meamed needs n > 2f, got n={n}, f={p.f}")
        return mean_around_median(updates, n - p.f)

    return stateless(aggregate)
