"""The MDIF graph (notes/workloads-precise.md §1.2) against hand-worked values."""

from __future__ import annotations

import math

import pytest
import torch

from clients.reid.mdif import (
    MDIF,
    attention_weights,
    domain_agent,
    layer1_adjacency,
    layer2_adjacency,
    normalise_adjacency,
    update_running_agent,
)
from clients.workload import init_parameters

R6 = 1 / math.sqrt(6)


def test_adjacencies_two_samples_two_domains() -> None:
    a1 = layer1_adjacency(2, 2)
    torch.testing.assert_close(
        a1, torch.tensor([[1.0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]])
    )
    # Sample 0 ↔ agent 0 (node 2), sample 1 ↔ agent 1 (node 3); samples never linked together.
    a2 = layer2_adjacency(torch.tensor([0, 1]), 2)
    torch.testing.assert_close(
        a2, torch.tensor([[1.0, 0, 1, 0], [0, 1, 0, 1], [1, 0, 1, 1], [0, 1, 1, 1]])
    )
    # Test graph: every sample linked to the target's agent 0.
    a2_test = layer2_adjacency(torch.tensor([0, 0]), 2)
    assert a2_test[2].tolist() == [1.0, 1.0, 1.0, 1.0] and a2_test[3].tolist() == [0, 0, 1, 1]


def test_normalisation() -> None:
    torch.testing.assert_close(
        normalise_adjacency(layer1_adjacency(2, 2)),
        torch.tensor([[1.0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0.5, 0.5], [0, 0, 0.5, 0.5]]),
    )
    # Degrees: samples 2, agents 3 → entries 1/2, 1/√6, 1/3.
    torch.testing.assert_close(
        normalise_adjacency(layer2_adjacency(torch.tensor([0, 1]), 2)),
        torch.tensor(
            [
                [0.5, 0, R6, 0],
                [0, 0.5, 0, R6],
                [R6, 0, 1 / 3, 1 / 3],
                [0, R6, 1 / 3, 1 / 3],
            ]
        ),
    )


def test_agent_weights_and_guard() -> None:
    x = torch.tensor([[0.0, 4.0], [8.0, 0.0]])
    torch.testing.assert_close(
        domain_agent(x, torch.tensor([1.0, 3.0]), "sum"), torch.tensor([6.0, 1.0])
    )
    torch.testing.assert_close(domain_agent(x, torch.zeros(2)), torch.tensor([4.0, 2.0]))
    e = math.exp(1.0)
    torch.testing.assert_close(
        attention_weights(torch.tensor([0.5, -0.5])), torch.tensor([e / (e + 1), 1 / (e + 1)])
    )
    # Scores summing to 0: the code divides by 0; "sum" clamps the denominator to eps.
    w = attention_weights(torch.tensor([0.5, -0.5]), "sum", eps=1e-3)
    torch.testing.assert_close(w, torch.tensor([500.0, -500.0]))
    w_neg = attention_weights(torch.tensor([0.5, -1.0]), "sum")
    torch.testing.assert_close(w_neg, torch.tensor([-1.0, 2.0]))
    with pytest.raises(ValueError, match="normalisation"):
        attention_weights(torch.ones(2), "max")  # type: ignore[arg-type]


def test_running_agent() -> None:
    a = torch.tensor([1.0, 2.0], requires_grad=True)
    torch.testing.assert_close(update_running_agent(None, a), torch.tensor([1.0, 2.0]))
    r = update_running_agent(torch.tensor([0.0, 10.0]), a)
    torch.testing.assert_close(r, torch.tensor([0.1, 9.2]))
    assert not r.requires_grad


def _identity_mdif() -> MDIF:
    m = MDIF(1, 2)
    with torch.no_grad():
        for lin in (m.gcn1, m.gcn2):
            lin.weight.fill_(1.0)
            lin.bias.zero_()
    return m


def test_forward_hand_worked() -> None:
    # V = [1, 3 | 2, 4]; layer 1: agents become their mean 3, samples stay (1, 3).
    # Layer 2 (links 0, 1): x_gcn_i = x_i + H1_i / 2 + 3/√6.
    m = _identity_mdif()
    out = m(torch.tensor([[1.0], [3.0]]), torch.tensor([[2.0], [4.0]]), torch.tensor([0, 1]))
    torch.testing.assert_close(out, torch.tensor([[1.5 + 3 * R6], [4.5 + 3 * R6]]))


def test_agents_own_from_batch_others_constant() -> None:
    m = _identity_mdif()
    x = torch.tensor([[1.0], [3.0]], requires_grad=True)
    others = torch.tensor([[100.0], [7.0]], requires_grad=True)
    agents = m.agents(x, torch.tensor([0, 0]), others)
    # Scores u·x + b are all 0 at construction → the plain mean.
    torch.testing.assert_close(agents, torch.tensor([[2.0], [7.0]]))
    m(x, agents, torch.tensor([0, 0])).sum().backward()
    assert x.grad is not None and others.grad is None


def test_init_parameters_draws_from_generator() -> None:
    a = init_parameters(MDIF(64, 3), torch.Generator().manual_seed(3))
    b = init_parameters(MDIF(64, 3), torch.Generator().manual_seed(3))
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa, pb)
    assert 0.003 < float(a.attention_weight.detach().std()) < 0.03
    assert float(a.attention_bias.detach()) == 0.0
    assert float(a.gcn1.weight.detach().abs().max()) <= 1 / 8
