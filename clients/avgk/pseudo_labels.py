"""Pseudo-labels of the multi-label head: the true label plus the most probable other labels of
the detached softmax head, K per sample on average (the reconstruction of Garcin et al.'s rule;
the paper's method text was not available, so each choice here is a workload parameter).

``batch`` scope: one threshold over the whole batch, (K − 1)·B extra positives in all, so a
sample whose softmax is spread gets several and a confident one none (the average-K structure).
``sample`` scope: each sample its own K − 1 extras (top-K per sample). A fractional (K − 1)·B is
rounded and the remainder carried to the next batch, so the mean over batches is exact.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def _rounded(x: float) -> int:
    return math.floor(x + 0.5)  # half up, not Python's half-to-even


def pseudo_labels(
    probs: Tensor, labels: Tensor, k: float, scope: str, include_true: bool, carry: float
) -> tuple[Tensor, float]:
    """(B, C) 0/1 targets from the softmax probabilities ``probs`` (detached), and the new carry.

    With ``include_true`` the true label is always positive and K − 1 extras per sample are
    spent on the others; without it K per sample are spent on all labels alike.
    """
    b = probs.shape[0]
    per_sample = k - 1 if include_true else k
    targets = torch.zeros_like(probs)
    candidates = probs.detach().clone()
    if include_true:
        targets[torch.arange(b), labels] = 1.0
        candidates[torch.arange(b), labels] = -math.inf
    budget = carry + per_sample * b
    total = _rounded(budget)
    if scope == "batch":
        chosen = candidates.flatten().topk(total).indices
        targets.view(-1)[chosen] = 1.0
    elif scope == "sample":
        # Sample i's extras: the rounded running budget after it minus that before it.
        running = [_rounded(carry + per_sample * i) for i in range(b + 1)]
        extras = torch.tensor(running[1:]) - torch.tensor(running[:-1])
        ranks = candidates.argsort(dim=1, descending=True).argsort(dim=1)
        targets = torch.maximum(targets, (ranks < extras[:, None]).to(probs.dtype))
        total = int(extras.sum())
    else:
        raise ValueError(f"pseudo-label scope needs to be 'batch' or 'sample', got {scope!r}")
    return targets, budget - total


def two_head_loss(
    softmax_logits: Tensor,
    multilabel_logits: Tensor,
    labels: Tensor,
    targets: Tensor,
    weight: float,
    reduction: str,
) -> tuple[Tensor, Tensor]:
    """(CE of the softmax head + weight · BCE of the multi-label head on ``targets``, CE).

    ``reduction``: ``mean`` averages the BCE over all B·C entries; ``sum_classes`` sums it over
    the C labels and averages over the batch (C times larger for the same ``weight``)."""
    ce = F.cross_entropy(softmax_logits, labels)
    if weight == 0:
        return ce, ce
    bce = F.binary_cross_entropy_with_logits(multilabel_logits, targets, reduction="none")
    bce = bce.mean() if reduction == "mean" else bce.sum(dim=1).mean()
    return ce + weight * bce, ce
