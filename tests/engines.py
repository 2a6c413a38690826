"""Helpers for tests that run a scenario end to end: in this process on the scenario's engine,
and as a ``fedsim run`` killed with SIGKILL mid-run, then resumed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from typer.testing import CliRunner

import fedsim.engine
from fedsim import checkpoint, results
from fedsim.cli import app as cli
from fedsim.scenario import parse

ROOT = Path(__file__).parents[1]


def run_in_process(run_dir: Path, raw: dict[str, Any]) -> Path:
    """Run scenario data ``raw`` into ``run_dir`` on its engine, from this process."""
    scenario = parse(raw)
    results.prepare(run_dir, scenario, command="test")
    fedsim.engine.run(scenario, run_dir, show_progress=False)
    return run_dir


def learned(run_dir: Path) -> pd.DataFrame:
    """Everything a run learned and measured, except wall-clock timings."""
    metrics = pd.read_csv(run_dir / "metrics.csv")
    return metrics[~metrics.metric.str.endswith("_time_s")].reset_index(drop=True)


def loaded(run_dir: Path) -> checkpoint.Checkpoint:
    state = checkpoint.load(run_dir)
    assert state is not None, f"{run_dir} has no checkpoint"
    return state


def rounds_done(run_dir: Path) -> int:
    try:
        return (run_dir / "metrics.csv").read_text().count(",server,,round_time_s,")
    except FileNotFoundError:
        return 0


def killed_and_resumed(scenario_file: Path, killed: Path, after_rounds: int = 2) -> int:
    """``fedsim run scenario_file`` into ``killed``, SIGKILLed once ``after_rounds`` rounds are
    written, then ``fedsim run --resume``; the round of the checkpoint it resumed from. Asserts
    that the kill landed mid-run, that the resume succeeded and recorded where it resumed."""
    command = [sys.executable, "-m", "fedsim", "run", str(scenario_file)]
    command += ["--out", str(killed), "--no-progress"]
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 180
    while rounds_done(killed) < after_rounds and proc.poll() is None:
        assert time.monotonic() < deadline, "the run wrote too few rounds in 180 s"
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    _, stderr = proc.communicate()
    assert proc.returncode == -signal.SIGKILL, f"the run ended before it was killed: {stderr!r}"
    at_kill = loaded(killed).round
    resumed = invoke("run", "--resume", killed, "--no-progress")
    assert resumed.exit_code == 0, resumed.output
    assert results.run_status(killed) == "completed"
    events = [json.loads(line) for line in (killed / "events.jsonl").read_text().splitlines()]
    assert [e["after_round"] for e in events if e["event"] == "run_resumed"] == [at_kill]
    return at_kill


def assert_same_client_states(got: checkpoint.Checkpoint, want: checkpoint.Checkpoint) -> None:
    """The clients' saved states are the same records, with bit-exact tensors."""
    assert sorted(got.clients) == sorted(want.clients)
    for client, state in want.clients.items():
        assert got.clients[client].keys() == state.keys()
        for kind, records in state.items():
            assert got.clients[client][kind].keys() == records.keys(), (client, kind)
            for key, record in records.items():
                again = got.clients[client][kind][key]
                if kind == "arrays":  # same names, dtypes and values
                    assert again.keys() == record.keys()
                    torch.testing.assert_close(again, record, rtol=0, atol=0)
                else:
                    assert again == record, (client, kind, key)


def invoke(*args: Any) -> Any:
    return CliRunner().invoke(cli, [str(a) for a in args])
