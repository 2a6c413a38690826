"""Sparse-training methods, registered in ``fedsim.registry.SPARSITY`` (``workload.sparsity``).

A method decides three things; fedsim calls them at fixed points of a run:

* ``initial_masks`` — the server's global mask before round 1;
* ``server_masks`` — after each round's aggregation, the server prunes the aggregate and so fixes
  the one global mask every client trains under next round (as PruneFL and FedDST agree on a
  mask); None keeps the mask;
* ``rewiring`` — what a client does to its copy of the mask during local training (RigL, SET:
  drop-and-grow every few steps; the server's pruning of the aggregate then restores the
  target density).

Schedules count rounds, not steps: the server prunes between rounds.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Literal, Protocol

import torch
from pydantic import Field, PositiveInt, model_validator
from torch import Tensor

from clients.sparsity.densities import erk_densities, uniform_densities
from clients.sparsity.masks import (
    Masks,
    full_masks,
    keep_count,
    layer_top_masks,
    magnitude_masks,
    top_mask,
)
from clients.sparsity.rewire import gradient_score, random_score
from clients.sparsity.schedules import (
    cosine_drop_fraction,
    cubic_density,
    iterative_density,
    pruning_rounds,
)
from clients.sparsity.training import Rewiring
from fedsim.registry import SPARSITY, Params

Density = Annotated[float, Field(gt=0.0, le=1.0)]
Weights = Mapping[str, Tensor]


class SparsityMethod(Protocol):
    def initial_masks(self, weights: Weights, rounds: int, generator: torch.Generator) -> Masks:
        """The global mask before round 1."""
        ...

    def server_masks(self, round: int, rounds: int, weights: Weights, masks: Masks) -> Masks | None:
        """After round ``round``'s aggregation: the next global mask (None: unchanged)."""
        ...

    def rewiring(self, round: int, rounds: int, generator: torch.Generator) -> Rewiring | None:
        """How a client rewires its mask while it trains in ``round`` (None: it does not)."""
        ...


# -- magnitude pruning, one-shot or iterative ------------------------------------------------------


class MagnitudeParams(Params):
    density: Density  # final fraction of weights kept
    scope: Literal["layer", "global"] = "layer"  # one threshold per tensor, or one for all
    start: PositiveInt = 1  # prune the aggregate after this round
    iterations: PositiveInt = 1  # 1: one-shot; n: n prunings, each removing the same fraction
    every: PositiveInt = 1  # rounds between prunings


@dataclass(frozen=True)
class Magnitude:
    p: MagnitudeParams

    def initial_masks(self, weights: Weights, rounds: int, generator: torch.Generator) -> Masks:
        last = pruning_rounds(self.p.start, self.p.every, self.p.iterations)[-1]
        if last > rounds:
            raise ValueError(
                f"magnitude pruning's last pruning falls in round {last}, after the last round "
                f"({rounds}); lower start, every or iterations"
            )
        return full_masks(weights)

    def server_masks(self, round: int, rounds: int, weights: Weights, masks: Masks) -> Masks | None:
        p = self.p
        if round not in pruning_rounds(p.start, p.every, p.iterations):
            return None
        target = iterative_density(round, p.start, p.every, p.iterations, p.density)
        return magnitude_masks(weights, target, p.scope, current=masks)

    def rewiring(self, round: int, rounds: int, generator: torch.Generator) -> Rewiring | None:
        return None


@SPARSITY.register("magnitude", MagnitudeParams)
def magnitude(p: MagnitudeParams) -> Magnitude:
    """Magnitude pruning of the aggregate, one-shot or iterative, layer-wise or global."""
    return Magnitude(p)


# -- gradual magnitude pruning ---------------------------------------------------------------------


class GMPParams(Params):
    density: Density  # final fraction of weights kept
    initial_density: Density = 1.0
    start: PositiveInt = 1  # first round whose aggregate is pruned
    end: PositiveInt | None = None  # round the final density is reached (None: 3/4 of the rounds)
    every: PositiveInt = 1  # rounds between prunings
    scope: Literal["layer", "global"] = "layer"

    @model_validator(mode="after")
    def _ordered(self) -> GMPParams:
        if self.end is not None and self.end <= self.start:
            raise ValueError(f"end ({self.end}) must come after start ({self.start})")
        if self.initial_density < self.density:
            raise ValueError(
                f"initial_density ({self.initial_density}) is below density ({self.density}); "
                "gradual pruning only removes weights"
            )
        return self


