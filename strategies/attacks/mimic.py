"""Mimic (Karimireddy et al., 2022): every byzantine client copies one honest client."""

from __future__ import annotations

import torch
from torch import Tensor

from fedsim.registry import ATTACKS, Params
from strategies.attacks.base import model_attack
from strategies.pipeline import Stage


@ATTACKS.register("mimic", Params)
def mimic(p: Params) -> Stage:
    """Byzantine clients all send the update of the first honest client in the round, over-
    weighting it under non-IID data (omniscient)."""

    def forge(honest: Tensor, own: Tensor, generator: torch.Generator) -> Tensor:
        return honest[0].expand_as(own)

    return model_attack(forge)
