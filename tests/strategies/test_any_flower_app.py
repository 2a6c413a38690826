"""fedsim's strategies inside a Flower app of one's own.

The ClientApp below is written the way Flower's quickstart-pytorch writes it (its own ``Net``,
``load_state_dict`` from the ``arrays`` it receives, a few SGD steps, a reply with ``arrays`` and
``metrics`` holding ``num-examples``), with synthetic tensors for data. A ServerApp builds
fedsim strategies and calls their ``start()``; each round's new model is checked against the
aggregate worked out by hand (numpy) from the replies the strategy received.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Context,
    Error,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import Result
from torch import nn

from fedsim.grid import InProcessGrid
from fedsim.registry import STRATEGIES
from strategies import aggregate
from strategies.flower import PipelineStrategy
from strategies.flower.central_dp import CentralAccount, FixedClippingDP

NUM_NODES = 5  # Krum with f = 1 needs n > 2f + 2
ROUNDS = 3
LR = 0.1

# ---- the user's app, as Flower's examples write it ---------------------------------------------


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(6, 8)
        self.fc2 = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


def load_data(partition_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Synthetic stand-in for the quickstart's CIFAR-10 partition."""
    generator = torch.Generator().manual_seed(partition_id)
    x = torch.randn(32, 6, generator=generator) + partition_id
    return x, torch.randint(0, 3, (32,), generator=generator)


app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    model = Net()
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    x, y = load_data(int(context.node_config["partition-id"]))
    optimizer = torch.optim.SGD(model.parameters(), lr=float(msg.content["config"]["lr"]))
    for _ in range(3):
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
    model_record = ArrayRecord(model.state_dict())
    metrics = {"train_loss": loss.item(), "num-examples": len(x)}
    content = RecordDict({"arrays": model_record, "metrics": MetricRecord(metrics)})
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    model = Net()
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    x, y = load_data(int(context.node_config["partition-id"]))
    with torch.no_grad():
        logits = model(x)
    metrics = {
        "eval_loss": F.cross_entropy(logits, y).item(),
        "eval_acc": (logits.argmax(1) == y).float().mean().item(),
        "num-examples": len(x),
    }
    return Message(content=RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)


# ---- the strategies under test and what each round should give -------------------------------


Flat = np.ndarray  # a model or update as one float64 vector, in the record's order


def flat(arrays: ArrayRecord) -> Flat:
    return np.concatenate([a.numpy().astype(np.float64).ravel() for a in arrays.values()])


@dataclass
class Trace:
    """What one ``start()`` did: the model after each round (0: the initial one) and, per
    round, each reply's node id and model."""

    models: list[Flat] = field(default_factory=list)
    replies: dict[int, list[tuple[int, Flat]]] = field(default_factory=dict)
    result: Result | None = None


def krum_by_hand(updates: Flat, f: int) -> Flat:
    """The update whose n − f − 2 nearest others are closest (Blanchard et al.)."""
    n = len(updates)
    distances = ((updates[:, None] - updates[None]) ** 2).sum(-1)
    np.fill_diagonal(distances, np.inf)
    scores = np.sort(distances, axis=1)[:, : n - f - 2].sum(1)
    return updates[int(np.argmin(scores))]


def nnm_by_hand(updates: Flat, f: int) -> Flat:
    """Each update replaced by the mean of its n − f nearest (itself included)."""
    distances = ((updates[:, None] - updates[None]) ** 2).sum(-1)
    nearest = np.argsort(distances, axis=1, kind="stable")[:, : len(updates) - f]
    return updates[nearest].mean(axis=1)


def nnm_flag_by_hand(updates: Flat) -> Flat:
    mixed = torch.from_numpy(nnm_by_hand(updates, f=1))
    return aggregate("flag", mixed).numpy()


class LatestAverage:
    """FedLaAvg by hand: x + (1/N) Σ over all N clients of each one's latest update."""

    def __init__(self) -> None:
        self.latest: dict[int, Flat] = {}

    def __call__(self, nodes: list[int], updates: Flat) -> Flat:
        self.latest.update(zip(nodes, updates, strict=True))
        return sum(self.latest.values()) / NUM_NODES


def pipeline(**params: Any) -> Callable[[], PipelineStrategy]:
    def make() -> PipelineStrategy:
        built: PipelineStrategy = STRATEGIES.build("fedavg", **params)(
            min_available_nodes=NUM_NODES
        )
        return built

    return make


def fedlaavg() -> PipelineStrategy:
    built: PipelineStrategy = STRATEGIES.build("fedlaavg")(
        per_round=2, min_available_nodes=NUM_NODES
    )
    return built


