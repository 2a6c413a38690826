"""Scaling (model replacement, Bagdasaryan et al., 2020): a client's own update, magnified."""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor

from fedsim.registry import ATTACKS, Params
from strategies.attacks.base import model_attack
from strategies.pipeline import Stage


class ScaleParams(Params):
    factor: float = Field(10.0, description="byzantine update = factor · its honest update")


@ATTACKS.register("scale", ScaleParams)
def scale(p: ScaleParams) -> Stage:
    """Byzantine clients send their own update multiplied by factor (non-omniscient)."""

    def forge(honest: Tensor, own: Tensor, generator: torch.Generator) -> Tensor:
        return p.factor * own

    return model_attack(forge, needs_honest=False)
