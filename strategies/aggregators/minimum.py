"""The pessimistic ensemble: follow the gradient of the objective whose value is lowest."""

from __future__ import annotations

from torch import Tensor

from fedsim.registry import AGGREGATORS, Params
from strategies.pipeline import RoundInfo, Stage, stateless


class MinParams(Params):
    pass


@AGGREGATORS.register("min", MinParams)
def minimum(p: MinParams) -> Stage:
    """The row whose objective value is lowest: the gradient of min_i f_i (needs objective values).

    Offline MBO's `min` ensemble (Kolli et al. 2023; design-baselines' gradient ascent): ascend
    the most pessimistic proxy, ∇ min_i f_i(x) = ∇ f_argmin(x). The rows must be gradients of
    objectives whose values come in ``RoundInfo.objectives``; the mbo workload supplies them.
    Ties go to the lowest client id, so the result does not depend on the order of the rows.
    """

    def aggregate(updates: Tensor, info: RoundInfo) -> Tensor:
        values = info.objectives
        if values is None or values.shape != (updates.shape[0],):
            raise ValueError(
                "min needs the value of each client's objective (RoundInfo.objectives), which "
                "only the mbo workload supplies; choose another aggregator for model training"
            )
        lowest = values == values.min()
        ids = [i for i, low in zip(info.client_ids, lowest.tolist(), strict=True) if low]
        return updates[info.client_ids.index(min(ids))].clone()

    return stateless(aggregate)
