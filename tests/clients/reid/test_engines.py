"""The re-ID workload on every engine: Flower's gives the local engine's metrics and client
states (the target's pseudo-labels, eps and mean teacher among them), and a run killed with
SIGKILL resumes to the uninterrupted result."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from fedsim import results
from tests.engines import (
    assert_same_client_states,
    killed_and_resumed,
    learned,
    loaded,
    run_in_process,
)


def reid_scenario(**changes: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "name": "reid-engines",
        "seed": 0,
        "rounds": 3,
        "device": "cpu",
        "data": {
            "name": "reid_synthetic",
            "sources": 2,
            "identities": 6,
            "test_identities": 4,
            "views": 4,
            "partition": {"name": "domains"},
        },
        "clients": {"num": 3, "per_round": 3},
        # The teacher and a fixed eps that clusters: every piece of client state is exercised.
        "workload": {"name": "reid", "epochs": 1, "mean_teacher": True, "eps": 0.3},
        "strategy": {"name": "fedavg", "aggregator": {"name": "mean"}},
        "eval": {"every": 1},
    }
    return {**raw, **changes}


@pytest.fixture(scope="module")
def local_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("reid") / "local"
    run_in_process(path, reid_scenario())
    return path


def test_the_local_run_clusters_and_keeps_a_teacher(local_run: Path) -> None:
    metrics = learned(local_run)
    target = metrics[(metrics.client == 2) & (metrics.metric == "train_clusters")]
    assert (target.value > 0).all(), "the fixed eps should find clusters every round"
    state = loaded(local_run).clients[2]["arrays"]
    assert any(key.startswith("teacher.") for record in state.values() for key in record)


@pytest.mark.flower
def test_flowers_engine_gives_the_local_engines_metrics_and_states(
    local_run: Path, tmp_path: Path
) -> None:
    flower = tmp_path / "flower"
    run_in_process(flower, reid_scenario(engine="flower"))
    assert results.run_status(flower) == "completed"
    pd.testing.assert_frame_equal(learned(flower), learned(local_run))
    assert_same_client_states(loaded(flower), loaded(local_run))


def test_a_run_killed_with_sigkill_resumes_to_the_uninterrupted_result(
    write_scenario: Any, tmp_path: Path
) -> None:
    # Prepare / Execute: a `fedsim run` killed with rounds to go, resumed; the same uninterrupted
    raw = reid_scenario(rounds=6)
    at_kill = killed_and_resumed(write_scenario(raw), tmp_path / "killed")
    reference = run_in_process(tmp_path / "reference", raw)

    # Assert: the same metrics and client states as a run never interrupted
    assert 1 <= at_kill < 6
    pd.testing.assert_frame_equal(learned(tmp_path / "killed"), learned(reference))
    assert_same_client_states(loaded(tmp_path / "killed"), loaded(reference))
