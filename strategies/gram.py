"""One Gram matrix per round: the rules that compare clients (Krum, Bulyan, NNM, Flag, MGDA,
CAGrad) need only G = U Uᵀ, one BLAS-3 pass over the updates (O(n²d)), then O(n³) work.

``gram(U)`` computes G once per tensor and remembers it, so a pipeline of several such stages
pays for one pass. A stage whose output is a linear map of its input (``M U``: nearest-neighbour
mixing, bucketing) hands the next stage ``M G Mᵀ`` with ``remember`` instead of a second pass.
"""

from __future__ import annotations

import weakref
from collections import deque

import torch
from torch import Tensor

_CACHE_SIZE = 4
# (the tensor, weakly; its version counter when G was computed; G)
_cache: deque[tuple[weakref.ref[Tensor], int, Tensor]] = deque(maxlen=_CACHE_SIZE)


def gram(updates: Tensor) -> Tensor:
    """G = U Uᵀ in float64 (n, n), computed in U's dtype (no upcast of U) and cached."""
    for ref, version, g in _cache:
        if ref() is updates and updates._version == version:
            return g
    g = (updates @ updates.T).to(torch.float64)
    g = (g + g.T) / 2  # exactly symmetric, whatever the BLAS did
    remember(updates, g)
    return g


def checked_gram(updates: Tensor, rule: str) -> Tensor:
    """``gram(updates)`` for a rule that weights the rows by it: refuses a shape other than
    (n ≥ 1, d) and non-finite updates, naming the rule."""
    if updates.ndim != 2 or updates.shape[0] < 1:
        raise ValueError(f"{rule} needs updates of shape (n, d), n ≥ 1, got {tuple(updates.shape)}")
    g = gram(updates)
    if not torch.isfinite(g).all():
        raise ValueError(f"{rule} needs finite updates; their Gram matrix is not finite")
    return g


def remember(updates: Tensor, g: Tensor) -> None:
    """Record that ``g`` is the Gram matrix of ``updates`` (e.g. M G Mᵀ for updates = M U)."""
    _cache.append((weakref.ref(updates), updates._version, g))


def squared_distances(g: Tensor) -> Tensor:
    """‖u_i − u_j‖² from G: G_ii + G_jj − 2 G_ij, clamped at 0 against rounding."""
    diag = g.diagonal()
    return (diag[:, None] + diag[None, :] - 2 * g).clamp_min(0).fill_diagonal_(0)
