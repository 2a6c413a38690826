"""Gaussian noise in place of the update (Blanchard et al., 2017; ByzFL's Gaussian)."""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor

from fedsim.registry import ATTACKS, Params
from strategies.attacks.base import model_attack
from strategies.pipeline import Stage


class GaussianParams(Params):
    sigma: float = Field(200.0, gt=0, description="standard deviation of each coordinate")


@ATTACKS.register("gaussian", GaussianParams)
def gaussian(p: GaussianParams) -> Stage:
    """Byzantine clients send N(0, sigma²) noise instead of their update."""

    def forge(honest: Tensor, own: Tensor, generator: torch.Generator) -> Tensor:
        return p.sigma * torch.randn(own.shape, generator=generator)

    return model_attack(forge, needs_honest=False)
