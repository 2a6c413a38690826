"""Known-answer tests of MGDA (with FedMGDA+'s normalisation and ε-box) and CAGrad.

References: scipy's SLSQP for the min-norm QP (test-only), closed forms worked out by hand, the
primal–dual gap of CAGrad and a brute-force search over CAGrad's ball in 2-D and 3-D.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from scipy.optimize import minimize
from torch import Tensor

from fedsim.registry import AGGREGATORS, PREAGGREGATORS
from strategies import aggregate
from strategies.aggregators.cagrad import cagrad_dual
from strategies.aggregators.mgda import simplex_qp
from strategies.pipeline import RoundInfo, chain

CASES = range(20)


def random_case(seed: int, d: int = 12) -> np.ndarray:
    """n ∈ {2, …, 10} updates in R^d sharing a random common part (some conflict, some agree)."""
    rng = np.random.default_rng(seed)
    n = 2 + seed % 9
    return rng.standard_normal((n, d)) + rng.uniform(0, 2) * rng.standard_normal(d)


def scipy_min_norm(g: np.ndarray, lo: np.ndarray | None = None, hi: np.ndarray | None = None):
    """argmin wᵀ g w over {Σ w = 1, lo ≤ w ≤ hi} by SLSQP (an independent solver)."""
    n = g.shape[0]
    lo = np.zeros(n) if lo is None else lo
    hi = np.ones(n) if hi is None else hi
    start = lo + (hi - lo) * (1 - lo.sum()) / (hi - lo).sum() if (hi - lo).sum() > 0 else lo
    result = minimize(
        lambda w: w @ g @ w,
        start,
        jac=lambda w: 2 * g @ w,
        method="SLSQP",
        bounds=list(zip(lo, hi, strict=True)),
        constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1, "jac": lambda w: np.ones(n)}],
        options={"ftol": 1e-16, "maxiter": 1000},
    )
    w = result.x
    # SLSQP stops about 1e-6 from the optimum (how far depends on the BLAS threads): polish it
    # by solving the KKT system exactly on the coordinates it leaves strictly inside the bounds.
    free = (w > lo + 1e-7) & (w < hi - 1e-7)
    if free.any():
        fixed = np.where(free, 0.0, np.where(w <= lo + 1e-7, lo, hi))
        k = int(free.sum())
        kkt = np.zeros((k + 1, k + 1))
        kkt[:k, :k] = 2 * g[np.ix_(free, free)]
        kkt[:k, k] = kkt[k, :k] = 1.0
        rhs = np.append(-2 * g[np.ix_(free, ~free)] @ fixed[~free], 1.0 - fixed.sum())
        polished = fixed.copy()
        polished[free] = np.linalg.solve(kkt, rhs)[:k]
        if np.all(polished >= lo - 1e-12) and np.all(polished <= hi + 1e-12):
            w = polished
    return w


def info_with_counts(counts: list[float] | np.ndarray) -> RoundInfo:
    n = len(counts)
    return RoundInfo(1, tuple(range(n)), torch.tensor(np.asarray(counts), dtype=torch.float32))


def normalised(u: np.ndarray) -> np.ndarray:
    return u / np.linalg.norm(u, axis=1, keepdims=True)


def worst_gain(u: np.ndarray, d: np.ndarray) -> np.ndarray:
    """min_i ⟨u_i, d⟩ for one direction (d,) or many (m, d)."""
    return (d @ u.T).min(axis=-1)


# ---- MGDA: the min-norm QP ----


@pytest.mark.parametrize("seed", CASES)
def test_mgda_weights_match_an_independent_qp_solver(seed: int) -> None:
    # Prepare: d = 12 ≥ n, so G is positive definite and the weights are unique
    u = random_case(seed)
    g = u @ u.T

    # Execute
    w = simplex_qp(torch.tensor(g)).numpy()
    reference = scipy_min_norm(g)

    # Assert
    assert np.abs(w - reference).max() < 1e-6
    assert np.linalg.norm(w @ u - reference @ u) < 1e-6
    best = reference @ g @ reference
    assert w @ g @ w <= best + 1e-12 * max(1.0, best)  # as low as the exact optimum
    assert w.min() >= 0 and abs(w.sum() - 1) < 1e-12


@pytest.mark.parametrize("seed", CASES)
def test_mgda_aggregator_outputs_the_min_norm_point(seed: int) -> None:
    # Prepare: float64 updates, so the Gram matrix carries no float32 rounding
    u = random_case(seed)
    x = normalised(u)
    median = float(np.median(np.linalg.norm(u, axis=1)))
    updates = torch.tensor(u)

    # Execute
    raw = aggregate("mgda", updates, normalize="none").numpy()
    l2 = aggregate("mgda", updates, normalize="l2").numpy()

    # Assert
    assert np.abs(raw - scipy_min_norm(u @ u.T) @ u).max() < 1e-6
    assert np.abs(l2 - median * (scipy_min_norm(x @ x.T) @ x)).max() < 1e-6 * max(1, median)


@pytest.mark.parametrize("seed", range(10))
def test_mgda_min_norm_point_is_found_when_the_weights_are_not_unique(seed: int) -> None:
    # Prepare: 10 updates in R^3 (G singular): compare the point and the KKT conditions
    rng = np.random.default_rng(seed)
    u = rng.standard_normal((10, 3)) + rng.uniform(0, 1.5)
    g = u @ u.T

    # Execute
    w = simplex_qp(torch.tensor(g)).numpy()

    # Assert: the same point as SLSQP, and ⟨u_i, x*⟩ ≥ ‖x*‖² for every i (optimality)
    point = w @ u
    assert np.linalg.norm(point - scipy_min_norm(g) @ u) < 1e-6
    assert (u @ point).min() >= point @ point - 1e-10


def test_mgda_of_two_orthogonal_unit_vectors_is_their_midpoint() -> None:
    # Prepare
    updates = torch.tensor([[1.0, 0.0], [0.0, 1.0]])

    # Execute / Assert
    for normalize in ("l2", "none"):
        out = aggregate("mgda", updates, normalize=normalize)
        assert torch.allclose(out, torch.tensor([0.5, 0.5]), atol=1e-7)


def test_mgda_ignores_an_update_inside_the_hull_of_the_others() -> None:
    # Prepare: (1, 1) is the midpoint of (2, 0) and (0, 2): the hull and its min-norm point
    # (1, 1) do not change when it is added; a short update (0.3, 0.3) in the cone is the answer
    pair = torch.tensor([[2.0, 0.0], [0.0, 2.0]])
    inside = torch.cat([pair, torch.tensor([[1.0, 1.0]])])
    short = torch.cat([pair, torch.tensor([[0.3, 0.3]])])

    # Execute / Assert
    assert torch.allclose(aggregate("mgda", pair, normalize="none"), torch.tensor([1.0, 1.0]))
    assert torch.allclose(aggregate("mgda", inside, normalize="none"), torch.tensor([1.0, 1.0]))
    assert torch.allclose(aggregate("mgda", short, normalize="none"), torch.tensor([0.3, 0.3]))


def test_mgda_is_zero_when_two_updates_point_opposite_ways() -> None:
    # Prepare: 0 is in the hull (Pareto-stationary)
    updates = torch.tensor([[1.0, 2.0], [-3.0, -6.0], [0.5, -1.0]])

    # Execute / Assert
    assert aggregate("mgda", updates).abs().max() < 1e-6


# ---- FedMGDA+: the ε-box ----


@pytest.mark.parametrize("seed", range(8))
def test_epsilon_zero_is_fedavg_of_the_normalised_updates(seed: int) -> None:
    # Prepare
    u = random_case(seed)
    counts = np.random.default_rng(seed).integers(1, 100, len(u)).astype(float)
    p = counts / counts.sum()
    median = float(np.median(np.linalg.norm(u, axis=1)))
    expected = median * (p @ normalised(u))

    # Execute
    out = aggregate("mgda", torch.tensor(u), info_with_counts(counts), epsilon=0.0)

    # Assert
    assert np.abs(out.numpy() - expected).max() < 1e-9


@pytest.mark.parametrize("seed", range(8))
def test_epsilon_one_is_full_mgda_whatever_the_counts(seed: int) -> None:
    # Prepare
    u = torch.tensor(random_case(seed))
    counts = np.random.default_rng(seed).integers(1, 100, len(u)).astype(float)

    # Execute
    boxed = aggregate("mgda", u, info_with_counts(counts), epsilon=1.0)
    plain = aggregate("mgda", u)

    # Assert
    assert torch.allclose(boxed, plain, atol=1e-10)


@pytest.mark.parametrize("seed", CASES)
def test_the_epsilon_box_matches_an_independent_qp_solver(seed: int) -> None:
    # Prepare
    rng = np.random.default_rng(seed)
    u = random_case(seed)
    x = normalised(u)
    counts = rng.integers(1, 100, len(u)).astype(float)
    p = counts / counts.sum()
    epsilon = float(rng.uniform(0.01, 0.5))
    lo, hi = np.clip(p - epsilon, 0, 1), np.clip(p + epsilon, 0, 1)
    median = float(np.median(np.linalg.norm(u, axis=1)))

    # Execute
    out = aggregate("mgda", torch.tensor(u), info_with_counts(counts), epsilon=epsilon)
    reference = scipy_min_norm(x @ x.T, lo, hi)

    # Assert
    assert np.abs(out.numpy() - median * (reference @ x)).max() < 1e-6 * max(1, median)


def test_mgda_parameters_are_validated() -> None:
    # Execute / Assert
    with pytest.raises(ValidationError):
        AGGREGATORS.build("mgda", epsilon=1.5)
    with pytest.raises(ValidationError):
        AGGREGATORS.build("mgda", normalize="loss")


# ---- CAGrad ----


@pytest.mark.parametrize("rescale", [0, 1, 2])
@pytest.mark.parametrize("seed", range(5))
def test_cagrad_with_c_zero_is_the_mean(seed: int, rescale: int) -> None:
    # Prepare
    u = torch.tensor(random_case(seed))

    # Execute
    out = aggregate("cagrad", u, c=0.0, rescale=rescale)

    # Assert
    assert torch.allclose(out, u.mean(dim=0), atol=1e-12)


@pytest.mark.parametrize("seed", CASES)
def test_cagrad_stays_in_its_ball_and_closes_the_duality_gap(seed: int) -> None:
    # Prepare
    u = random_case(seed, d=int(2 + seed % 5))
    c = float(np.random.default_rng(seed).uniform(0.05, 0.95))
    g0 = u.mean(axis=0)
    g = u @ u.T

    # Execute
    d = aggregate("cagrad", torch.tensor(u), c=c, rescale=0).numpy()
    w, _ = cagrad_dual(torch.tensor(g), c)
    w = w.numpy()

    # Assert: ‖d − g0‖ ≤ c‖g0‖; the primal value min_i ⟨u_i, d⟩ equals the dual objective at w
    # (weak duality makes each a bound on the other, so equality proves both optimal)
    assert np.linalg.norm(d - g0) <= c * np.linalg.norm(g0) * (1 + 1e-9)
    dual = w @ g @ np.full(len(u), 1 / len(u)) + c * np.linalg.norm(g0) * np.sqrt(w @ g @ w)
    assert abs(worst_gain(u, d) - dual) < 1e-9 * max(1.0, abs(dual))


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("dim", [2, 3])
def test_cagrad_maximises_the_worst_gain_over_its_ball(seed: int, dim: int) -> None:
    # Prepare: brute force over the ball ‖d − g0‖ ≤ c‖g0‖ (2-D grid, 3-D random points)
    rng = np.random.default_rng(100 + seed)
    u = rng.standard_normal((3 + seed % 3, dim)) + rng.uniform(0, 1.5, dim)
    c = 0.5
    g0 = u.mean(axis=0)
    radius = c * np.linalg.norm(g0)
    if dim == 2:
        angle = np.linspace(0, 2 * np.pi, 3601)
        directions = np.stack([np.cos(angle), np.sin(angle)], axis=1)
    else:
        directions = rng.standard_normal((100_000, 3))
        directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    scales = np.linspace(0, 1, 51)[:, None, None]
    candidates = (g0 + radius * scales * directions).reshape(-1, dim)

    # Execute
    d = aggregate("cagrad", torch.tensor(u), c=c, rescale=0).numpy()

    # Assert: no point of the ball does better; the best found comes close
    best = worst_gain(u, candidates).max()
    tol = 1e-2 * radius * np.linalg.norm(u, axis=1).max()
    assert best <= worst_gain(u, d) + 1e-9
    assert best >= worst_gain(u, d) - tol


@pytest.mark.parametrize("seed", range(5))
def test_cagrad_rescale_options_divide_the_direction(seed: int) -> None:
    # Prepare
    u = torch.tensor(random_case(seed))
    c = 0.4

    # Execute
    plain = aggregate("cagrad", u, c=c, rescale=0)

    # Assert
    assert torch.allclose(aggregate("cagrad", u, c=c, rescale=1), plain / (1 + c**2))
    assert torch.allclose(aggregate("cagrad", u, c=c, rescale=2), plain / (1 + c))


def test_cagrad_c_must_be_below_one() -> None:
    # Execute / Assert
    with pytest.raises(ValidationError):
        AGGREGATORS.build("cagrad", c=1.0)
    with pytest.raises(ValidationError):
        AGGREGATORS.build("cagrad", c=-0.1)
    with pytest.raises(ValidationError):
        AGGREGATORS.build("cagrad", rescale=3)


# ---- neither is byzantine-robust on its own ----


def attacked_round(attack: str) -> tuple[Tensor, Tensor, float]:
    """9 honest updates and one huge byzantine one; the honest mean and the honest median norm."""
    gen = torch.Generator().manual_seed(0)
    d = 20
    honest = torch.randn(d, generator=gen) + 0.3 * torch.randn(9, d, generator=gen)
    mean = honest.mean(dim=0)
    if attack == "random":
        byzantine = 1e6 * torch.randn(d, generator=gen)
    else:  # a scaled sign flip
        byzantine = -1e6 * mean
    tau = float(honest.norm(dim=1).median())
    return torch.cat([honest, byzantine[None]]), mean, tau


def run_pipeline(updates: Tensor, *stages: str, tau: float, rule: str) -> Tensor:
    pre = [PREAGGREGATORS.build(s, **({"tau": tau} if s == "clip" else {})) for s in stages]
    pipeline = chain(*pre, AGGREGATORS.build(rule))
    out, _ = pipeline.update(updates, pipeline.init(updates.shape[1]), RoundInfo.uniform(10))
    return out


def error(out: Tensor, mean: Tensor) -> float:
    return float((out - mean).norm() / mean.norm())


@pytest.mark.parametrize("attack", ["random", "sign_flip"])
@pytest.mark.parametrize("rule", ["mgda", "cagrad"])
def test_one_huge_update_drags_the_rule_and_clip_then_nnm_restores_it(
    rule: str, attack: str
) -> None:
    # Prepare
    updates, mean, tau = attacked_round(attack)

    # Execute
    alone = run_pipeline(updates, tau=tau, rule=rule)
    defended = run_pipeline(updates, "clip", "nnm", tau=tau, rule=rule)

    # Assert: far from the honest mean alone (MGDA: pulled towards 0 or the attacker's
    # direction; CAGrad: follows the mean), close to it behind clip → nnm
    assert error(alone, mean) > 0.5
    assert error(defended, mean) < 0.15


def test_clip_alone_bounds_cagrad_but_does_not_fix_mgda() -> None:
    # Prepare
    updates, mean, tau = attacked_round("sign_flip")

    # Execute
    cagrad = run_pipeline(updates, "clip", tau=tau, rule="cagrad")
    mgda = run_pipeline(updates, "clip", tau=tau, rule="mgda")

    # Assert: CAGrad stays within (1 + c)·tau/(1 + c) = tau of 0 (every clipped update has norm
    # ≤ tau); MGDA only sees directions (l2), so clipping leaves the opposite direction and the
    # collapse to ≈ 0
    assert float(cagrad.norm()) <= tau * (1 + 1e-5)
    assert error(mgda, mean) > 0.5
