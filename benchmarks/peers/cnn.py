"""pfl-research's CIFAR-10 CNN (its benchmarks' ``simple_cnn``), in plain PyTorch.

Two 3×3 convolutions (32 and 64 channels), a 2×2 max pool, dropout 0.25, a 128-unit dense layer,
dropout 0.5 and the 10-way output: 1,626,442 parameters for 32×32×3 inputs. pfl's version
takes channels-last images and transposes them; here the inputs are channels-first (N, 3, 32,
32), as fedsim, PyTorch and Flower's quickstart hold images, so no transpose layer.
Weights are Glorot-uniform, as pfl sets them (to match its TF2 model), biases PyTorch's default.

Every implementation in the side-by-side benchmark trains this module from the same initial
weights; it needs nothing but torch, so pfl's own environment imports it too.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def _glorot_weight_default_bias(module: nn.Conv2d | nn.Linear, generator: torch.Generator) -> None:
    nn.init.xavier_uniform_(module.weight, generator=generator)
    if module.bias is not None:
        fan_in, _ = nn.init._calculate_fan_in_and_fan_out(module.weight)
        bound = 1 / math.sqrt(fan_in)
        nn.init.uniform_(module.bias, -bound, bound, generator=generator)


class GlorotConv2d(nn.Conv2d):
    """A convolution that fedsim initialises as pfl does (fedsim calls ``init_parameters``)."""

    def init_parameters(self, generator: torch.Generator) -> None:
        _glorot_weight_default_bias(self, generator)


class GlorotLinear(nn.Linear):
    """A dense layer that fedsim initialises as pfl does (fedsim calls ``init_parameters``)."""

    def init_parameters(self, generator: torch.Generator) -> None:
        _glorot_weight_default_bias(self, generator)


def simple_cnn(input_shape: tuple[int, ...] = (3, 32, 32), num_classes: int = 10) -> nn.Module:
    """pfl's ``simple_cnn`` for (C, H, W) inputs with square images."""
    channels, side = input_shape[0], input_shape[-1]
    pooled = (side - 4) // 2  # two valid 3×3 convolutions, then a 2×2 pool
    return nn.Sequential(
        GlorotConv2d(channels, 32, kernel_size=3),
        nn.ReLU(),
        GlorotConv2d(32, 64, kernel_size=3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Dropout(0.25),
        nn.Flatten(),
        GlorotLinear(pooled * pooled * 64, 128),
        nn.ReLU(),
        nn.Dropout(0.5),
        GlorotLinear(128, num_classes),
    )
