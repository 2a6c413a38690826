"""The re-ID workload on every engine: Flower's gives the local engine's metrics and client
states (the target's pseudo-labels, eps and mean teacher among them), and a run killed with
SIGKILL resumes to the uninterrupted result."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

import fedsim.engine
from fedsim import results
from fedsim.scenario import parse
from tests.fedsim.test_toy_workload import (
    ROOT,
    assert_same_client_states,
    invoke,
    learned,
    loaded,
    rounds_done,
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


def run_in_process(run_dir: Path, raw: dict[str, Any]) -> None:
    scenario = parse(raw)
    results.prepare(run_dir, scenario, command="test")
    fedsim.engine.run(scenario, run_dir, show_progress=False)


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
    # Prepare: a `fedsim run` long enough to be killed with rounds to go
    raw = reid_scenario(rounds=6)
    killed, reference = tmp_path / "killed", tmp_path / "reference"
    command = [sys.executable, "-m", "fedsim", "run", str(write_scenario(raw))]
    command += ["--out", str(killed), "--no-progress"]
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 180
    while rounds_done(killed) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)

    # Execute: kill -9 mid-run, then resume
    os.kill(proc.pid, signal.SIGKILL)
    _, stderr = proc.communicate()
    assert proc.returncode == -signal.SIGKILL, f"the run ended before it was killed: {stderr!r}"
    at_kill = loaded(killed).round
    assert 1 <= at_kill < 6
    resumed = invoke("run", "--resume", killed, "--no-progress")
    run_in_process(reference, raw)

    # Assert: the same metrics and client states as a run never interrupted
    assert resumed.exit_code == 0, resumed.output
    pd.testing.assert_frame_equal(learned(killed), learned(reference))
    assert results.run_status(killed) == "completed"
    assert_same_client_states(loaded(killed), loaded(reference))
