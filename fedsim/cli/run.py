"""``fedsim run SCENARIO`` / ``fedsim run --resume DIR``: ``fedsim.run`` and ``fedsim.resume``."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from fedsim import api
from fedsim.cli.common import user_errors
from fedsim.errors import UserError


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
    jobs: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Sweeps: points to run at once on the local engine, each in its own process "
            "(default: as many as the cores allow; 1: one after another in this process).",
        ),
    ] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    debug: Annotated[bool, typer.Option(help="Show tracebacks for user errors.")] = False,
) -> None:
    """Run a scenario (engine local or flower) and write metrics, events and the model.

    A scenario with a ``sweep:`` block runs every point of its grid, each in its own run
    directory inside the sweep directory.
    """
    echo = Console(highlight=False).print
    if resume is not None:
        if scenario_file is not None or set_ or out is not None:
            raise UserError(
                "--resume DIR continues a run as it was: give no SCENARIO, --set or --out"
            )
        api.resume(resume, progress=progress, echo=echo, jobs=jobs)
        return
    if scenario_file is None:
        raise UserError("give a SCENARIO file to run, or --resume DIR")
    command = shlex.join(["fedsim", *sys.argv[1:]])
    api.run(
        scenario_file, set_ or [], out, progress=progress, echo=echo, command=command, jobs=jobs
    )
