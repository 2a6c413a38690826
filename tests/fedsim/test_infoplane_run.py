"""A run with the information-plane analysis: the same metrics on every engine and worker
count, and after a ``kill -9`` and ``--resume``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from tests.engines import killed_and_resumed, learned, run_in_process

ROOT = Path(__file__).parents[2]


def plane_scenario(**changes: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "name": "plane",
        "seed": 0,
        "rounds": 8,
        "data": {"name": "szt", "partition": {"name": "dirichlet", "alpha": 0.5}},
        "clients": {"num": 3, "per_round": 2},
        "workload": {
            "name": "classification",
            "model": {"name": "infoplane_mlp", "activation": "relu"},
            "batch_size": 256,
            "lr": 0.05,
            "momentum": 0.9,
        },
        "analysis": [
            {"name": "information_plane", "every": 2, "central_probe": "all"},
            {"name": "information_plane", "tag": "sketch", "federated": "sketch", "every": 3},
        ],
    }
    return {**raw, **changes}


def run(run_dir: Path, raw: dict[str, Any]) -> None:
    run_in_process(run_dir, raw)


@pytest.fixture(scope="module")
def local_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("plane") / "local"
    run(path, plane_scenario())
    return path


def test_the_plane_is_measured_on_the_scheduled_rounds(local_run: Path) -> None:
    metrics = learned(local_run)
    plane = metrics[metrics.metric.str.startswith("mi_")]
    # every 2 of 8 rounds, and every 3 (and the last); 6 layers; both estimates
    for metric, due in (("mi_xt.6", [2, 4, 6, 8]), ("mi_xt_sketch.6", [3, 6, 8])):
        for scope in ("federated", "server"):
            rows = plane[(plane.metric == metric) & (plane.scope == scope)]
            assert rows["round"].tolist() == due, (metric, scope)
    assert plane["value"].between(0, 12).all()
    traffic = metrics[
        metrics.metric.isin(["infoplane_levels_bytes_up", "infoplane_sketch_levels_bytes_up"])
    ]
    exact, sketch = (
        traffic[traffic.metric == m]["value"].iloc[-1] for m in sorted(set(traffic.metric))
    )
    assert sketch < exact  # the sketch sends 64 points a layer, not every distinct level
    # A client's report carries its size for Flower's sake; it is not a measurement.
    clients = metrics[metrics.scope == "client"]
    assert not clients.metric.str.startswith("infoplane").any()


def test_the_analysis_leaves_the_run_it_observes_unchanged(local_run: Path, tmp_path: Path) -> None:
    # Prepare: the same run without the analysis
    run(tmp_path / "plain", plane_scenario(analysis=[]))

    # Execute: every metric the plain run records, read from both runs
    plain = learned(tmp_path / "plain")
    analysed = learned(local_run).merge(plain[["round", "scope", "client", "metric"]])

    # Assert: the same training, evaluation and traffic, round by round. The bin edges that
    # an analysed round broadcasts serve that round's counts only: they would otherwise ride
    # on every later training Message and add to its bytes.
    assert len(analysed) == len(plain)
    pd.testing.assert_frame_equal(analysed, plain)


def test_two_workers_give_the_in_process_metrics(local_run: Path, tmp_path: Path) -> None:
    run(tmp_path / "workers", plane_scenario(resources={"workers": 2}))
    pd.testing.assert_frame_equal(learned(tmp_path / "workers"), learned(local_run))


@pytest.mark.flower
def test_flowers_engine_gives_the_local_engines_metrics(local_run: Path, tmp_path: Path) -> None:
    run(tmp_path / "flower", plane_scenario(engine="flower"))
    pd.testing.assert_frame_equal(learned(tmp_path / "flower"), learned(local_run))


def test_a_run_killed_with_sigkill_resumes_to_the_uninterrupted_result(
    local_run: Path, write_scenario: Any, tmp_path: Path
) -> None:
    # Prepare / Execute: the local run's scenario, killed with rounds to go, then resumed
    at_kill = killed_and_resumed(write_scenario(plane_scenario()), tmp_path / "killed", 3)

    # Assert: the metrics of a run never interrupted (the running maximum of fixed bins and
    # the edges broadcast are in the checkpoint)
    assert 2 <= at_kill < 8
    pd.testing.assert_frame_equal(learned(tmp_path / "killed"), learned(local_run))
