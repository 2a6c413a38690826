"""The benchmark's work as a Flower user would write it: Flower's quickstart-pytorch app (a
``ClientApp`` and a ``ServerApp`` running ``FedAvg`` with central evaluation), on Flower's own
simulation engine (Ray), run by run.py in a process of its own.

As the quickstart: each call builds the network, loads the global weights from the message,
trains on the node's partition through a ``DataLoader`` (batch 10, shuffled) with SGD and returns
the weights and ``num-examples``; the server samples ``fraction_train`` of the nodes and averages
their weights by examples. The partition is node ``partition-id``'s 50 rows of data.py's arrays,
memory-mapped once per actor (the quickstart caches its ``FederatedDataset`` at module level too).
Inputs come from ``PEERS_*`` environment variables, which Ray's actors inherit.

Two settings a user of this 2-core machine would need and Flower's defaults do not give: one
CPU per client (2 actors; the default 2 CPUs gives one actor, no parallelism), and a fresh
local Ray (``address: local``), not one left running on the machine. The ServerApp waits until
every node is registered before round 1 (Flower samples too few nodes otherwise, flower.md).
"""

from __future__ import annotations

import json
import os
import random
import time
from functools import cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from cnn import simple_cnn
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg
from torch.utils.data import DataLoader, TensorDataset

EVAL_BATCH_SIZE = 64  # as the other implementations (fedsim's on a CPU)


def setting(name: str) -> str:
    return os.environ[f"PEERS_{name.upper()}"]


@cache
def arrays(name: str) -> np.ndarray:
    return np.load(Path(setting("data")) / f"{name}.npy", mmap_mode="r")


def load_data(partition_id: int, batch_size: int) -> DataLoader:
    """The node's training rows (its user's), as the quickstart's ``load_data`` gives them."""
    rows = np.flatnonzero(arrays("client_train") == partition_id)
    x = torch.from_numpy(np.ascontiguousarray(arrays("x_train")[rows]))
    y = torch.from_numpy(np.ascontiguousarray(arrays("y_train")[rows]))
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=True)


def train(net: torch.nn.Module, loader: DataLoader, epochs: int, lr: float) -> float:
    net.train()
    optimizer = torch.optim.SGD(net.parameters(), lr=lr)
    total, seen = 0.0, 0
    for _ in range(epochs):
        for x, y in loader:
            optimizer.zero_grad()
            loss = F.cross_entropy(net(x), y)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(y)
            seen += len(y)
    return total / seen


def test(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    net.eval()
    loss, correct = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(x), EVAL_BATCH_SIZE):
            logits = net(x[start : start + EVAL_BATCH_SIZE])
            target = y[start : start + EVAL_BATCH_SIZE]
            loss += F.cross_entropy(logits, target, reduction="sum").item()
            correct += int((logits.argmax(1) == target).sum())
    return loss / len(x), correct / len(x)


client_app = ClientApp()


@client_app.train()
def client_train(msg: Message, context: Context) -> Message:
    torch.set_num_threads(1)
    net = simple_cnn()
    net.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    loader = load_data(int(context.node_config["partition-id"]), batch_size=10)
    config = msg.content["config"]
    train_loss = train(net, loader, epochs=int(config["epochs"]), lr=float(config["lr"]))
    metrics = {"train_loss": train_loss, "num-examples": len(loader.dataset)}
    reply = {"arrays": ArrayRecord(net.state_dict()), "metrics": MetricRecord(metrics)}
    return Message(content=RecordDict(reply), reply_to=msg)


server_app = ServerApp()


@server_app.main()
def server_main(grid: Grid, context: Context) -> None:
    nodes, per_round = int(setting("nodes")), int(setting("per_round"))
    rounds, every = int(setting("rounds")), int(setting("eval_every"))
    random.seed(int(setting("seed")))  # Flower samples nodes with Python's random
    while len(list(grid.get_node_ids())) < nodes:
        time.sleep(0.2)
    net = simple_cnn()
    net.load_state_dict(torch.load(setting("init")))
    x_test = torch.from_numpy(np.load(Path(setting("data")) / "x_test.npy"))
    y_test = torch.from_numpy(np.load(Path(setting("data")) / "y_test.npy"))

    def central_evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        if server_round == 0 or (server_round % every and server_round != rounds):
            return None
        net.load_state_dict(arrays.to_torch_state_dict())
        loss, accuracy = test(net, x_test, y_test)
        return MetricRecord({"loss": loss, "accuracy": accuracy})

    strategy = FedAvg(fraction_train=per_round / nodes, fraction_evaluate=0.0)
    started = time.perf_counter()
    result = strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord(net.state_dict()),
        train_config=ConfigRecord({"lr": 0.1, "epochs": 1}),
        num_rounds=rounds,
        evaluate_fn=central_evaluate,
    )
    accuracy = {r: float(m["accuracy"]) for r, m in result.evaluate_metrics_serverapp.items()}
    rounds_s = time.perf_counter() - started
    Path(setting("result")).write_text(json.dumps({"accuracy": accuracy, "rounds_s": rounds_s}))


def simulate() -> None:
    """Flower's simulation engine on this machine: one actor per CPU."""
    from flwr.simulation import run_simulation

    torch.set_num_threads(1)
    cores = os.cpu_count() or 1
    run_simulation(
        server_app=server_app,
        client_app=client_app,
        num_supernodes=int(setting("nodes")),
        backend_config={
            "client_resources": {"num_cpus": 1, "num_gpus": 0},
            "init_args": {
                "address": "local",
                "num_cpus": cores,
                "include_dashboard": False,
                "_node_ip_address": "127.0.0.1",
            },
        },
    )
