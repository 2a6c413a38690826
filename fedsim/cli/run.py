"""``fedsim run SCENARIO`` / ``fedsim run --resume DIR``: run an experiment into a run directory."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from fedsim import engine, results, sweep
from fedsim.cli.common import user_errors
from fedsim.errors import UserError
from fedsim.scenario import load, parse, read


@user_errors
def run(
    scenario_file: Annotated[
        Path | None, typer.Argument(help="Scenario YAML file.", metavar="SCENARIO")
    ] = None,
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
    resume: Annotated[
        Path | None,
        typer.Option(
            help="Continue the run in this directory after its last completed round "
            "(e.g. after a crash or kill); its own scenario.yaml is used.",
            metavar="DIR",
        ),
    ] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    debug: Annotated[bool, typer.Option(help="Show tracebacks for user errors.")] = False,
) -> None:
    """Run a scenario (engine local or flower) and write metrics, events and the model.

    A scenario with a ``sweep:`` block runs every point of its grid, each in its own run
    directory inside the sweep directory.
    """
    console = Console(highlight=False)
    if resume is not None:
        if scenario_file is not None or set_ or out is not None:
            raise UserError(
                "--resume DIR continues a run as it was: give no SCENARIO, --set or --out"
            )
        run_dir = resume.resolve()
        if sweep.is_sweep(run_dir):
            sweep.run_points(run_dir, show_progress=progress, echo=console.print)
            console.print(f"fedsim: sweep done; results in {run_dir}")
            return
        scenario = load(run_dir / "scenario.yaml")
        if results.run_status(run_dir) == "completed":
            raise UserError(f"{run_dir} is already complete; nothing to resume")
    else:
        if scenario_file is None:
            raise UserError("give a SCENARIO file to run, or --resume DIR")
        raw = read(scenario_file, set_ or [])
        if "sweep" in raw:
            sweep_dir = sweep.run(
                raw, out, show_progress=progress, echo=console.print, source=str(scenario_file)
            )
            console.print(f"fedsim: sweep done; results in {sweep_dir}")
            return
        scenario = parse(raw, str(scenario_file))
        run_dir = (out or results.default_run_dir(scenario)).resolve()
    engine.preflight(scenario)  # fail before the engine starts, not inside every client
    if resume is None:
        results.prepare(run_dir, scenario, command=shlex.join(["fedsim", *sys.argv[1:]]))
    verb = "resuming" if resume is not None else "running"
    console.print(f"fedsim: {verb} {scenario.name} on engine {scenario.engine} → {run_dir}")

    engine.run(scenario, run_dir, show_progress=progress)
    console.print(f"fedsim: done; results in {run_dir}")
