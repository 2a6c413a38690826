"""Nearest-neighbour mixing: each update becomes the mean of its n − f nearest updates."""

from __future__ import annotations

from pydantic import NonNegativeInt
from torch import Tensor

from fedsim.registry import PREAGGREGATORS, Params
from strategies import gram as shared
from strategies.aggregators.krum import tie_keys
from strategies.pipeline import RoundInfo, Stage, stateless


class NnmParams(Params):
    f: NonNegativeInt = 1  # byzantine clients tolerated; each row mixes its n − f nearest


@PREAGGREGATORS.register("nnm", NnmParams)
def nnm(p: NnmParams) -> Stage:
    """Replace each update by the mean of its n − f nearest updates (itself included).

    Allouah et al., 2023, "Fixing by mixing: a recipe for optimal Byzantine ML under
    heterogeneity". Linear (out = M U), so it hands the next stage M G Mᵀ as the Gram matrix;
    distance ties go to the lower client id.
    """

    def preaggregate(updates: Tensor, info: RoundInfo) -> Tensor:
        n = updates.shape[0]
        if n <= 2 * p.f:
            raise ValueError(f"nnm needs n > 2f, got n={n}, f={p.f}")
        g = shared.gram(updates)
        sq_distances = shared.squared_distances(g)
        by_key = tie_keys(info, n).to(g.device).argsort()
        nearest = by_key[sq_distances[:, by_key].argsort(dim=1, stable=True)[:, : n - p.f]]
        mixing = g.new_zeros(n, n).scatter_(1, nearest, 1.0 / (n - p.f))
        out = mixing.to(updates.dtype) @ updates
        shared.remember(out, mixing @ g @ mixing.T)
        return out

    return stateless(preaggregate)
