"""A graph dealt out among clients: each client's subgraph, its training and validation nodes.

A ``fedsim.data.Federation`` of kind ``graph``: a graph workload's clients receive a
``Labelled(Subgraph, labels)`` where an image workload's receive a tensor of images.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor

from fedsim.data import Labelled, federates
from fedsim.errors import UserError
from fedsim.graphs.graph import GraphDataset, IntArray, Subgraph, hop_ball, induced
from fedsim.graphs.partition import GraphPartitioner, balance, edge_cut
from fedsim.registry import GRAPH_PARTITIONERS, Component

FEATURE_BYTES = 4  # float32


@dataclass(frozen=True, eq=False)  # tensors have no boolean equality; compare by identity
class GraphFederation:
    """Which nodes each client owns, and the subgraph each one trains on."""

    kind: ClassVar[str] = "graph"
    dataset: GraphDataset
    owner: IntArray  # client of every node
    subgraphs: list[Subgraph]  # per client; its targets are the client's training nodes
    train_labels: list[Tensor]
    val_targets: list[Tensor]  # per client: local ids of its held-out nodes
    val_labels: list[Tensor]
    stats: dict[str, float]  # edge_cut, balance, replication_factor, halo_bytes

    @property
    def num_clients(self) -> int:
        return len(self.subgraphs)

    def client_sizes(self) -> list[int]:
        """Training nodes of each client (FedAvg's weights)."""
        return [len(y) for y in self.train_labels]

    def train_data(self, client: int) -> Labelled:
        return Labelled(self.subgraphs[client], self.train_labels[client])

    def val_data(self, client: int) -> Labelled | None:
        if len(self.val_labels[client]) == 0:
            return None
        subgraph = self.subgraphs[client].with_targets(self.val_targets[client])
        return Labelled(subgraph, self.val_labels[client])

    def test_data(self) -> Labelled:
        """The whole graph, its targets the test nodes."""
        return Labelled(self.dataset.x_test, self.dataset.y_test)

    def class_counts(self) -> np.ndarray:
        """Training nodes of each class on each client, shape (clients, classes)."""
        classes = self.dataset.num_classes
        return np.stack(
            [np.bincount(y.cpu().numpy(), minlength=classes) for y in self.train_labels]
        )

    def to(self, device: torch.device) -> GraphFederation:
        return GraphFederation(
            self.dataset,
            self.owner,
            [g.to(device) for g in self.subgraphs],
            [y.to(device) for y in self.train_labels],
            [t.to(device) for t in self.val_targets],
            [y.to(device) for y in self.val_labels],
            self.stats,
        )


@federates("graph")
def federate_graph(
    graph: GraphDataset, partitioner: Component, num_clients: int, seed: int, val_fraction: float
) -> GraphFederation:
    """Assign nodes to clients, cut each client's subgraph by the edge rule, hold out val nodes.

    Each client keeps ``floor(val_fraction · n)`` of its ``n`` training nodes for validation,
    but at least one for training. All randomness comes from a generator derived from ``seed``.
    """
    rule: GraphPartitioner = GRAPH_PARTITIONERS.build(partitioner)
    rng = np.random.default_rng([seed, 0])  # the data's stream of the seed, as images use
    owner = rule.assign(graph, num_clients, rng)
    is_train = np.zeros(graph.num_nodes, dtype=bool)
    is_train[graph.train.numpy()] = True
    subgraphs, train_labels, val_targets, val_labels = [], [], [], []
    held = halo_nodes = 0
    for client in range(num_clients):
        own = np.flatnonzero(owner == client).astype(np.int64)
        trainable = own[is_train[own]]
        if len(trainable) == 0:
            raise UserError(
                f"graph partitioner {partitioner.name!r} left client {client} without training "
                f"nodes ({len(own)} nodes, all test nodes); use fewer clients or another "
                "partitioner"
            )
        nodes = hop_ball(graph, own, rule.hops) if rule.edges == "halo" else own
        src, dst = induced(graph, nodes)
        if rule.edges == "halo":  # the halo's true degrees come with its features
            degree = graph.degree[nodes]
        else:  # a client that drops cross-client edges knows only its own
            degree = torch.bincount(torch.from_numpy(dst), minlength=len(nodes)).float()
        local = np.searchsorted(nodes, trainable)
        n_val = min(math.floor(val_fraction * len(local)), len(local) - 1)
        shuffled = rng.permutation(local)
        val, train = np.sort(shuffled[:n_val]), np.sort(shuffled[n_val:])
        features = graph.features[torch.from_numpy(nodes)]
        subgraphs.append(
            Subgraph(
                features,
                torch.from_numpy(src),
                torch.from_numpy(dst),
                degree,
                torch.from_numpy(train),
            )
        )
        labels = graph.labels[torch.from_numpy(nodes)]
        train_labels.append(labels[train])
        val_targets.append(torch.from_numpy(val))
        val_labels.append(labels[val])
        held += len(nodes)
        halo_nodes += len(nodes) - len(own)
    stats = {
        "edge_cut": edge_cut(graph, owner),
        "balance": balance(owner, num_clients),
        "replication_factor": held / graph.num_nodes,
        # Features plus the degree of every replicated node, float32, sent once before training.
        "halo_bytes": float(halo_nodes * (graph.input_shape[0] + 1) * FEATURE_BYTES),
    }
    return GraphFederation(graph, owner, subgraphs, train_labels, val_targets, val_labels, stats)
