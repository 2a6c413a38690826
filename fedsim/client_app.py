"""The ClientApp: a simulated client's work on whatever Message a round sends it.

Each Message carries the resolved scenario, so a client needs nothing else: a worker process
builds (once) the workload, the data and one model that is reset in place for every client it
serves. Workload ``mbo`` has clients of its own kind (a proxy each, ``train.proxy`` and
``query.gradients``); every other workload answers ``train`` and ``evaluate``.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from functools import lru_cache
from typing import cast

import numpy as np
import torch
import yaml
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Error,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp import ClientApp
from torch import nn

from clients import TrainConfig, Workload
from clients.compression import Compressor
from clients.mbo import MboFederation, MboWorkload
from clients.sparsity import SparsityMethod, masked_training
from fedsim import mbo_server, privacy, wire
from fedsim.build import (
    MASK_STREAM,
    byzantine_clients,
    data_poison,
    initial_model,
    pick_device,
    scenario_federation,
    seeded_generator,
)
from fedsim.data import Federation
from fedsim.errors import UserError
from fedsim.global_mask import masks_from_flat
from fedsim.graphs import GraphFederation
from fedsim.registry import COMPRESSORS, SPARSITY, WORKLOADS
from fedsim.scenario import Scenario, parse
from strategies import fedlaavg
from strategies.attacks.base import Poison
from strategies.client_memory import ClientMemory
from strategies.flower import flatten, unflatten

CLIENT_ERROR = 1  # Error.code of a client whose work raised
RESIDUAL = "compression-residual"  # a client's error-feedback memory in its context.state


class ClientDropout(RuntimeError):
    """A simulated failure mid-round (``clients.dropout``), not a fault of the client's code."""


client_app = ClientApp()


@dataclass
class ClientRuntime:
    """What one worker process keeps for the whole run: data once, one model reset in place.

    Data, client indices and the model live on the device for the whole run (on a GPU, nothing
    of them goes back to the host per client; only each reply's weights do).
    """

    scenario: Scenario
    workload: Workload
    device: torch.device
    model: nn.Module
    # Each client's (inputs, labels): images for image datasets, a subgraph for graph datasets.
    federation: Federation | GraphFederation
    num_classes: int
    byzantine: frozenset[int]
    poison: Poison | None  # a data-poisoning attack's change to a byzantine client's data
    template: ArrayRecord  # the model's arrays: names, shapes and dtypes of what travels
    sparsity: SparsityMethod | None
    compressor: Compressor

    @property
    def encodes_updates(self) -> bool:
        """Whether replies carry the update as a sparse vector rather than the model."""
        return self.sparsity is not None or self.compressor.active


@lru_cache(maxsize=2)
def runtime(scenario_text: str) -> ClientRuntime:
    torch.set_num_threads(1)  # workers share the cores: more threads oversubscribe
    scenario = parse(yaml.safe_load(scenario_text))
    workload: Workload = WORKLOADS.build(scenario.workload)
    federation = scenario_federation(scenario)
    device = pick_device(scenario.device)
    dataset = federation.dataset
    model = initial_model(workload, scenario, dataset)
    sparsity = scenario.workload.sparsity
    return ClientRuntime(
        scenario,
        workload,
        device,
        model.to(device),
        federation.to(device),
        dataset.num_classes,
        byzantine_clients(scenario),
        data_poison(scenario),
        ArrayRecord(model.state_dict()),
        SPARSITY.build(sparsity) if sparsity is not None else None,
        COMPRESSORS.build(scenario.compression),
    )


@client_app.query()
def query(msg: Message, context: Context) -> Message:
    """Tell the server which partition this node holds."""
    info = MetricRecord(
        {
            "partition-id": int(context.node_config["partition-id"]),
            "num-partitions": int(context.node_config["num-partitions"]),
        }
    )
    return Message(RecordDict({"metrics": info}), reply_to=msg)


@client_app.train()
def train(msg: Message, context: Context) -> Message:
    return _reply(msg, context, _train)


@client_app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    return _reply(msg, context, _evaluate)


