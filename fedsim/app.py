"""The ServerApp: whatever engine carries its Messages, it runs a scenario round by round.

It reads the scenario named in the run config, drives the scenario's strategy and writes the run
directory. Every workload goes through the same round (``clients/workload.py``): train the
shared entries and aggregate them, run the workload's exchanges (``fedsim/exchanges.py``),
evaluate on the clients and on the server. Features a scenario turns on act through their
server halves' hooks (``fedsim/features``). Its counterpart, the ClientApp, is
``fedsim/client_app.py``; what both build from a scenario is ``fedsim/build.py``.
"""

from __future__ import annotations

import os
import shlex
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import cast

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp
from torch import nn

from clients import TrainConfig, Workload
from clients.workload import SERVER, split_state
from fedsim import results, tracking, wire
from fedsim.build import (
    build_strategy,
    build_workload,
    byzantine_clients,
    initial_model_and_changes,
    pick_device,
    scenario_federation,
    seeded_generator,
)
from fedsim.client_states import ClientStateGrid
from fedsim.data import to_device
from fedsim.errors import UserError
from fedsim.exchanges import Exchanges
from fedsim.features import ServerFeature, server_features
from fedsim.progress import RoundProgress
from fedsim.scenario import Scenario, load
from fedsim.traffic import bytes_each_way
from strategies.flower import with_phase

CENTRAL_STREAM = 37  # the central evaluation's generator, apart from the clients'

NODE_WAIT_S = 120.0  # how long the server waits for the federation's nodes to register


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
    resume_after = checkpoint.round if checkpoint else (0 if started else None)
    trackers = tracking.start(scenario, run_dir, resume_after)
    writer = results.RunWriter(run_dir, resume_after=resume_after, trackers=trackers)
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
    config = ConfigRecord({"scenario": scenario.to_yaml()})
    client_ids = identify_clients(grid, scenario.clients.num, config)
    # Every Message from here on goes through it: it keeps track of the clients' own states.
    grid = states = ClientStateGrid(grid, client_ids, writer)
    workload: Workload = build_workload(scenario)
    federation = scenario_federation(scenario)
    model, model_changes = initial_model_and_changes(workload, scenario, federation.dataset)
    model = model.to(device)
    eval_threads = central_threads(model)
    shared, _ = split_state(model.state_dict(), workload.local)
    test = to_device(federation.test_data(), device)
    strategy = build_strategy(
        scenario, client_ids=client_ids, recorder=writer, workdir=str(writer.path)
    )
    features = server_features(scenario, strategy, model_changes)
    exchanges = Exchanges(workload.exchanges, writer, federation.client_sizes(), client_ids)
    arrays = ArrayRecord(shared)
    first = 1
    if checkpoint is None:
        writer.event("run_started", clients=scenario.clients.num, rounds=scenario.rounds)
        for feature in features:
            arrays = feature.start(arrays)
            if event := feature.started():
                writer.event(event.pop("event"), **event)
        if scenario.byzantine.num:
            writer.event(
                "byzantine_clients",
                clients=sorted(byzantine_clients(scenario)),
                attack=scenario.byzantine.attack.model_dump(),
            )
    else:
        first = checkpoint.round + 1
        arrays = ArrayRecord(checkpoint.model)
        strategy.load_state_dict(checkpoint.strategy)
        for i, feature in enumerate(features):
            feature.load_state_dict(checkpoint.features.get(str(i)))
        exchanges.load_state_dict(checkpoint.exchanges)
        states.restore_client_states(checkpoint.clients)
        writer.event("run_resumed", after_round=checkpoint.round)

    headline = workload.headline
    with RoundProgress(scenario.rounds, first - 1, show_progress, headline) as progress:
        for rnd in range(first, scenario.rounds + 1):
            started = replied = time.perf_counter()
            traffic: dict[str, float] = {}
            trained: list[int] | None = None  # the clients whose updates were aggregated
            if len(arrays):  # a workload that shares nothing skips training
                messages = exchanges.carry(strategy.configure_train(rnd, arrays, config, grid))
                replies, traffic = _send(grid, messages, arrays, features, "")
                replied = time.perf_counter()
                new_arrays, train_metrics = strategy.aggregate_train(rnd, replies)
                trained = [client_ids[r.metadata.src_node_id] for r in replies if not r.has_error()]
                arrays = new_arrays if new_arrays is not None else arrays
                for feature in features:
                    arrays, feature_metrics = feature.after_aggregate(rnd, arrays)
                    traffic.update(feature_metrics)
                writer.metrics(
                    rnd, results.FEDERATED, None, with_phase(train_metrics or {}, "train")
                )
            if rnd == 1:  # the partition's own costs (e.g. edge cut and halo bytes), if any
                writer.metrics(rnd, results.SERVER, None, federation.stats)
            aggregated = time.perf_counter()
            exchange_metrics = exchanges.run(rnd, grid, arrays, config, trained, strategy)
            exchanged = time.perf_counter()

            accuracy = None
            if rnd % scenario.eval.every == 0 or rnd == scenario.rounds:
                messages = exchanges.carry(strategy.configure_evaluate(rnd, arrays, config, grid))
                replies, eval_traffic = _send(grid, messages, arrays, features, "eval_")
                traffic.update(eval_traffic)
                eval_metrics = strategy.aggregate_evaluate(rnd, replies)
                writer.metrics(rnd, results.FEDERATED, None, with_phase(eval_metrics or {}, "eval"))
                model.load_state_dict(arrays.to_torch_state_dict(), strict=False)
                central_config = TrainConfig(
                    rnd,
                    SERVER,
                    seeded_generator(scenario.seed, rnd, CENTRAL_STREAM),
                    device,
                    received=exchanges.received(device),
                )
                with threads(eval_threads):
                    central = workload.evaluate_central(
                        model, test, central_config, exchanges.memory
                    )
                writer.metrics(rnd, results.SERVER, None, central)
                accuracy = central.get(headline)
            finished = time.perf_counter()
            timings = {
                "train_time_s": replied - started,  # clients' training, transport included
                "aggregate_time_s": aggregated - replied,
                "exchange_time_s": exchanged - aggregated,
                "eval_time_s": finished - exchanged,  # clients' and the central evaluation
                "round_time_s": finished - started,
            }
            writer.metrics(rnd, results.SERVER, None, {**timings, **traffic, **exchange_metrics})
            writer.flush()
            every = scenario.checkpoint_every
            if every and (rnd % every == 0 or rnd == scenario.rounds):
                state = results.Checkpoint(
                    round=rnd,
                    model=arrays.to_torch_state_dict(),
                    strategy=strategy.state_dict(),
                    exchanges=exchanges.state_dict(),
                    clients=states.client_states(rnd),
                    features={str(i): f.state_dict() for i, f in enumerate(features)},
                )
                writer.save_checkpoint(state)
            progress.advance(accuracy)

    model.load_state_dict(arrays.to_torch_state_dict(), strict=False)
    writer.save_model(model.state_dict(), exchanges.broadcasts)


