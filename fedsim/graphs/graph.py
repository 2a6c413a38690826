"""Graphs as fedsim holds them: a whole labelled graph, and the subgraph a GNN reads.

Edges are directed pairs ``(src, dst)``: a message flows from ``src`` to ``dst``. An undirected
graph stores both directions and no self loops (GCN adds its own).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cached_property

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor

IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True, eq=False)  # tensors have no boolean equality; compare by identity
class Subgraph:
    """What a GNN reads: node features, directed edges, degrees, and the nodes labels belong to.

    ``degree`` is the degree each node has in the graph the subgraph was cut from, which GCN's
    normalisation uses: a client that replicated its halo knows its halo nodes' true degrees, so
    its GCN computes on its own nodes exactly what the full graph would.
    """

    features: Tensor  # float32 (n, f)
    src: Tensor  # int64 (e,), local node ids
    dst: Tensor  # int64 (e,)
    degree: Tensor  # float32 (n,), without the self loop
    targets: Tensor  # int64 (m,): local ids of the nodes whose labels go with this subgraph

    @property
    def num_nodes(self) -> int:
        return int(self.features.shape[0])

    def to(self, device: torch.device | str) -> Subgraph:
        return Subgraph(*(t.to(device) for t in self._tensors()))

    def with_targets(self, targets: Tensor) -> Subgraph:
        return replace(self, targets=targets)

    def _tensors(self) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        return self.features, self.src, self.dst, self.degree, self.targets

    @cached_property
    def in_neighbours(self) -> tuple[Tensor, Tensor]:
        """CSR of incoming edges: the in-neighbours of v are ``indices[indptr[v]:indptr[v+1]]``."""
        order = torch.argsort(self.dst, stable=True)
        counts = torch.bincount(self.dst, minlength=self.num_nodes)
        indptr = torch.zeros(self.num_nodes + 1, dtype=torch.int64, device=self.dst.device)
        indptr[1:] = torch.cumsum(counts, 0)
        return indptr, self.src[order]


@dataclass(frozen=True, eq=False)
class GraphDataset:
    """A labelled, undirected graph with a node-level test split; one copy per process.

    Nodes not in ``test`` are training nodes; each client holds out part of its own as
    validation nodes (``data.val_fraction``). Central evaluation runs the model on the whole graph
    and scores it on the test nodes (``x_test``, ``y_test``), as an image dataset's would.
    """

    name: str
    features: Tensor  # float32 (N, f)
    src: Tensor  # int64 (E,), both directions of every edge
    dst: Tensor
    labels: Tensor  # int64 (N,)
    test: Tensor  # int64 sorted indices of the test nodes
    num_classes: int

    @property
    def num_nodes(self) -> int:
        return int(self.features.shape[0])

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (int(self.features.shape[1]),)

    @cached_property
    def degree(self) -> Tensor:
        return torch.bincount(self.dst, minlength=self.num_nodes).to(torch.float32)

    @cached_property
    def train(self) -> Tensor:
        """Indices of the nodes whose labels clients may train on (every non-test node)."""
        is_train = torch.ones(self.num_nodes, dtype=torch.bool)
        is_train[self.test] = False
        return torch.nonzero(is_train).flatten()

    @property
    def x_test(self) -> Subgraph:
        return Subgraph(self.features, self.src, self.dst, self.degree, self.test)

    @property
    def y_test(self) -> Tensor:
        return self.labels[self.test]

    def homophily(self) -> float:
        """Edge homophily: the fraction of edges whose two ends share a label."""
        if len(self.src) == 0:
            return float("nan")
        return float((self.labels[self.src] == self.labels[self.dst]).float().mean())


def graph_dataset(
    name: str,
    features: npt.NDArray[np.floating],
    edges: IntArray,
    labels: npt.NDArray[np.integer],
    test_fraction: float,
    seed: int,
) -> GraphDataset:
    """A GraphDataset from undirected ``edges`` (pairs, any order, duplicates and loops allowed).

    The test nodes are a stratified ``test_fraction`` of the nodes, drawn from ``seed``.
    """
    from fedsim.data import _stratified_split  # the image datasets' stratified split

    n = len(labels)
    src, dst = undirected(edges, n)
    _, test, _, _ = _stratified_split(name, np.arange(n), np.asarray(labels), test_fraction, seed)
    return GraphDataset(
        name,
        torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32)),
        torch.from_numpy(src),
        torch.from_numpy(dst),
        torch.from_numpy(np.asarray(labels, dtype=np.int64)),
        torch.from_numpy(np.sort(test).astype(np.int64)),
        int(np.max(labels)) + 1,
    )


def undirected(edges: IntArray, num_nodes: int) -> tuple[IntArray, IntArray]:
    """Both directions of every edge, without self loops or duplicates, sorted by (dst, src)."""
    edges = np.asarray(edges, dtype=np.int64).reshape(-1, 2)
    a, b = edges[:, 0], edges[:, 1]
    keep = a != b
    both = np.concatenate([np.stack([a[keep], b[keep]]), np.stack([b[keep], a[keep]])], axis=1)
    keys = np.unique(both[1] * num_nodes + both[0])  # unique and sorted by (dst, src)
    return (keys % num_nodes).astype(np.int64), (keys // num_nodes).astype(np.int64)


def induced(graph: GraphDataset, nodes: IntArray) -> tuple[IntArray, IntArray]:
    """The edges of ``graph`` between ``nodes`` (sorted global ids), in local ids."""
    local = np.full(graph.num_nodes, -1, dtype=np.int64)
    local[nodes] = np.arange(len(nodes))
    src, dst = local[graph.src.numpy()], local[graph.dst.numpy()]
    keep = (src >= 0) & (dst >= 0)
    return src[keep], dst[keep]


def hop_ball(graph: GraphDataset, nodes: IntArray, hops: int) -> IntArray:
    """Sorted ids of every node within ``hops`` edges of ``nodes`` (``nodes`` included)."""
    inside = np.zeros(graph.num_nodes, dtype=bool)
    inside[nodes] = True
    src, dst = graph.src.numpy(), graph.dst.numpy()
    for _ in range(hops):
        reached = np.zeros_like(inside)
        reached[dst[inside[src]]] = True
        if not (reached & ~inside).any():
            break
        inside |= reached
    return np.flatnonzero(inside).astype(np.int64)
