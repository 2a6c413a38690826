"""Label flipping (data poisoning): byzantine clients train on labels y -> C - 1 - y."""

from __future__ import annotations

import torch
from torch import Tensor

from fedsim.registry import ATTACKS, Params
from strategies.attacks.base import DataAttack


def _flip(
    x: Tensor, y: Tensor, num_classes: int, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    return x, num_classes - 1 - y


@ATTACKS.register("label_flip", Params)
def label_flip(p: Params) -> DataAttack:
    """Byzantine clients train honestly on data whose labels are flipped to C − 1 − y."""
    return DataAttack(_flip)
