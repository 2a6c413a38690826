"""Server optimisers: turn the aggregated update into the step applied to the global model."""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field
from torch import Tensor

from fedsim.registry import SERVER_OPTIMISERS, Params
from strategies.pipeline import RoundInfo, Stage


class SgdParams(Params):
    lr: float = Field(1.0, gt=0)  # 1.0 with no momentum is plain FedAvg
    momentum: float = Field(0.0, ge=0, lt=1)
    # lr in round t is lr * decay^(t - 1): a decayed global step, as FedMGDA+ needs with its
    # normalised updates (whose step never shrinks by itself)
    decay: float = Field(1.0, gt=0, le=1)


@SERVER_OPTIMISERS.register("sgd", SgdParams)
def sgd(p: SgdParams) -> Stage:
    """x <- x + lr_t * v, v <- momentum * v + g (FedAvgM when momentum > 0; Hsu et al. 2019),
    lr_t = lr * decay^(t - 1)."""

    def init(d: int) -> Tensor | None:
        return torch.zeros(d) if p.momentum > 0 else None

    def update(g: Tensor, velocity: Any, info: RoundInfo) -> tuple[Tensor, Any]:
        lr = p.lr * p.decay ** (info.round - 1)
        if velocity is None:
            return lr * g, None
        velocity = p.momentum * velocity.to(g) + g
        return lr * velocity, velocity

    return Stage(init, update)
