"""OA, AA and Cohen's κ from a confusion matrix: the only way to combine clients' scores.

OA, AA and κ are not averages of per-client scores: clients send their C×C confusion matrices,
the server sums them and scores the sum (which is scoring the pooled pixels).
"""

from __future__ import annotations

import torch
from torch import Tensor


def confusion(truth: Tensor, predicted: Tensor, classes: int) -> Tensor:
    """M (C, C) float64, M[i, j] = pixels of true class i predicted j."""
    flat = truth.long().flatten() * classes + predicted.long().flatten()
    counts = torch.bincount(flat.cpu(), minlength=classes * classes)
    return counts.reshape(classes, classes).to(torch.float64)


def scores(m: Tensor, prefix: str = "", suffix: str = "") -> dict[str, float]:
    """``oa`` = Σ M_cc / N; ``aa`` = the mean over classes with test pixels of M_cc / Σ_j M_cj;
    ``kappa`` = (OA − p_e) / (1 − p_e), p_e = Σ_c rows_c · cols_c / N² (1 when p_e = 1 and every
    pixel is right, else 0); ``acc_class{c}`` for every class with test pixels. {} when N = 0."""
    m = m.to(torch.float64)
    n = float(m.sum())
    if n == 0:
        return {}
    rows, cols, right = m.sum(dim=1), m.sum(dim=0), torch.diagonal(m)
    oa = float(right.sum()) / n
    present = rows > 0
    per_class = right[present] / rows[present]
    p_e = float((rows * cols).sum()) / n**2
    kappa = (oa - p_e) / (1 - p_e) if p_e < 1 else float(oa == 1.0)
    out = {"oa": oa, "aa": float(per_class.mean()), "kappa": kappa}
    for c in torch.nonzero(present).flatten().tolist():
        out[f"acc_class{c}"] = float(right[c] / rows[c])
    return {f"{prefix}{k}{suffix}": v for k, v in out.items()}
