"""Centered clipping: move from last round's aggregate by the mean of clipped differences."""

from __future__ import annotations

import torch
from pydantic import Field, PositiveInt
from torch import Tensor

from fedsim.registry import AGGREGATORS, Params
from strategies.pipeline import RoundInfo, Stage


class CenteredClippingParams(Params):
    tau: float = Field(10.0, gt=0)  # clipping radius around the centre (L2 norm of u_i − v)
    iterations: PositiveInt = 1  # clipping steps per round (the paper uses 1)


def clip_rows(rows: Tensor, tau: float) -> Tensor:
    """Scale each row to L2 norm at most ``tau`` (zero rows stay zero)."""
    scale = (tau / torch.linalg.vector_norm(rows, dim=1)).clamp(max=1)
    return rows * scale[:, None]


@AGGREGATORS.register("centered_clipping", CenteredClippingParams)
def centered_clipping(p: CenteredClippingParams) -> Stage:
    """v ← v + mean_i clip(u_i − v, tau), starting from the previous round's output.

    Karimireddy, He and Jaggi, 2021, "Learning from history for Byzantine robust optimization".
    The state is the last output (zeros before the first round).
    """

    def init(d: int) -> Tensor:
        return torch.zeros(d)

    def update(updates: Tensor, centre: Tensor, info: RoundInfo) -> tuple[Tensor, Tensor]:
        v = centre.to(updates)
        for _ in range(p.iterations):
            v = v + clip_rows(updates - v, p.tau).mean(dim=0)
        return v, v.clone()

    return Stage(init, update)
