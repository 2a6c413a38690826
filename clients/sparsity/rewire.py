"""Drop-and-grow of a sparse layer at constant density: RigL (gradient) and SET (random) growth."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from clients.sparsity.masks import top_mask


def drop_and_grow(weight: Tensor, mask: Tensor, grow_score: Tensor, fraction: float) -> Tensor:
    """The new mask: drop the ``⌊fraction · active⌋`` active entries of smallest |weight|, then
    grow as many among the entries not kept, those of largest ``grow_score``.

    As in RigL's reference code, an entry just dropped may be grown back; the count of active
    entries never changes.
    """
    active = int(mask.sum())
    drop = math.floor(fraction * active)
    if drop == 0:
        return mask
    keep_score = weight.detach().abs().masked_fill(~mask, -math.inf)
    kept = top_mask(keep_score, active - drop)
    grown = top_mask(grow_score.masked_fill(kept, -math.inf), drop)
    return kept | grown


def gradient_score(grad: Tensor) -> Tensor:
    """RigL: grow where the dense gradient's magnitude is largest."""
    return grad.abs()


def random_score(like: Tensor, generator: torch.Generator) -> Tensor:
    """SET: grow uniformly at random (scores drawn on the CPU from ``generator``)."""
    return torch.rand(like.shape, generator=generator).to(like.device)
