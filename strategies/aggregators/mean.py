"""The (weighted) mean of the client updates: FedAvg's aggregator."""

from __future__ import annotations

from torch import Tensor

from fedsim.registry import AGGREGATORS, Params
from strategies.pipeline import RoundInfo, Stage, stateless


class MeanParams(Params):
    weighted: bool = True  # weight each client by its number of training samples, as FedAvg does


@AGGREGATORS.register("mean", MeanParams)
def mean(p: MeanParams) -> Stage:
    """Mean of the updates, weighted by sample counts (FedAvg) or uniform."""

    def aggregate(updates: Tensor, info: RoundInfo) -> Tensor:
        if not p.weighted:
            return updates.mean(dim=0)
        weights = info.num_examples.to(updates.dtype)
        return weights @ updates / weights.sum()

    return stateless(aggregate)
