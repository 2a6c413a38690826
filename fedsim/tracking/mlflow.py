"""MLflow: the resolved scenario as params, a round's rows as metrics at step ``round``.

One fedsim run is one MLflow run (named after the run directory) in the experiment
``tracking.mlflow.experiment`` (default: the scenario's name); the run's directory is its tag
``fedsim.run_dir``, and manifest.json records the MLflow run's id under ``tracking.mlflow``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from mlflow import get_tracking_uri
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from fedsim import results
from fedsim.errors import UserError
from fedsim.results import Row
from fedsim.scenario import MlflowSpec, Scenario
from fedsim.tracking import tag

LOGGED_THROUGH = "fedsim.logged_through"  # tag: the last round this MLflow run holds
STATUS = {"completed": "FINISHED", "failed": "FAILED", "interrupted": "KILLED"}
# MLflow's limits on one log_batch request and on a param's value.
METRICS_PER_BATCH, PARAMS_PER_BATCH, PARAM_LENGTH = 1000, 100, 6000
T = TypeVar("T")


def check_store(spec: MlflowSpec) -> None:
    """Open the tracking store as the run will (MLflow checks the URI); contacts no server."""
    _client(spec)


def _client(spec: MlflowSpec) -> MlflowClient:
    try:
        return MlflowClient(tracking_uri=spec.uri)
    except MlflowException as err:
        raise UserError(f"tracking.mlflow: {err.message}") from None


class MlflowTracker:
    """Logs to one MLflow run; a resumed fedsim run continues the MLflow run it started."""

    name = "mlflow"

    def __init__(self, scenario: Scenario, run_dir: Path) -> None:
        spec = scenario.tracking.mlflow
        assert spec is not None
        self._client = _client(spec)
        earlier = results.read_manifest(run_dir).get("tracking", {}).get("mlflow")
        try:
            if earlier:  # a resumed run: the same MLflow run, after what it already holds
                self._run_id = str(earlier["run_id"])
                run = self._client.get_run(self._run_id)
                self._logged_through = int(run.data.tags.get(LOGGED_THROUGH, 0))
                self._client.update_run(self._run_id, status="RUNNING")
            else:
                self._run_id = self._start(spec, scenario, run_dir)
                self._logged_through = 0
        except MlflowException as err:
            raise UserError(f"tracking.mlflow: {err.message}") from None

    def _start(self, spec: MlflowSpec, scenario: Scenario, run_dir: Path) -> str:
        experiment = spec.experiment or scenario.name
        run = self._client.create_run(
            _experiment_id(self._client, experiment),
            run_name=run_dir.name,
            tags={"fedsim.run_dir": str(run_dir), "fedsim.scenario": scenario.name},
        )
        run_id: str = run.info.run_id
        params = [
            Param(key, _text(value)[:PARAM_LENGTH])
            for key, value in _flatten(scenario.model_dump(mode="json"))
        ]
        for chunk in _chunks(params, PARAMS_PER_BATCH):
            self._client.log_batch(run_id, params=chunk)
        uri = spec.uri or get_tracking_uri()
        mlflow = {"run_id": run_id, "experiment": experiment, "uri": uri}
        results.update_manifest(run_dir, tracking={"mlflow": mlflow})
        return run_id

    def log(self, rows: Sequence[Row]) -> None:
        now = int(time.time() * 1000)
        fresh = [r for r in rows if r.round > self._logged_through]
        if not fresh:
            return
        metrics = [Metric(tag(r), r.value, now, r.round) for r in fresh]
        last = max(r.round for r in fresh)
        chunks = list(_chunks(metrics, METRICS_PER_BATCH))
        for i, chunk in enumerate(chunks):
            # The tag rides with the last chunk: the MLflow run says what it holds.
            tags = [RunTag(LOGGED_THROUGH, str(last))] if i == len(chunks) - 1 else []
            self._client.log_batch(self._run_id, metrics=chunk, tags=tags)
        self._logged_through = last

    def close(self, status: str) -> None:
        self._client.set_terminated(self._run_id, status=STATUS.get(status, "FAILED"))


def _experiment_id(client: MlflowClient, name: str) -> str:
    found = client.get_experiment_by_name(name)
    if found is not None:
        return str(found.experiment_id)
    try:
        return str(client.create_experiment(name))
    except MlflowException:  # a sweep's other point created it meanwhile
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return str(found.experiment_id)


def _flatten(mapping: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in mapping.items():
        if isinstance(value, Mapping) and value:
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def _text(value: Any) -> str:
    """A param as YAML would write it: 0.1, true, null, [1, 2]."""
    return value if isinstance(value, str) else json.dumps(value)


def _chunks(items: list[T], size: int) -> Iterator[list[T]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]
