"""What every command shares: how user errors are shown."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from fedsim.errors import UserError

EXIT_USER_ERROR = 2
stderr = Console(stderr=True, highlight=False)
F = TypeVar("F", bound=Callable[..., Any])


def user_errors(command: F) -> F:
    """Print a UserError as its message and exit 2; a traceback only with --debug."""

    @wraps(command)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except UserError as err:
            if kwargs.get("debug"):
                raise
            stderr.print(f"[bold red]error:[/] {escape(str(err))}", markup=True, soft_wrap=True)
            raise typer.Exit(EXIT_USER_ERROR) from None

    return wrapped  # type: ignore[return-value]
