"""Aggregation math (pure torch, no Flower) and the Flower strategies that drive it."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from fedsim.registry import AGGREGATORS, PREAGGREGATORS, Registry
from strategies import (
    aggregators,
    attacks,
    availability,
    fedavg,
    fedlaavg,
    preaggregators,
    server_optimisers,
)
from strategies.pipeline import RoundInfo, Stage, chain, stateless

__all__ = [
    "RoundInfo",
    "Stage",
    "aggregate",
    "aggregators",
    "attacks",
    "availability",
    "chain",
    "fedavg",
    "fedlaavg",
    "preaggregate",
    "preaggregators",
    "server_optimisers",
    "stateless",
]


def aggregate(name: str, updates: Tensor, info: RoundInfo | None = None, **params: Any) -> Tensor:
    """Apply the registered aggregator ``name`` to stacked updates ``(n, d)`` outside Flower."""
    return _apply(AGGREGATORS, name, updates, info, params)


def preaggregate(
    name: str, updates: Tensor, info: RoundInfo | None = None, **params: Any
) -> Tensor:
    """Apply the registered pre-aggregator ``name``: ``(n, d)`` -> ``(n', d)`` outside Flower."""
    return _apply(PREAGGREGATORS, name, updates, info, params)


def _apply(
    registry: Registry[Any], name: str, updates: Tensor, info: RoundInfo | None, params: Any
) -> Tensor:
    stage: Stage = registry.build(name, **params)
    info = info or RoundInfo.uniform(updates.shape[0])
    out, _ = stage.update(updates, stage.init(updates.shape[1]), info)
    return out
