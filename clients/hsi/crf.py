"""The CRF on a pixel grid: 8-neighbour edges, labelled pairs, mean-field inference.

Energy over ordered neighbour pairs (both directions of every edge, each its own factor):
``E(y) = −Σ_p z^U_p[y_p] − Σ_{(p,q)} z^V_pq[y_p, y_q]``, ``P(y) ∝ exp(−E(y))``. The mean-field
update of a node collects both factors it takes part in (as first and as second end):
``Q_p(y) ∝ exp(z^U_p[y] + Σ_{(p,q)} Σ_y' z^V_pq[y, y'] Q_q(y')
+ Σ_{(q,p)} Σ_y' z^V_qp[y', y] Q_q(y'))``.
(The notes' update keeps the first sum only, which is not the mean-field update of this energy.)
Updates are parallel (all nodes at once), from ``Q⁰ = softmax(z^U)``.
"""

from __future__ import annotations

import torch
from torch import Tensor

NEIGHBOURS = tuple((dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0))


def grid_edges(height: int, width: int, device: torch.device | None = None) -> Tensor:
    """Ordered 8-neighbour pairs (E, 2) of flat pixel indices (row-major), both directions."""
    ys, xs = torch.meshgrid(
        torch.arange(height, device=device), torch.arange(width, device=device), indexing="ij"
    )
    out = []
    for dy, dx in NEIGHBOURS:
        qy, qx = ys + dy, xs + dx
        ok = (qy >= 0) & (qy < height) & (qx >= 0) & (qx < width)
        out.append(torch.stack([(ys * width + xs)[ok], (qy * width + qx)[ok]], dim=1))
    return torch.cat(out)


def labelled_pairs(mask: Tensor) -> Tensor:
    """The ordered 8-neighbour pairs (P, 2) with both ends in ``mask`` (h, w)."""
    h, w = mask.shape
    edges = grid_edges(h, w, mask.device)
    flat = mask.flatten()
    return edges[flat[edges[:, 0]] & flat[edges[:, 1]]]


def mean_field(unary: Tensor, edges: Tensor, pairwise: Tensor, iterations: int) -> Tensor:
    """Q (N, C) after ``iterations`` parallel updates; ``unary`` (N, C) logits z^U, ``edges``
    (E, 2) ordered pairs (p, q), ``pairwise`` (E, C, C) logits z^V_pq[y_p, y_q]."""
    q = torch.softmax(unary, dim=1)
    p_end, q_end = edges[:, 0], edges[:, 1]
    for _ in range(iterations):
        message = torch.zeros_like(unary)
        message.index_add_(0, p_end, torch.einsum("eab,eb->ea", pairwise, q[q_end]))
        message.index_add_(0, q_end, torch.einsum("eab,ea->eb", pairwise, q[p_end]))
        q = torch.softmax(unary + message, dim=1)
    return q
