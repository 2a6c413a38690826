"""Mean-field against exhaustive enumeration of a 2×2 grid's CRF (every pixel neighbours every
other in the 8-neighbourhood, so 12 ordered pairs)."""

from __future__ import annotations

import itertools

import torch

from clients.hsi.crf import grid_edges, labelled_pairs, mean_field

C = 3


def exact_marginals(
    unary: torch.Tensor, edges: torch.Tensor, pairwise: torch.Tensor
) -> torch.Tensor:
    """P(y) ∝ exp(Σ_p z^U_p[y_p] + Σ_(p,q) z^V_pq[y_p, y_q]) summed over all C⁴ labellings."""
    n = unary.shape[0]
    marginals = torch.zeros(n, C, dtype=torch.float64)
    for y in itertools.product(range(C), repeat=n):
        score = sum(unary[p, y[p]] for p in range(n))
        score = score + sum(pairwise[e, y[p], y[q]] for e, (p, q) in enumerate(edges.tolist()))
        for p in range(n):
            marginals[p, y[p]] += torch.exp(score)
    return marginals / marginals.sum(dim=1, keepdim=True)


def kl_to_exact(
    q: torch.Tensor, unary: torch.Tensor, edges: torch.Tensor, pairwise: torch.Tensor
) -> float:
    """KL(Q ‖ P) up to log Z: E_Q[−score] − H(Q), by enumeration (what mean-field minimises)."""
    total = 0.0
    for y in itertools.product(range(C), repeat=4):
        prob = torch.prod(torch.stack([q[p, y[p]] for p in range(4)]))
        score = sum(unary[p, y[p]] for p in range(4))
        score = score + sum(pairwise[e, y[p], y[q_]] for e, (p, q_) in enumerate(edges.tolist()))
        total += float(prob * (prob.log() - score))
    return total


def problem(strength: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    unary = torch.randn(4, C, generator=g, dtype=torch.float64)
    edges = grid_edges(2, 2)
    pairwise = strength * torch.randn(len(edges), C, C, generator=g, dtype=torch.float64)
    return unary, edges, pairwise


def test_grid_edges_of_a_2x2_grid_are_all_12_ordered_pairs() -> None:
    edges = {tuple(e) for e in grid_edges(2, 2).tolist()}
    assert edges == {(p, q) for p in range(4) for q in range(4) if p != q}
    assert len(grid_edges(3, 3)) == 2 * (2 * 3 * 2 + 2 * 2 * 2)  # 12 straight + 8 diagonal


def test_labelled_pairs_keep_only_edges_with_both_ends_labelled() -> None:
    mask = torch.tensor([[True, True, False], [False, False, False], [False, False, True]])
    assert sorted(map(tuple, labelled_pairs(mask).tolist())) == [(0, 1), (1, 0)]


def test_zero_pairwise_terms_give_the_exact_marginals() -> None:
    unary, edges, pairwise = problem(0.0)
    q = mean_field(unary, edges, pairwise, iterations=5)
    torch.testing.assert_close(q, exact_marginals(unary, edges, pairwise))


def test_mean_field_converges_to_a_fixed_point_that_locally_minimises_kl() -> None:
    unary, edges, pairwise = problem(0.3)
    q = mean_field(unary, edges, pairwise, iterations=200)
    # a fixed point of the update
    torch.testing.assert_close(mean_field_step(q, unary, edges, pairwise), q)
    # the fixed point is a stationary point of KL(Q‖P), which checks the update (both
    # directions of every factor) against the enumerated distribution: moving any pixel's Q
    # along the simplex does not lower the KL
    base = kl_to_exact(q, unary, edges, pairwise)
    for p in range(4):
        for a, b in itertools.permutations(range(C), 2):
            moved = q.clone()
            moved[p, a] += 1e-3
            moved[p, b] -= 1e-3
            assert kl_to_exact(moved, unary, edges, pairwise) >= base - 1e-9
    # and, with weak coupling, close to the exact marginals (not equal: mean-field factorises)
    exact = exact_marginals(unary, edges, pairwise)
    assert (q - exact).abs().max() < 0.05
    assert (q - exact).abs().max() > 1e-6


def test_the_notes_one_sided_update_is_not_a_kl_stationary_point() -> None:
    """Dropping the transposed term (z^V_qp[y', y]) would leave a non-stationary Q: the test
    above can fail."""
    unary, edges, pairwise = problem(0.3)
    q = torch.softmax(unary, 1)
    for _ in range(200):
        message = torch.zeros_like(unary)
        message.index_add_(0, edges[:, 0], torch.einsum("eab,eb->ea", pairwise, q[edges[:, 1]]))
        q = torch.softmax(unary + message, dim=1)
    base = kl_to_exact(q, unary, edges, pairwise)
    lowered = False
    for p in range(4):
        for a, b in itertools.permutations(range(C), 2):
            moved = q.clone()
            moved[p, a] += 1e-3
            moved[p, b] -= 1e-3
            lowered |= kl_to_exact(moved, unary, edges, pairwise) < base - 1e-9
    assert lowered


def mean_field_step(
    q: torch.Tensor, unary: torch.Tensor, edges: torch.Tensor, pairwise: torch.Tensor
) -> torch.Tensor:
    """One update from ``q`` written out pixel by pixel, independently of ``mean_field``."""
    out = torch.empty_like(q)
    for p in range(4):
        logit = unary[p].clone()
        for e, (a, b) in enumerate(edges.tolist()):
            if a == p:
                logit += pairwise[e] @ q[b]
            if b == p:
                logit += pairwise[e].T @ q[a]
        out[p] = torch.softmax(logit, 0)
    return out
