"""Run the Flower app on an engine: ``local`` (fedsim's in-process grid) or ``flower`` (Ray).

Both run the same ServerApp logic (``fedsim.app.serve``) and the same ClientApp; only the
transport of their Messages differs.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from flwr.app import ArrayRecord

from clients.workload import split_state
from fedsim import privacy, tracking
from fedsim.build import (
    build_strategy,
    build_workload,
    initial_model_and_changes,
    pick_device,
    scenario_federation,
)
from fedsim.errors import UserError
from fedsim.features import server_features
from fedsim.scenario import Scenario
from strategies.flower import PipelineStrategy
from strategies.pipeline import RoundInfo

if TYPE_CHECKING:  # imports Opacus: only a scenario with central DP loads it (fedsim.privacy)
    from strategies.flower.central_dp import CentralDP

CLIENT_APP = "fedsim.client_app:client_app"
COHORT = "fedsim.client_app:train_cohort"  # resources.vectorize: a round's clients at once


def preflight(scenario: Scenario) -> None:
    """Fail now, before a run directory or an engine exists, on what would fail later.

    Loads the dataset and splits it as the clients will (missing data, impossible splits),
    builds the model, the strategy with its availability schedule (e.g. a trace file's shape)
    and the features' server halves (e.g. a sparse method's initial mask), and aggregates a
    round of random updates through the pipeline (impossible ``f``), and checks that Flower's
    engine can place a client on this machine. Under local DP it checks that Opacus can train
    the model and runs a few DP-SGD steps; under central DP it builds Flower's DP wrapper
    (which checks its own parameters). A tracking store must open (MLflow checks its URI).
    """
    federation = scenario_federation(scenario)
    workload = build_workload(scenario)
    try:
        model, changes = initial_model_and_changes(workload, scenario, federation.dataset)
    except ValueError as err:  # a model the workload or local DP cannot build for this data
        raise UserError(f"model: {err}") from None
    shared, _ = split_state(model.state_dict(), workload.local)
    strategy = _checked_strategy(scenario)
    for feature in server_features(scenario, strategy, changes):
        feature.start(ArrayRecord(shared))
    inner = strategy if isinstance(strategy, PipelineStrategy) else strategy.inner  # DP wrapper
    _dry_run_pipeline(scenario, inner, bool(workload.exchanges))
    if scenario.privacy.mode == "local":
        try:
            privacy.dry_run(scenario, workload, model, federation.train_data(0))
        except (ValueError, RuntimeError) as err:
            raise UserError(f"privacy: {err}") from None
    tracking.preflight(scenario)
    res = scenario.resources
    if scenario.engine == "flower" and not res.ray_address:  # a cluster knows its own nodes
        _check_fits(res.client_cpus, res.client_gpus or 0.0, os.cpu_count() or 1)


def _checked_strategy(scenario: Scenario) -> PipelineStrategy | CentralDP:
    try:
        return build_strategy(scenario)
    except ValueError as err:  # Flower's own checks, e.g. adaptive clipping's noise split
        raise UserError(
            f"privacy: {err} (clients.per_round={scenario.clients.per_round} clients a round)"
        ) from None


def _dry_run_pipeline(scenario: Scenario, strategy: PipelineStrategy, objectives: bool) -> None:
    """Aggregate one round of random updates from ``per_round`` clients, as a full round would.

    A rule whose condition cannot hold (e.g. Krum's n > 2f + 2) says so before anything runs.
    Exchanges may hand the rules objectives (the values of their reports): so does this.
    """
    n = scenario.clients.per_round
    generator = torch.Generator().manual_seed(0)
    updates = torch.randn(n, 8, generator=generator)
    info = RoundInfo.uniform(n)
    if objectives:
        info = info._replace(objectives=torch.randn(n, generator=generator))
    try:
        strategy.pipeline.update(updates, strategy.pipeline.init(8), info)
    except ValueError as err:
        raise UserError(
            f"strategy: {err} (a round aggregates up to clients.per_round={n} updates); "
            f"change the rule's parameters or clients.per_round"
        ) from None


def run(scenario: Scenario, run_dir: Path, show_progress: bool = True) -> None:
    """Run (or resume) the prepared ``run_dir`` on the scenario's engine."""
    if scenario.engine == "local":
        run_local(scenario, run_dir, show_progress)
    else:
        run_flower_simulation(scenario, run_dir, show_progress)


def run_local(scenario: Scenario, run_dir: Path, show_progress: bool = True) -> None:
    """fedsim's local engine: the ClientApp in this process, or on ``resources.workers``."""
    from fedsim.app import serve
    from fedsim.client_app import client_app, prepare
    from fedsim.grid import InProcessGrid

    sizes = scenario_federation(scenario).client_sizes()
    workers = scenario.resources.workers
    # On the CPU, on Linux, workers are forked from this process once it has built what a
    # client needs: they start at once and share its data rather than load their own.
    fork = workers > 1 and sys.platform == "linux" and pick_device(scenario.device).type == "cpu"
    threads = torch.get_num_threads()
    if workers == 1 or fork:
        prepare(scenario.to_yaml())  # start-up work, where round 1 would otherwise pay it
    grid = InProcessGrid(
        CLIENT_APP if workers > 1 else client_app,
        scenario.clients.num,
        workers=workers,
        costs=sizes,  # local training time grows with a client's sample count
        fork=fork,
        cohort=COHORT if scenario.resources.vectorize else None,
    )
    if workers > 1:  # the workers train; this process aggregates, on all threads
        torch.set_num_threads(threads)
    try:
        serve(grid, scenario, run_dir, show_progress)
    finally:
        grid.close()


def _check_fits(client_cpus: float, client_gpus: float, cores: int) -> None:
    """Resources no actor can get leave Flower's actor pool empty, and the run waits forever."""
    if client_cpus > cores:
        raise UserError(
            f"resources.client_cpus={client_cpus} exceeds this machine's {cores} CPUs: "
            f"no client could start; use at most {cores}"
        )
    if client_gpus > 0 and not torch.cuda.is_available():
        raise UserError(
            f"resources.client_gpus={client_gpus} but no CUDA GPU is visible; set it to 0"
        )


def run_flower_simulation(scenario: Scenario, run_dir: Path, show_progress: bool = True) -> None:
    """Flower's simulation engine (Ray): an actor per ``client_cpus``, here or on a cluster."""
    # Ray workers inherit these: one thread each (the actors share the cores), no telemetry.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")  # silences a FutureWarning
    from flwr.app import Context, RecordDict
    from flwr.simulation.run_simulation import _run_simulation
    from flwr.supercore.telemetry import EventType

    from fedsim.app import server_app
    from fedsim.client_app import client_app

    logging.getLogger("flwr").setLevel(logging.WARNING)  # fedsim shows its own progress
    res = scenario.resources
    cores = os.cpu_count() or 1
    gpus = res.client_gpus
    if gpus is None:
        gpus = 1.0 / cores if pick_device(scenario.device).type == "cuda" else 0.0
    init_args: dict[str, object]
    if res.ray_address:  # an existing cluster brings its own resources
        init_args = {"address": res.ray_address}
    else:
        # A fresh Ray on loopback: a bare ray.init() would join whatever cluster `ray start`
        # last left on this machine (and hang if that one is gone).
        init_args = {
            "address": "local",
            "num_cpus": cores,
            "include_dashboard": False,
            "_node_ip_address": "127.0.0.1",
        }
    backend_config = {
        "client_resources": {"num_cpus": res.client_cpus, "num_gpus": gpus},
        "init_args": {**init_args, "log_to_driver": True},
    }
    context = Context(
        run_id=0,
        node_id=0,
        node_config={},
        state=RecordDict(),
        run_config={"out": str(run_dir), "progress": show_progress},
    )
    # The public run_simulation() takes no run config and is deprecated; its private core is the
    # same engine and lets the ServerApp read its inputs exactly as under `flwr run`.
    _run_simulation(
        num_supernodes=scenario.clients.num,
        exit_event=EventType.PYTHON_API_RUN_SIMULATION_LEAVE,
        client_app=client_app,
        server_app=server_app,
        backend_config=backend_config,  # type: ignore[arg-type]
        server_app_context=context,
    )
