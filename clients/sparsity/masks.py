"""Masks over a model's weight tensors: which tensors are prunable, magnitude pruning, densities.

A mask set is ``{name: bool tensor}`` keyed like the model's ``state_dict``; only weight tensors
(two or more dimensions: Linear and Conv weights) are pruned, biases and norms stay dense.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor

Masks = dict[str, Tensor]


def prunable(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The weight tensors of a state dict (floating point, at least 2-D), in its order."""
    return {k: v for k, v in state.items() if v.is_floating_point() and v.dim() >= 2}


def keep_count(numel: int, density: float) -> int:
    """How many of ``numel`` entries a density keeps (rounded to the nearest whole entry)."""
    if not 0.0 <= density <= 1.0:
        raise ValueError(f"density must lie in [0, 1], got {density}")
    return min(numel, round(density * numel))


def top_mask(score: Tensor, k: int) -> Tensor:
    """A bool mask of ``score``'s shape with exactly ``k`` entries set: the ``k`` largest."""
    mask = torch.zeros(score.numel(), dtype=torch.bool, device=score.device)
    if k > 0:
        mask[score.reshape(-1).topk(k, sorted=False).indices] = True
    return mask.reshape(score.shape)


def layer_top_masks(scores: Mapping[str, Tensor], densities: Mapping[str, float]) -> Masks:
    """Per tensor, keep the ``round(density · numel)`` entries of largest score."""
    return {name: top_mask(s, keep_count(s.numel(), densities[name])) for name, s in scores.items()}


def global_top_masks(scores: Mapping[str, Tensor], density: float) -> Masks:
    """Keep the ``round(density · total)`` entries of largest score across all tensors."""
    names = list(scores)
    flat = torch.cat([scores[n].reshape(-1) for n in names])
    keep = top_mask(flat, keep_count(flat.numel(), density))
    out, offset = {}, 0
    for name in names:
        size = scores[name].numel()
        out[name] = keep[offset : offset + size].reshape(scores[name].shape)
        offset += size
    return out


def magnitude_masks(
    weights: Mapping[str, Tensor], density: float, scope: str, current: Masks | None = None
) -> Masks:
    """Magnitude pruning to ``density``, ``scope`` ``layer`` (each tensor alike) or ``global``.

    Entries outside ``current`` (already pruned) are never revived: they rank below every kept one.
    """
    scores = {
        n: w.detach().abs().masked_fill(~current[n], -math.inf)
        if current is not None
        else w.detach().abs()
        for n, w in weights.items()
    }
    if scope == "layer":
        return layer_top_masks(scores, dict.fromkeys(scores, density))
    if scope == "global":
        return global_top_masks(scores, density)
    raise ValueError(f"scope must be 'layer' or 'global', got {scope!r}")


def full_masks(weights: Mapping[str, Tensor]) -> Masks:
    return {n: torch.ones_like(w, dtype=torch.bool) for n, w in weights.items()}


def density(masks: Mapping[str, Tensor]) -> float:
    """Fraction of entries kept over all masks."""
    total = sum(m.numel() for m in masks.values())
    return sum(int(m.sum()) for m in masks.values()) / total if total else 1.0


@torch.no_grad()
def apply_masks(state: Mapping[str, Tensor], masks: Mapping[str, Tensor]) -> None:
    """Zero, in place, the entries of each masked tensor that its mask drops."""
    for name, mask in masks.items():
        state[name].mul_(mask.to(state[name].device, state[name].dtype))
