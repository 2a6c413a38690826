"""CAGrad (Liu, Liu, Jin, Stone, Liu, NeurIPS 2021): the conflict-averse direction near the mean.

The rule (notes/algorithms.md §3.2): with g0 = mean_i u_i, find
    d = argmax_d min_i ⟨u_i, d⟩  subject to  ‖d − g0‖ ≤ c‖g0‖,  c ∈ [0, 1),
through its dual over the simplex, w* = argmin_{w∈Δ} g_wᵀ g0 + √φ ‖g_w‖ with g_w = Σ w_i u_i and
φ = c²‖g0‖², then d = g0 + (√φ/‖g_w‖) g_w. c = 0 is the mean; large c approaches MGDA.

Computation. Everything is a function of the Gram matrix G (``strategies.gram``): g_wᵀ g0 =
wᵀ G 1/n, ‖g_w‖² = wᵀ G w. The authors' code hands the dual to scipy's SLSQP with a 1e-8 smoothing
term; here it is solved exactly up to a one-dimensional root. Minimising the linear term plus
√φ‖g_w‖ over the hull is a projection: at the optimum, g_w is the point of the hull nearest to
−(s/√φ) g0, where s = ‖g_w‖ (the KKT conditions of both problems coincide). So s is a root of
ψ(s) = ‖Proj_hull(−(s/√φ) g0)‖ − s on (0, max_i ‖u_i‖], found by the Illinois method;
each projection is an exact simplex QP (``mgda.simplex_qp``, warm-started). Any root s > 0 is
optimal (convex problem, KKT point). The output is one pass over U.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import Field
from torch import Tensor

from fedsim.registry import AGGREGATORS, Params
from strategies.aggregators.mgda import simplex_qp
from strategies.gram import checked_gram
from strategies.pipeline import RoundInfo, Stage, stateless

_ROOT_STEPS = 100  # Illinois steps; ~10 are used


class CagradParams(Params):
    # radius of the ball around the mean, relative to ‖g0‖ (the paper: 0.4 on NYUv2, 0.5 in code)
    c: float = Field(0.4, ge=0, lt=1)
    # 0: d as is; 1: d / (1 + c²) (the authors' code default); 2: d / (1 + c)
    rescale: Literal[0, 1, 2] = 2


def cagrad_dual(g: Tensor, c: float) -> tuple[Tensor, float]:
    """The dual weights w* (n,) and the ratio √φ/‖g_w*‖, from the Gram matrix ``g`` (float64).

    The ratio is 0 (d = g0, as the authors' code gives) when φ = 0 or g_w* = 0.
    """
    g = g.to("cpu", torch.float64)
    n = g.shape[0]
    top = float(g.diagonal().max()) if n else 0.0
    uniform = torch.full((n,), 1 / n, dtype=g.dtype)
    if top <= 0:
        return uniform, 0.0
    g = g / top  # scale-free from here on: ‖u_i‖ ≤ 1
    a = g @ uniform  # a_i = ⟨u_i, g0⟩
    root_phi = c * math.sqrt(max(float(uniform @ a), 0.0))
    if root_phi <= 0:
        return uniform, 0.0

    def project(s: float, start: Tensor) -> tuple[Tensor, float]:
        # Proj_hull(−(s/√φ) g0) = g_w with w = argmin wᵀGw + (2s/√φ) aᵀw
        w = simplex_qp(g, lin=(2 * s / root_phi) * a, start=start)
        return w, math.sqrt(max(float(w @ g @ w), 0.0))

    w0, norm0 = project(0.0, uniform)
    low, high = 0.0, math.sqrt(float(g.diagonal().max()))
    w_low, norm_low = w0, norm0
    if norm0 <= 1e-12:
        # 0 is in the hull (ψ(0) = 0): look for s > 0 with ψ(s) > 0
        s, found = high, False
        for _ in range(60):
            s /= 2
            w_low, norm_low = project(s, w_low)
            if norm_low > s:
                low, found = s, True
                break
        if not found:
            return w0, 0.0
    # Illinois (regula falsi that halves a stale end's value): superlinear, and the bracket
    # [low, high] with ψ(low) > 0 ≥ ψ(high) is kept, so it cannot fail where bisection would not.
    w_high, norm_high = project(high, w_low)
    f_low, f_high = norm_low - low, norm_high - high
    best_w, best_f = (w_low, f_low) if abs(f_low) < abs(f_high) else (w_high, f_high)
    side = 0
    for _ in range(_ROOT_STEPS):
        if f_high >= 0 or high - low <= 1e-13 * high:
            break
        mid = (low * f_high - high * f_low) / (f_high - f_low)
        if not low < mid < high:
            mid = (low + high) / 2
        w, norm = project(mid, w_low)
        f = norm - mid
        if abs(f) < abs(best_f):
            best_w, best_f = w, f
        if abs(f) <= 1e-14:
            break
        if f > 0:
            low, f_low, w_low = mid, f, w
            f_high = f_high / 2 if side == 1 else f_high
            side = 1
        else:
            high, f_high = mid, f
            f_low = f_low / 2 if side == -1 else f_low
            side = -1
    w = best_w
    norm = math.sqrt(max(float(w @ g @ w), 0.0))
    if norm <= 0:
        return w, 0.0
    return w, root_phi / norm


@AGGREGATORS.register("cagrad", CagradParams)
def cagrad(p: CagradParams) -> Stage:
    """CAGrad: the direction within c‖g0‖ of the mean that maximises the worst client's gain.

    Liu et al., NeurIPS 2021, "Conflict-averse gradient descent for multi-task learning".
    The dual over the simplex is solved exactly on the shared Gram matrix (see module docstring).
    Sample counts are ignored (g0 is the plain mean), as in the paper.

    Defaults: c = 0.4 (the paper's NYUv2 setting) and ``rescale: 2`` (d / (1 + c)). The authors'
    code defaults to ``rescale: 1`` (d / (1 + c²)), tuned together with their learning rate; with
    FedAvg's server lr of 1 the step should keep the clients' scale, and only rescale 2 does when
    all clients agree (d = (1 + c) g0 then), which the conformance suite checks.

    Not byzantine-robust on its own: d stays within c‖g0‖ of the mean, so one huge update drags
    it as far as it drags the mean (notes §3.5). Put ``clip`` (bounded norms) in front.
    """

    def aggregate(updates: Tensor, info: RoundInfo) -> Tensor:
        g = checked_gram(updates, "cagrad")
        n = updates.shape[0]
        w, ratio = cagrad_dual(g, p.c)
        beta = torch.full((n,), 1 / n, dtype=torch.float64) + ratio * w
        beta = beta / {0: 1.0, 1: 1 + p.c**2, 2: 1 + p.c}[p.rescale]
        return beta.to(updates.device, updates.dtype) @ updates

    return stateless(aggregate)
