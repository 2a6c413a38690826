"""A progress bar over rounds: round i/N, the last value of the headline metric, time left."""

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
    def __init__(
        self, rounds: int, done: int = 0, enabled: bool = True, metric: str = "accuracy"
    ) -> None:
        self._metric = metric
        self._progress = Progress(
            TextColumn("round"),
            MofNCompleteColumn(),
            BarColumn(),
            TextColumn("{task.fields[value]}"),
            TimeElapsedColumn(),
            TextColumn("left"),
            TimeRemainingColumn(),
            disable=not enabled,
            transient=False,
        )
        self._task = self._progress.add_task(
            "rounds", total=rounds, completed=done, value=f"{metric} –"
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

    def advance(self, value: float | None) -> None:
        if value is None:
            self._progress.update(self._task, advance=1)
        else:
            self._progress.update(self._task, advance=1, value=f"{self._metric} {value:.3f}")
