"""The Flower app: one ServerApp and one ClientApp, whatever engine carries their Messages.

The ServerApp reads the scenario named in the run config, drives the scenario's strategy round by
round and writes the run directory. Each training or evaluation Message carries the resolved
scenario, so a ClientApp needs nothing else: it builds (once per process) the workload, the data
and one model that is reset in place for every client it serves.
"""

from __future__ import annotations

import shlex
import sys
import time
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, cast

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
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from torch import nn

from clients import TrainConfig, Workload
from clients.compression import Compressor
from clients.mbo import MboFederation, MboWorkload
from clients.sparsity import SparsityMethod, masked_training
from fedsim import mbo_server, privacy, results, wire
from fedsim.data import Dataset, Federation, federation_for, load_dataset
from fedsim.errors import UserError
from fedsim.global_mask import GlobalMask, masks_from_flat
from fedsim.graphs import GraphDataset, GraphFederation
from fedsim.progress import RoundProgress
from fedsim.registry import (
    ATTACKS,
    AVAILABILITY,
    COMPRESSORS,
    SPARSITY,
    STRATEGIES,
    WORKLOADS,
)
from fedsim.scenario import Scenario, load, parse
from strategies import fedlaavg
from strategies.attacks.base import DataAttack, Poison
from strategies.availability import Population
from strategies.central_dp import CentralDP
from strategies.client_memory import ClientMemory
from strategies.flower import PipelineStrategy, flatten, unflatten, with_phase

NODE_WAIT_S = 120.0  # how long the server waits for the federation's nodes to register
CLIENT_ERROR = 1  # Error.code of a client whose work raised
BYZANTINE_STREAM = 13  # keeps the choice of byzantine clients apart from other uses of the seed
MASK_STREAM = 19  # the same for the sparse-training method's initial mask
RESIDUAL = "compression-residual"  # a client's error-feedback memory in its context.state


# ---------------------------------------------------------------------------------------------
# Server side
# ---------------------------------------------------------------------------------------------

server_app = ServerApp()


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    """Entry point on Flower's engines: run config ``scenario`` (path) and ``out`` (run dir).

    An ``out`` that already holds a run is resumed from its checkpoint, with its own scenario.
    """
    out = str(context.run_config.get("out", "") or "")
    if out and (Path(out) / "scenario.yaml").exists():  # prepared by `fedsim run`, or resumed
        run_dir = Path(out).resolve()
        scenario = load(run_dir / "scenario.yaml")
    else:
        scenario = load(locate_scenario(str(context.run_config.get("scenario", ""))))
        run_dir = (Path(out) if out else results.default_run_dir(scenario)).resolve()
        results.prepare(run_dir, scenario, command=shlex.join(sys.argv))
    print(f"fedsim: writing results to {run_dir}", flush=True)
    serve(grid, scenario, run_dir, show_progress=bool(context.run_config.get("progress", True)))


def locate_scenario(path: str) -> Path:
    """A scenario path as given, or relative to the app's directory (``flwr run`` changes cwd)."""
    if not path:
        raise UserError("no scenario given: set run config 'scenario' to a YAML file")
    candidates = [Path(path), Path(__file__).resolve().parent.parent / path]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    looked = ", ".join(map(str, candidates))
    raise UserError(f"scenario file {path!r} not found (looked in: {looked})")


def serve(grid: Grid, scenario: Scenario, run_dir: Path, show_progress: bool = True) -> None:
    """Run the rounds of ``scenario`` on ``grid``, writing results into ``run_dir``.

    A run directory with a checkpoint continues after its last completed round.
    """
    checkpoint = results.load_checkpoint(run_dir)
    # A run killed before its first checkpoint starts over: drop whatever it wrote.
    started = (run_dir / "metrics.csv").exists()
    resume_after = checkpoint["round"] if checkpoint else (0 if started else None)
    writer = results.RunWriter(run_dir, resume_after=resume_after)
    try:
        _serve(grid, scenario, writer, checkpoint, show_progress)
    except BaseException as err:
        writer.event("run_failed", error=f"{type(err).__name__}: {err}")
        writer.close("failed" if not isinstance(err, KeyboardInterrupt) else "interrupted")
        raise
    writer.close("completed")


