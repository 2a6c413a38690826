"""FedLaAvg and MIFA: the paper's known answers, the client memory, and exact resumption."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedsim import results
from fedsim.app import serve
from fedsim.client_app import client_app
from fedsim.grid import InProcessGrid
from fedsim.registry import STRATEGIES
from fedsim.scenario import parse
from strategies import fedlaavg
from strategies.client_memory import ClientMemory
from strategies.fedlaavg import latest_average
from strategies.flower import PipelineStrategy
from strategies.pipeline import RoundInfo

# ---- the client memory ----


def test_memory_starts_at_zero_and_returns_what_was_written(tmp_path) -> None:
    memory = ClientMemory(tmp_path, num_clients=3, dim=4)
    assert np.array_equal(memory.read(1, 0), np.zeros(4, dtype=np.float32))
    memory.write(1, 5, np.arange(4, dtype=np.float32), keep=[0])
    again = ClientMemory(tmp_path, num_clients=3, dim=4)  # another process would open it so
    assert np.array_equal(again.read(1, 5), np.arange(4, dtype=np.float32))
    with pytest.raises(LookupError, match="client 2 holds no update from round 5"):
        again.read(2, 5)


def test_memory_never_overwrites_a_kept_round(tmp_path) -> None:
    # Prepare: rounds 1 and 2 stored; the server still counts on both.
    memory = ClientMemory(tmp_path, num_clients=1, dim=2)
    memory.write(0, 1, np.full(2, 1, dtype=np.float32), keep=[])
    memory.write(0, 2, np.full(2, 2, dtype=np.float32), keep=[1])

    # Execute: two more writes that must spare rounds 1 and 2
    memory.write(0, 3, np.full(2, 3, dtype=np.float32), keep=[1, 2])
    memory.write(0, 4, np.full(2, 4, dtype=np.float32), keep=[1, 2])

    # Assert: round 3 made way for round 4; 1 and 2 survive
    assert [memory.read(0, r)[0] for r in (1, 2, 4)] == [1, 2, 4]
    with pytest.raises(LookupError):
        memory.read(0, 3)


def test_memory_is_sparse_and_refuses_a_file_made_for_another_model(tmp_path) -> None:
    memory = ClientMemory(tmp_path, num_clients=1000, dim=100_000)  # 1.2 GB if it were dense
    memory.write(7, 1, np.ones(100_000, dtype=np.float32), keep=[])
    assert (tmp_path / "values.f32").stat().st_blocks * 512 < 2_000_000
    with pytest.raises(ValueError, match="made for another federation or model"):
        ClientMemory(tmp_path, num_clients=1000, dim=10)


# ---- the server's running average ----


def test_latest_average_folds_differences_into_the_mean_over_all_clients() -> None:
    stage = latest_average(num_clients=4)
    state = stage.init(2)
    info = RoundInfo.uniform(2)
    # Round 1: clients 0 and 1 send u = (4, 0) and (0, 8); clients 2, 3 still count as 0.
    out, state = stage.update(torch.tensor([[4.0, 0.0], [0.0, 8.0]]), state, info)
    assert out.tolist() == [1.0, 2.0]
    # Round 2: client 0's update becomes (0, 4): it sends the difference (-4, 4).
    out, state = stage.update(torch.tensor([[-4.0, 4.0]]), state, info)
    assert out.tolist() == [0.0, 3.0]  # (u0 + u1) / 4 = ((0, 4) + (0, 8)) / 4


# ---- known answers through Flower's own round loop ----


class QuadraticClients:
    """Client i minimises f_i(x) = ||x - targets[i]||² / 2 by ``steps`` gradient steps.

    With ``protocol`` they speak FedLaAvg's protocol (keep their latest update, reply with its
    change); without, they reply with their model, as any Flower client does.
    """

    def __init__(
        self, targets: np.ndarray, lr: float, steps: int, memory_dir: Path, protocol: bool = True
    ) -> None:
        self.targets, self.lr, self.steps, self.protocol = targets, lr, steps, protocol
        self.memory = ClientMemory(memory_dir, len(targets), targets.shape[1])
        self.app = ClientApp()
        self.app.train()(self.train)

    def train(self, msg: Message, context: Context) -> Message:
        client = int(context.node_config["partition-id"])
        config = msg.content.config_records["config"]
        x = msg.content.array_records["arrays"]["x"].numpy()
        local = x.copy()
        for _ in range(self.steps):
            local -= self.lr * (local - self.targets[client])
        name, reply = "arrays", local
        if self.protocol and fedlaavg.is_latest_averaging(config):
            diff = fedlaavg.latest_difference(self.memory, client, config, local - x)
            name, reply = fedlaavg.DIFFERENCE, diff
        content = RecordDict(
            {
                name: ArrayRecord({"x": _array(reply)}),
                "metrics": MetricRecord({"num-examples": 1}),
            }
        )
        return Message(content, reply_to=msg)


def _array(values: np.ndarray) -> Array:
    return Array.from_numpy_ndarray(np.asarray(values, dtype=np.float32))


def alternating(day: int, night: int) -> Callable[[int], np.ndarray]:
    """Client 0 online ``day`` rounds, then client 1 ``night`` rounds, and so on."""

    def online(rnd: int) -> np.ndarray:
        is_day = (rnd - 1) % (day + night) < day
        return np.array([is_day, not is_day])

    return online


def trajectory(strategy: PipelineStrategy, clients: QuadraticClients, rounds: int) -> np.ndarray:
    """x after each round, run by Flower's ``Strategy.start``."""
    grid = InProcessGrid(clients.app, num_nodes=len(clients.targets))
    strategy.client_ids = {1000 + i: i for i in range(len(clients.targets))}
    xs = []
    config = ConfigRecord({fedlaavg.MEMORY_DIR: str(clients.memory.directory)})
    result = strategy.start(
        grid,
        ArrayRecord({"x": _array(np.zeros(clients.targets.shape[1]))}),
        num_rounds=rounds,
        train_config=config,
        evaluate_fn=lambda rnd, arrays: xs.append(arrays["x"].numpy().copy()) or None,  # type: ignore[func-returns-value]
    )
    assert result.arrays is not None
    return np.array(xs[1:])  # evaluate_fn also sees the initial model


