"""Re-ID losses: CE with label smoothing, batch-hard soft-margin triplet, soft CE (mean teacher).

Follows ``notes/workloads-precise.md`` §1.2 (pre-training: "CE-with-label-smoothing (ε = 0.1) ...
+ batch-hard soft triplet (margin 0 → softplus form)"; adaptation: ``SCE(p, q)``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

# Label -1 marks a DBSCAN outlier (clients/reid/pseudo_labels.py): never a training target.
IGNORE = -1


def cross_entropy_ls(logits: Tensor, labels: Tensor, epsilon: float = 0.1) -> Tensor:
    """Cross-entropy against ``(1 − ε)·onehot + ε/C`` (§1.2, ε = 0.1); labels -1 are ignored.

    torch's ``label_smoothing`` is the same target as MMT's ``CrossEntropyLabelSmooth``.
    """
    return F.cross_entropy(logits, labels, label_smoothing=epsilon, ignore_index=IGNORE)


def euclidean_distances(x: Tensor) -> Tensor:
    """Pairwise ``‖x_i − x_j‖`` (n, n); the square is clamped at 1e-12 (finite gradient at 0)."""
    sq = (x * x).sum(dim=1)
    d2 = sq[:, None] + sq[None, :] - 2.0 * (x @ x.T)
    return d2.clamp_min(1e-12).sqrt()


def batch_hard_triplet(features: Tensor, labels: Tensor, normalize: bool = False) -> Tensor:
    """Batch-hard soft-margin triplet loss, ``mean_i softplus(max_p d(i, p) − min_n d(i, n))``.

    Hardest positive: the farthest sample of the same label (itself excluded); hardest negative:
    the nearest of another label. Anchors with no positive or no negative, and samples labelled -1,
    are left out; with no anchor left the loss is 0 (still attached to the graph).
    Soft margin = MMT's ``TripletLoss`` with margin 0 (``SoftMarginLoss(d_an − d_ap, 1)``).
    """
    if features.shape[0] != labels.shape[0]:
        raise ValueError(
            f"features and labels must have the same length, got {features.shape[0]} "
            f"and {labels.shape[0]}"
        )
    keep = labels != IGNORE
    x, y = features[keep], labels[keep]
    if normalize:
        x = F.normalize(x, dim=1)
    valid = _anchors(y)
    if not bool(valid.any()):
        return features.sum() * 0.0
    d_ap, d_an, _, _ = _hardest(euclidean_distances(x), y)
    return F.softplus(d_ap[valid] - d_an[valid]).mean()


def _anchors(y: Tensor) -> Tensor:
    """The samples of labels ``y`` that have a positive and a negative in the batch."""
    same = y[:, None] == y[None, :]
    return (same.sum(dim=1) > 1) & ~same.all(dim=1)


def _hardest(d: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per anchor of distances ``d`` and labels ``y``: the hardest positive's (farthest of the
    same label, itself excluded) and negative's (nearest of another) distances and columns."""
    same = y[:, None] == y[None, :]
    eye = torch.eye(y.shape[0], dtype=torch.bool, device=y.device)
    d_ap, i_ap = torch.where(same & ~eye, d, torch.full_like(d, -torch.inf)).max(dim=1)
    d_an, i_an = torch.where(~same, d, torch.full_like(d, torch.inf)).min(dim=1)
    return d_ap, d_an, i_ap, i_an


def soft_triplet(features: Tensor, teacher_features: Tensor, labels: Tensor) -> Tensor:
    """MMT's soft triplet loss (margin None): the student's ``log_softmax(d_ap, d_an)`` against
    the teacher's ``softmax`` of its distances between the same (hardest, by the student's
    distances) pairs, summed over the two entries and averaged over anchors; teacher detached.
    Anchors with no positive or no negative, and samples labelled -1, are left out."""
    keep = labels != IGNORE
    x, t, y = features[keep], teacher_features[keep].detach(), labels[keep]
    valid = _anchors(y)
    if not bool(valid.any()):
        return features.sum() * 0.0
    d_ap, d_an, i_ap, i_an = _hardest(euclidean_distances(x), y)
    dt = euclidean_distances(t)
    rows = torch.arange(y.shape[0], device=y.device)
    student = F.log_softmax(torch.stack((d_ap, d_an), dim=1)[valid], dim=1)
    teacher = torch.softmax(torch.stack((dt[rows, i_ap], dt[rows, i_an]), dim=1)[valid], dim=1)
    return -(teacher * student).sum(dim=1).mean()


def soft_cross_entropy(logits: Tensor, teacher_logits: Tensor) -> Tensor:
    """``SCE(p, q) = −mean_i Σ_c softmax(q)_c log softmax(p)_c`` (§1.2), teacher detached."""
    target = torch.softmax(teacher_logits.detach(), dim=1)
    return -(target * F.log_softmax(logits, dim=1)).sum(dim=1).mean()
