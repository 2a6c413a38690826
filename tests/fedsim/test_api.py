"""The Python API: the command's runs, results and errors, from a dict, YAML text or a file."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pandas as pd
import pytest
import torch
import yaml
from typer.testing import CliRunner

import fedsim
from fedsim.cli import app
from fedsim.errors import ScenarioError, UserError


def learned(metrics: pd.DataFrame) -> pd.DataFrame:
    """Everything a run learned and measured, except wall-clock timings."""
    return metrics[~metrics.metric.str.endswith("_time_s")].reset_index(drop=True)


def test_a_run_from_a_dict_matches_the_command(tiny, write_scenario, tmp_path) -> None:  # type: ignore[no-untyped-def]
    # Prepare
    tiny["rounds"] = 2
    command = ["run", str(write_scenario(tiny)), "--set", "workload.lr=0.05", "--no-progress"]

    # Execute
    by_command = CliRunner().invoke(app, [*command, "--out", str(tmp_path / "cli")])
    run = fedsim.run(tiny, overrides={"workload.lr": 0.05}, out=tmp_path / "api")

    # Assert
    assert by_command.exit_code == 0, by_command.output
    assert isinstance(run, fedsim.Run) and run.status == "completed"
    assert run.scenario.workload.options["lr"] == 0.05 and tiny["workload"]["lr"] == 0.1
    written = pd.read_csv(tmp_path / "cli" / "metrics.csv")
    pd.testing.assert_frame_equal(learned(pd.read_csv(run.dir / "metrics.csv")), learned(written))
    pd.testing.assert_frame_equal(
        learned(run.metrics), learned(fedsim.load_run(tmp_path / "cli").metrics)
    )
    assert run.metrics.value.tolist() == pytest.approx(pd.read_csv(run.dir / "metrics.csv").value)


def test_a_yaml_string_runs_and_its_run_reads_back(tiny, tmp_path) -> None:  # type: ignore[no-untyped-def]
    # Execute
    run = fedsim.run(yaml.safe_dump({**tiny, "rounds": 1}), ["seed=1"], out=tmp_path / "run")

    # Assert
    assert isinstance(run, fedsim.Run) and run.scenario.seed == 1
    metrics = run.metrics
    assert list(metrics.columns) == ["round", "scope", "client", "metric", "value"]
    assert metrics["round"].unique().tolist() == [1]
    assert str(metrics.client.dtype) == "Int64"
    assert set(metrics[metrics.scope == "client"].client) == {0, 1, 2, 3}
    assert metrics[metrics.scope == "server"].client.isna().all()
    assert run.events[0]["event"] == "run_started"
    model = run.model()
    assert model and all(isinstance(t, torch.Tensor) for t in model.values())
    summary = run.summary()
    assert summary["status"] == "completed" and summary["rounds"] == 1
    accuracy = metrics[(metrics.scope == "server") & (metrics.metric == "accuracy")].value
    assert summary["server/accuracy"] == accuracy.iloc[-1]
    assert fedsim.load_run(run.dir) == run
    with pytest.raises(UserError, match="already complete"):
        fedsim.resume(run.dir)

    report = fedsim.report(run, out=tmp_path / "report")
    assert report.html.exists() and len(report.runs) == 1


def test_bad_input_raises_the_message_the_command_prints(tiny, write_scenario, tmp_path) -> None:  # type: ignore[no-untyped-def]
    tiny["strategy"]["aggregator"]["name"] = "meen"
    path = write_scenario(tiny)

    with pytest.raises(ScenarioError) as raised:
        fedsim.run(path)
    by_command = CliRunner().invoke(app, ["run", str(path)])

    assert by_command.exit_code == 2
    assert by_command.output.strip() == f"error: {raised.value}"
    assert "strategy.aggregator.name: unknown aggregator 'meen'" in str(raised.value)
    with pytest.raises(ScenarioError, match="unknown aggregator 'meen'"):
        fedsim.run(tiny)  # the same problem, given as a dict
    with pytest.raises(ScenarioError, match=r"overrides rounds\.x: rounds is not a mapping"):
        fedsim.run(path, {"rounds.x": 1})
    with pytest.raises(ScenarioError, match=r"\(yaml\) line 2"):
        fedsim.run("name: x\n  rounds: [1\n")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="not a run directory"):
        fedsim.load_run(tmp_path / "empty")


def test_a_sweep_returns_its_runs(tiny, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    # Prepare: the points one after another in this process (no worker start-up)
    monkeypatch.setattr(os, "cpu_count", lambda: 1)
    tiny["rounds"] = 1
    tiny["sweep"] = {"seed": [0, 1], "strategy.aggregator": [{"name": "median"}]}
    said: list[str] = []

    # Execute
    sweep = fedsim.run(tiny, out=tmp_path / "sweep", echo=said.append)

    # Assert
    assert isinstance(sweep, fedsim.Sweep) and len(sweep) == 2
    assert [run.scenario.seed for run in sweep] == [0, 1]
    assert sweep[1].dir == tmp_path / "sweep" / sweep.points[1]["dir"]
    metrics = sweep.metrics
    assert list(metrics.columns[:3]) == ["point", "seed", "strategy.aggregator"]
    assert set(metrics.seed) == {0, 1}
    assert set(metrics["strategy.aggregator"]) == {json.dumps({"name": "median"})}
    one = metrics[metrics.point == "0001"].iloc[:, 3:].reset_index(drop=True)
    pd.testing.assert_frame_equal(one, sweep[1].metrics)
    assert said[-1] == f"fedsim: sweep done; results in {sweep.dir}"
    assert fedsim.load_sweep(sweep.dir) == sweep

    resumed = fedsim.resume(sweep.dir, echo=said.append)
    assert resumed == sweep and said[-2] == "fedsim: 2 points already complete, skipped"


def test_import_fedsim_is_cheap() -> None:
    script = "import json, sys, fedsim; fedsim.run; print(json.dumps(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    loaded = set(json.loads(done.stdout))
    assert not loaded & {"torch", "pandas", "flwr", "pydantic"}, done.stderr