@dataclass(frozen=True)
class GradualMagnitude:
    p: GMPParams

    def end(self, rounds: int) -> int:
        return (
            self.p.end
            if self.p.end is not None
            else max(self.p.start + 1, math.ceil(0.75 * rounds))
        )

    def initial_masks(self, weights: Weights, rounds: int, generator: torch.Generator) -> Masks:
        if self.end(rounds) > rounds:
            raise ValueError(
                f"gradual pruning ends in round {self.end(rounds)}, after the last round "
                f"({rounds}); lower end"
            )
        return full_masks(weights)

    def server_masks(self, round: int, rounds: int, weights: Weights, masks: Masks) -> Masks | None:
        p, end = self.p, self.end(rounds)
        due = p.start <= round <= end and ((round - p.start) % p.every == 0 or round == end)
        if not due:
            return None
        target = cubic_density(round, p.start, end, p.initial_density, p.density)
        return magnitude_masks(weights, target, p.scope, current=masks)

    def rewiring(self, round: int, rounds: int, generator: torch.Generator) -> Rewiring | None:
        return None


@SPARSITY.register("gmp", GMPParams)
def gmp(p: GMPParams) -> GradualMagnitude:
    """Gradual magnitude pruning (Zhu & Gupta): the aggregate pruned on a cubic schedule."""
    return GradualMagnitude(p)


# -- dynamic sparse training: RigL and SET ---------------------------------------------------------


class DynamicParams(Params):
    density: Density  # fraction of weights kept, over all weight tensors
    distribution: Literal["erk", "uniform"] = "erk"  # how the density is spread over layers
    drop_fraction: Annotated[float, Field(ge=0.0, le=1.0)] = 0.3  # α, annealed by a cosine
    every: PositiveInt = 25  # local optimiser steps between drop-and-grow updates
    end: Annotated[float, Field(gt=0.0, le=1.0)] = 0.75  # fraction of the rounds with updates


@dataclass(frozen=True)
class DynamicSparse:
    p: DynamicParams
    grow: Literal["gradient", "random"]

    def densities(self, weights: Weights) -> dict[str, float]:
        shapes = {n: tuple(w.shape) for n, w in weights.items()}
        if self.p.distribution == "erk":
            return erk_densities(shapes, self.p.density)
        return uniform_densities(shapes, self.p.density)

    def initial_masks(self, weights: Weights, rounds: int, generator: torch.Generator) -> Masks:
        """Random masks with the layers' densities (RigL starts from a random sparse network)."""
        densities = self.densities(weights)
        return {
            n: top_mask(
                torch.rand(w.shape, generator=generator), keep_count(w.numel(), densities[n])
            )
            for n, w in weights.items()
        }

    def server_masks(self, round: int, rounds: int, weights: Weights, masks: Masks) -> Masks | None:
        """FedDST: the aggregate of the clients' rewired models, pruned back to each layer's
        density by magnitude."""
        scores = {n: w.detach().abs() for n, w in weights.items()}
        return layer_top_masks(scores, self.densities(weights))

    def rewiring(self, round: int, rounds: int, generator: torch.Generator) -> Rewiring | None:
        fraction = cosine_drop_fraction(
            round - 1, self.p.drop_fraction, math.ceil(self.p.end * rounds)
        )
        if fraction == 0.0:
            return None
        if self.grow == "gradient":
            return Rewiring(self.p.every, fraction, lambda w, g: gradient_score(g))
        return Rewiring(self.p.every, fraction, lambda w, g: random_score(w, generator))


@SPARSITY.register("rigl", DynamicParams)
def rigl(p: DynamicParams) -> DynamicSparse:
    """RigL: fixed density (ERK), clients drop small weights and regrow by gradient magnitude."""
    return DynamicSparse(p, "gradient")


@SPARSITY.register("set", DynamicParams)
def set_(p: DynamicParams) -> DynamicSparse:
    """SET: as RigL, but clients regrow connections at random."""
    return DynamicSparse(p, "random")