def _train(client: int, msg: RecordDict, context: Context) -> RecordDict:
    rt = runtime(_scenario_text(msg))
    config = msg.config_records["config"]
    arrays, mask = wire.received_model(msg, rt.template)
    rnd = int(cast(int, config["server-round"]))
    dropout = rt.scenario.clients.dropout
    if dropout and np.random.default_rng([rt.scenario.seed, client, rnd, 11]).random() < dropout:
        raise ClientDropout(f"simulated dropout (clients.dropout={dropout})")
    rt.model.load_state_dict(arrays.to_torch_state_dict())
    generator = seeded_generator(rt.scenario.seed, client, rnd)
    x, y = rt.federation.train_data(client)
    examples = len(y)
    if rt.poison is not None and client in rt.byzantine and isinstance(x, torch.Tensor):
        x, y = rt.poison(x, y, rt.num_classes, seeded_generator(rt.scenario.seed, client, rnd, 1))
    training = privacy.local_training(rt.scenario, context.state, client, rnd)
    train_config = TrainConfig(rnd, client, generator, rt.device, training)
    try:
        with _sparse_training(rt, mask, rnd, client):
            metrics = rt.workload.fit(rt.model, x, y, train_config)
        metrics.update(privacy.spent(training, rt.scenario, context.state))
    finally:
        privacy.release(training)  # DP-SGD's hooks off the model that serves every client
    reply = ArrayRecord(rt.model.state_dict())
    key = "arrays"
    if rt.encodes_updates:
        key, reply = wire.DELTA, _encoded_update(rt, context.state, arrays, reply)
    elif fedlaavg.is_latest_averaging(config):
        reply = _latest_difference(rt, client, config, arrays, reply)
    return RecordDict({key: reply, "metrics": MetricRecord({**metrics, "num-examples": examples})})


def _sparse_training(
    rt: ClientRuntime, mask: torch.Tensor | None, rnd: int, client: int
) -> AbstractContextManager[object]:
    """Local training under the global mask the server sent (rewired by RigL / SET)."""
    if rt.sparsity is None or mask is None:  # dense, or no weight pruned yet
        return nullcontext()
    masks = masks_from_flat(mask, rt.model.state_dict())
    rewiring = rt.sparsity.rewiring(
        rnd, rt.scenario.rounds, seeded_generator(rt.scenario.seed, client, rnd, MASK_STREAM)
    )
    return masked_training(rt.model, masks, rewiring)


def _encoded_update(
    rt: ClientRuntime, state: RecordDict, received: ArrayRecord, trained: ArrayRecord
) -> ArrayRecord:
    """The update (trained − received), compressed (error feedback kept in ``state``) and
    encoded as a sparse vector."""
    update = flatten(trained) - flatten(received)
    kept = state.array_records.get(RESIDUAL)
    residual = torch.from_numpy(kept["residual"].numpy().copy()) if kept is not None else None
    out = rt.compressor.compress(update, residual)
    if out.residual is not None:
        state[RESIDUAL] = ArrayRecord({"residual": Array(out.residual.numpy())})
    return wire.encode(out.sent, out.support)


def _latest_difference(
    rt: ClientRuntime, client: int, config: ConfigRecord, sent: ArrayRecord, trained: ArrayRecord
) -> ArrayRecord:
    """FedLaAvg's reply: the change in this client's latest update, which it keeps on disk."""
    directory = config.get(fedlaavg.MEMORY_DIR)
    if not directory:
        raise UserError(f"latest averaging needs the train config entry {fedlaavg.MEMORY_DIR!r}")
    update = (flatten(trained) - flatten(sent)).numpy()
    memory = ClientMemory(str(directory), rt.scenario.clients.num, update.size)
    diff = fedlaavg.latest_difference(memory, client, config, update)
    return unflatten(torch.from_numpy(diff), sent)


def _evaluate(client: int, msg: RecordDict, context: Context) -> RecordDict:
    rt = runtime(_scenario_text(msg))
    arrays, _ = wire.received_model(msg, rt.template)
    x, y = rt.federation.val_data(client)
    if len(y) == 0:  # no held-out data: evaluate on what it trains on
        x, y = rt.federation.train_data(client)
    rt.model.load_state_dict(arrays.to_torch_state_dict())
    metrics = rt.workload.evaluate(rt.model, x, y)
    return RecordDict({"metrics": MetricRecord({**metrics, "num-examples": len(y)})})


