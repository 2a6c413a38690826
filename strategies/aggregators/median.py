"""Coordinate-wise median of the client updates."""

from __future__ import annotations

from torch import Tensor

from fedsim.registry import AGGREGATORS, Params
from strategies.pipeline import RoundInfo, Stage, stateless


def coordinate_median(updates: Tensor) -> Tensor:
    """Per coordinate, the middle value (the mean of the two middle values when n is even)."""
    if updates.shape[0] % 2:
        return updates.median(dim=0).values
    return sorted_median(updates.sort(dim=0).values)


def sorted_median(ordered: Tensor) -> Tensor:
    """``coordinate_median`` of rows already sorted along dim 0."""
    n = ordered.shape[0]
    if n % 2:
        return ordered[n // 2]
    return ordered[n // 2 - 1 : n // 2 + 1].mean(dim=0)


@AGGREGATORS.register("median", Params)
def median(p: Params) -> Stage:
    """Coordinate-wise median of the updates (mean of the two middle values for even n).

    Yin et al., 2018, "Byzantine-robust distributed learning: towards optimal statistical rates".
    """

    def aggregate(updates: Tensor, info: RoundInfo) -> Tensor:
        return coordinate_median(updates)

    return stateless(aggregate)
