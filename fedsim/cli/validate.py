"""``fedsim validate FILE…``: check scenario files without training."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from fedsim.cli.common import EXIT_USER_ERROR
from fedsim.errors import UserError
from fedsim.scenario import parse, read
from fedsim.sweep import expand


def validate(
    files: Annotated[list[Path], typer.Argument(help="Scenario YAML files to check.")],
) -> None:
    """Check scenario files (schema, component names and parameters); nothing is trained."""
    out, err = Console(highlight=False), Console(stderr=True, highlight=False)
    failed = 0
    for path in files:
        try:
            raw = read(path)
            if "sweep" in raw:
                points = expand(raw, str(path))
                out.print(f"[green]ok[/] {path}: a sweep of {len(points)} runs", markup=True)
                continue
            scenario = parse(raw, str(path))
        except UserError as problem:
            failed += 1
            err.print(f"[bold red]invalid[/] {escape(str(problem))}", markup=True, soft_wrap=True)
            continue
        out.print(
            f"[green]ok[/] {path}: {scenario.name}, {scenario.rounds} rounds, "
            f"{scenario.clients.num} clients ({scenario.clients.per_round} per round), "
            f"data {scenario.data.name}, workload {scenario.workload.name}, "
            f"strategy {scenario.strategy.name}",
            markup=True,
        )
    if failed:
        raise typer.Exit(EXIT_USER_ERROR)
