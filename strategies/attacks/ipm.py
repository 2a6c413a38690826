"""Inner-product manipulation (Xie et al., 2020, "Fall of Empires")."""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor

from fedsim.registry import ATTACKS, Params
from strategies.attacks.base import model_attack
from strategies.pipeline import Stage


class IpmParams(Params):
    eps: float = Field(0.1, gt=0, description="byzantine update = -eps · honest mean")


@ATTACKS.register("ipm", IpmParams)
def ipm(p: IpmParams) -> Stage:
    """Byzantine clients send -eps times the honest mean, making its inner product negative."""

    def forge(honest: Tensor, own: Tensor, generator: torch.Generator) -> Tensor:
        return (-p.eps * honest.mean(dim=0)).expand_as(own)

    return model_attack(forge)
