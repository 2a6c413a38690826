"""Run the Flower app on an engine. ``flower``: Flower's simulation engine (Ray), in-process."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from fedsim.scenario import Scenario


def run_flower_simulation(scenario: Scenario, run_dir: Path, show_progress: bool = True) -> None:
    """Run the prepared ``run_dir`` on Flower's simulation engine, one Ray actor per core."""
    # Ray workers inherit these: one thread each (the actors share the cores), no telemetry.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")  # silences a FutureWarning
    from flwr.app import Context, RecordDict
    from flwr.simulation.run_simulation import _run_simulation
    from flwr.supercore.telemetry import EventType

    from fedsim.app import client_app, pick_device, server_app

    logging.getLogger("flwr").setLevel(logging.WARNING)  # fedsim shows its own progress
    cores = os.cpu_count() or 1
    uses_gpu = pick_device(scenario.device).type == "cuda"
    backend_config = {
        "client_resources": {"num_cpus": 1, "num_gpus": 1.0 / cores if uses_gpu else 0.0},
        "init_args": {"num_cpus": cores, "include_dashboard": False, "log_to_driver": True},
    }
    context = Context(
        run_id=0,
        node_id=0,
        node_config={},
        state=RecordDict(),
        run_config={
            "scenario": str(run_dir / "scenario.yaml"),
            "out": str(run_dir),
            "progress": show_progress,
        },
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