def _serve(
    grid: Grid,
    scenario: Scenario,
    writer: results.RunWriter,
    checkpoint: results.Checkpoint | None,
    show_progress: bool,
) -> None:
    device = pick_device(scenario.device)
    client_ids = identify_clients(grid, scenario.clients.num)
    if mbo_server.is_mbo(scenario):  # the server ascends designs rather than a model
        designs = pipeline_strategy(scenario, client_ids=client_ids, recorder=writer)
        mbo_server.serve_designs(
            grid, scenario, writer, checkpoint, show_progress, client_ids, designs
        )
        return
    workload: Workload = WORKLOADS.build(scenario.workload)
    dataset = load_dataset(scenario.data.dataset)
    model, model_changes = initial_model_and_changes(workload, scenario, dataset)
    model = model.to(device)
    x_test, y_test = dataset.x_test.to(device), dataset.y_test.to(device)
    strategy = build_strategy(scenario, client_ids=client_ids, recorder=writer)
    mask = global_mask(scenario, strategy)
    first = 1
    if checkpoint is None:
        writer.event("run_started", clients=scenario.clients.num, rounds=scenario.rounds)
        if scenario.privacy.mode != "none":
            writer.event("privacy", **scenario.privacy.model_dump(), model_changes=model_changes)
        if scenario.byzantine.num:
            writer.event(
                "byzantine_clients",
                clients=sorted(byzantine_clients(scenario)),
                attack=scenario.byzantine.attack.model_dump(),
            )
    else:
        first = checkpoint["round"] + 1
        model.load_state_dict(checkpoint["model"])
        strategy.load_state_dict(checkpoint["strategy"])
        if mask is not None:
            mask.load_state_dict(checkpoint["sparsity"])
        restore = getattr(grid, "restore_client_states", None)
        if restore is not None:
            restore(checkpoint["clients"])
        writer.event("run_resumed", after_round=checkpoint["round"])
    arrays = ArrayRecord(model.state_dict())
    if mask is not None and checkpoint is None:
        arrays = mask.start(arrays)
    # Client memory (FedLaAvg's latest updates) lives in the run directory, so it resumes with it.
    memory = str(writer.path / "client_memory")
    config = ConfigRecord({"scenario": scenario.to_yaml(), fedlaavg.MEMORY_DIR: memory})

    with RoundProgress(scenario.rounds, done=first - 1, enabled=show_progress) as progress:
        for rnd in range(first, scenario.rounds + 1):
            started = time.perf_counter()
            messages = strategy.configure_train(rnd, arrays, config, grid)
            replies, traffic = _exchange(grid, messages, arrays, mask, "")
            trained = time.perf_counter()
            new_arrays, train_metrics = strategy.aggregate_train(rnd, replies)
            arrays = new_arrays if new_arrays is not None else arrays
            if mask is not None:  # the server prunes the aggregate: the next global mask
                arrays = mask.after_round(rnd, arrays)
                traffic["density"] = mask.density
            aggregated = time.perf_counter()
            writer.metrics(rnd, results.FEDERATED, None, with_phase(train_metrics or {}, "train"))
            if rnd == 1:  # a graph partition's edge cut, balance, replication and halo bytes
                writer.metrics(rnd, results.SERVER, None, partition_stats(scenario))

            accuracy, evaluating = None, time.perf_counter()
            if rnd % scenario.eval.every == 0 or rnd == scenario.rounds:
                messages = strategy.configure_evaluate(rnd, arrays, config, grid)
                replies, eval_traffic = _exchange(grid, messages, arrays, mask, "eval_")
                traffic.update(eval_traffic)
                eval_metrics = strategy.aggregate_evaluate(rnd, replies)
                writer.metrics(rnd, results.FEDERATED, None, with_phase(eval_metrics or {}, "eval"))
                model.load_state_dict(arrays.to_torch_state_dict())
                central = workload.evaluate(model, x_test, y_test)
                writer.metrics(rnd, results.SERVER, None, central)
                accuracy = central.get("accuracy")
            finished = time.perf_counter()
            timings = {
                "train_time_s": trained - started,  # clients' training, transport included
                "aggregate_time_s": aggregated - trained,
                "eval_time_s": finished - evaluating,  # clients' and the central evaluation
                "round_time_s": finished - started,
            }
            writer.metrics(rnd, results.SERVER, None, {**timings, **traffic})
            writer.flush()
            every = scenario.checkpoint_every
            if every and (rnd % every == 0 or rnd == scenario.rounds):
                writer.save_checkpoint(_checkpoint(rnd, arrays, strategy, grid, mask))
            progress.advance(accuracy)

    model.load_state_dict(arrays.to_torch_state_dict())
    writer.save_model(model.state_dict())


