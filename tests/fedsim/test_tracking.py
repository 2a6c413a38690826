"""Trackers: TensorBoard event files and an MLflow store hold what metrics.csv holds."""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

import fedsim
from fedsim import results
from fedsim.errors import ScenarioError, UserError
from fedsim.results import Row
from fedsim.scenario import parse

Values = dict[tuple[str, int], list[float]]  # (scalar name, round) -> every value logged


def from_metrics_csv(run_dir: Path) -> Values:
    metrics = pd.read_csv(run_dir / "metrics.csv", dtype={"client": "Int64"})
    out: Values = defaultdict(list)
    for row in metrics.itertuples():
        client = "" if pd.isna(row.client) else f"/{row.client}"
        out[f"{row.scope}/{row.metric}{client}", int(row.round)].append(float(row.value))
    return out


def from_tensorboard(log_dir: Path) -> Values:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    events.Reload()
    out: Values = defaultdict(list)
    for tag in events.Tags()["scalars"]:
        for scalar in events.Scalars(tag):
            out[tag, scalar.step].append(scalar.value)
    return out


def from_mlflow(uri: str, experiment: str) -> tuple[Any, Values]:
    """The experiment's only run and every value of its metrics."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(experiment)
    assert found is not None
    (run,) = client.search_runs([found.experiment_id])
    out: Values = defaultdict(list)
    for key in run.data.metrics:
        for metric in client.get_metric_history(run.info.run_id, key):
            out[key, metric.step].append(metric.value)
    return run, out


@pytest.fixture
def file_store(tmp_path, monkeypatch) -> str:  # type: ignore[no-untyped-def]
    pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 prefers a database
    return f"file://{tmp_path}/mlruns"


def test_trackers_hold_what_metrics_csv_holds_and_a_resume_continues_them(  # type: ignore[no-untyped-def]
    tiny, tmp_path, file_store
) -> None:
    pytest.importorskip("tensorboard")
    # Prepare: a 2-round run of a scenario that wants 3, as a crash after round 2 leaves it
    tracking = {"tensorboard": True, "mlflow": {"uri": file_store, "experiment": "tests"}}
    tiny.update(rounds=2, tracking=tracking)
    run = fedsim.run(tiny, out=tmp_path / "run")
    assert isinstance(run, fedsim.Run)
    (run.dir / "scenario.yaml").write_text(parse({**tiny, "rounds": 3}).to_yaml())
    results.update_manifest(run.dir, status="running")

    # Execute
    fedsim.resume(run.dir)

    # Assert: each round once, with metrics.csv's values (TensorBoard stores float32)
    expected = from_metrics_csv(run.dir)
    assert {step for _, step in expected} == {1, 2, 3}
    assert ("client/train_loss/3", 1) in expected
    board = from_tensorboard(run.dir / "tensorboard")
    assert board.keys() == expected.keys()
    for key, values in expected.items():
        assert board[key] == pytest.approx(np.float32(values), rel=1e-6), key
    mlflow_run, logged = from_mlflow(file_store, "tests")
    assert logged == expected
    assert mlflow_run.info.status == "FINISHED" and mlflow_run.info.run_name == "run"
    assert mlflow_run.data.params["workload.lr"] == "0.1"
    assert mlflow_run.data.params["data.partition.name"] == "dirichlet"
    assert run.manifest["tracking"]["mlflow"]["run_id"] == mlflow_run.info.run_id


def test_a_resume_replaces_rounds_logged_after_the_checkpoint(  # type: ignore[no-untyped-def]
    tiny, tmp_path, file_store
) -> None:
    """Killed after round 3 was flushed but before its checkpoint: round 3 runs again."""
    pytest.importorskip("tensorboard")
    from fedsim.tracking.mlflow import MlflowTracker
    from fedsim.tracking.tensorboard import TensorBoardTracker

    # Prepare
    scenario = parse({**tiny, "tracking": {"mlflow": {"uri": file_store}}})
    results.prepare(tmp_path / "run", scenario, command="test")

    def rows(values: dict[int, float]) -> list[Row]:
        return [Row(rnd, "server", None, "accuracy", value) for rnd, value in values.items()]

    # Execute: the first session logs rounds 1-3, the resumed one rounds 3-4
    for tracker in (
        TensorBoardTracker(tmp_path / "board", resume_after=None),
        MlflowTracker(scenario, tmp_path / "run"),
    ):
        tracker.log(rows({1: 0.1, 2: 0.2}))
        tracker.log(rows({3: 0.3}))
        tracker.close("failed")
    for tracker in (
        TensorBoardTracker(tmp_path / "board", resume_after=2),
        MlflowTracker(scenario, tmp_path / "run"),
    ):
        tracker.log(rows({3: 0.33}))
        tracker.log(rows({4: 0.4}))
        tracker.close("completed")

    # Assert: TensorBoard purges what it logs again; MLflow keeps the first value of round 3
    board = from_tensorboard(tmp_path / "board")
    assert sorted(board) == [("server/accuracy", r) for r in (1, 2, 3, 4)]
    assert [v for values in board.values() for v in values] == pytest.approx([0.1, 0.2, 0.33, 0.4])
    mlflow_run, logged = from_mlflow(file_store, "tiny")
    assert logged == {
        ("server/accuracy", r): [v] for r, v in zip(range(1, 5), (0.1, 0.2, 0.3, 0.4), strict=True)
    }
    assert mlflow_run.info.status == "FINISHED"


def test_a_failing_tracker_is_recorded_and_dropped_and_the_run_goes_on(tiny, tmp_path) -> None:  # type: ignore[no-untyped-def]
    # Prepare: a tracker whose server goes away after the first round
    logged: list[Row] = []

    class Flaky:
        name = "flaky"

        def log(self, rows: Sequence[Row]) -> None:
            if logged:
                raise ConnectionError("server gone")
            logged.extend(rows)

        def close(self, status: str) -> None:
            raise AssertionError("a dropped tracker is not closed")

    results.prepare(tmp_path / "run", parse(tiny), command="test")
    writer = results.RunWriter(tmp_path / "run", trackers=[Flaky()])

    # Execute
    with pytest.warns(UserWarning, match="tracking to flaky failed.*server gone"):
        for rnd in (1, 2, 3):
            writer.metrics(rnd, results.SERVER, None, {"accuracy": rnd / 10})
            writer.flush()
    writer.close("completed")

    # Assert
    assert logged == [Row(1, "server", None, "accuracy", 0.1)]
    assert len(fedsim.load_run(tmp_path / "run").metrics) == 3
    (failed,) = fedsim.load_run(tmp_path / "run").events
    assert failed["event"] == "tracker_failed" and failed["tracker"] == "flaky"
    assert failed["error"] == "ConnectionError: server gone"


def test_a_missing_tracker_package_is_one_clear_error(tiny, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    for package in ("tensorboard", "mlflow"):
        monkeypatch.setitem(sys.modules, package, None)  # as if not installed
    tiny["tracking"] = {"tensorboard": True, "mlflow": {"uri": "http://localhost:5000"}}

    with pytest.raises(ScenarioError) as raised:
        parse(tiny)

    assert raised.value.problems == [
        "tracking.tensorboard: needs the tensorboard package: pip install 'fedsim[tensorboard]'",
        "tracking.mlflow: needs the mlflow package: pip install 'fedsim[mlflow]'",
    ]


def test_a_tracking_store_mlflow_refuses_fails_before_the_run(tiny, tmp_path) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("mlflow")
    tiny["tracking"] = {"mlflow": {"uri": "nosuch://store"}}

    with pytest.raises(UserError, match=r"tracking\.mlflow: .*unsupported URI 'nosuch://store'"):
        fedsim.run(tiny, out=tmp_path / "run")

    assert not (tmp_path / "run").exists()


TRACKERS = ("tensorboard", "mlflow", "torch.utils.tensorboard")


def test_a_run_without_tracking_imports_no_tracker(tiny, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    # Prepare: importing a tracker, or fedsim's module for it, now fails
    for name in (*TRACKERS, "fedsim.tracking.tensorboard", "fedsim.tracking.mlflow"):
        monkeypatch.setitem(sys.modules, name, None)

    # Execute / Assert: the run never tried
    run = fedsim.run({**tiny, "rounds": 1}, out=tmp_path / "run")
    assert isinstance(run, fedsim.Run) and run.status == "completed"


def test_only_the_trackers_import_their_packages_at_module_level() -> None:
    """With the test above: no fedsim module loads a tracker on import, nor on a plain run."""
    root = Path(fedsim.__file__).parent
    importers = set()
    for path in root.rglob("*.py"):
        for node in ast.parse(path.read_text()).body:  # module level only
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            tracked = ("fedsim.tracking.tensorboard", "fedsim.tracking.mlflow", *TRACKERS)
            if any(n == t or n.startswith(t + ".") for n in names for t in tracked):
                importers.add(path.relative_to(root).as_posix())
    assert importers == {"tracking/tensorboard.py", "tracking/mlflow.py"}
