"""Coordinate-wise trimmed mean: drop the f largest and f smallest values per coordinate."""

from __future__ import annotations

from pydantic import NonNegativeInt
from torch import Tensor

from fedsim.registry import AGGREGATORS, Params
from strategies.pipeline import RoundInfo, Stage, stateless


class TrimmedMeanParams(Params):
    f: NonNegativeInt = 1  # values dropped at each end, per coordinate


@AGGREGATORS.register("trimmed_mean", TrimmedMeanParams)
def trimmed_mean(p: TrimmedMeanParams) -> Stage:
    """Per coordinate, the mean after dropping the f largest and f smallest values.

    Yin et al., 2018, "Byzantine-robust distributed learning: towards optimal statistical rates".
    """

    def aggregate(updates: Tensor, info: RoundInfo) -> Tensor:
        n = updates.shape[0]
        if n <= 2 * p.f:
            raise ValueError(f"trimmed_mean needs n > 2f, got n={n}, f={p.f}")
        return updates.sort(dim=0).values[p.f : n - p.f].mean(dim=0)

    return stateless(aggregate)