def _exchange(
    grid: Grid,
    messages: Iterable[Message],
    arrays: ArrayRecord,
    mask: GlobalMask | None,
    phase: str,
) -> tuple[list[Message], dict[str, float]]:
    """Send one phase's Messages (a masked model as its unmasked entries), receive the replies
    (encoded updates decoded back to models) and the bytes each way, measured as serialised."""
    sent = list(messages)
    if mask is not None:
        sent = wire.send_masked(sent, mask.flat(arrays))
    replies = list(grid.send_and_receive(sent))
    down, up = wire.traffic(sent, replies)
    traffic = {f"{phase}bytes_down": float(down), f"{phase}bytes_up": float(up)}
    return wire.receive_updates(replies, arrays), traffic


def global_mask(scenario: Scenario, strategy: PipelineStrategy | CentralDP) -> GlobalMask | None:
    """The server's global mask when the workload trains sparse (checked against the strategy)."""
    encoded = scenario.workload.sparsity is not None or scenario.compression.name != "none"
    if encoded and isinstance(strategy, fedlaavg.FedLaAvgStrategy):
        raise UserError(
            f"strategy {scenario.strategy.name} has clients reply with the change of their latest "
            "update, which workload.sparsity and compression do not encode; use strategy fedavg"
        )
    return GlobalMask.for_scenario(scenario, _generator(scenario.seed, MASK_STREAM))


def build_strategy(scenario: Scenario, **options: Any) -> PipelineStrategy | CentralDP:
    """The scenario's strategy, inside Flower's central-DP wrapper when ``privacy`` says so."""
    return privacy.central(pipeline_strategy(scenario, **options), scenario)


def pipeline_strategy(scenario: Scenario, **options: Any) -> PipelineStrategy:
    """The scenario's strategy with its sampling, availability and byzantine clients."""
    attack = None
    if scenario.byzantine.num:
        built = ATTACKS.build(scenario.byzantine.attack)
        attack = None if isinstance(built, DataAttack) else built  # data attacks act in clients
    strategy: PipelineStrategy = STRATEGIES.build(scenario.strategy)(
        per_round=scenario.clients.per_round,
        fraction_evaluate=scenario.eval.clients,
        seed=scenario.seed,
        online=None if scenario.clients.availability.name == "always" else availability(scenario),
        byzantine=byzantine_clients(scenario),
        attack=attack,
        **options,
    )
    return strategy


def partition_stats(scenario: Scenario) -> dict[str, float]:
    """What the partition of a graph dataset costs (none for image datasets)."""
    federation = scenario_federation(scenario)
    return federation.stats if isinstance(federation, GraphFederation) else {}


def byzantine_clients(scenario: Scenario) -> frozenset[int]:
    """The ids of the ``byzantine.num`` attacking clients, drawn from the seed."""
    rng = np.random.default_rng([scenario.seed, BYZANTINE_STREAM])
    chosen = rng.choice(scenario.clients.num, size=scenario.byzantine.num, replace=False)
    return frozenset(int(c) for c in chosen)


def availability(scenario: Scenario) -> Callable[[int], np.ndarray]:
    """The scenario's availability schedule: round -> which clients are online."""
    counts = scenario_federation(scenario).class_counts()
    population = Population(scenario.clients.num, scenario.seed, scenario.rounds, counts)
    schedule: Callable[[int], np.ndarray] = AVAILABILITY.build(scenario.clients.availability)(
        population
    )
    return schedule


class ClientDropout(RuntimeError):
    """A simulated failure mid-round (``clients.dropout``), not a fault of the client's code."""


def _checkpoint(
    rnd: int,
    arrays: ArrayRecord,
    strategy: PipelineStrategy | CentralDP,
    grid: Grid,
    mask: GlobalMask | None,
) -> results.Checkpoint:
    """What a resumed run needs to go on exactly as an uninterrupted one would."""
    client_states = getattr(grid, "client_states", None)  # only the local engine can give them
    return {
        "round": rnd,
        "model": arrays.to_torch_state_dict(),
        "strategy": strategy.state_dict(),
        "clients": client_states() if client_states is not None else {},
        "sparsity": mask.state_dict() if mask is not None else None,
    }


def pick_device(choice: str) -> torch.device:
    if choice == "cuda" and not torch.cuda.is_available():
        raise UserError("device: cuda was asked for but no CUDA GPU is visible; use auto or cpu")
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(choice)


