"""Graph partitioners: which client owns each node, and what happens to the edges between clients.

A graph partitioner's factory returns a ``GraphPartitioner``: ``assign(graph, num_clients, rng)``
gives the owner of every node; ``edges`` says what a client does with edges to other clients'
nodes: ``drop`` them (it trains on the subgraph its own nodes induce) or ``halo`` (it receives
the features and degrees of every node within ``hops`` edges of its own, once, before training,
so that an L-layer GNN with L <= hops sees on its own nodes what it would see on the whole graph).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import NonNegativeInt, PositiveFloat, PositiveInt

from fedsim.errors import UserError
from fedsim.graphs.graph import GraphDataset, IntArray
from fedsim.partition import DirichletParams, IidParams, dirichlet, iid
from fedsim.registry import GRAPH_PARTITIONERS, Params

Assign = Callable[[GraphDataset, int, np.random.Generator], IntArray]
EdgeRule = Literal["drop", "halo"]


@dataclass(frozen=True)
class GraphPartitioner:
    assign: Assign  # (graph, num_clients, rng) -> owner of each node, int64 (N,)
    edges: EdgeRule
    hops: int  # depth of the halo (used with edges="halo")


class EdgesParams(Params):
    """What every graph partitioner takes: the rule for edges between clients."""

    edges: EdgeRule = "drop"
    hops: PositiveInt = 2  # halo depth; match the model's layers for exact local propagation


class MetisParams(EdgesParams):
    pass


@GRAPH_PARTITIONERS.register("metis", MetisParams)
def metis(p: MetisParams) -> GraphPartitioner:
    """METIS (pymetis): balanced parts that cut few edges (Karypis & Kumar, 1998)."""

    def assign(graph: GraphDataset, num_clients: int, rng: np.random.Generator) -> IntArray:
        import pymetis

        _check_clients("metis", graph, num_clients)
        if num_clients == 1:
            return np.zeros(graph.num_nodes, dtype=np.int64)
        src, dst = graph.src.numpy(), graph.dst.numpy()
        neighbours = src[np.argsort(dst, kind="stable")]  # CSR: every node's, in node order
        indptr = np.concatenate([[0], np.cumsum(np.bincount(dst, minlength=graph.num_nodes))])
        options = pymetis.Options(seed=int(rng.integers(0, 2**31 - 1)))
        adjacency = pymetis.CSRAdjacency(indptr, neighbours)
        parts = pymetis.part_graph(num_clients, adjacency, options=options)
        return np.asarray(parts.vertex_part, dtype=np.int64)

    return GraphPartitioner(assign, p.edges, p.hops)


class RandomParams(EdgesParams):
    pass


@GRAPH_PARTITIONERS.register("random", RandomParams)
def random(p: RandomParams) -> GraphPartitioner:
    """Nodes dealt uniformly at random (hash partitioning): balanced, most edges cut."""
    split = iid(IidParams())

    def assign(graph: GraphDataset, num_clients: int, rng: np.random.Generator) -> IntArray:
        _check_clients("random", graph, num_clients)
        return _owners(split(graph.labels.numpy(), num_clients, rng), graph.num_nodes)

    return GraphPartitioner(assign, p.edges, p.hops)


class LabelDirichletParams(EdgesParams):
    alpha: PositiveFloat = 0.5  # concentration: small → each client dominated by a few classes
    min_size: NonNegativeInt = 2  # resample until every client owns at least this many nodes


@GRAPH_PARTITIONERS.register("label_dirichlet", LabelDirichletParams)
def label_dirichlet(p: LabelDirichletParams) -> GraphPartitioner:
    """Label skew: each class's nodes spread over the clients in Dir(alpha) proportions."""
    split = dirichlet(DirichletParams(alpha=p.alpha, min_size=p.min_size))

    def assign(graph: GraphDataset, num_clients: int, rng: np.random.Generator) -> IntArray:
        _check_clients("label_dirichlet", graph, num_clients)
        return _owners(split(graph.labels.numpy(), num_clients, rng), graph.num_nodes)

    return GraphPartitioner(assign, p.edges, p.hops)


def _check_clients(name: str, graph: GraphDataset, num_clients: int) -> None:
    if num_clients > graph.num_nodes:
        raise UserError(
            f"{name} partitioner needs at most one client per node, got {num_clients} clients "
            f"for {graph.num_nodes} nodes; use fewer clients"
        )


def _owners(parts: list[IntArray], num_nodes: int) -> IntArray:
    owner = np.empty(num_nodes, dtype=np.int64)
    for client, part in enumerate(parts):
        owner[part] = client
    return owner


def edge_cut(graph: GraphDataset, owner: IntArray) -> float:
    """The share of edges whose two ends belong to different clients."""
    if len(graph.src) == 0:
        return 0.0
    return float(np.mean(owner[graph.src.numpy()] != owner[graph.dst.numpy()]))


def balance(owner: IntArray, num_clients: int) -> float:
    """The largest part over the mean part size (METIS's imbalance; 1 is perfectly balanced)."""
    sizes = np.bincount(owner, minlength=num_clients)
    return float(sizes.max() / sizes.mean())
