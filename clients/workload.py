"""The contract between a workload (model + local training) and the rest of fedsim."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from fedsim.graphs import Subgraph

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
