"""The ServerApp: whatever engine carries its Messages, it runs a scenario round by round.

It reads the scenario named in the run config, drives the scenario's strategy and writes the run
directory. Its counterpart, the ClientApp, is ``fedsim/client_app.py``; what both build from a
scenario (data, initial model, byzantine clients) is ``fedsim/build.py``. Workload ``mbo``
ascends designs instead of training a model: ``fedsim/mbo_server.py`` runs that loop.
"""

from __future__ import annotations

import shlex
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, cast

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp

from clients import Workload
from fedsim import mbo_server, privacy, results, wire
from fedsim.build import (
    MASK_STREAM,
    byzantine_clients,
    initial_model_and_changes,
    pick_device,
    scenario_federation,
    seeded_generator,
)
from fedsim.data import load_dataset
from fedsim.errors import UserError
from fedsim.global_mask import GlobalMask
from fedsim.graphs import GraphFederation
from fedsim.grid import restore_client_states, saved_client_states
from fedsim.progress import RoundProgress
from fedsim.registry import ATTACKS, AVAILABILITY, STRATEGIES, WORKLOADS
from fedsim.scenario import Scenario, load
from strategies import fedlaavg
from strategies.attacks.base import DataAttack
from strategies.availability import Population
from strategies.central_dp import CentralDP
from strategies.flower import PipelineStrategy, with_phase

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
        ascent = pipeline_strategy(scenario, client_ids=client_ids, recorder=writer)
        mbo_server.serve_designs(
            grid, scenario, writer, checkpoint, show_progress, client_ids, ascent
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
        restore_client_states(grid, checkpoint["clients"])
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
    return GlobalMask.for_scenario(scenario, seeded_generator(scenario.seed, MASK_STREAM))


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


def availability(scenario: Scenario) -> Callable[[int], np.ndarray]:
    """The scenario's availability schedule: round -> which clients are online."""
    counts = scenario_federation(scenario).class_counts()
    population = Population(scenario.clients.num, scenario.seed, scenario.rounds, counts)
    schedule: Callable[[int], np.ndarray] = AVAILABILITY.build(scenario.clients.availability)(
        population
    )
    return schedule


def _checkpoint(
    rnd: int,
    arrays: ArrayRecord,
    strategy: PipelineStrategy | CentralDP,
    grid: Grid,
    mask: GlobalMask | None,
) -> results.Checkpoint:
    """What a resumed run needs to go on exactly as an uninterrupted one would."""
    return {
        "round": rnd,
        "model": arrays.to_torch_state_dict(),
        "strategy": strategy.state_dict(),
        "clients": saved_client_states(grid),
        "sparsity": mask.state_dict() if mask is not None else None,
    }


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
