"""A user's own workload, as a plugin file: ``tests/fedsim/test_toy_workload.py`` names it under
``plugins:``, so that every process that runs its clients imports it (workers, Ray actors, a
resumed ``fedsim run``) without anything else in place.

``toy_bn`` is an MLP whose BatchNorm entries never leave a client (FedBN), a per-client counter of
its training calls kept in the client's state, and an exchange (``centroid``) whose clients
report their mean hidden feature, the server reducing the reports with the scenario's pipeline;
the broadcast pulls the clients' features in their next training and enters the server's own
central metric.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.nn.functional as F
from pydantic import NonNegativeFloat, PositiveFloat, PositiveInt
from torch import Tensor, nn

from clients.workload import (
    Aggregate,
    Arrays,
    Exchange,
    Metrics,
    State,
    TrainConfig,
    WorkloadBase,
    init_parameters,
)
from fedsim.data import Dataset, Labelled
from fedsim.registry import WORKLOADS, Params

TOY = "toy_bn"
CENTROID = "centroid"  # the exchange's name, and the key of its broadcast


# ---- the workload --------------------------------------------------------------------------


class ToyParams(Params):
    hidden: PositiveInt = 16
    lr: PositiveFloat = 0.1
    batch_size: PositiveInt = 32
    pull: NonNegativeFloat = 0.05  # weight of ||mean feature - broadcast centroid||² in the loss


class ToyNet(nn.Module):
    """Flatten -> Linear -> BatchNorm -> ReLU -> Linear."""

    def __init__(self, inputs: int, hidden: int, classes: int) -> None:
        super().__init__()
        self.body = nn.Linear(inputs, hidden)
        self.bn = nn.BatchNorm1d(hidden)
        self.head = nn.Linear(hidden, classes)

    def features(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.body(x.flatten(1))))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


@dataclass(frozen=True)
class Centroid:
    """Clients report their mean hidden feature; the pipeline reduces them to one centroid."""

    name: str = CENTROID
    everyone: bool = True

    def report(
        self, model: nn.Module, data: Labelled, state: State, config: TrainConfig
    ) -> tuple[Arrays, Metrics]:
        model.eval()
        with torch.no_grad():
            mean = cast(ToyNet, model).features(data.inputs).mean(dim=0)
        return {"mean": mean}, {"feature_norm": float(mean.norm())}

    def reduce(
        self, reports: Mapping[int, Arrays], memory: Any, aggregate: Aggregate, round: int
    ) -> tuple[Arrays, Any, Metrics]:
        clients = sorted(reports)
        rows = torch.stack([reports[c]["mean"] for c in clients])
        memory = memory or {"pipeline": None, "reduced": 0}
        centroid, pipeline = aggregate(rows, clients, memory["pipeline"], None)
        memory = {"pipeline": pipeline, "reduced": memory["reduced"] + 1}
        return {CENTROID: centroid}, memory, {"centroid_norm": float(centroid.norm())}


@dataclass(frozen=True)
class ToyWorkload(WorkloadBase):
    """Cross-entropy plus a pull of the features towards the broadcast centroid; FedBN."""

    params: ToyParams
    local: tuple[str, ...] = ("bn.*",)
    exchanges: tuple[Exchange, ...] = (Centroid(),)

    def build_model(self, dataset: Dataset, generator: torch.Generator) -> nn.Module:
        inputs = int(torch.tensor(dataset.input_shape).prod())
        with torch.device("meta"):
            model = ToyNet(inputs, self.params.hidden, dataset.num_classes)
        return init_parameters(model.to_empty(device="cpu"), generator)

    def fit(self, model: nn.Module, data: Labelled, state: State, config: TrainConfig) -> Metrics:
        x, y = data
        p = self.params
        centroid = config.received.get(CENTROID, {}).get(CENTROID)
        model.train()
        optimizer: torch.optim.Optimizer = torch.optim.SGD(model.parameters(), lr=p.lr)
        model, optimizer = config.training.setup(
            model, optimizer, len(y), p.batch_size, config.generator
        )
        total, seen = 0.0, 0
        for batches in config.training.passes(1, None, x.device):
            for idx in batches:
                if idx.numel() < 2:  # BatchNorm needs two samples to train
                    continue
                features = cast(ToyNet, model).features(x[idx])
                loss = F.cross_entropy(cast(ToyNet, model).head(features), y[idx])
                if centroid is not None:
                    loss = loss + p.pull * (features.mean(dim=0) - centroid).square().sum()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total, seen = total + loss.item() * idx.numel(), seen + idx.numel()
        calls = state.get("calls", torch.zeros((), dtype=torch.int64)) + 1
        state["calls"] = calls
        return {"train_loss": total / max(seen, 1), "calls": float(calls)}

    def evaluate(
        self, model: nn.Module, data: Labelled, state: State, config: TrainConfig
    ) -> Metrics:
        x, y = data
        model.eval()
        with torch.no_grad():
            logits = model(x)
        loss = float(F.cross_entropy(logits, y))
        return {"loss": loss, "accuracy": float((logits.argmax(dim=1) == y).float().mean())}

    def evaluate_central(
        self, model: nn.Module, test: Labelled, config: TrainConfig, memory: Mapping[str, Any]
    ) -> Metrics:
        """Accuracy, and how far the test set's mean feature lies from the broadcast centroid."""
        metrics = self.evaluate(model, test, {}, config)
        centroid = config.received.get(CENTROID, {}).get(CENTROID)
        if centroid is None:  # no round of the exchange has succeeded yet
            return metrics
        with torch.no_grad():
            test_mean = cast(ToyNet, model).features(test.inputs).mean(dim=0)
        metrics["centroid_distance"] = float((test_mean - centroid).norm())
        metrics["exchange_reductions"] = float(memory[CENTROID]["reduced"])
        return metrics


def toy_bn(p: ToyParams) -> ToyWorkload:
    """A BatchNorm MLP with FedBN, a per-client call counter and a centroid exchange (test)."""
    return ToyWorkload(p)


WORKLOADS.register(TOY, ToyParams)(toy_bn)
