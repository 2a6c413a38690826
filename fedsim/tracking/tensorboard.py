"""TensorBoard: a round's rows as scalars at step ``round``, in the run directory."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from torch.utils.tensorboard import SummaryWriter

from fedsim.results import Row
from fedsim.tracking import tag


class TensorBoardTracker:
    """Event files in ``log_dir``; ``tensorboard --logdir runs/`` shows every run under it.

    A resumed run (``resume_after=r``) opens its writer with ``purge_step=r + 1``: readers drop
    what earlier sessions logged from round r + 1 on, which this session logs again.
    """

    name = "tensorboard"

    def __init__(self, log_dir: Path, resume_after: int | None) -> None:
        purge = None if resume_after is None else resume_after + 1
        self._writer = SummaryWriter(log_dir=str(log_dir), purge_step=purge)

    def log(self, rows: Sequence[Row]) -> None:
        for row in rows:
            self._writer.add_scalar(tag(row), row.value, global_step=row.round)
        self._writer.flush()  # a killed run keeps the rounds metrics.csv keeps

    def close(self, status: str) -> None:
        self._writer.close()
