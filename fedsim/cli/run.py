"""``fedsim run SCENARIO``: run one experiment and write its run directory."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from fedsim import results
from fedsim.cli import user_errors
from fedsim.data import federation_for
from fedsim.scenario import Scenario, load


@user_errors
def run(
    scenario_file: Annotated[Path, typer.Argument(help="Scenario YAML file.", metavar="SCENARIO")],
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            help="Override a scenario key, e.g. --set rounds=5 --set workload.lr=0.1 (repeatable).",
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(help="Run directory (default: runs/<name>-<timestamp>)."),
    ] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    debug: Annotated[bool, typer.Option(help="Show tracebacks for user errors.")] = False,
) -> None:
    """Run a scenario on Flower's simulation engine and write metrics, events and the model."""
    scenario = load(scenario_file, set_ or [])
    check_data(scenario)  # fail before the engine starts, not inside every client
    run_dir = (out or results.default_run_dir(scenario)).resolve()
    results.prepare(run_dir, scenario, command=shlex.join(["fedsim", *sys.argv[1:]]))
    console = Console(highlight=False)
    console.print(f"fedsim: {scenario.name} → {run_dir}")

    from fedsim.engine import run_flower_simulation

    run_flower_simulation(scenario, run_dir, show_progress=progress)
    console.print(f"fedsim: done; results in {run_dir}")


def check_data(scenario: Scenario) -> None:
    """Load the dataset and split it as the clients will: missing data, impossible splits."""
    federation_for(
        scenario.data.dataset,
        scenario.data.partition,
        scenario.clients.num,
        scenario.seed,
        scenario.data.val_fraction,
    )
