"""Multi-Krum: the mean of the m updates with the lowest Krum scores."""

from __future__ import annotations

from pydantic import NonNegativeInt, PositiveInt
from torch import Tensor

from fedsim.registry import AGGREGATORS, Params
from strategies.aggregators.krum import by_score, check_krum, krum_scores, tie_keys
from strategies.gram import gram, squared_distances
from strategies.pipeline import RoundInfo, Stage, stateless


class MultiKrumParams(Params):
    f: NonNegativeInt = 1  # byzantine clients tolerated
    m: PositiveInt | None = None  # updates averaged; None = n − f


@AGGREGATORS.register("multi_krum", MultiKrumParams)
def multi_krum(p: MultiKrumParams) -> Stage:
    """Mean of the m updates with the lowest Krum scores (m = n − f by default).

    El Mhamdi, Guerraoui and Rouault, 2018, "The hidden vulnerability of distributed learning in
    Byzantium". Scores are computed once, over all n updates; ties go to the lower client id.
    """

    def aggregate(updates: Tensor, info: RoundInfo) -> Tensor:
        n = updates.shape[0]
        check_krum("multi_krum", n, p.f)
        m = n - p.f if p.m is None else p.m
        if m > n:
            raise ValueError(f"multi_krum needs m <= n, got n={n}, m={m}")
        scores = krum_scores(squared_distances(gram(updates)), n - p.f - 2)
        return updates[by_score(scores, tie_keys(info, n))[:m]].mean(dim=0)

    return stateless(aggregate)
