"""Trackers: every metric row, as metrics.csv gets it, sent on to TensorBoard or MLflow.

```yaml
tracking:
  tensorboard: true                                  # RUN_DIR/tensorboard/events.out.tfevents.*
  mlflow: {uri: "http://localhost:5000", experiment: my-study}
```

The run directory's writer (``fedsim.results.RunWriter``) hands each tracker a round's rows when
it flushes them, so every engine feeds them alike. A row ``(round, scope, client, metric,
value)`` becomes the scalar ``scope/metric`` (``client/metric/<id>`` for one client's) at step
``round``. Neither package is imported unless a scenario asks for it.

Resuming continues the same record. TensorBoard: the new session's writer purges the steps
after the checkpoint, as metrics.csv drops them, so a reader sees each round once, with the
values metrics.csv holds. MLflow cannot delete logged values: the resumed run continues the same
MLflow run (its id is in manifest.json) and skips the rounds that run already holds (a tag on
it, ``fedsim.logged_through``, says up to which); a round logged before a crash and computed
again after it keeps its first values (the same, timings aside: a resumed run replays its rounds).
"""

from __future__ import annotations

from pathlib import Path

from fedsim.results import Row, Tracker
from fedsim.scenario import Scenario


def tag(row: Row) -> str:
    """The scalar's name: ``server/accuracy``, ``federated/eval_loss``, ``client/eval_loss/3``."""
    name = f"{row.scope}/{row.metric}"
    return name if row.client is None else f"{name}/{row.client}"


def start(scenario: Scenario, run_dir: Path, resume_after: int | None) -> list[Tracker]:
    """The trackers the scenario asks for, open on ``run_dir`` (``resume_after``: as the writer)."""
    trackers: list[Tracker] = []
    if scenario.tracking.tensorboard:
        from fedsim.tracking.tensorboard import TensorBoardTracker

        trackers.append(TensorBoardTracker(run_dir / "tensorboard", resume_after))
    if scenario.tracking.mlflow is not None:
        from fedsim.tracking.mlflow import MlflowTracker

        trackers.append(MlflowTracker(scenario, run_dir))
    return trackers


def preflight(scenario: Scenario) -> None:
    """Fail before the run on a tracking store that cannot be opened (e.g. a refused URI)."""
    if scenario.tracking.mlflow is not None:
        from fedsim.tracking.mlflow import check_store

        check_store(scenario.tracking.mlflow)
