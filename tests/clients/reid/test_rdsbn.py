"""RDSBN (notes/workloads-precise.md §1.2) against hand-worked values."""

from __future__ import annotations

import math

import pytest
import torch

from clients.reid.rdsbn import DSBN1d, RDSBN2d, instance_statistics, rectification_gate
from clients.workload import init_parameters

# n=2, C=1, H=1, W=2: batch mean 4, biased batch variance 5, unbiased 20/3.
X = torch.tensor([[[[1.0, 3.0]]], [[[5.0, 7.0]]]])
X_HAT = (X - 4.0) / math.sqrt(5.0)


def test_gate_at_init_halves_the_affine_bn_output() -> None:
    m = init_parameters(RDSBN2d(1, num_domains=2), torch.Generator().manual_seed(0))
    with torch.no_grad():
        m.branches[0].weight.fill_(2.0)
        m.branches[0].bias.fill_(1.0)
    out = m(X, 0)
    # g = sigmoid(0) = 0.5 multiplies γ x̂ + β, β included: (BN(x))/2, not BN(x/2).
    torch.testing.assert_close(out, (2.0 * X_HAT + 1.0) / 2)


def test_hand_worked_gate() -> None:
    mean, std = instance_statistics(X)
    torch.testing.assert_close(mean, torch.tensor([[2.0], [6.0]]))
    torch.testing.assert_close(std, torch.full((2, 1), math.sqrt(2.0 + 1e-5)))
    a = torch.tensor([[1.0, -0.5]])
    g = rectification_gate(X, a)
    s = math.sqrt(2.0 + 1e-5)
    expected = torch.tensor(
        [[1 / (1 + math.exp(-(2 - 0.5 * s)))], [1 / (1 + math.exp(-(6 - 0.5 * s)))]]
    )
    torch.testing.assert_close(g, expected)

    m = RDSBN2d(1, num_domains=1)
    with torch.no_grad():
        assert m.gate is not None
        m.gate[0].copy_(a)
    torch.testing.assert_close(m(X, 0), X_HAT * expected[:, :, None, None])


def test_per_domain_statistics_kept_apart() -> None:
    m = RDSBN2d(1, num_domains=2)
    m.train()
    m(X, 0)
    torch.testing.assert_close(m.branches[0].running_mean, torch.tensor([0.4]))
    torch.testing.assert_close(m.branches[0].running_var, torch.tensor([0.9 + 0.1 * 20 / 3]))
    torch.testing.assert_close(m.branches[1].running_mean, torch.tensor([0.0]))
    torch.testing.assert_close(m.branches[1].running_var, torch.tensor([1.0]))
    # Gradients reach only the branch (and gate row) that was used.
    m(X, 1).square().sum().backward()
    assert m.branches[0].weight.grad is None
    assert m.branches[1].weight.grad is not None
    assert m.gate is not None and m.gate.grad is not None
    assert m.gate.grad[0].abs().sum() == 0


def test_eval_uses_running_statistics_and_gate_can_be_bypassed() -> None:
    m = RDSBN2d(1, num_domains=1).eval()
    torch.testing.assert_close(m(X, 0), X / math.sqrt(1.0 + 1e-9) / 2)
    m.use_gate = False
    torch.testing.assert_close(m(X, 0), X / math.sqrt(1.0 + 1e-9))
    plain = RDSBN2d(1, gate=False).eval()
    assert plain.gate is None
    torch.testing.assert_close(plain(X, 0), X / math.sqrt(1.0 + 1e-9))


def test_init_parameters_resets_gate_and_branches() -> None:
    m = RDSBN2d(3, num_domains=2)
    neck = DSBN1d(3, num_domains=2)
    with torch.no_grad():
        assert m.gate is not None
        m.gate.fill_(3.0)
        m.branches[1].weight.fill_(7.0)
    init_parameters(torch.nn.ModuleList([m, neck]), torch.Generator().manual_seed(1))
    assert m.gate.abs().sum() == 0
    assert (m.branches[1].weight == 1).all()
    assert not neck.branches[0].bias.requires_grad


def test_bad_domain_is_refused() -> None:
    with pytest.raises(ValueError, match=r"domain must be in \[0, 2\), got 2"):
        RDSBN2d(1, num_domains=2)(X, 2)
