"""The information-bottleneck papers' network: 12-10-7-5-4-3-2 with a chosen activation, and
the reference's initialisation (Chelombiev et al.'s code, ``idnns/networks/model.py``).

Weights are truncated normal (±2 std) with std g/√fan_in — g = 1 for tanh, 2 for the ReLU
family (2/√n, not He's √(2/n)) — and biases 0.
"""

from __future__ import annotations

import itertools
import math
from typing import Literal

import torch
from pydantic import Field, PositiveInt
from torch import Tensor, nn

from fedsim.registry import MODELS, Params

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "elu": nn.ELU,
    "softplus": nn.Softplus,
}


class PaperLinear(nn.Linear):
    """A linear layer drawing its own initial weights as the reference does."""

    gain: float = 1.0

    @torch.no_grad()
    def init_parameters(self, generator: torch.Generator) -> None:
        std = self.gain / math.sqrt(self.in_features)
        nn.init.trunc_normal_(self.weight, 0.0, std, -2 * std, 2 * std, generator=generator)
        nn.init.zeros_(self.bias)


class InfoPlaneMLP(nn.Module):
    """Flatten → (Linear → activation) per hidden width → Linear(num_classes)."""

    def __init__(
        self, input_shape: tuple[int, ...], num_classes: int, hidden: list[int], activation: str
    ) -> None:
        super().__init__()
        gain = 1.0 if activation == "tanh" else 2.0
        widths = [math.prod(input_shape), *hidden, num_classes]
        layers: list[nn.Module] = [nn.Flatten()]
        for i, (n_in, n_out) in enumerate(itertools.pairwise(widths)):
            linear = PaperLinear(n_in, n_out)
            linear.gain = gain
            layers.append(linear)
            if i < len(hidden):
                layers.append(ACTIVATIONS[activation]())
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class InfoPlaneMLPParams(Params):
    # 12-10-7-5-4-3-2 on SZT, the paper's era (the reference's default since late 2019: 5×5)
    hidden: list[PositiveInt] = Field(default_factory=lambda: [10, 7, 5, 4, 3])
    activation: Literal["tanh", "relu", "elu", "softplus"] = "tanh"


@MODELS.register("infoplane_mlp", InfoPlaneMLPParams)
def infoplane_mlp(p: InfoPlaneMLPParams) -> object:
    """The information-plane paper's MLP (10-7-5-4-3 hidden), tanh/relu/elu/softplus."""

    def build(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
        return InfoPlaneMLP(input_shape, num_classes, list(p.hidden), p.activation)

    return build