# ---- the mbo workload's clients: a proxy each, kept in the client's state ----

PROXY_STATE = "mbo-proxy"  # context.state entry holding the client's trained proxy

PROXY_STREAM = 17  # keeps proxy initialisation and batch order apart from other uses of the seed


@dataclass
class MboRuntime:
    """One worker process's copy of an mbo task's offline data, encoded for the proxies."""

    scenario: Scenario
    workload: MboWorkload
    federation: MboFederation
    x: torch.Tensor  # (offline rows, D) designs as the proxies see them
    y: torch.Tensor  # (offline rows,) standardised scores


@lru_cache(maxsize=2)
def mbo_runtime(scenario_text: str) -> MboRuntime:
    torch.set_num_threads(1)  # workers share the cores: more threads oversubscribe
    scenario = parse(yaml.safe_load(scenario_text))
    workload: MboWorkload = WORKLOADS.build(scenario.workload)
    federation = mbo_server.federation(scenario)
    task = federation.task
    x = workload.encode(task, task.offline_x)
    return MboRuntime(scenario, workload, federation, x, workload.standardise(task, task.offline_y))


@client_app.train("proxy")
def train_proxy(msg: Message, context: Context) -> Message:
    return _reply(msg, context, _fit_proxy)


@client_app.query("gradients")
def proxy_gradients(msg: Message, context: Context) -> Message:
    return _reply(msg, context, _proxy_gradients)


def _fit_proxy(client: int, msg: RecordDict, context: Context) -> RecordDict:
    """Train this client's proxy on its offline data; reply its metrics and its best designs."""
    rt = mbo_runtime(_scenario_text(msg))
    fed, seed = rt.federation, rt.scenario.seed
    generator = seeded_generator(seed, client, PROXY_STREAM)
    proxy = rt.workload.build_proxy(fed.task, generator)
    train, val = fed.train[client], fed.val[client]
    metrics = rt.workload.fit_proxy(proxy, rt.x[train], rt.y[train], generator)
    metrics.update(rt.workload.evaluate_proxy(proxy, rt.x[val], rt.y[val]))
    context.state[PROXY_STATE] = ArrayRecord(proxy.state_dict())
    best = train[torch.argsort(rt.y[train], descending=True, stable=True)]
    best = best[: rt.workload.params.designs]
    top = ArrayRecord({"designs": rt.x[best].contiguous(), "scores": rt.y[best].contiguous()})
    return RecordDict(
        {"metrics": MetricRecord({**metrics, "num-examples": len(train)}), "top": top}
    )


def _proxy_gradients(client: int, msg: RecordDict, context: Context) -> RecordDict:
    """This client's proxy values and gradients at the designs the server sent."""
    rt = mbo_runtime(_scenario_text(msg))
    if PROXY_STATE not in context.state:
        raise RuntimeError("this client has no trained proxy (its proxy round failed)")
    proxy = rt.workload.build_proxy(rt.federation.task, torch.Generator())
    proxy.load_state_dict(context.state.array_records[PROXY_STATE].to_torch_state_dict())
    designs = msg.array_records["designs"].to_torch_state_dict()["designs"]
    values, grads = rt.workload.gradients(proxy, designs)
    return RecordDict({"gradients": ArrayRecord({"values": values, "gradients": grads})})


def _scenario_text(msg: RecordDict) -> str:
    return str(msg.config_records["config"]["scenario"])


def _reply(
    msg: Message,
    context: Context,
    work: Callable[[int, RecordDict, Context], RecordDict],
) -> Message:
    """Run a client's work; an exception becomes an error reply the server records."""
    try:
        content = work(int(context.node_config["partition-id"]), msg.content, context)
    except Exception as err:  # the round goes on without this client
        return Message(
            Error(code=CLIENT_ERROR, reason=f"{type(err).__name__}: {err}"), reply_to=msg
        )
    return Message(content, reply_to=msg)
