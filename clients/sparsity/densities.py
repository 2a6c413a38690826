"""Per-layer densities for a global target: uniform, or Erdős–Rényi-Kernel (Evci et al., 2020)."""

from __future__ import annotations

import math
from collections.abc import Mapping


def uniform_densities(shapes: Mapping[str, tuple[int, ...]], density: float) -> dict[str, float]:
    return dict.fromkeys(shapes, density)


def erk_densities(
    shapes: Mapping[str, tuple[int, ...]], density: float, power: float = 1.0
) -> dict[str, float]:
    """ERK: density_l = ε · (Σ dims_l / Π dims_l)^power, ε chosen so that the kept weights total
    ``density · Σ numel``; a layer whose density would exceed 1 is made dense and ε re-solved
    over the others (the loop of RigL's reference code, ``sparse_utils.get_sparsities``).
    """
    if not 0.0 < density <= 1.0:
        raise ValueError(f"density must lie in (0, 1], got {density}")
    numel = {n: math.prod(s) for n, s in shapes.items()}
    raw = {n: (sum(s) / numel[n]) ** power for n, s in shapes.items()}
    dense: set[str] = set()
    while True:
        # Weights the sparse layers must keep: the target minus what the dense layers keep.
        budget = density * sum(numel.values()) - sum(numel[n] for n in dense)
        divisor = sum(raw[n] * numel[n] for n in shapes if n not in dense)
        epsilon = budget / divisor if divisor else 0.0
        over = [n for n in shapes if n not in dense and epsilon * raw[n] > 1.0]
        if not over:
            break
        top = max(raw[n] for n in over)
        dense.update(n for n in over if raw[n] == top)
    return {n: 1.0 if n in dense else epsilon * raw[n] for n in shapes}
