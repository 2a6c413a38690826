"""Domain-specific BatchNorm with the rectification gate (RDSBN), and its 1-D neck twin.

Follows ``notes/workloads-precise.md`` §1.2 ("RDSBN", ``rdsbn.py`` L8–110 of ``MSUDA_REID``): for
inputs ``x ∈ R^{n×C×H×W}`` that all come from domain ``d``::

    μ_{n,c} = mean_{h,w} x            σ_{n,c} = sqrt(var_unbiased_{h,w} x + 1e-5)
    g_{n,c} = sigmoid(a^d_{c,1} μ_{n,c} + a^d_{c,2} σ_{n,c})        a^d = 0 at init (g = 0.5)
    RDSBN_d(x) = g · (γ^d (x − m^d) / sqrt(v^d + 1e-9) + β^d)

so at initialisation the output is exactly half the (affine) BN output, β included. Each domain has
its own γ, β, running statistics (momentum 0.1) and gate ``a^d``. In a federated run a client only
ever has one branch (§1.4: RDSBN = FedBN + a local style gate), so ``num_domains=1`` is the usual
case there; the module still keeps several branches for the centralised reference.

Deviation: with ``H·W = 1`` the unbiased variance is undefined, so the biased one (0) is used.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

# BN eps of the code's branch wrapper (§1.5 item 4) and the gate's σ eps (§1.2).
BN_EPS = 1e-9
GATE_EPS = 1e-5


def _check_domain(domain: int, num_domains: int) -> None:
    if not 0 <= domain < num_domains:
        raise ValueError(f"domain must be in [0, {num_domains}), got {domain}")


def instance_statistics(x: Tensor) -> tuple[Tensor, Tensor]:
    """Per-sample, per-channel mean and std over the spatial axes of ``x`` (n, C, H, W).

    std = sqrt(unbiased variance + 1e-5), as the gate of §1.2 uses.
    """
    flat = x.flatten(2)
    correction = 1 if flat.shape[2] > 1 else 0
    mean = flat.mean(dim=2)
    std = (flat.var(dim=2, correction=correction) + GATE_EPS).sqrt()
    return mean, std


def rectification_gate(x: Tensor, a: Tensor) -> Tensor:
    """The gate ``sigmoid(a[:, 0] μ + a[:, 1] σ)`` (n, C) of ``x`` (n, C, H, W); ``a`` is (C, 2)."""
    mean, std = instance_statistics(x)
    return torch.sigmoid(a[:, 0] * mean + a[:, 1] * std)


class RDSBN2d(nn.Module):
    """Domain-specific BatchNorm2d, one branch per domain, optionally with the style gate (§1.2).

    ``gate=False`` is plain DSBN (the pre-training stage of §1.2, and FedBN in the federated
    ladder of §1.4). ``forward(x, domain)`` normalises a batch that all comes from ``domain``.
    Setting ``use_gate = False`` on a gated module bypasses the gate (the code does so for the
    epoch-0 feature extraction, §1.2).
    """

    def __init__(self, num_features: int, num_domains: int = 1, gate: bool = True) -> None:
        super().__init__()
        if num_domains < 1:
            raise ValueError(f"RDSBN2d needs num_domains >= 1, got {num_domains}")
        self.num_domains = num_domains
        self.branches = nn.ModuleList(
            nn.BatchNorm2d(num_features, eps=BN_EPS, momentum=0.1) for _ in range(num_domains)
        )
        # a^d ∈ R^{C×2} per domain; zero at init so that every gate is 0.5.
        self.gate = nn.Parameter(torch.zeros(num_domains, num_features, 2)) if gate else None
        self.use_gate = gate

    def init_parameters(self, generator: torch.Generator) -> None:
        """Gate weights to 0 (g = 0.5, §1.2); the BN branches are reset as children."""
        del generator  # the gate's initial value is deterministic
        if self.gate is not None:
            nn.init.zeros_(self.gate)

    def forward(self, x: Tensor, domain: int) -> Tensor:
        _check_domain(domain, self.num_domains)
        out = self.branches[domain](x)
        if self.gate is None or not self.use_gate:
            return out
        g = rectification_gate(x, self.gate[domain])
        return out * g[:, :, None, None]


class DSBN1d(nn.Module):
    """Domain-specific BatchNorm1d for the BN-neck / GCN-BN (§1.2: "DSBN1d_d, bias frozen")."""

    def __init__(self, num_features: int, num_domains: int = 1, freeze_bias: bool = True) -> None:
        super().__init__()
        if num_domains < 1:
            raise ValueError(f"DSBN1d needs num_domains >= 1, got {num_domains}")
        self.num_domains = num_domains
        self.branches = nn.ModuleList(
            nn.BatchNorm1d(num_features, eps=BN_EPS, momentum=0.1) for _ in range(num_domains)
        )
        if freeze_bias:
            for bn in self.branches:
                assert isinstance(bn, nn.BatchNorm1d)
                bn.bias.requires_grad_(False)

    def forward(self, x: Tensor, domain: int) -> Tensor:
        _check_domain(domain, self.num_domains)
        return self.branches[domain](x)
