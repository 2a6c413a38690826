"""Bulyan: n − 2f updates chosen by repeated Krum, then a trimmed mean around the median."""

from __future__ import annotations

from pydantic import NonNegativeInt
from torch import Tensor

from fedsim.registry import AGGREGATORS, Params
from strategies.aggregators.krum import by_score, krum_scores, tie_keys
from strategies.aggregators.meamed import mean_around_median
from strategies.gram import gram, squared_distances
from strategies.pipeline import RoundInfo, Stage, stateless


class BulyanParams(Params):
    f: NonNegativeInt = 1  # byzantine clients tolerated


@AGGREGATORS.register("bulyan", BulyanParams)
def bulyan(p: BulyanParams) -> Stage:
    """Krum picks n − 2f updates one by one; per coordinate, average the n − 4f nearest the median.

    El Mhamdi, Guerraoui and Rouault, 2018, "The hidden vulnerability of distributed learning in
    Byzantium". Each pick runs Krum on the r updates left, with max(r − f − 2, 1) neighbours
    (the paper's r − f − 2 reaches 0 for the last picks); ties go to the lower client id.
    """

    def aggregate(updates: Tensor, info: RoundInfo) -> Tensor:
        n, f = updates.shape[0], p.f
        if n < 4 * f + 3:
            raise ValueError(f"bulyan needs n >= 4f + 3, got n={n}, f={f}")
        sq_distances = squared_distances(gram(updates))
        keys = tie_keys(info, n)
        left = list(range(n))
        chosen = []
        for _ in range(n - 2 * f):
            r = len(left)
            scores = krum_scores(sq_distances[left][:, left], min(max(r - f - 2, 1), r - 1))
            best = left[int(by_score(scores, keys[left])[0])]
            chosen.append(best)
            left.remove(best)
        return mean_around_median(updates[chosen], n - 4 * f)

    return stateless(aggregate)
