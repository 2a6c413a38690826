"""Flag aggregator (Almasi, Mishra, Vamanan, Ravi, ICLR 2024): the flag median of the directions.

The rule, as the authors' code runs it (notes/algorithms.md §1.2): normalise the updates,
x_i = u_i/‖u_i‖; find the r-dimensional subspace Y (d×r, orthonormal) that minimises
Σ_i sin θ_i (θ_i the angle between x_i and Y; the flag median) plus, for λ > 0, a pairwise term,
by iteratively reweighted least squares (FlagIRLS): each step takes the top-r left singular
vectors of A = [a_1 … a_p, a_ij …], with a_i = (s_i + ε)^(-1/4) x_i, s_i = |1 − ‖Yᵀx_i‖²|, and for
every ordered pair i ≠ j, a_ij = λ/(p(p−1)) · (s_ij + ε)^(-1/4) (x_i − x_j),
s_ij = |1 − ‖Yᵀ(x_i − x_j)‖²|. The loop stops early when the objective Σ_i sin θ_i stops
decreasing, and returns the previous Y if the last step increased it. The output is a
combination of the projections Y Yᵀ x_i (``output`` below).

Computation. Every column lies in span{x_i}, so the SVD of the d×m matrix A (m = p + p(p−1) for
λ > 0) is never formed. From one Gram matrix G = U Uᵀ (``strategies.gram``, O(n²d)) the
normalised Gram D^{-1/2} G D^{-1/2} = X Xᵀ = Q Λ Qᵀ gives coordinates z_i (the rows of
Z = Q Λ^{1/2}) of the x_i in an orthonormal basis E of their span (X = Z E). In those k ≤ p
coordinates A Aᵀ becomes the k×k matrix Zᵀ (diag(w) + 2c² (diag(W 1) − W)) Z with the IRLS
weights w_i = (s_i + ε)^(-1/2), W_ij = (s_ij + ε)^(-1/2) and c = λ/(p(p−1)), whose top-r
eigenvectors V give Y = Eᵀ V. Each IRLS step costs O(p³); the output is one pass over U
(a combination of its rows). The eigendecomposition (not a Cholesky factor) keeps identical or
collinear updates exact: eigenvalues below the Gram's rounding level are dropped, and r larger
than the rank k means Y is the whole span (the extra singular vectors of the SVD form are
orthogonal to every x_i and change nothing). The O(p³) part runs on the CPU in float64
(in torch: numpy's OpenBLAS threads would contend with torch's own).

Initialisation. The authors' code starts from a random Y drawn with a fixed seed in R^d. That is
not reproducible in coefficient space and depends on the order of the clients, so this port
starts deterministically from the solution with every IRLS weight set to 1: the flag mean of
the same columns (for λ = 0, the top-r eigenvectors of X Xᵀ, i.e. the top-r principal
directions of the x_i). This is also what the SVD reference below does.

Zero updates are dropped (weight 0) and p counts the non-zero ones.
"""

from __future__ import annotations

import math
from typing import Literal, NamedTuple

import torch
from pydantic import NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt
from torch import Tensor

from fedsim.registry import AGGREGATORS, Params
from strategies.gram import checked_gram
from strategies.pipeline import RoundInfo, Stage, stateless

Output = Literal["norm_preserving", "paper"]
# The authors' loop conditions: stop when the objective changes by less than this, or is this small.
_STOP = 1e-10


class FlagParams(Params):
    r: PositiveInt | None = None  # subspace dimension; None: ceil(n/2), as the paper's scripts
    lam: NonNegativeFloat = 0.0  # λ, weight of the pairwise term (0 in the paper's main runs)
    iterations: NonNegativeInt = 5  # IRLS steps after the init (the authors' code: 1, first 4)
    eps: PositiveFloat = 1e-7  # ε in the IRLS weights (s + ε)^(-1/2), as the authors' code
    init: Literal["data"] = "data"  # deterministic: the flag mean (every IRLS weight 1)
    # norm_preserving: median ‖u_i‖ · mean_i Y Yᵀ x_i; paper: (1/r) Σ_i Y Yᵀ x_i (see `flag`)
    output: Output = "norm_preserving"


class FlagFit(NamedTuple):
    """The flag subspace of a set of updates, in coefficients of the updates."""

    coef: Tensor  # (n, r') float64: Y = Uᵀ coef has orthonormal columns; r' = min(r, rank)
    ratios: Tensor  # (n,) float64: reconstruction ratios ‖Yᵀx_i‖² (0 for zero updates)
    steps: int  # IRLS steps taken after the init


