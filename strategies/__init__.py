"""Aggregation math (pure torch, no Flower) and the Flower strategies that drive it."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from fedsim.registry import AGGREGATORS
from strategies import aggregators, availability, fedavg, fedlaavg, server_optimisers
from strategies.pipeline import RoundInfo, Stage, chain, stateless

__all__ = [
    "RoundInfo",
    "Stage",
    "aggregate",
    "aggregators",
    "availability",
    "chain",
    "fedavg",
    "fedlaavg",
    "server_optimisers",
    "stateless",
]


def aggregate(name: str, updates: Tensor, info: RoundInfo | None = None, **params: Any) -> Tensor:
    """Apply the registered aggregator ``name`` to stacked updates ``(n, d)`` outside Flower."""
    stage = AGGREGATORS.build(name, **params)
    info = info or RoundInfo.uniform(updates.shape[0])
    out, _ = stage.update(updates, stage.init(updates.shape[1]), info)
    return out
