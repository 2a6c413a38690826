"""Open-set evaluation: accept the top class when the max probability reaches τ, else "unknown".

As DAML's ``validate.py`` measures it (``notes/workloads-precise.md`` §2.2): known accuracy is
sample-level (known-class samples classified into their class and not rejected, over all
known-class samples), unknown accuracy the share of unknown samples rejected, H = 2ku/(k+u).
Class-averaged accuracy averages every target class, each unknown class on its own. The paper's τ
is an oracle (best of 10 evenly spaced values on the target test set); the fair τ here is a
declared quantile of the max probability on held-out *source* samples.
"""

from __future__ import annotations

import torch
from torch import Tensor

UNKNOWN = -1


def h_score(known: float, unknown: float) -> float:
    """Harmonic mean of the known and unknown accuracies (0 when both are 0)."""
    return 0.0 if known + unknown == 0 else 2 * known * unknown / (known + unknown)


def open_set_metrics(
    probs: Tensor, labels: Tensor, classes: Tensor, tau: float
) -> dict[str, float]:
    """Accuracies of thresholded predictions; ``labels`` UNKNOWN for unknown-class samples,
    ``classes`` the original class ids (for the class average)."""
    confidence, top = probs.max(dim=1)
    predicted = torch.where(confidence >= tau, top, torch.full_like(top, UNKNOWN))
    correct = predicted == labels
    known = labels != UNKNOWN
    acc_known = float(correct[known].float().mean()) if bool(known.any()) else 0.0
    acc_unknown = float(correct[~known].float().mean()) if bool((~known).any()) else 0.0
    per_class = [float(correct[classes == c].float().mean()) for c in torch.unique(classes)]
    return {
        "acc_known": acc_known,
        "acc_unknown": acc_unknown,
        "h_score": h_score(acc_known, acc_unknown),
        "open_accuracy": float(correct.float().mean()),
        "class_avg_accuracy": sum(per_class) / len(per_class),
    }


def fair_tau(source_probs: Tensor, quantile: float) -> float:
    """τ = the ``quantile`` of the max probability on held-out source samples: that share of
    known-class source samples would be rejected."""
    return float(torch.quantile(source_probs.max(dim=1).values.double(), quantile))


def oracle(probs: Tensor, labels: Tensor, classes: Tensor, steps: int = 10) -> dict[str, float]:
    """The paper's oracle: τ over ``steps`` evenly spaced values between the min and max of the
    target's max probability; the best H-score, accuracy and class average, each at its own τ."""
    confidence = probs.max(dim=1).values
    grid = torch.linspace(float(confidence.min()), float(confidence.max()), steps).tolist()
    runs = [(tau, open_set_metrics(probs, labels, classes, tau)) for tau in grid]
    best_tau, best = max(runs, key=lambda r: r[1]["h_score"])
    return {
        "oracle_tau": best_tau,
        "oracle_h_score": best["h_score"],
        "oracle_acc_known": best["acc_known"],
        "oracle_acc_unknown": best["acc_unknown"],
        "oracle_open_accuracy": max(m["open_accuracy"] for _, m in runs),
        "oracle_class_avg_accuracy": max(m["class_avg_accuracy"] for _, m in runs),
    }
