"""DAML's label- and feature-level domain augmentation: distilled soft labels and Dirichlet mixup.

Shu et al., CVPR 2021, as the official code computes them (``notes/workloads-precise.md`` §2.2).
Random draws come from numpy generators so that each source domain (and each expert) can have a
stream of its own, whichever client computes it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


def soft_cross_entropy(logits: Tensor, target: Tensor) -> Tensor:
    """Cross-entropy against soft labels (rows summing to one), batch mean."""
    return -(target * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


def distilled_soft_labels(
    others: Sequence[Tensor], temperature: float, rng: np.random.Generator
) -> Tensor:
    """q = Σ_m π_m softmax(z_m / T), π ~ Dir(1, …, 1) per sample, over the other experts' logits
    ``others`` (each (B, C)); detached: the soft label is a target, not a path for gradients."""
    batch = others[0].shape[0]
    pi = torch.from_numpy(rng.dirichlet(np.ones(len(others)), size=batch).astype(np.float32))
    pi = pi.to(others[0].device)
    probs = torch.stack([F.softmax(z.detach() / temperature, dim=1) for z in others], dim=1)
    return (pi[:, :, None] * probs).sum(dim=1)


def distillation(student: Tensor, soft: Tensor, temperature: float) -> Tensor:
    """T² · KL(soft ‖ softmax(student / T)), batch mean (``KLDivLoss(reduction='batchmean')``)."""
    log_student = F.log_softmax(student / temperature, dim=1)
    kl = F.kl_div(log_student, soft, reduction="batchmean")
    return temperature**2 * kl


def dirichlet_concentration(expert: int, domains: int, own: float, others: float) -> np.ndarray:
    """α over the domains for mixing through ``expert``: ``own`` at the expert's domain."""
    alpha = np.full(domains, others)
    alpha[expert] = own
    return alpha


def dirichlet_mixup(
    features: Sequence[Tensor],
    labels: Sequence[Tensor],
    alpha: np.ndarray,
    rng: np.random.Generator,
) -> tuple[Tensor, Tensor]:
    """Mix one batch per domain with per-sample weights λ ~ Dir(α).

    ``features[d]`` (B, D) and ``labels[d]`` (B, C) soft or one-hot rows are the d-th domain's
    batch, each permuted independently; returns f̃ = Σ_d λ_d f_d[perm_d] and ỹ = Σ_d λ_d y_d[perm_d].
    """
    batch = features[0].shape[0]
    lam = torch.from_numpy(rng.dirichlet(alpha, size=batch).astype(np.float32))
    lam = lam.to(features[0].device)
    mixed_f = torch.zeros_like(features[0])
    mixed_y = torch.zeros_like(labels[0])
    for d, (f, y) in enumerate(zip(features, labels, strict=True)):
        perm = torch.from_numpy(rng.permutation(batch)).to(f.device)
        mixed_f = mixed_f + lam[:, d : d + 1] * f[perm]
        mixed_y = mixed_y + lam[:, d : d + 1] * y[perm]
    return mixed_f, mixed_y
