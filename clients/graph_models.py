"""GCN and GraphSAGE (mean) in plain torch: message passing by ``index_add_`` over an edge list.

Each layer's parameters are ``nn.Linear`` layers, so ``init_parameters`` draws them from the
caller's generator and every aggregator sees the same flat weight vector as for any model.
"""

from __future__ import annotations

from itertools import pairwise
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fedsim.graphs import Subgraph

GnnKind = Literal["gcn", "sage"]


def propagate(h: Tensor, graph: Subgraph, weight: Tensor | None = None) -> Tensor:
    """``out[v] = Σ_{(u→v)} weight_uv · h[u]`` over the subgraph's edges (weight 1 if None)."""
    messages = h[graph.src]
    if weight is not None:
        messages = messages * weight[:, None]
    return torch.zeros_like(h).index_add_(0, graph.dst, messages)


class GCNLayer(nn.Module):
    """Kipf & Welling (2017): ``H' = D̃^{-1/2} Ã D̃^{-1/2} H W + b``, ``Ã = A + I``.

    ``D̃`` holds ``graph.degree + 1``: the degree in the graph the subgraph was cut from, so a
    client holding its halo normalises its own nodes as the whole graph would.
    """

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)

    def forward(self, h: Tensor, graph: Subgraph) -> Tensor:
        scale = (graph.degree + 1.0).rsqrt()
        h = F.linear(h, self.linear.weight)  # project first: the narrower side gets propagated
        edge_weight = scale[graph.src] * scale[graph.dst]
        out = propagate(h, graph, edge_weight) + h * scale[:, None].square()  # the self loop
        return out + self.linear.bias


class SAGELayer(nn.Module):
    """Hamilton et al. (2017), mean aggregator: ``h'_v = W_s h_v + W_n · mean_{u→v} h_u + b``.

    The mean runs over the edges present, i.e. over the sampled neighbours when sampling.
    """

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.self_linear = nn.Linear(in_features, out_features)
        self.neighbour_linear = nn.Linear(in_features, out_features, bias=False)

    def forward(self, h: Tensor, graph: Subgraph) -> Tensor:
        count = torch.bincount(graph.dst, minlength=graph.num_nodes).clamp(min=1)
        mean = propagate(h, graph) / count[:, None].to(h.dtype)
        out: Tensor = self.self_linear(h) + self.neighbour_linear(mean)
        return out


class GNN(nn.Module):
    """``layers`` GCN or SAGE layers, ReLU between them, dropout before each; logits per node."""

    def __init__(
        self,
        kind: GnnKind,
        in_features: int,
        hidden: int,
        num_classes: int,
        layers: int = 2,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        layer = GCNLayer if kind == "gcn" else SAGELayer
        widths = [in_features] + [hidden] * (layers - 1) + [num_classes]
        self.layers = nn.ModuleList(layer(a, b) for a, b in pairwise(widths))
        self.dropout = dropout

    def forward(self, graph: Subgraph, generator: torch.Generator | None = None) -> Tensor:
        """Logits of every node; dropout only when a ``generator`` (the client's) is given."""
        h = graph.features
        for i, layer in enumerate(self.layers):
            if i:
                h = F.relu(h)
            h = layer(self._drop(h, generator), graph)
        return h

    def _drop(self, h: Tensor, generator: torch.Generator | None) -> Tensor:
        # Masks drawn from the caller's generator (on the CPU) keep runs reproducible; F.dropout
        # would draw from the global RNG.
        if generator is None or not self.training or self.dropout == 0:
            return h
        keep = torch.rand(h.shape, generator=generator).to(h.device) >= self.dropout
        return h * keep / (1.0 - self.dropout)