def test_two_client_alternating_example_fedavg_is_biased_fedlaavg_is_not(tmp_path) -> None:
    # Prepare: f_0 = x²/2, f_1 = (x-1)²/2, optimum 0.5; client 0 is online 3 rounds in 4.
    targets = np.array([[0.0], [1.0]])
    quiet = {"fraction_evaluate": 0.0, "online": alternating(3, 1), "per_round": 1}
    fedavg = STRATEGIES.build("fedavg")(**quiet)
    latest = STRATEGIES.build("fedlaavg")(**quiet)

    # Execute
    x_avg = trajectory(fedavg, QuadraticClients(targets, 0.02, 5, tmp_path / "a"), 400)[-4:]
    x_la = trajectory(latest, QuadraticClients(targets, 0.02, 5, tmp_path / "b"), 400)[-4:]

    # Assert: FedAvg cycles around 3/4·0 + 1/4·1 = 0.25; FedLaAvg settles at the optimum.
    assert abs(x_avg.mean() - 0.25) < 0.03
    assert np.abs(x_avg - 0.5).min() > 0.15
    np.testing.assert_allclose(x_la, 0.5, atol=1e-3)


def test_clients_that_reply_with_their_model_get_the_same_fedlaavg(tmp_path) -> None:
    # Prepare: the alternating example, once with clients that keep their latest update, once
    # with plain Flower clients (the server keeps their latest updates)
    targets = np.array([[0.0], [1.0]])
    quiet = {"fraction_evaluate": 0.0, "online": alternating(3, 1), "per_round": 1}
    speaking, plain = (STRATEGIES.build("fedlaavg")(**quiet) for _ in range(2))

    # Execute
    spoken = trajectory(speaking, QuadraticClients(targets, 0.02, 5, tmp_path / "a"), 40)
    replied = trajectory(plain, QuadraticClients(targets, 0.02, 5, tmp_path / "b", False), 40)

    # Assert: the same trajectory; the server holds both clients' latest updates
    np.testing.assert_allclose(replied, spoken, rtol=0, atol=1e-6)
    assert sorted(plain.held) == [0, 1] and speaking.held == {}
    assert not (tmp_path / "b" / "values.f32").stat().st_blocks  # no client wrote its memory


class Failures:
    """A recorder that keeps the clients' failures."""

    def __init__(self) -> None:
        self.reasons: dict[int, str] = {}

    def metrics(self, *args: Any) -> None:
        pass

    def event(self, kind: str, **fields: Any) -> None:
        if kind == "client_failed":
            self.reasons[fields["client"]] = fields["reason"]


