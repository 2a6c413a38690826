"""`flwr run .` runs the same ServerApp and ClientApp from Flower's own CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).parents[2]


@pytest.mark.flower
def test_flwr_run_runs_the_app(tiny, write_scenario, tmp_path) -> None:
    tiny["rounds"] = 2
    scenario, out, home = write_scenario(tiny), tmp_path / "run", tmp_path / "flwr-home"
    bin_dir = str(Path(sys.executable).parent)
    flwr = shutil.which("flwr", path=bin_dir) or "flwr"
    env = {
        **os.environ,
        "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),  # flwr spawns flower-superlink
        "FLWR_HOME": str(home),  # its own SuperLink state, found and stopped below
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
    }
    command = [
        flwr, "run", str(ROOT), "--stream",
        "-c", f"scenario='{scenario}' out='{out}' progress=false",
        "--federation-config", "num-supernodes=4",
    ]  # fmt: skip
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    finally:  # the CLI leaves its SuperLink running, detached
        subprocess.run(["pkill", "-f", str(home)], check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "completed"
    metrics = pd.read_csv(out / "metrics.csv")
    central = metrics[(metrics.scope == "server") & (metrics.metric == "accuracy")]
    assert list(central["round"]) == [1, 2] and central["value"].between(0, 1).all()
