"""Small classifiers cheap enough to train many clients on one CPU thread, and the ``model``
registry's entries that build them.

A model entry's factory takes its params and returns a builder ``(input_shape, num_classes) ->
nn.Module``; the workload calls it with its dataset's shape and then draws every parameter from
the run's generator (``clients.workload.init_parameters``), so a builder needs no seed. A module
that owns parameters of its own (not in Linear, Conv, norm or Embedding layers) fills them in a
method ``init_parameters(generator)``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence

from pydantic import PositiveInt
from torch import Tensor, nn

from fedsim.registry import MODELS, Params

# (input_shape, num_classes) -> a fresh model; what a ``model`` entry's factory returns.
ModelBuilder = Callable[[tuple[int, ...], int], nn.Module]


class MLP(nn.Module):
    """Flatten → (Linear(h) → ReLU) for each hidden width h → Linear(num_classes).

    ``hidden=[300, 100]`` is LeNet-300-100 (LeCun et al., 1998), the classic pruning benchmark.
    """

    def __init__(
        self, input_shape: tuple[int, ...], num_classes: int, hidden: int | Sequence[int] = 128
    ) -> None:
        super().__init__()
        widths = [math.prod(input_shape), *([hidden] if isinstance(hidden, int) else hidden)]
        layers: list[nn.Module] = [nn.Flatten()]
        for n_in, n_out in itertools.pairwise(widths):
            layers += [nn.Linear(n_in, n_out), nn.ReLU()]
        self.net = nn.Sequential(*layers, nn.Linear(widths[-1], num_classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class SmallCNN(nn.Module):
    """Two 3×3 conv (16, 32 channels) + 2×2 max-pool blocks, then Linear(64) → Linear(classes)."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int) -> None:
        super().__init__()
        if len(input_shape) != 3:
            raise ValueError(f"SmallCNN needs input_shape (C, H, W), got {input_shape}")
        c, h, w = input_shape
        # Each 2×2 pool floors the side; padding 1 keeps conv outputs the same size.
        h_out, w_out = h // 4, w // 4
        if h_out < 1 or w_out < 1:
            raise ValueError(f"SmallCNN needs H, W >= 4 (two 2x2 pools), got {input_shape}")
        self.net = nn.Sequential(
            nn.Conv2d(c, 16, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(32 * h_out * w_out, 64),
            nn.ReLU(),
            nn.Linear(64, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class MLPParams(Params):
    # One width per hidden layer, or a single width ([300, 100] is LeNet-300-100).
    hidden: PositiveInt | list[PositiveInt] = 128


@MODELS.register("mlp", MLPParams)
def mlp(p: MLPParams) -> ModelBuilder:
    """Multilayer perceptron: flatten, ReLU layers of widths ``hidden``, a linear classifier."""

    def build(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
        return MLP(input_shape, num_classes, hidden=p.hidden)

    return build


class LeNet300100Params(Params):
    pass


@MODELS.register("lenet_300_100", LeNet300100Params)
def lenet_300_100(p: LeNet300100Params) -> ModelBuilder:
    """LeNet-300-100 (LeCun et al., 1998): the MLP with hidden widths 300 and 100."""

    def build(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
        return MLP(input_shape, num_classes, hidden=[300, 100])

    return build


class SmallCNNParams(Params):
    pass


@MODELS.register("cnn", SmallCNNParams)
def cnn(p: SmallCNNParams) -> ModelBuilder:
    """Small CNN for images (C, H, W): two 3x3 conv + 2x2 pool blocks, then two linear layers."""
    return SmallCNN