# The server's central evaluation runs while every client waits. A large model's runs on every
# core this process may use, whatever the engine and its workers: one thread count on every
# engine keeps its metrics the same (a reduction over threads rounds differently from a serial
# one). A small model's stays on one thread: a second one costs more than it saves, and spins
# for a while afterwards, taking a core from the clients' training.
LARGE_MODEL = 50_000  # parameters


def central_threads(model: nn.Module) -> int:
    if sum(p.numel() for p in model.parameters()) < LARGE_MODEL:
        return 1
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


@contextmanager
def threads(count: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _send(
    grid: Grid,
    messages: Iterable[Message],
    arrays: ArrayRecord,
    features: list[ServerFeature],
    phase: str,
) -> tuple[list[Message], dict[str, float]]:
    """Send one phase's Messages (as the features shape them), receive the replies (encoded
    updates decoded back to models) and the bytes each way, measured as serialised."""
    sent = list(messages)
    for feature in features:
        sent = feature.send(sent, arrays)
    replies = list(grid.send_and_receive(sent))
    down, up = bytes_each_way(sent, replies)
    traffic = {f"{phase}bytes_down": float(down), f"{phase}bytes_up": float(up)}
    return wire.receive_updates(replies, arrays), traffic


def _with_config(config: ConfigRecord | None) -> RecordDict:
    return RecordDict() if config is None else RecordDict({"config": config})


def identify_clients(grid: Grid, num: int, config: ConfigRecord | None = None) -> dict[int, int]:
    """Wait for all ``num`` nodes, then learn which partition (client id) each node holds.

    Waiting first avoids Flower's round-1 under-sampling race; node ids are random per run,
    client ids are what the scenario, the sampling and the results speak of. ``config`` (the
    scenario) lets each client process get ready for the run now rather than in round 1.
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
    queries = [
        Message(_with_config(config), message_type=MessageType.QUERY, dst_node_id=n) for n in nodes
    ]
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
