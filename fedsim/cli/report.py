"""``fedsim report RUN_OR_SWEEP_DIR… --out DIR``: compare runs in tables and figures."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from fedsim import api
from fedsim.cli.common import user_errors


@user_errors
def report(
    paths: Annotated[
        list[Path],
        typer.Argument(
            help="Run directories, sweep directories or folders holding them.",
            metavar="RUN_OR_SWEEP_DIR…",
        ),
    ],
    out: Annotated[
        Path, typer.Option(help="Directory for report.md, report.html, summary.csv/.tex, figures.")
    ],
    target: Annotated[
        float | None,
        typer.Option(
            help="Accuracy for the 'rounds to target' column "
            "(default: 0.9 × the best configuration's mean final accuracy)."
        ),
    ] = None,
    debug: Annotated[bool, typer.Option(help="Show tracebacks for user errors.")] = False,
) -> None:
    """Group runs by configuration (scenario without seed), summarise and plot them."""
    result = api.report(paths, out, target=target)
    console = Console(highlight=False)
    for skipped in result.skipped:
        console.print(f"[yellow]skipped[/] {skipped.path}: {skipped.reason}", markup=True)
    console.print(
        f"fedsim: {len(result.runs)} run(s) in {len(result.configurations)} configuration(s) "
        f"→ {result.html}"
    )
