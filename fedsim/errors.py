"""Errors caused by the user's input: the CLI prints them plainly and exits with code 2."""

from __future__ import annotations

from pathlib import Path


class UserError(Exception):
    """A mistake in the user's input (scenario, data, command line), explained in the message.

    The message names the problem and the fix; it may hold several lines, one per problem.
    """


class ScenarioError(UserError):
    """A scenario that does not validate: one ``path.to.field: message`` line per problem."""

    def __init__(self, problems: list[str], source: str = "") -> None:
        self.problems = problems
        head = f"{source}: " if source else ""
        super().__init__(head + "invalid scenario\n" + "\n".join(f"  {p}" for p in problems))


class SweepError(UserError):
    """Points of a sweep failed; the sweep directory ``dir`` holds the others' results."""

    def __init__(self, message: str, dir: Path) -> None:
        self.dir = dir
        super().__init__(message)
