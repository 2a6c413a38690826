"""Static clipping: scale each update to L2 norm at most tau."""

from __future__ import annotations

from pydantic import Field
from torch import Tensor

from fedsim.registry import PREAGGREGATORS, Params
from strategies.aggregators.centered_clipping import clip_rows
from strategies.pipeline import RoundInfo, Stage, stateless


class ClipParams(Params):
    tau: float = Field(10.0, gt=0)  # largest L2 norm kept; depends on the workload's update size


@PREAGGREGATORS.register("clip", ClipParams)
def clip(p: ClipParams) -> Stage:
    """Scale each update to L2 norm at most tau (shorter ones pass unchanged).

    E.g. Allouah et al., 2023, "Fixing by mixing" (static clipping as a pre-aggregation).
    """

    def preaggregate(updates: Tensor, info: RoundInfo) -> Tensor:
        return clip_rows(updates, p.tau)

    return stateless(preaggregate)