def central_dp() -> FixedClippingDP:
    """Flower's server-side fixed clipping (no noise, to check by hand) around the mean."""
    mean = pipeline(aggregator={"name": "mean", "weighted": False})()
    return FixedClippingDP(
        mean, 0.0, CLIP, NUM_NODES, seed=0, account=CentralAccount(0.0, 1.0, 1e-5)
    )


CLIP = 0.05


def clipped_mean_by_hand(updates: Flat) -> Flat:
    norms = np.linalg.norm(updates, axis=1, keepdims=True)
    assert (norms > CLIP).any()  # so that the check sees clipping
    return (updates * np.minimum(1.0, CLIP / norms)).mean(axis=0)


# name -> (the strategy, the step by hand from (node ids, updates) in increasing node id)
Step = Callable[[list[int], Flat], Flat]
UNDER_RAY: dict[str, tuple[Callable[[], Any], Callable[[], Step]]] = {
    "krum": (
        pipeline(aggregator={"name": "krum", "f": 1}),
        lambda: lambda _, u: krum_by_hand(u, 1),
    ),
    "nnm-flag": (
        pipeline(preagg=[{"name": "nnm", "f": 1}], aggregator={"name": "flag"}),
        lambda: lambda _, u: nnm_flag_by_hand(u),
    ),
    "fedlaavg": (fedlaavg, LatestAverage),
}
IN_PROCESS = {
    **UNDER_RAY,
    "mifa": (lambda: STRATEGIES.build("mifa")(), LatestAverage),
    "central-dp": (central_dp, lambda: lambda _, u: clipped_mean_by_hand(u)),
}


def serve(grid: Grid, strategies: Iterable[str], traces: dict[str, Trace]) -> None:
    """What the user's ServerApp does: each strategy's ``start()`` from the same initial model."""
    torch.manual_seed(0)
    initial = ArrayRecord(Net().state_dict())
    for name in strategies:
        strategy = IN_PROCESS[name][0]()
        trace = traces[name] = Trace()
        strategy.aggregate_train = recorded(strategy.aggregate_train, trace)
        trace.result = strategy.start(
            grid,
            initial,
            num_rounds=ROUNDS,
            train_config=ConfigRecord({"lr": LR}),
            evaluate_fn=lambda _, arrays, trace=trace: trace.models.append(flat(arrays)),
        )


def recorded(aggregate_train: Callable[..., Any], trace: Trace) -> Callable[..., Any]:
    """``aggregate_train`` that first writes down the replies it is given."""

    def spy(server_round: int, replies: Iterable[Message]) -> Any:
        replies = list(replies)
        trace.replies[server_round] = [
            (m.metadata.src_node_id, flat(m.content["arrays"])) for m in replies
        ]
        return aggregate_train(server_round, replies)

    return spy


def check(trace: Trace, step_by_hand: Step, trains: int) -> None:
    """Every round changed the model, by the step worked out by hand from its replies."""
    assert len(trace.models) == ROUNDS + 1  # evaluate_fn also sees the initial model
    assert trace.result is not None
    for rnd in range(1, ROUNDS + 1):
        before, after = trace.models[rnd - 1], trace.models[rnd]
        replies = sorted(trace.replies[rnd])
        assert len(replies) == trains
        nodes = [node for node, _ in replies]  # in increasing node id: the clients' order
        updates = np.stack([model for _, model in replies]) - before
        expected = before + step_by_hand(nodes, updates)
        assert not np.allclose(after, before, rtol=0, atol=1e-4), f"round {rnd} kept the model"
        np.testing.assert_allclose(after, expected, rtol=1e-5, atol=1e-6)
        metrics = trace.result.train_metrics_clientapp[rnd]
        assert (metrics["clients"], metrics["failures"]) == (trains, 0)
        assert "eval_acc" in trace.result.evaluate_metrics_clientapp[rnd]


TRAINS = {"fedlaavg": 2}  # clients per round; the others train all five


# ---- under Flower's simulation engine ----------------------------------------------------------

RAY_TRACES: dict[str, Trace] = {}
server = ServerApp()


@server.main()
def main(grid: Grid, context: Context) -> None:
    serve(grid, UNDER_RAY, RAY_TRACES)


