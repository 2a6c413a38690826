"""Multi-domain information fusion (MDIF): domain agents and the two-layer graph.

Follows ``notes/workloads-precise.md`` §1.2 ("MDIF", ``resnet_rdsbn_mdif.py`` L60–162 and
L386–399 of ``MSUDA_REID``) and its federated mapping §1.4. For GAP features ``x ∈ R^{N×d}``::

    attention   w_i = u·x_i + b                        (no softmax in the code)
    agent       a_d = Σ_{i∈d} (w_i / Σ_{j∈d} w_j) x_i   (current batch, with gradient)
    running     r_d ← 0.9 r_d + 0.1 a_d                 (no gradient; used at test only)
    nodes       V = [x_1 .. x_N, a_0 .. a_{D-1}]
    A1 = I with the D×D agent block all ones          (layer 1: agents with agents)
    A2 = A1 + edges (sample i ↔ the agent it links to) (layer 2: own-domain agent in training,
                                                        the target's agent at test)
    Â = D^{-1/2} A D^{-1/2}
    H1 = LeakyReLU_{0.2}(Â1 V W1 + b1),  H2 = Â2 H1 W2 + b2,  x_gcn = x + H2[:N]

The attention guard (a deviation from the code, which §1.2 asks for): the code's weights
``w_i / Σ w_j`` divide by a sum of raw scores that, with the attention initialised N(0, 0.01), are
tiny and of mixed sign, so the sum can be ~0 and the agent explodes. ``normalisation="softmax"``
(the default) uses ``softmax(w)`` over the domain's samples instead: positive weights summing to 1,
so the agent stays in the convex hull of the features, and with near-equal scores it is the plain
mean (the natural centre). ``normalisation="sum"`` keeps the code's form but clamps the
denominator away from 0 (``sign(s)·max(|s|, eps)``, eps = 1e-6 by default), which bounds the
blow-up but still lets the agent leave the hull.

Federated use (§1.4): a client holds one domain; within a local step its own agent is the current
batch's ``a_d`` (with gradient) and the other agents are the last broadcast values (constants); it
reports ``update_running_agent(r_d, a_d)`` to the server.

The layer-2 normalisation weights the agent term by 1/√(deg), so fused features depend on the batch
size (§1.2): evaluate with a fixed batch size.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Normalisation = Literal["softmax", "sum"]


def attention_weights(
    scores: Tensor, normalisation: Normalisation = "softmax", eps: float = 1e-6
) -> Tensor:
    """Weights (n,) of one domain's samples from their raw attention scores (n,).

    ``"softmax"``: ``softmax(scores)``. ``"sum"``: ``scores / s`` with ``s = Σ scores`` clamped to
    ``|s| >= eps`` keeping its sign (``s = 0`` counts as positive). See the module docstring.
    """
    if scores.ndim != 1 or scores.numel() == 0:
        raise ValueError(
            f"attention_weights needs a non-empty 1-D tensor, got {tuple(scores.shape)}"
        )
    if normalisation == "softmax":
        return torch.softmax(scores, dim=0)
    if normalisation == "sum":
        total = scores.sum()
        sign = torch.where(total < 0, -1.0, 1.0).to(scores.dtype)
        return scores / (sign * total.abs().clamp_min(eps))
    raise ValueError(f"normalisation must be 'softmax' or 'sum', got {normalisation!r}")


def domain_agent(
    x: Tensor, scores: Tensor, normalisation: Normalisation = "softmax", eps: float = 1e-6
) -> Tensor:
    """A domain's agent: the attention-weighted centre ``Σ_i α_i x_i`` (d,) of features (n, d)."""
    return attention_weights(scores, normalisation, eps) @ x


def update_running_agent(running: Tensor | None, agent: Tensor, momentum: float = 0.1) -> Tensor:
    """``r ← (1 − momentum) r + momentum a`` (§1.2: 0.9 / 0.1), detached.

    ``running=None`` (no report yet) starts from the agent itself. Deviation: the code's buffer
    starts at 0, which would bias the first rounds' agents towards the origin.
    """
    agent = agent.detach()
    if running is None:
        return agent.clone()
    return (1.0 - momentum) * running + momentum * agent


def layer1_adjacency(num_samples: int, num_domains: int) -> Tensor:
    """A1 (N+D, N+D): identity (sample self-loops) with the D×D agent block all ones."""
    a = torch.eye(num_samples + num_domains)
    a[num_samples:, num_samples:] = 1.0
    return a


