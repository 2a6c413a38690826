"""Sign flipping (Allen-Zhu et al., 2020; ByzFL's SignFlipping): the honest mean, reversed."""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor

from fedsim.registry import ATTACKS, Params
from strategies.attacks.base import Forge, model_attack
from strategies.pipeline import Stage


class SignFlipParams(Params):
    scale: float = Field(1.0, gt=0, description="byzantine update = -scale · honest mean")


def reversed_mean(scale: float) -> Forge:
    """Every byzantine client sends -scale times the mean of the honest updates."""

    def forge(honest: Tensor, own: Tensor, generator: torch.Generator) -> Tensor:
        return (-scale * honest.mean(dim=0)).expand_as(own)

    return forge


@ATTACKS.register("sign_flip", SignFlipParams)
def sign_flip(p: SignFlipParams) -> Stage:
    """Byzantine clients send -scale times the mean of the honest updates (omniscient)."""
    return model_attack(reversed_mean(p.scale))