@pytest.mark.flower
def test_a_standard_flower_app_under_run_simulation(monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: a fresh Ray on loopback, one CPU per ClientApp (two actors on two cores)
    from flwr.simulation import run_simulation

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("RAY_DEDUP_LOGS", "0")
    monkeypatch.setenv("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")  # silences a FutureWarning
    backend_config: Any = {
        "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
        "init_args": {
            "address": "local",
            "num_cpus": 2,
            "include_dashboard": False,
            "_node_ip_address": "127.0.0.1",
        },
    }
    RAY_TRACES.clear()

    # Execute
    run_simulation(server, app, NUM_NODES, backend_config=backend_config)

    # Assert
    assert sorted(RAY_TRACES) == sorted(UNDER_RAY)
    for name, (_, step) in UNDER_RAY.items():
        check(RAY_TRACES[name], step(), TRAINS.get(name, NUM_NODES))
    assert max(node for node, _ in RAY_TRACES["krum"].replies[1]) > 2**32  # Flower's 64-bit ids


# ---- in-process, with node ids as large as Flower's --------------------------------------------


class FlowerIdGrid(InProcessGrid):
    """fedsim's in-process grid with unsigned 64-bit node ids, as Flower draws them."""

    NODE_IDS = [2**64 - 1 - 7919 * i for i in range(NUM_NODES)][::-1]

    def __init__(self, client_app: ClientApp, num_nodes: int) -> None:
        super().__init__(client_app, num_nodes)
        self.ids = self.NODE_IDS[:num_nodes]

    def get_node_ids(self) -> Iterable[int]:
        return list(reversed(self.ids))

    def _context(self, node_id: int) -> Context:
        if node_id not in self._contexts:
            partition = self.ids.index(node_id)
            self._contexts[node_id] = Context(
                run_id=self.run.run_id,
                node_id=node_id,
                node_config={"partition-id": partition, "num-partitions": len(self.ids)},
                state=RecordDict(),
                run_config={},
            )
        return self._contexts[node_id]


@pytest.mark.parametrize("name", sorted(IN_PROCESS))
def test_a_standard_flower_app_with_flower_sized_node_ids(name: str) -> None:
    # Prepare
    traces: dict[str, Trace] = {}

    # Execute
    serve(FlowerIdGrid(app, NUM_NODES), [name], traces)

    # Assert
    check(traces[name], IN_PROCESS[name][1](), TRAINS.get(name, NUM_NODES))


def test_nodes_are_numbered_in_node_id_order() -> None:
    # Prepare
    strategy = pipeline()()
    grid = FlowerIdGrid(app, NUM_NODES)

    # Execute
    list(strategy.configure_train(1, ArrayRecord(Net().state_dict()), ConfigRecord(), grid))

    # Assert
    assert strategy.client_ids == {node: i for i, node in enumerate(sorted(grid.ids))}


def test_without_a_recorder_skipped_rounds_and_failures_go_to_flowers_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Prepare: one of three ClientApps fails; Krum with f = 1 cannot aggregate the other two
    failing = ClientApp()

    @failing.train()
    def fails_on_one(msg: Message, context: Context) -> Message:
        if context.node_config["partition-id"] == 1:  # as Flower's runtime reports a crash
            return Message(Error(code=0, reason="out of memory"), reply_to=msg)
        return train(msg, context)

    strategy = STRATEGIES.build("fedavg", aggregator={"name": "krum", "f": 1})()
    grid = FlowerIdGrid(failing, 3)
    model = ArrayRecord(Net().state_dict())

    # Execute
    with caplog.at_level(logging.WARNING, logger="flwr"):
        sent = strategy.configure_train(1, model, ConfigRecord({"lr": LR}), grid)
        arrays, _ = strategy.aggregate_train(1, grid.send_and_receive(sent))

    # Assert
    assert arrays is None
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(w.startswith("client failed: round=1, phase=train, client=") for w in warnings)
    assert "round skipped: round=1, reason=krum needs n > 2f + 2, got n=2, f=1" in warnings


def test_fedlaavg_keeps_plain_clients_latest_updates_in_checkpoints() -> None:
    # Prepare: two rounds of plain replies
    strategy = STRATEGIES.build("fedlaavg")(per_round=2, min_available_nodes=NUM_NODES)
    serve_one(strategy, rounds=2)

    # Execute
    state = strategy.state_dict()
    again = STRATEGIES.build("fedlaavg")(per_round=2)
    again.load_state_dict(state)

    # Assert: the four clients trained so far, each update as the server holds it
    assert len(state["held"]) == 4 and state["held"].keys() == state["accepted"].keys()
    for client, update in strategy.held.items():
        assert torch.equal(again.held[client], update)


def serve_one(strategy: PipelineStrategy, rounds: int) -> None:
    torch.manual_seed(0)
    strategy.start(
        FlowerIdGrid(app, NUM_NODES),
        ArrayRecord(Net().state_dict()),
        num_rounds=rounds,
        train_config=ConfigRecord({"lr": LR}),
    )
