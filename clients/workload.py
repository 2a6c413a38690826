"""The contract between a workload (model + local training) and the rest of fedsim."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from fedsim.graphs import Subgraph


class LocalTraining(Protocol):
    """Where a workload's local loop gets its minibatches and how its optimiser steps.

    A workload calls ``setup`` once with its model and optimiser and trains with what it returns,
    on the index batches of ``passes``. ``PlainTraining`` (the default) shuffles the data each
    pass; local DP-SGD (``clients/privacy.py``) draws Poisson batches and clips and noises
    per-sample gradients. A workload that does both is trained privately when a scenario asks.
    """

    private: bool  # the optimiser replaces the gradients (DP-SGD): add nothing to .grad

    def setup(
        self,
        model: nn.Module,
        optimizer: Optimizer,
        n: int,
        batch_size: int,
        generator: torch.Generator,
    ) -> tuple[nn.Module, Optimizer]: ...

    def passes(
        self, epochs: int, steps: int | None, device: torch.device
    ) -> Iterator[list[Tensor]]: ...


class PlainTraining:
    """Minibatch SGD: each pass a fresh permutation of the ``n`` samples, cut into batches."""

    private = False

    def __init__(self) -> None:
        self.n, self.batch_size = 0, 1
        self.generator: torch.Generator | None = None

    def setup(
        self,
        model: nn.Module,
        optimizer: Optimizer,
        n: int,
        batch_size: int,
        generator: torch.Generator,
    ) -> tuple[nn.Module, Optimizer]:
        self.n, self.batch_size, self.generator = n, batch_size, generator
        return model, optimizer

    def passes(
        self, epochs: int, steps: int | None, device: torch.device
    ) -> Iterator[list[Tensor]]:
        """``epochs`` whole passes, or with ``steps`` just enough passes for that many batches."""
        if self.generator is None:
            raise RuntimeError("PlainTraining.passes called before setup")
        return shuffled_passes(self.n, self.batch_size, epochs, steps, self.generator, device)


def shuffled_passes(
    n: int,
    batch_size: int,
    epochs: int,
    steps: int | None,
    generator: torch.Generator,
    device: torch.device,
) -> Iterator[list[Tensor]]:
    """Index batches, one list per pass over a fresh permutation of ``range(n)``."""
    remaining = steps if steps is not None else epochs * math.ceil(n / batch_size)
    while remaining > 0:
        perm = torch.randperm(n, generator=generator).to(device)
        batches = list(perm.split(batch_size))[:remaining]
        remaining -= len(batches)
        yield batches


# A client's inputs: a tensor of samples (images, feature vectors), or for a graph workload the
# client's subgraph, whose ``targets`` are the nodes the labels belong to.
Inputs = Tensor | Subgraph


@dataclass(frozen=True)
class TrainConfig:
    """What one local-training call needs besides the model and the data."""

    round: int
    client: int  # the client's id (its partition), for workloads whose clients differ
    # Seeded by the caller from (seed, client, round); drives batch order. Must live on the CPU.
    generator: torch.Generator
    device: torch.device
    # How minibatches are drawn and the optimiser steps: plain SGD, or DP-SGD under local DP.
    training: LocalTraining = field(default_factory=PlainTraining)


@runtime_checkable
class Workload(Protocol):
    """Builds a model, trains it locally and evaluates it; knows nothing of Flower."""

    def build_model(
        self, input_shape: tuple[int, ...], num_classes: int, generator: torch.Generator
    ) -> nn.Module:
        """A fresh CPU model whose parameters are drawn from ``generator`` only."""
        ...

    def fit(self, model: nn.Module, x: Inputs, y: Tensor, config: TrainConfig) -> dict[str, float]:
        """Train ``model`` in place on ``(x, y)`` (already on ``config.device``); return metrics."""
        ...

    def evaluate(self, model: nn.Module, x: Inputs, y: Tensor) -> dict[str, float]:
        """Mean cross-entropy ``loss`` and ``accuracy`` of ``model`` on ``(x, y)``, without grad."""
        ...


_INITIALISED = (nn.Linear, nn.modules.conv._ConvNd)


@torch.no_grad()
def init_parameters(model: nn.Module, generator: torch.Generator) -> nn.Module:
    """Re-initialise every Linear / Conv layer as PyTorch's defaults do, drawing from ``generator``.

    Weights: ``kaiming_uniform_(a=sqrt(5))``, i.e. U(-1/sqrt(fan_in), 1/sqrt(fan_in)); biases:
    U(-1/sqrt(fan_in), 1/sqrt(fan_in)). Layers are visited in ``model.modules()`` order, so the same
    generator state gives the same parameters. Any other module that owns parameters is refused, so
    that no parameter is left with values from the global RNG (or uninitialised memory).
    """
    for name, module in model.named_modules():
        if isinstance(module, _INITIALISED):
            weight: Tensor = module.weight
            nn.init.kaiming_uniform_(weight, a=math.sqrt(5), generator=generator)
            bias: Tensor | None = module.bias
            if bias is not None:
                fan_in, _ = nn.init._calculate_fan_in_and_fan_out(weight)
                bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0.0
                nn.init.uniform_(bias, -bound, bound, generator=generator)
        elif any(True for _ in module.parameters(recurse=False)):
            raise TypeError(
                f"init_parameters does not know how to initialise {name or 'the model'!s} "
                f"({type(module).__name__}); only Linear and Conv layers own parameters here"
            )
    return model
