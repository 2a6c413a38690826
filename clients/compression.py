"""What a client does to its update before sending it: top-k sparsification with error feedback.

Registered in ``fedsim.registry.COMPRESSORS`` (scenario key ``compression``). Pure torch: the
residual is handed in and returned; the caller keeps it in the client's state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated

import torch
from pydantic import Field
from torch import Tensor

from fedsim.registry import COMPRESSORS, Params


@dataclass(frozen=True)
class Compressed:
    """The part of an update that is sent (zeros elsewhere), where it is non-zero by choice, and
    what is kept back for later rounds (None without error feedback)."""

    sent: Tensor
    support: Tensor  # bool, True where ``sent`` carries a chosen entry
    residual: Tensor | None


def topk_with_feedback(update: Tensor, residual: Tensor | None, k: int) -> Compressed:
    """Error-feedback top-k (Stich et al., 2018; Lin et al., 2018, DGC):
    a = r + Δ; send S = the k entries of a of largest |·| (zeros never); keep r' = a − S.

    Without a residual (None) the update alone is compressed and nothing is kept.
    """
    total = update if residual is None else residual + update
    support = torch.zeros(total.numel(), dtype=torch.bool, device=total.device)
    if k > 0:
        support[total.abs().topk(min(k, total.numel()), sorted=False).indices] = True
    support &= total != 0  # a k above the non-zero count (a sparse model's update) sends no zeros
    sent = torch.where(support, total, torch.zeros_like(total))
    return Compressed(sent, support, None if residual is None else total - sent)


class NoneParams(Params):
    pass


class TopKParams(Params):
    ratio: Annotated[float, Field(gt=0.0, le=1.0)]  # ρ: fraction of the entries sent
    error_feedback: bool = True  # keep what was not sent and add it to the next update


@dataclass(frozen=True)
class Compressor:
    """``ratio`` None sends the update whole."""

    ratio: float | None = None
    error_feedback: bool = False

    @property
    def active(self) -> bool:
        return self.ratio is not None

    def compress(self, update: Tensor, residual: Tensor | None) -> Compressed:
        if self.ratio is None:
            return Compressed(update, update != 0, None)
        k = math.ceil(self.ratio * update.numel())
        if self.error_feedback and residual is None:
            residual = torch.zeros_like(update)
        return topk_with_feedback(update, residual if self.error_feedback else None, k)


@COMPRESSORS.register("none", NoneParams)
def none(p: NoneParams) -> Compressor:
    """Send updates whole."""
    return Compressor()


@COMPRESSORS.register("topk", TopKParams)
def topk(p: TopKParams) -> Compressor:
    """Top-k sparsification (ratio ρ) of each client's update, with error feedback."""
    return Compressor(p.ratio, p.error_feedback)
