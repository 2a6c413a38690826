"""FedAvg (McMahan et al., 2017) as a pipeline: pre-aggregators, an aggregator, a server step."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Annotated

from pydantic import Field

from fedsim.registry import (
    AGGREGATORS,
    PREAGGREGATORS,
    SERVER_OPTIMISERS,
    STRATEGIES,
    Component,
    Params,
    Ref,
)
from strategies.pipeline import chain

if TYPE_CHECKING:
    from strategies.flower import PipelineStrategy


class FedAvgParams(Params):
    preagg: list[Annotated[Component, Ref("preaggregator")]] = Field(default_factory=list)
    aggregator: Annotated[Component, Ref("aggregator")] = Component(name="mean")
    server_opt: Annotated[Component, Ref("server_optimiser")] = Component(name="sgd")


@STRATEGIES.register("fedavg", FedAvgParams)
def fedavg(p: FedAvgParams) -> Callable[..., PipelineStrategy]:
    """Sample clients; pre-aggregate, aggregate (any rule) and apply a server optimiser."""
    from strategies.flower import PipelineStrategy  # Flower only once a run builds it

    pipeline = chain(
        *(PREAGGREGATORS.build(spec) for spec in p.preagg),
        AGGREGATORS.build(p.aggregator),
        SERVER_OPTIMISERS.build(p.server_opt),
    )
    return partial(PipelineStrategy, pipeline)