def default_r(n: int) -> int:
    """ceil(n/2), at least 1: the paper's scripts use r ≈ p/2 (8 of 15, 16 of 30, 32 of 60)."""
    return max(1, math.ceil(n / 2))


def flag_fit(
    g: Tensor,
    r: int,
    lam: float = 0.0,
    iterations: int = 5,
    eps: float = 1e-7,
    rank_rtol: float = 1e-5,
) -> FlagFit:
    """FlagIRLS in coefficient space from the Gram matrix ``g`` = U Uᵀ (n, n) of the updates.

    Directions whose eigenvalue in the normalised Gram is below ``rank_rtol`` times the largest
    are treated as rounding noise and dropped (identical or collinear updates).
    """
    g = g.detach().to("cpu", torch.float64)
    n = g.shape[0]
    sq = g.diagonal()
    kept = (sq > 0).nonzero().squeeze(1)
    if kept.numel() == 0:
        return FlagFit(torch.zeros(n, 0, dtype=g.dtype), torch.zeros(n, dtype=g.dtype), 0)
    inv_norm = sq[kept].rsqrt()
    gn = g[kept][:, kept] * inv_norm[:, None] * inv_norm[None, :]
    evals, evecs = torch.linalg.eigh(gn)  # ascending
    rank = int((evals > rank_rtol * evals[-1]).sum())
    evals, evecs = evals[-rank:], evecs[:, -rank:]
    z = evecs * evals.sqrt()  # (p, k): x_i = Eᵀ z_i for an orthonormal basis E of span{x_i}
    v, steps = _irls(z, min(r, rank), lam, iterations, eps)
    coef = torch.zeros(n, v.shape[1], dtype=g.dtype)
    coef[kept] = inv_norm[:, None] * ((evecs / evals.sqrt()) @ v)  # Y = Eᵀ V = Uᵀ coef
    ratios = torch.zeros(n, dtype=g.dtype)
    ratios[kept] = (z @ v).square().sum(1)
    return FlagFit(coef, ratios, steps)


def _irls(z: Tensor, r: int, lam: float, iterations: int, eps: float) -> tuple[Tensor, int]:
    """FlagIRLS on points z_i (rows of z, unit norm up to the dropped noise): V (k, r), steps."""
    p = z.shape[0]
    c2 = (lam / (p * (p - 1))) ** 2 if lam > 0 and p > 1 else 0.0

    def top(w: Tensor, w_pairs: Tensor | None) -> Tensor:
        # A Aᵀ in coordinates: Σ_i w_i z_i z_iᵀ + c² Σ_{i≠j} W_ij (z_i − z_j)(z_i − z_j)ᵀ; the
        # ordered-pair sum of a symmetric W is twice its graph Laplacian's quadratic form.
        m = (z.T * w) @ z
        if w_pairs is not None:
            laplacian = torch.diag(w_pairs.sum(1)) - w_pairs
            m = m + 2 * c2 * (z.T @ laplacian @ z)
        return torch.linalg.eigh((m + m.T) / 2).eigenvectors[:, -r:]

    def weights(proj: Tensor) -> tuple[Tensor, Tensor | None]:  # proj = Z V
        w = ((1 - proj.square().sum(1)).abs() + eps).pow(-0.5)
        if not c2:
            return w, None
        inner = proj @ proj.T
        diag = inner.diagonal()
        pair_sq = diag[:, None] + diag[None, :] - 2 * inner  # ‖Vᵀ(z_i − z_j)‖²
        w_pairs = ((1 - pair_sq).abs() + eps).pow(-0.5)
        return w, w_pairs.fill_diagonal_(0)

    def objective(proj: Tensor) -> float:  # Σ_i sin θ_i
        return float((1 - proj.square().sum(1)).clamp_min(0).sqrt().sum())

    unit_pairs = torch.ones(p, p, dtype=z.dtype).fill_diagonal_(0) if c2 else None
    v = top(torch.ones(p, dtype=z.dtype), unit_pairs)
    proj = z @ v
    previous, err, diff, steps = v, objective(proj), 1.0, 0
    while steps < iterations and diff > _STOP and err > _STOP:
        previous, v = v, top(*weights(proj))
        proj = z @ v
        new_err = objective(proj)
        diff, err, steps = err - new_err, new_err, steps + 1
    return (v if diff > 0 else previous), steps


def _resolve_r(r: int | None, n: int) -> int:
    if n < 1:
        raise ValueError(f"flag needs at least one update, got n={n}")
    r = default_r(n) if r is None else r
    if r > n:
        raise ValueError(f"flag needs r <= n, got r={r}, n={n}")
    return r