def layer2_adjacency(links: Tensor, num_domains: int) -> Tensor:
    """A2 = A1 + edges (sample i ↔ agent ``links[i]``), ``links`` (N,) of agent indices.

    In training ``links`` is each sample's own domain; at test every sample links to the target's
    agent (§1.2: ``A2_test``).
    """
    if links.ndim != 1:
        raise ValueError(
            f"links must be 1-D (one agent index per sample), got {tuple(links.shape)}"
        )
    if links.numel() and not (int(links.min()) >= 0 and int(links.max()) < num_domains):
        raise ValueError(f"links must be agent indices in [0, {num_domains})")
    n = links.numel()
    a = layer1_adjacency(n, num_domains)
    rows = torch.arange(n)
    a[rows, n + links.long().cpu()] = 1.0
    a[n + links.long().cpu(), rows] = 1.0
    return a


def normalise_adjacency(a: Tensor) -> Tensor:
    """Symmetric normalisation ``D^{-1/2} A D^{-1/2}`` with ``D = diag(row sums)``."""
    d = a.sum(dim=1).rsqrt()
    return d[:, None] * a * d[None, :]


class MDIF(nn.Module):
    """Attention + two GCN layers fusing sample features with domain agents (§1.2).

    Shared in federated training (§1.4): the attention ``u, b`` and ``W1, b1, W2, b2``.
    """

    def __init__(
        self,
        dim: int,
        num_domains: int,
        normalisation: Normalisation = "softmax",
        eps: float = 1e-6,
    ) -> None:
        super().__init__()
        if num_domains < 1:
            raise ValueError(f"MDIF needs num_domains >= 1, got {num_domains}")
        self.dim, self.num_domains = dim, num_domains
        self.normalisation: Normalisation = normalisation
        self.eps = eps
        # Own parameters (not a Linear) so that init_parameters can give them the code's N(0, 0.01).
        self.attention_weight = nn.Parameter(torch.zeros(dim))
        self.attention_bias = nn.Parameter(torch.zeros(()))
        # GCN weights: nn.Linear's default init is U(±1/√dim) for square layers, as the code's.
        self.gcn1 = nn.Linear(dim, dim)
        self.gcn2 = nn.Linear(dim, dim)

    def init_parameters(self, generator: torch.Generator) -> None:
        """Attention ``u ~ N(0, 0.01)``, ``b = 0`` (§1.2); the GCN Linears are children."""
        nn.init.normal_(self.attention_weight, std=0.01, generator=generator)
        nn.init.zeros_(self.attention_bias)

    def scores(self, x: Tensor) -> Tensor:
        """Raw attention scores ``w_i = u·x_i + b`` (N,)."""
        return x @ self.attention_weight + self.attention_bias

    def agents(self, x: Tensor, domains: Tensor, others: Tensor) -> Tensor:
        """Agents (D, d): batch centres for the domains present in ``domains``, ``others`` else.

        ``others`` (D, d) are the broadcast agents, used as constants (detached).
        """
        if others.shape != (self.num_domains, self.dim):
            raise ValueError(
                f"others must be ({self.num_domains}, {self.dim}), got {tuple(others.shape)}"
            )
        s = self.scores(x)
        rows = list(others.detach().unbind(0))
        for d in torch.unique(domains).tolist():
            mask = domains == d
            rows[d] = domain_agent(x[mask], s[mask], self.normalisation, self.eps)
        return torch.stack(rows)

    def forward(self, x: Tensor, agents: Tensor, links: Tensor) -> Tensor:
        """Fused features ``x + H2[:N]`` (N, d) of ``x`` (N, d) with ``agents`` (D, d).

        ``links`` (N,): the agent each sample is joined to in layer 2 (own domain in training, the
        target at test).
        """
        n = x.shape[0]
        v = torch.cat([x, agents], dim=0)
        a1 = normalise_adjacency(layer1_adjacency(n, self.num_domains)).to(v)
        a2 = normalise_adjacency(layer2_adjacency(links, self.num_domains)).to(v)
        h1 = F.leaky_relu(F.linear(a1 @ v, self.gcn1.weight, self.gcn1.bias), 0.2)
        h2 = F.linear(a2 @ h1, self.gcn2.weight, self.gcn2.bias)
        return x + h2[:n]
