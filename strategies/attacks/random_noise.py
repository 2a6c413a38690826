"""Uniform noise in place of the gradient: the ``random`` attack of the Flag paper's scripts
(``garfieldpp/byzWorker.py``: ``torch.rand`` of the gradient's shape, U[0, 1)).

Rows of ``U`` are updates, not gradients: a gradient ``g`` applied with learning rate ``scale``
moves the model by ``-scale · g``, so a byzantine row is ``-scale · U[0, 1)^d``.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor

from fedsim.registry import ATTACKS, Params
from strategies.attacks.base import model_attack
from strategies.pipeline import Stage


class RandomParams(Params):
    scale: float = Field(1.0, gt=0, description="the learning rate the noise gradient is taken at")


@ATTACKS.register("random", RandomParams)
def random_noise(p: RandomParams) -> Stage:
    """Byzantine clients send the update of a U[0, 1) gradient: ``-scale · U[0, 1)``."""

    def forge(honest: Tensor, own: Tensor, generator: torch.Generator) -> Tensor:
        return -p.scale * torch.rand(own.shape, generator=generator)

    return model_attack(forge, needs_honest=False)
