"""The ``fedsim`` command: validate, list, run. One module per command."""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

import typer
from rich.console import Console

from fedsim.errors import UserError

app = typer.Typer(
    help="Federated-learning experiments on Flower, described in scenario YAML files.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
stderr = Console(stderr=True, highlight=False)
F = TypeVar("F", bound=Callable[..., Any])

EXIT_USER_ERROR = 2


def user_errors(command: F) -> F:
    """Print a UserError as its message and exit 2; a traceback only with --debug."""

    @wraps(command)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except UserError as err:
            if kwargs.get("debug"):
                raise
            stderr.print(f"[bold red]error:[/] {err}", markup=True, soft_wrap=True)
            raise typer.Exit(EXIT_USER_ERROR) from None

    return wrapped  # type: ignore[return-value]


def main() -> None:
    from fedsim.cli import list as list_cmd
    from fedsim.cli import run, validate

    app.command("run")(run.run)
    app.command("validate")(validate.validate)
    app.command("list")(list_cmd.list_components)
    app(args=sys.argv[1:], prog_name="fedsim")