def test_a_client_may_not_change_protocol_within_a_run(tmp_path) -> None:
    # Prepare: both clients speak the protocol for a round, then reply with their models
    failures = Failures()
    strategy = STRATEGIES.build("fedlaavg")(fraction_evaluate=0.0, recorder=failures)
    clients = QuadraticClients(np.array([[0.0], [1.0]]), 0.1, 1, tmp_path)
    trajectory(strategy, clients, 1)
    clients.protocol = False

    # Execute
    x = trajectory(strategy, clients, 1)

    # Assert: refused, the model kept (ū would otherwise mix two kinds of memory)
    assert sorted(failures.reasons) == [0, 1]
    assert "keeps its latest update itself" in failures.reasons[0]
    np.testing.assert_array_equal(x, np.zeros((1, 1)))


def test_with_every_client_online_and_picked_fedlaavg_equals_uniform_fedavg(tiny, tmp_path) -> None:
    # Prepare: all 4 clients train every round; FedAvg weighs them uniformly.
    tiny.update(rounds=4, clients={"num": 4, "per_round": 4})
    fedavg = {
        **tiny,
        "strategy": {"name": "fedavg", "aggregator": {"name": "mean", "weighted": False}},
    }
    latest = {**tiny, "strategy": {"name": "fedlaavg"}}

    # Execute
    runs = {name: run(raw, tmp_path / name) for name, raw in [("avg", fedavg), ("la", latest)]}

    # Assert: the same model to float precision
    models = {name: torch.load(path / "model.pt") for name, path in runs.items()}
    for key in models["avg"]:
        torch.testing.assert_close(models["la"][key], models["avg"][key], rtol=0, atol=2e-6)


def run(raw: dict[str, Any], out: Path, grid: InProcessGrid | None = None) -> Path:
    scenario = parse(raw)
    if not (out / "scenario.yaml").exists():
        results.prepare(out, scenario, command="test")
    serve(grid or InProcessGrid(client_app, scenario.clients.num), scenario, out, False)
    return out


def test_oldest_first_picks_every_online_client_before_any_twice(tiny, tmp_path) -> None:
    tiny.update(rounds=6, clients={"num": 6, "per_round": 2})
    tiny["strategy"] = {"name": "fedlaavg"}
    out = run(tiny, tmp_path / "run")
    metrics = pd.read_csv(out / "metrics.csv")
    trained = metrics[(metrics.scope == "client") & (metrics.metric == "train_examples")]
    per_round = [set(trained[trained["round"] == r].client.astype(int)) for r in range(1, 7)]
    assert set().union(*per_round[:3]) == set(range(6))  # three rounds of 2 cover all 6
    assert per_round[:3] == per_round[3:]  # then the same order again, oldest first


def test_mifa_trains_every_online_client_and_beta_sets_k(tiny, tmp_path) -> None:
    strategy = STRATEGIES.build("mifa")(per_round=2, fraction_evaluate=0.0)
    assert strategy.per_round is None
    by_beta = STRATEGIES.build("fedlaavg", beta=0.25)(per_round=3)
    by_beta._set_population(8)
    assert by_beta.per_round == 2


class CrashingGrid(InProcessGrid):
    """Fails on the ``crash_at``-th training round it is asked to run, as a killed server would."""

    def __init__(self, *args: Any, crash_at: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.crash_at, self.trains = crash_at, 0

    def send_and_receive(self, messages: Iterable[Message], **kwargs: Any) -> Iterable[Message]:
        batch = list(messages)
        if batch and batch[0].metadata.message_type == "train":
            self.trains += 1
            if self.trains == self.crash_at:
                super().send_and_receive(batch)  # the clients trained and wrote their memory
                raise KeyboardInterrupt
        return super().send_and_receive(batch, **kwargs)


def test_a_resumed_fedlaavg_run_equals_the_uninterrupted_one(tiny, tmp_path) -> None:
    # Prepare: checkpoints every 3 rounds; every client trains every round; the server dies in
    # round 8, after the clients trained in rounds 7 and 8: unless they spared it, round 8
    # overwrote the update of round 6 that the checkpoint's average holds.
    tiny.update(rounds=10, checkpoint_every=3, clients={"num": 4, "per_round": 4})
    tiny["strategy"] = {"name": "fedlaavg"}
    scenario = parse(tiny)
    crashed = tmp_path / "crashed"
    with pytest.raises(KeyboardInterrupt):
        run(tiny, crashed, CrashingGrid(client_app, scenario.clients.num, crash_at=8))

    # Execute
    run(tiny, crashed)
    reference = run(tiny, tmp_path / "reference")

    # Assert
    expected = torch.load(reference / "model.pt")
    got = torch.load(crashed / "model.pt")
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=0)
