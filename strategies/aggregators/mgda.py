"""MGDA / FedMGDA+: the min-norm point of the convex hull of the (normalised) client updates.

The rule (notes/algorithms.md §3.1, §3.4): λ* = argmin_λ ‖Σ_i λ_i x_i‖² over the simplex, the
output Σ_i λ_i* x_i. If it is 0 the clients are Pareto-stationary; otherwise it has a positive inner
product with every x_i (a common descent direction). FedMGDA+ normalises x_i = u_i/‖u_i‖ and
confines λ to an ε-box around the data-size weights p = n_i/Σn: |λ_i − p_i| ≤ ε. ε = 0 gives
FedAvg on the normalised updates, ε = 1 the whole simplex (plain MGDA).

Computation. Only the n×n Gram matrix G = U Uᵀ (``strategies.gram``, float64) enters: the objective
is λᵀ G λ (normalised: D^{-1/2} G D^{-1/2}). The QP is solved exactly by a primal active-set method
(``simplex_qp``: each step solves the KKT system of the current face; n is small), not by
Frank–Wolfe, whose 1e-5 stopping rule in the reference ``MinNormSolver`` leaves the weights
inexact. The output is one pass over U: (coefficients cast to U's dtype) @ U.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import Tensor

from fedsim.registry import AGGREGATORS, Params
from strategies.gram import checked_gram
from strategies.pipeline import RoundInfo, Stage, stateless

# Stationarity is tested relative to the problem's scale (G is normalised to max diagonal 1).
_TOL = 1e-12


def _symmetric_lstsq(a: Tensor, b: Tensor) -> Tensor:
    """The minimum-norm least-squares solution of a x = b for symmetric ``a``, by eigh.

    (An eigendecomposition rather than LAPACK's gelsd: several times faster on these small
    systems, and it does not contend for threads.)
    """
    evals, evecs = torch.linalg.eigh(a)
    cutoff = evals.abs().max() * a.shape[0] * torch.finfo(a.dtype).eps
    inv = torch.where(evals.abs() > cutoff, 1 / evals, torch.zeros_like(evals))
    return evecs @ (inv * (evecs.T @ b))


def simplex_qp(
    g: Tensor,
    lin: Tensor | None = None,
    lo: Tensor | None = None,
    hi: Tensor | None = None,
    start: Tensor | None = None,
) -> Tensor:
    """argmin_w wᵀ g w + linᵀ w subject to Σ w = 1 and lo ≤ w ≤ hi (default: the simplex).

    Primal active-set method for a convex QP (Nocedal & Wright, Algorithm 16.3) with bounds and
    one equality: each step minimises over the face where the working bounds hold (a KKT solve,
    by least squares so that a singular ``g`` is fine: along its null space the objective is flat
    whenever ``lin`` lies in its range, as it does here), steps as far as feasibility allows, and
    releases the bound with the most negative multiplier once the face's minimiser is reached.
    ``start`` must be feasible (default: lo plus the same fraction of every bound's slack).
    Exact up to rounding; ``g`` (n, n) PSD float64, best scaled to O(1) entries. The loop is
    capped at 20n + 100 steps (a few n in practice) against cycling on degenerate faces.
    """
    g = g.to("cpu", torch.float64)
    n = g.shape[0]
    lin = torch.zeros(n, dtype=g.dtype) if lin is None else lin.to("cpu", torch.float64)
    lo = torch.zeros(n, dtype=g.dtype) if lo is None else lo.to("cpu", torch.float64)
    hi = torch.ones(n, dtype=g.dtype) if hi is None else hi.to("cpu", torch.float64)
    if start is None:
        slack = hi - lo
        w = lo + slack * ((1 - lo.sum()) / slack.sum()) if slack.sum() > 0 else lo.clone()
    else:
        w = start.to("cpu", torch.float64).clone()
    scale = max(float(g.abs().max()), float(lin.abs().max()), 1e-300)
    tol = _TOL * scale
    # per index: 0 free, -1 at its lower bound, +1 at its upper bound, 2 fixed (lo == hi)
    state = torch.zeros(n, dtype=torch.int64)
    state[w <= lo] = -1
    state[w >= hi] = 1
    state[hi - lo <= 0] = 2
    w = torch.where(state == -1, lo, torch.where(state == 1, hi, w))
    w = torch.where(state == 2, lo, w)
    for _ in range(20 * n + 100):
        free = (state == 0).nonzero().squeeze(1)
        grad = 2 * g @ w + lin
        if free.numel() > 0:
            k = free.numel()
            kkt = torch.zeros(k + 1, k + 1, dtype=g.dtype)
            kkt[:k, :k] = 2 * g[free][:, free]
            kkt[:k, k] = 1
            kkt[k, :k] = 1
            rhs = torch.cat([-grad[free], grad.new_zeros(1)])
            sol = _symmetric_lstsq(kkt, rhs)
            step, level = sol[:k], -sol[k]  # level: the common gradient on the face's minimiser
            # ratio test: the longest step (≤ 1) that keeps every free weight within its bounds
            room = torch.where(step < 0, w[free] - lo[free], hi[free] - w[free]).clamp_min(0)
            moving = step.abs() > 1e-15
            ratios = torch.where(moving, room / step.abs().clamp_min(1e-300), torch.inf)
            first = int(ratios.argmin())
            alpha = min(1.0, float(ratios[first]))
            w = w.index_add(0, free, alpha * step)
            if float(ratios[first]) < 1:
                j, bound = int(free[first]), -1 if step[first] < 0 else 1
                state[j] = bound
                w[j] = lo[j] if bound == -1 else hi[j]
                continue
            grad = 2 * g @ w + lin
            low = float(level) - tol
            high = float(level) + tol
        else:
            # a vertex of the box face: any level between these keeps every multiplier ≥ 0
            at_hi, at_lo = grad[state == 1], grad[state == -1]
            low = float(at_hi.max()) - tol if at_hi.numel() else -float("inf")
            high = float(at_lo.min()) + tol if at_lo.numel() else float("inf")
            if low > high:  # release the lower bound with the smallest gradient
                lower = (state == -1).nonzero().squeeze(1)
                state[lower[grad[lower].argmin()]] = 0
                continue
            break
        # multipliers: grad_i − level ≥ 0 at a lower bound, level − grad_i ≥ 0 at an upper one
        violation = torch.where(state == -1, low - grad, torch.zeros_like(grad))
        violation = torch.where(state == 1, grad - high, violation)
        worst = int(violation.argmax())
        if violation[worst] <= 0:
            break
        state[worst] = 0
    return w


class MgdaParams(Params):
    # l2: each update divided by its norm before the hull (FedMGDA+, Sener & Koltun's 'l2');
    # none: the raw updates (a client with a small update then dominates the min-norm point)
    normalize: Literal["l2", "none"] = "l2"
    # FedMGDA+'s box |λ_i − p_i| ≤ ε around the data-size weights; 1: plain MGDA (whole simplex)
    epsilon: float = Field(1.0, ge=0, le=1)


def box_around(p: Tensor, epsilon: float) -> tuple[Tensor, Tensor]:
    """Bounds of FedMGDA+'s ε-box around the weights ``p`` intersected with [0, 1]."""
    return (p - epsilon).clamp_min(0), (p + epsilon).clamp_max(1)


def data_weights(info: RoundInfo, n: int) -> Tensor:
    """p_i = n_i / Σ n (float64, CPU); uniform when the counts do not fit the rows or sum to 0."""
    counts = info.num_examples.to("cpu", torch.float64)
    if counts.shape != (n,) or not counts.sum() > 0:
        return torch.full((n,), 1 / n, dtype=torch.float64)
    return counts / counts.sum()


def mgda_coefficients(g: Tensor, p: Tensor, normalize: str, epsilon: float) -> Tensor:
    """β (n,) float64 with output = βᵀ U, from the Gram matrix ``g`` = U Uᵀ alone."""
    g = g.to("cpu", torch.float64)
    n = g.shape[0]
    norms = g.diagonal().clamp_min(0).sqrt()
    if normalize == "l2":
        # a zero update stays zero: it is in the hull, so the min-norm point is 0 (stationary)
        inv = torch.where(norms > 0, 1 / norms, torch.zeros_like(norms))
        gn = g * inv[:, None] * inv[None, :]
    else:
        inv = torch.ones(n, dtype=g.dtype)
        top = float(g.diagonal().max()) if n else 0.0
        gn = g / top if top > 0 else g
    lo, hi = box_around(p, epsilon)
    w = simplex_qp((gn + gn.T) / 2, lo=lo, hi=hi, start=p)
    if normalize == "l2":
        nonzero = norms[norms > 0]
        size = float(nonzero.quantile(0.5)) if nonzero.numel() else 0.0
        return w * inv * size
    return w


@AGGREGATORS.register("mgda", MgdaParams)
def mgda(p: MgdaParams) -> Stage:
    """MGDA / FedMGDA+: the min-norm point of the hull of the normalised updates (ε-box optional).

    Désidéri, 2012; Sener & Koltun, NeurIPS 2018, "Multi-task learning as multi-objective
    optimization"; Hu et al., 2022, "Federated learning meets multi-objective optimization"
    (FedMGDA+). Exact active-set QP on the shared Gram matrix; ``epsilon`` < 1 keeps the
    weights within ε of the data-size weights (ε = 0: FedAvg of the normalised updates).

    Scale. With ``normalize: l2`` the hull is built from unit vectors, so the output is rescaled
    by the median of the update norms (zero updates excluded): n identical updates give that
    update, the step has the clients' scale and one huge update cannot lengthen it. FedMGDA+
    instead steps with η·Σλ_i x_i (unit vectors, a decayed global lr η); to reproduce it, pick the
    server learning rate as η / median‖u_i‖. With ``normalize: none`` the output is the min-norm
    point itself, which is never longer than the shortest update: it is a conservative step.

    Defaults: l2 and ε = 1 (plain MGDA, FedMGDA+'s normalisation); both pass the conformance
    suite (identical updates, any scale, any order of clients).

    Not byzantine-robust on its own: one update pointing against the others (a scaled sign flip)
    pulls the min-norm point to ≈ 0, and with l2 a single client's direction weighs as much as
    any honest one, whatever its norm (notes §3.5). Put ``clip`` then ``nnm`` in front.
    """

    def aggregate(updates: Tensor, info: RoundInfo) -> Tensor:
        g = checked_gram(updates, "mgda")
        n = updates.shape[0]
        beta = mgda_coefficients(g, data_weights(info, n), p.normalize, p.epsilon)
        return beta.to(updates.device, updates.dtype) @ updates

    return stateless(aggregate)
