"""Min-Max (Shejwalkar & Houmansadr, 2021): far along a bad direction, within the honest spread."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from fedsim.registry import ATTACKS, Params
from strategies.attacks.base import model_attack
from strategies.pipeline import Stage


class MinMaxParams(Params):
    direction: Literal["std", "unit_mean", "sign"] = "std"  # the paper's perturbations


@ATTACKS.register("min_max", MinMaxParams)
def min_max(p: MinMaxParams) -> Stage:
    """Byzantine clients send μ + γ·δ with the largest γ whose farthest honest distance stays
    within the largest distance between two honest updates (omniscient)."""

    def forge(honest: Tensor, own: Tensor, generator: torch.Generator) -> Tensor:
        h = honest.to(torch.float64)
        mu = h.mean(dim=0)
        if p.direction == "std":
            delta = -h.std(dim=0, unbiased=False)
        elif p.direction == "unit_mean":
            delta = -mu / mu.norm().clamp_min(1e-12)
        else:
            delta = -mu.sign()
        gamma = _largest_gamma(h, mu, delta)
        return (mu + gamma * delta).to(own.dtype).expand_as(own)

    return model_attack(forge)


def _largest_gamma(honest: Tensor, mu: Tensor, delta: Tensor) -> float:
    """max γ ≥ 0 with ‖μ + γδ − u_i‖ ≤ R for every honest u_i, R the honest diameter.

    Each constraint is a quadratic in γ, a γ² + 2 b_i γ + c_i ≤ R², solved exactly (the paper
    searches for γ by bisection)."""
    radius2 = torch.cdist(honest, honest).max() ** 2
    a = delta.dot(delta)
    if a <= 0:
        return 0.0
    diff = mu - honest  # (h, d)
    b = diff @ delta
    c = (diff * diff).sum(dim=1)
    # roots of a γ² + 2 b γ + (c − R²) = 0; μ lies inside every ball, so the larger root is ≥ 0
    roots = (-b + (b * b - a * (c - radius2)).clamp_min(0).sqrt()) / a
    return float(roots.min().clamp_min(0))