def identify_clients(grid: Grid, num: int) -> dict[int, int]:
    """Wait for all ``num`` nodes, then learn which partition (client id) each node holds.

    Waiting first avoids Flower's round-1 under-sampling race; node ids are random per run,
    client ids are what the scenario, the sampling and the results speak of.
    """
    deadline = time.monotonic() + NODE_WAIT_S
    while len(nodes := list(grid.get_node_ids())) < num:
        if time.monotonic() > deadline:
            raise UserError(
                f"the scenario has clients.num={num} but only {len(nodes)} nodes joined in "
                f"{NODE_WAIT_S:.0f} s; with `flwr run` pass "
                f"--federation-config 'num-supernodes={num}'"
            )
        time.sleep(0.05)
    queries = [Message(RecordDict(), message_type=MessageType.QUERY, dst_node_id=n) for n in nodes]
    ids: dict[int, int] = {}
    for reply in grid.send_and_receive(queries):
        if reply.has_error():
            raise RuntimeError(f"node {reply.metadata.src_node_id} failed: {reply.error.reason}")
        partition = reply.content.metric_records["metrics"]["partition-id"]
        ids[reply.metadata.src_node_id] = int(cast(int, partition))
    if sorted(ids.values()) != list(range(num)):
        raise UserError(
            f"nodes report partition ids {sorted(ids.values())[:10]}…, expected 0..{num - 1}: "
            f"the federation must have exactly clients.num={num} nodes"
        )
    return ids


def _initial_model(
    workload: Workload, scenario: Scenario, dataset: Dataset | GraphDataset
) -> nn.Module:
    """The global model before round 1, the same in every process for the same seed."""
    return initial_model_and_changes(workload, scenario, dataset)[0]


def initial_model_and_changes(
    workload: Workload, scenario: Scenario, dataset: Dataset | GraphDataset
) -> tuple[nn.Module, list[str]]:
    """The global model, and the layers local DP's ``fix_model`` replaced in it."""
    model = workload.build_model(
        dataset.input_shape, dataset.num_classes, _generator(scenario.seed)
    )
    return privacy.private_model(model, scenario)


def _generator(*seed: int) -> torch.Generator:
    """A torch generator seeded from integers (no global seeding)."""
    entropy = np.random.SeedSequence(list(seed)).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(entropy))


# ---------------------------------------------------------------------------------------------
# Client side
# ---------------------------------------------------------------------------------------------

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


def scenario_federation(scenario: Scenario) -> Federation | GraphFederation:
    """The scenario's data, split among its clients (one copy per process, cached)."""
    return federation_for(
        scenario.data.dataset,
        scenario.data.partition,
        scenario.clients.num,
        scenario.seed,
        scenario.data.val_fraction,
    )


@lru_cache(maxsize=2)
def runtime(scenario_text: str) -> ClientRuntime:
    torch.set_num_threads(1)  # workers share the cores: more threads oversubscribe
    scenario = parse(yaml.safe_load(scenario_text))
    workload: Workload = WORKLOADS.build(scenario.workload)
    federation = scenario_federation(scenario)
    device = pick_device(scenario.device)
    dataset = federation.dataset
    model = _initial_model(workload, scenario, dataset)
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


def data_poison(scenario: Scenario) -> Poison | None:
    """The scenario's data-poisoning attack, if it has one (model attacks act in the strategy)."""
    if not scenario.byzantine.num:
        return None
    attack = ATTACKS.build(scenario.byzantine.attack)
    if not isinstance(attack, DataAttack):
        return None
    if isinstance(scenario_federation(scenario), GraphFederation):
        raise UserError(
            f"byzantine.attack: {scenario.byzantine.attack.name!r} poisons image tensors, but "
            f"{scenario.data.name!r} is a graph; use a model attack (e.g. sign_flip)"
        )
    return attack.poison


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
    generator = _generator(rt.scenario.seed, client, rnd)
    x, y = rt.federation.train_data(client)
    examples = len(y)
    if rt.poison is not None and client in rt.byzantine and isinstance(x, torch.Tensor):
        x, y = rt.poison(x, y, rt.num_classes, _generator(rt.scenario.seed, client, rnd, 1))
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
        rnd, rt.scenario.rounds, _generator(rt.scenario.seed, client, rnd, MASK_STREAM)
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
    generator = _generator(seed, client, PROXY_STREAM)
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
