"""The Flag paper's "augmented data" setting: honest clients whose data is heavily corrupted."""

from __future__ import annotations

from functools import partial

import torch
from pydantic import Field
from torch import Tensor

from fedsim.registry import ATTACKS, Params
from strategies.attacks.base import DataAttack


class NoisyDataParams(Params):
    sigma: float = Field(2.0, gt=0, description="noise std, in units of the data's own std")


def _corrupt(
    x: Tensor, y: Tensor, num_classes: int, generator: torch.Generator, sigma: float
) -> tuple[Tensor, Tensor]:
    noise = torch.randn(x.shape, generator=generator).to(x.device)
    return x + sigma * x.std() * noise, y


@ATTACKS.register("noisy_data", NoisyDataParams)
def noisy_data(p: NoisyDataParams) -> DataAttack:
    """Byzantine clients train honestly on inputs with Gaussian noise of sigma data stds."""
    return DataAttack(partial(_corrupt, sigma=p.sigma))
