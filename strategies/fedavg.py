"""FedAvg (McMahan et al., 2017) as a pipeline: mean of the deltas, then a server step."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Annotated

from fedsim.registry import AGGREGATORS, SERVER_OPTIMISERS, STRATEGIES, Component, Params, Ref
from strategies.flower import PipelineStrategy
from strategies.pipeline import chain


class FedAvgParams(Params):
    aggregator: Annotated[Component, Ref("aggregator")] = Component(name="mean")
    server_opt: Annotated[Component, Ref("server_optimiser")] = Component(name="sgd")


@STRATEGIES.register("fedavg", FedAvgParams)
def fedavg(p: FedAvgParams) -> Callable[..., PipelineStrategy]:
    """Sample clients, aggregate their deltas (any aggregator), apply a server optimiser."""
    pipeline = chain(AGGREGATORS.build(p.aggregator), SERVER_OPTIMISERS.build(p.server_opt))
    return partial(PipelineStrategy, pipeline)
