"""The ``fedsim`` command: run, validate, list. One module per command."""

from __future__ import annotations

import sys

import typer

from fedsim.cli import list as list_cmd
from fedsim.cli import report, run, validate

app = typer.Typer(
    help="Federated-learning experiments on Flower, described in scenario YAML files.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("run")(run.run)
app.command("validate")(validate.validate)
app.command("list")(list_cmd.list_components)
app.command("report")(report.report)


def main() -> None:
    app(args=sys.argv[1:], prog_name="fedsim")
