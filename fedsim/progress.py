"""A progress bar over rounds: round i/N, the last central accuracy, time left."""

from __future__ import annotations

from types import TracebackType

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class RoundProgress:
    def __init__(self, rounds: int, done: int = 0, enabled: bool = True) -> None:
        self._progress = Progress(
            TextColumn("round"),
            MofNCompleteColumn(),
            BarColumn(),
            TextColumn("{task.fields[accuracy]}"),
            TimeElapsedColumn(),
            TextColumn("left"),
            TimeRemainingColumn(),
            disable=not enabled,
            transient=False,
        )
        self._task = self._progress.add_task(
            "rounds", total=rounds, completed=done, accuracy="accuracy –"
        )

    def __enter__(self) -> RoundProgress:
        self._progress.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._progress.stop()

    def advance(self, accuracy: float | None) -> None:
        if accuracy is None:
            self._progress.update(self._task, advance=1)
        else:
            self._progress.update(self._task, advance=1, accuracy=f"accuracy {accuracy:.3f}")
