"""GNN workload: node classification with GCN or GraphSAGE on each client's subgraph.

A client's inputs are a ``Subgraph`` (its nodes, its halo if replicated, the edges between them)
whose ``targets`` are the nodes the labels ``y`` belong to; the workload contract is otherwise the
image workloads' one. The model's parameters are plain Linear layers, so every aggregator applies.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, NonNegativeFloat, PositiveFloat, PositiveInt, model_validator
from torch import Tensor, nn

from clients.graph_models import GNN
from clients.neighbour_sampler import sample_neighbours
from clients.workload import Labelled, State, TrainConfig, WorkloadBase, init_parameters
from fedsim.graphs import GraphDataset, Subgraph
from fedsim.registry import WORKLOADS, Params


class GnnParams(Params):
    """Model and local-training hyper-parameters of the GNN workload."""

    model: Literal["gcn", "sage"] = "gcn"
    hidden: PositiveInt = 32
    layers: PositiveInt = 2
    dropout: float = Field(default=0.5, ge=0.0, lt=1.0)
    epochs: PositiveInt = 5  # passes over the client's training nodes per round
    # None: full-batch on the client's whole subgraph. A list (one fanout per layer, the seeds'
    # first): minibatches of `batch_size` training nodes on sampled neighbourhoods.
    fanouts: list[PositiveInt] | None = None
    batch_size: PositiveInt = 512
    lr: PositiveFloat = 0.01  # Adam
    weight_decay: NonNegativeFloat = 5e-4

    @model_validator(mode="after")
    def _one_fanout_per_layer(self) -> GnnParams:
        if self.fanouts is not None and len(self.fanouts) != self.layers:
            raise ValueError(
                f"fanouts needs one entry per layer, got {len(self.fanouts)} for "
                f"layers={self.layers}; e.g. fanouts: {[10] + [5] * (self.layers - 1)}"
            )
        return self


@dataclass(frozen=True)
class GnnWorkload(WorkloadBase):
    """Cross-entropy on the labelled nodes; Adam, full-batch or on sampled neighbourhoods."""

    reads: ClassVar[str] = "graph"
    params: GnnParams

    def build_model(self, dataset: GraphDataset, generator: torch.Generator) -> nn.Module:
        """A fresh CPU model whose parameters are drawn from ``generator`` only."""
        input_shape, num_classes = dataset.input_shape, dataset.num_classes
        if len(input_shape) != 1:
            raise ValueError(
                f"the gnn workload needs node feature vectors, got inputs of shape {input_shape}; "
                "use a graph dataset (csbm, knn, karate)"
            )
        p = self.params
        with torch.device("meta"):
            model = GNN(p.model, input_shape[0], p.hidden, num_classes, p.layers, p.dropout)
        return init_parameters(model.to_empty(device="cpu"), generator)

    def fit(
        self, model: nn.Module, data: Labelled, state: State, config: TrainConfig
    ) -> dict[str, float]:
        """Train ``model`` in place for ``epochs`` passes over the labelled nodes ``x.targets``.

        Returns the mean cross-entropy ``train_loss`` and ``train_accuracy`` over every labelled
        node seen (with dropout on, as trained).
        """
        x, y = data
        _check(x, y)
        p = self.params
        model.train()
        optimizer = torch.optim.Adam(model.parameters(), lr=p.lr, weight_decay=p.weight_decay)
        loss_sum = torch.zeros((), device=y.device)
        correct = torch.zeros((), dtype=torch.int64, device=y.device)
        seen = 0
        for epoch in range(p.epochs):
            for graph, labels in self._batches(x, y, config.generator):
                logits = model(graph, config.generator)[graph.targets]
                loss = F.cross_entropy(logits, labels)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                loss_sum += loss.detach() * len(labels)
                correct += (logits.detach().argmax(dim=1) == labels).sum()
                seen += len(labels)
            if not torch.isfinite(loss_sum).item():
                raise FloatingPointError(
                    f"round {config.round}: training loss became non-finite in epoch {epoch + 1}"
                    f" (lr={p.lr}); the weights are unusable"
                )
        return {"train_loss": loss_sum.item() / seen, "train_accuracy": correct.item() / seen}

    def _batches(
        self, x: Subgraph, y: Tensor, generator: torch.Generator
    ) -> list[tuple[Subgraph, Tensor]]:
        """One pass: the whole subgraph, or sampled neighbourhoods of shuffled seed batches."""
        fanouts = self.params.fanouts
        if fanouts is None:
            return [(x, y)]
        order = torch.randperm(len(y), generator=generator).to(y.device)
        return [
            (sample_neighbours(x, x.targets[batch], fanouts, generator), y[batch])
            for batch in order.split(self.params.batch_size)
        ]

    def evaluate(
        self, model: nn.Module, data: Labelled, state: State, config: TrainConfig
    ) -> dict[str, float]:
        """Mean cross-entropy ``loss`` and ``accuracy`` on ``x.targets``, full neighbourhoods."""
        x, y = data
        _check(x, y)
        model.eval()
        with torch.inference_mode():
            logits = model(x)[x.targets]
            loss = F.cross_entropy(logits, y, reduction="sum").double()
            correct = (logits.argmax(dim=1) == y).sum()
        return {"loss": loss.item() / len(y), "accuracy": correct.item() / len(y)}


def _check(x: Subgraph, y: Tensor) -> None:
    if not isinstance(x, Subgraph):
        raise TypeError(
            f"the gnn workload trains on a graph, got {type(x).__name__} inputs; use a graph "
            "dataset (csbm, knn, karate) under data:"
        )
    if len(y) == 0:
        raise ValueError("no labelled nodes")
    if len(y) != len(x.targets):
        raise ValueError(f"{len(x.targets)} target nodes but {len(y)} labels")


@WORKLOADS.register("gnn", GnnParams)
def gnn(params: GnnParams) -> GnnWorkload:
    """Node classification with GCN or GraphSAGE (mean), full-batch or with sampled fanouts."""
    return GnnWorkload(params)
