"""A Little Is Enough (Baruch et al., 2019): just far enough from the honest mean to hide."""

from __future__ import annotations

from statistics import NormalDist

import torch
from pydantic import Field
from torch import Tensor

from fedsim.registry import ATTACKS, Params
from strategies.attacks.base import model_attack
from strategies.pipeline import Stage


class AlieParams(Params):
    z: float | None = Field(None, description="std-devs from the mean; default from n and f")


def default_z(n: int, f: int) -> float:
    """The paper's z_max: s = ⌊n/2 + 1⌋ − f supporters needed, z = Φ⁻¹((n − s) / n)."""
    supporters = n // 2 + 1 - f
    return NormalDist().inv_cdf((n - supporters) / n)


@ATTACKS.register("alie", AlieParams)
def alie(p: AlieParams) -> Stage:
    """Byzantine clients send mean − z·std of the honest updates, per coordinate (omniscient)."""

    def forge(honest: Tensor, own: Tensor, generator: torch.Generator) -> Tensor:
        n, f = honest.shape[0] + own.shape[0], own.shape[0]
        z = p.z if p.z is not None else default_z(n, f)
        std = honest.std(dim=0, unbiased=False)
        return (honest.mean(dim=0) - z * std).expand_as(own)

    return model_attack(forge)
