"""Tests of the Flag aggregator: against the authors' SVD form, known answers, edge cases."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from pydantic import ValidationError
from torch import Tensor

from strategies import aggregate
from strategies.aggregators.flag import _flag_svd_reference, default_r, flag_fit
from strategies.gram import gram

D, P = 40, 7


def cosine(a: Tensor, b: Tensor) -> float:
    return float(a @ b / (a.norm() * b.norm()))


def relative_error(a: Tensor, b: Tensor) -> float:
    return float((a - b).norm() / b.norm())


def random_updates(seed: int, n: int = P, d: int = D, dtype: torch.dtype = torch.float64) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    # a common direction plus noise and unequal norms, as client deltas look
    updates = torch.randn(n, d, generator=gen, dtype=dtype) + 0.5
    return updates * torch.rand(n, 1, generator=gen, dtype=dtype).add(0.5)


# ---- the coefficient-space form equals the authors' SVD form ----


@pytest.mark.parametrize("output", ["norm_preserving", "paper"])
@pytest.mark.parametrize("iterations", [0, 1, 4, 10])
@pytest.mark.parametrize("lam", [0.0, 2.0, 16.0])
def test_matches_the_svd_form(lam: float, iterations: int, output: str) -> None:
    # Prepare
    updates = random_updates(seed=int(lam) + iterations)
    params: dict[str, Any] = {"lam": lam, "iterations": iterations, "output": output}

    # Execute
    out = aggregate("flag", updates, **params)
    reference = _flag_svd_reference(updates, **params)

    # Assert
    assert cosine(out, reference) >= 0.9999
    assert relative_error(out, reference) <= 1e-4


@pytest.mark.parametrize("r", [1, 3, 7])
def test_matches_the_svd_form_in_float32(r: int) -> None:
    # Prepare
    updates = random_updates(seed=r, dtype=torch.float32)

    # Execute
    out = aggregate("flag", updates, r=r, lam=2.0)
    reference = _flag_svd_reference(updates.double(), r=r, lam=2.0).float()

    # Assert
    assert out.dtype == torch.float32
    assert cosine(out, reference) >= 0.9999
    assert relative_error(out, reference) <= 1e-4


# ---- known answers ----


def test_updates_in_an_r_dimensional_subspace_give_that_subspace() -> None:
    # Prepare: 7 updates spanning a 2-D subspace of R^40
    gen = torch.Generator().manual_seed(3)
    basis = torch.linalg.qr(torch.randn(D, 2, generator=gen, dtype=torch.float64))[0]
    updates = torch.randn(P, 2, generator=gen, dtype=torch.float64) @ basis.T
    norms = updates.norm(dim=1)

    # Execute
    fit = flag_fit(gram(updates), r=2)
    out = aggregate("flag", updates, r=2)

    # Assert: Y Yᵀ is the projector onto the subspace, every update is reconstructed exactly
    y = updates.T @ fit.coef
    assert torch.allclose(y.T @ y, torch.eye(2, dtype=torch.float64), atol=1e-10)
    assert torch.allclose(y @ y.T, basis @ basis.T, atol=1e-10)
    assert torch.allclose(fit.ratios, torch.ones(P, dtype=torch.float64), atol=1e-10)
    expected = norms.median() * (updates / norms[:, None]).mean(dim=0)
    assert torch.allclose(out, expected, atol=1e-10)


def test_a_far_off_outlier_gets_almost_no_weight() -> None:
    # Prepare: 6 inliers around direction a, one huge update along an orthogonal direction b
    gen = torch.Generator().manual_seed(4)
    a, b = torch.linalg.qr(torch.randn(D, 2, generator=gen, dtype=torch.float64))[0].T
    inliers = a + 0.1 * torch.randn(P - 1, D, generator=gen, dtype=torch.float64)
    updates = torch.cat([inliers, 100 * b[None, :]])
    inlier_mean = inliers.mean(dim=0)

    # Execute
    fit = flag_fit(gram(updates), r=1)
    out = aggregate("flag", updates, r=1)

    # Assert
    assert fit.ratios[-1] < 0.01  # the outlier's direction is almost orthogonal to Y
    assert (fit.ratios[:-1] > 0.5).all()
    assert cosine(out, inlier_mean) > 0.99
    assert 0.5 < float(out.norm() / inlier_mean.norm()) < 1.5
    assert cosine(updates.mean(dim=0), inlier_mean) < 0.2  # the plain mean is dragged away


@pytest.mark.parametrize("r", [1, 2])
def test_two_dimensional_example_by_hand(r: int) -> None:
    # Prepare: unit directions at +30°, -30° and 0°, with norms 2, 5 and 4. By symmetry the
    # flag median line is the x-axis (the middle point is on it, the others mirror each other).
    t = math.radians(30)
    x = torch.tensor([[math.cos(t), math.sin(t)], [math.cos(t), -math.sin(t)], [1.0, 0.0]])
    updates = x.double() * torch.tensor([[2.0], [5.0], [4.0]], dtype=torch.float64)
    # r=1: Y Yᵀ Σ x_i = (2 cos 30° + 1, 0); r=2: Y Yᵀ = I, so it is Σ x_i itself, the same
    projected_sum = torch.tensor([2 * math.cos(t) + 1, 0.0], dtype=torch.float64)

    # Execute
    paper = aggregate("flag", updates, r=r, output="paper")
    preserving = aggregate("flag", updates, r=r)

    # Assert
    assert torch.allclose(paper, projected_sum / r, atol=1e-12)
    assert torch.allclose(preserving, 4.0 * projected_sum / 3, atol=1e-12)  # median norm 4, p=3


# ---- edge cases ----


@pytest.mark.parametrize("scale", [1e-6, 1.0, 1e4])
def test_many_identical_float32_updates_give_that_update(scale: float) -> None:
    # Prepare: rank 1, far below the default r = 30
    gen = torch.Generator().manual_seed(5)
    v = torch.randn(1000, generator=gen) * scale
    updates = v.repeat(60, 1)

    # Execute
    out = aggregate("flag", updates, lam=4.0)

    # Assert
    assert torch.allclose(out, v, rtol=1e-5, atol=1e-6 * scale)


def test_collinear_updates_of_different_norms_give_the_median_norm() -> None:
    # Prepare
    v = torch.tensor([3.0, 4.0, 0.0])  # norm 5
    updates = torch.tensor([[1.0], [2.0], [10.0]]) * v

    # Execute
    out = aggregate("flag", updates)

    # Assert
    assert torch.allclose(out, 2.0 * v, rtol=1e-6)


@pytest.mark.parametrize("output", ["norm_preserving", "paper"])
def test_zero_updates_are_left_out(output: str) -> None:
    # Prepare
    updates = random_updates(seed=6)
    with_zeros = torch.cat([updates, torch.zeros(2, D, dtype=updates.dtype)])

    # Execute
    out = aggregate("flag", updates, r=3, output=output)
    out_with_zeros = aggregate("flag", with_zeros, r=3, output=output)
    only_zeros = aggregate("flag", torch.zeros(3, D))

    # Assert
    assert torch.allclose(out, out_with_zeros, atol=1e-12)
    assert torch.equal(only_zeros, torch.zeros(D))


def test_default_r_is_half_the_clients_rounded_up() -> None:
    # Prepare
    updates = random_updates(seed=7)

    # Execute
    out = aggregate("flag", updates)
    explicit = aggregate("flag", updates, r=4)

    # Assert
    assert [default_r(n) for n in (1, 2, 7, 15, 60)] == [1, 1, 4, 8, 30]
    assert torch.equal(out, explicit)


def test_pairwise_term_is_permutation_invariant() -> None:
    # Prepare
    updates = random_updates(seed=8)
    perm = torch.tensor([3, 6, 0, 5, 1, 2, 4])

    # Execute
    out = aggregate("flag", updates, lam=16.0, r=2)
    out_permuted = aggregate("flag", updates[perm], lam=16.0, r=2)

    # Assert
    assert torch.allclose(out, out_permuted, atol=1e-12)


# ---- errors ----


def test_r_larger_than_n_is_refused_with_the_numbers() -> None:
    with pytest.raises(ValueError, match=r"flag needs r <= n, got r=9, n=7"):
        aggregate("flag", random_updates(seed=9), r=9)


def test_non_finite_updates_are_refused() -> None:
    updates = random_updates(seed=10)
    updates[2, 5] = float("inf")
    with pytest.raises(ValueError, match="finite"):
        aggregate("flag", updates)


@pytest.mark.parametrize(
    "bad", [{"r": 0}, {"lam": -1.0}, {"eps": 0.0}, {"iterations": -1}, {"output": "mean"}]
)
def test_impossible_parameters_are_refused(bad: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        aggregate("flag", random_updates(seed=11), **bad)
