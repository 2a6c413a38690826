"""README's "Your own model and data", run as printed, from a folder outside the repository: a
plugin file's CNN and .npz dataset on every engine, resumed after kill -9, named in the manifest."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from fedsim.cli import app

ROOT = Path(__file__).parents[2]
EXAMPLE = ROOT / "examples" / "own_model_and_data"
FILES = ("components.py", "scenario.yaml", "run.py")


pytestmark = pytest.mark.usefixtures("forget_plugins")


@pytest.fixture
def lab(tmp_path: Path) -> Path:
    """The example copied outside the repository, with its data written."""
    folder = tmp_path / "lab"
    shutil.copytree(EXAMPLE, folder, ignore=shutil.ignore_patterns("runs", "*.npz", "__pycache__"))
    subprocess.run([sys.executable, "make_data.py"], cwd=folder, check=True, timeout=120)
    return folder


def learned(run_dir: Path) -> pd.DataFrame:
    """Everything a run learned and measured, except wall-clock timings."""
    metrics = pd.read_csv(run_dir / "metrics.csv")
    return metrics[~metrics.metric.str.endswith("_time_s")].reset_index(drop=True)


def fedsim_run(*args: object) -> None:
    result = CliRunner().invoke(app, ["run", *map(str, args), "--no-progress"])
    assert result.exit_code == 0, result.output


def test_the_readme_prints_the_example_files_as_they_are() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Your own model and data", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```(?:python|yaml)\n(.*?)```", section, flags=re.S)
    assert blocks == [(EXAMPLE / name).read_text() for name in FILES]


def test_the_example_script_runs_as_printed(lab: Path) -> None:
    done = subprocess.run(
        [sys.executable, "run.py"], cwd=lab, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr
    finals = dict(re.findall(r"(\w+): final accuracy ([\d.]+)", done.stdout))
    assert set(finals) == {"mean", "median"}
    assert float(finals["mean"]) > 0.8  # 10 rounds of the lab CNN on 8x8 digits
    (out,) = (lab / "runs").iterdir()  # the script's timestamped folder
    assert (out / "report" / "report.html").exists()
    manifest = json.loads((out / "mean" / "manifest.json").read_text())
    plugin = lab / "components.py"
    assert [(p["file"], p["sha256"]) for p in manifest["plugins"]] == [
        (str(plugin), hashlib.sha256(plugin.read_bytes()).hexdigest())
    ]


@pytest.mark.flower
def test_every_engine_gives_the_same_metrics(lab: Path) -> None:
    runs = {
        "one": [],
        "two": ["--set", "resources.workers=2"],
        "flower": ["--set", "engine=flower"],
    }
    for name, extra in runs.items():
        fedsim_run(lab / "scenario.yaml", "--set", "rounds=3", "--out", lab / name, *extra)
    for name in ("two", "flower"):
        pd.testing.assert_frame_equal(learned(lab / name), learned(lab / "one"))


def test_a_run_killed_with_sigkill_resumes_to_the_uninterrupted_result(lab: Path) -> None:
    # Prepare: a run long enough to be killed with rounds to go
    killed, reference = lab / "killed", lab / "reference"
    command = [sys.executable, "-m", "fedsim", "run", str(lab / "scenario.yaml")]
    command += ["--set", "rounds=12", "--out", str(killed), "--no-progress"]
    proc = subprocess.Popen(command, cwd=lab, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    metrics = killed / "metrics.csv"
    while proc.poll() is None and time.monotonic() < deadline:
        if metrics.exists() and metrics.read_text().count(",server,,round_time_s,") >= 3:
            break
        time.sleep(0.01)

    # Execute: kill -9 mid-run, resume; and the same run uninterrupted
    os.kill(proc.pid, signal.SIGKILL)
    _, stderr = proc.communicate()
    assert proc.returncode == -signal.SIGKILL, f"the run ended before it was killed: {stderr!r}"
    fedsim_run("--resume", killed)
    fedsim_run(lab / "scenario.yaml", "--set", "rounds=12", "--out", reference)

    # Assert
    pd.testing.assert_frame_equal(learned(killed), learned(reference))
