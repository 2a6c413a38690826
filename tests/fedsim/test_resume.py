"""Runs survive being killed: --resume continues after the last completed round."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from fedsim import results
from fedsim.engine import run_local
from fedsim.scenario import parse


def learned(run_dir: Path) -> pd.DataFrame:
    """Everything a run learned and measured, except wall-clock timings."""
    metrics = pd.read_csv(run_dir / "metrics.csv")
    return metrics[~metrics.metric.str.endswith("_time_s")].reset_index(drop=True)


def uninterrupted(raw: dict, run_dir: Path) -> None:
    scenario = parse(raw)
    results.prepare(run_dir, scenario, command="test")
    run_local(scenario, run_dir, show_progress=False)


def rounds_done(run_dir: Path) -> int:
    try:
        metrics = (run_dir / "metrics.csv").read_text()
    except FileNotFoundError:
        return 0
    return metrics.count(",server,,round_time_s,")


def test_a_run_killed_mid_way_resumes_to_the_uninterrupted_result(tiny, write_scenario, tmp_path):  # type: ignore[no-untyped-def]
    # Prepare: a run long enough to be killed with rounds still to go
    tiny["rounds"] = 60
    killed, reference = tmp_path / "killed", tmp_path / "reference"
    fedsim = Path(sys.executable).parent / "fedsim"
    command = [str(fedsim), "run", str(write_scenario(tiny)), "--out", str(killed), "--no-progress"]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while rounds_done(killed) < 5 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)

    # Execute: kill -9 mid-run, then resume
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert results.run_status(killed) == "running"  # it never got to say it stopped
    at_kill = torch.load(killed / "checkpoint.pt", weights_only=True)["round"]
    # A kill between a round's metrics and its checkpoint leaves the checkpoint one behind.
    assert 4 <= at_kill < 60
    resumed = subprocess.run(
        [str(fedsim), "run", "--resume", str(killed), "--no-progress"],
        capture_output=True,
        text=True,
    )
    uninterrupted(tiny, reference)

    # Assert
    assert resumed.returncode == 0, resumed.stderr
    pd.testing.assert_frame_equal(learned(killed), learned(reference))
    events = [json.loads(line) for line in (killed / "events.jsonl").read_text().splitlines()]
    assert [e["after_round"] for e in events if e["event"] == "run_resumed"] == [at_kill]
    assert results.run_status(killed) == "completed"


def test_resume_drops_what_a_crash_half_wrote(tiny, tmp_path) -> None:
    # Prepare: a complete 3-round run, then damage it as a crash in round 3 could
    run_dir, reference = tmp_path / "run", tmp_path / "reference"
    uninterrupted(tiny, reference)
    uninterrupted({**tiny, "rounds": 2}, run_dir)
    (run_dir / "scenario.yaml").write_text(parse(tiny).to_yaml())  # the run wanted 3 rounds
    manifest = json.loads((run_dir / "manifest.json").read_text())
    (run_dir / "manifest.json").write_text(json.dumps({**manifest, "status": "running"}))
    with open(run_dir / "metrics.csv", "a") as f:
        f.write("3,client,1,train_loss,0.5\n3,server,,acc")  # round 3 cut off mid-line
    with open(run_dir / "events.jsonl", "a") as f:
        f.write('{"time": 1, "event": "client_fai')
    (run_dir / "checkpoint.pt.tmp").write_bytes(b"half a checkpoint")  # never renamed

    # Execute
    scenario = parse(tiny)
    run_local(scenario, run_dir, show_progress=False)

    # Assert
    pd.testing.assert_frame_equal(learned(run_dir), learned(reference))
    for line in (run_dir / "events.jsonl").read_text().splitlines():
        json.loads(line)  # every line whole


def test_resume_refuses_a_complete_run_and_mixed_arguments(tiny, write_scenario, tmp_path):  # type: ignore[no-untyped-def]
    from typer.testing import CliRunner

    from fedsim.cli import app

    uninterrupted(tiny, tmp_path / "done")
    runner = CliRunner()
    result = runner.invoke(app, ["run", "--resume", str(tmp_path / "done")])
    assert result.exit_code == 2 and "already complete" in result.output
    result = runner.invoke(app, ["run", str(write_scenario(tiny)), "--resume", str(tmp_path)])
    assert result.exit_code == 2 and "give no SCENARIO" in result.output


@pytest.mark.parametrize("every", [0, 2])
def test_checkpoint_every(tiny, tmp_path, every: int) -> None:
    tiny["rounds"], tiny["checkpoint_every"] = 3, every
    uninterrupted(tiny, tmp_path / "run")
    checkpoint = results.load_checkpoint(tmp_path / "run")
    if every == 0:
        assert checkpoint is None
    else:
        assert checkpoint is not None and checkpoint.round == 3  # the last round always