def _scale(output: Output, r: int, norms: Tensor) -> float:
    """Factor on Σ_i Y Yᵀ x_i: 1/r (paper) or median ‖u_i‖ / p over the non-zero updates."""
    if output == "paper":
        return 1 / r
    nonzero = norms[norms > 0]
    return float(nonzero.quantile(0.5)) / nonzero.numel() if nonzero.numel() else 0.0


@AGGREGATORS.register("flag", FlagParams)
def flag(p: FlagParams) -> Stage:
    """Flag aggregator (Almasi et al., ICLR 2024): project onto the flag median of the directions.

    ``output``: the authors' code returns (1/r) Y Yᵀ Σ_i x_i, a sum of p projected *unit* vectors
    over r. Applied to federated *deltas* with FedAvg's server lr of 1, that step's length grows
    with p/r and ignores how far the clients moved (they tune lr 0.2 with momentum for it).
    The default ``norm_preserving`` keeps the same direction and the updates' scale:
    median_i ‖u_i‖ · (1/p) Σ_i Y Yᵀ x_i. When the clients' norms are equal this is exactly the
    projection of the mean update onto Y (n identical updates give that update); unlike
    Y Yᵀ mean(u) it stays scale-free per client, so one client cannot lengthen the step by
    sending a huge update inside the subspace. Sample counts are ignored, as in the paper.
    """

    def aggregate(updates: Tensor, info: RoundInfo) -> Tensor:
        g = checked_gram(updates, "flag").to("cpu")
        r = _resolve_r(p.r, updates.shape[0])
        rank_rtol = min(1e-2, 10 * g.shape[0] * torch.finfo(updates.dtype).eps)
        fit = flag_fit(g, r, p.lam, p.iterations, p.eps, rank_rtol)
        norms = g.diagonal().clamp_min(0).sqrt()
        inv_norm = torch.where(norms > 0, 1 / norms, torch.zeros_like(norms))
        # Σ_i Y Yᵀ x_i = Uᵀ coef coefᵀ U Σ_i u_i/‖u_i‖ = Uᵀ (coef coefᵀ G inv_norm)
        beta = fit.coef @ (fit.coef.T @ (g @ inv_norm)) * _scale(p.output, r, norms)
        return beta.to(updates.device, updates.dtype) @ updates

    return stateless(aggregate)


def _flag_svd_reference(
    updates: Tensor,
    r: int | None = None,
    lam: float = 0.0,
    iterations: int = 5,
    eps: float = 1e-7,
    output: Output = "norm_preserving",
) -> Tensor:
    """The same rule the authors' way: explicit d×m columns and a thin SVD per step.

    For tests (the coefficient-space form must match it) and the cost benchmark only: it costs
    O(d m²) per step and, for λ > 0, holds d×p(p−1) floats. Same deterministic init as ``flag``.
    """
    r = _resolve_r(r, updates.shape[0])
    norms = updates.norm(dim=1)
    nonzero = norms > 0
    x = (updates[nonzero] / norms[nonzero, None]).T  # (d, p) unit columns
    p = x.shape[1]
    c = lam / (p * (p - 1)) if lam > 0 and p > 1 else 0.0
    if c:
        i, j = torch.tensor([(i, j) for i in range(p) for j in range(p) if i != j]).T
        diffs = x[:, i] - x[:, j]  # (d, p(p-1)), every ordered pair

    def flag_mean(scale: Tensor, pair_scale: Tensor | None) -> Tensor:
        a = x * scale
        if c and pair_scale is not None:
            a = torch.cat([a, diffs * (c * pair_scale)], dim=1)
        return torch.linalg.svd(a, full_matrices=False)[0][:, :r]

    def step(y: Tensor) -> Tensor:
        s = (1 - (y.T @ x).square().sum(0)).abs()
        pair_scale = ((1 - (y.T @ diffs).square().sum(0)).abs() + eps) ** -0.25 if c else None
        return flag_mean((s + eps) ** -0.25, pair_scale)

    def objective(y: Tensor) -> float:
        return float((1 - (y.T @ x).square().sum(0)).clamp_min(0).sqrt().sum())

    ones = torch.ones(p, dtype=x.dtype, device=x.device)
    y = flag_mean(ones, torch.ones(p * (p - 1), dtype=x.dtype, device=x.device) if c else None)
    previous, err, diff, steps = y, objective(y), 1.0, 0
    while steps < iterations and diff > _STOP and err > _STOP:
        previous, y = y, step(y)
        new_err = objective(y)
        diff, err, steps = err - new_err, new_err, steps + 1
    y = y if diff > 0 else previous
    return (y @ (y.T @ x.sum(1))) * _scale(output, r, norms)
