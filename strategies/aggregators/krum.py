"""Krum: the update whose n − f − 2 nearest neighbours are closest to it."""

from __future__ import annotations

import math

import torch
from pydantic import NonNegativeInt
from torch import Tensor

from fedsim.registry import AGGREGATORS, Params
from strategies.gram import gram, squared_distances
from strategies.pipeline import RoundInfo, Stage, stateless


def krum_scores(sq_distances: Tensor, neighbours: int) -> Tensor:
    """Each row's sum of squared distances to its ``neighbours`` nearest other rows."""
    others = sq_distances.clone().fill_diagonal_(math.inf)
    return others.topk(neighbours, dim=1, largest=False).values.sum(dim=1)


def tie_keys(info: RoundInfo, n: int) -> Tensor:
    """What breaks ties between rows: the client ids, so that the order in which replies arrive
    does not matter; the row index when the rows are no longer one per client (a pre-aggregator
    such as bucketing changed n, and the pipeline passes every stage the same RoundInfo)."""
    if len(info.client_ids) != n:
        return torch.arange(n)
    return torch.tensor(info.client_ids)


def by_score(scores: Tensor, keys: Tensor) -> Tensor:
    """Row indices by increasing score; equal scores go to the lower key."""
    by_key = keys.to(scores.device).argsort()
    return by_key[scores[by_key].argsort(stable=True)]


def check_krum(rule: str, n: int, f: int) -> None:
    if n <= 2 * f + 2:
        raise ValueError(f"{rule} needs n > 2f + 2, got n={n}, f={f}")


class KrumParams(Params):
    f: NonNegativeInt = 1  # byzantine clients tolerated


@AGGREGATORS.register("krum", KrumParams)
def krum(p: KrumParams) -> Stage:
    """The update with the least sum of squared distances to its n − f − 2 nearest others.

    Blanchard et al., 2017, "Machine learning with adversaries: Byzantine tolerant gradient
    descent". Distances come from the shared Gram matrix; ties go to the lower client id.
    """

    def aggregate(updates: Tensor, info: RoundInfo) -> Tensor:
        n = updates.shape[0]
        check_krum("krum", n, p.f)
        scores = krum_scores(squared_distances(gram(updates)), n - p.f - 2)
        return updates[by_score(scores, tie_keys(info, n))[0]].clone()

    return stateless(aggregate)
