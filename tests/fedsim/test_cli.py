"""The fedsim command: readable errors with exit code 2, listing, validation, a real run."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from fedsim.cli import app

runner = CliRunner()


def invoke(*args: str):  # type: ignore[no-untyped-def]
    return runner.invoke(app, [str(a) for a in args])


def test_help_lists_the_commands() -> None:
    result = invoke("--help")
    assert result.exit_code == 0
    for command in ("run", "validate", "list"):
        assert command in result.output


def test_validate_ok_and_invalid(tiny, write_scenario) -> None:
    good = write_scenario(tiny, "good.yaml")
    tiny["strategy"]["aggregator"]["name"] = "meen"
    bad = write_scenario(tiny, "bad.yaml")
    result = invoke("validate", good, bad)
    assert result.exit_code == 2
    assert "ok" in result.output and "good.yaml" in result.output
    assert "strategy.aggregator.name: unknown aggregator 'meen'" in result.output
    assert "Traceback" not in result.output


def test_list_shows_parameters_and_defaults() -> None:
    result = invoke("list", "partitioner")
    assert result.exit_code == 0
    assert "dirichlet" in result.output and "alpha" in result.output and "0.5" in result.output


def test_list_marks_required_parameters() -> None:
    result = invoke("list", "availability")
    assert result.exit_code == 0
    assert "path: str (required)" in result.output and "Undefined" not in result.output


def test_list_shows_the_models_and_the_workloads_model_option() -> None:
    models, workloads = invoke("list", "model"), invoke("list", "workload")
    assert models.exit_code == 0 and workloads.exit_code == 0
    assert all(name in models.output for name in ("mlp", "cnn", "lenet_300_100", "hidden"))
    assert "model: model = {'name':" in workloads.output


def test_list_names_unions_optionals_and_nested_components() -> None:
    from clients.models import MLPParams
    from fedsim.cli.list import describe
    from fedsim.files.images import ImageFolderParams
    from strategies.fedavg import FedAvgParams

    assert describe(MLPParams) == "hidden: int | list[int] = 128"
    assert "size: int | tuple[int, int] (required)" in describe(ImageFolderParams)
    assert "preagg: list[preaggregator] = []" in describe(FedAvgParams)


def test_list_unknown_kind() -> None:
    result = invoke("list", "aggregators")
    assert result.exit_code == 2
    assert "did you mean 'aggregator'?" in result.output


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"clients": {"num": 4, "per_round": 9}}, "per_round (9) cannot exceed num (4)"),
        ({"workload": {"name": "classification", "lr": -1}}, "workload.lr:"),
        ({"data": {"name": "fashion_mnist", "root": "/nope"}}, "apt-get install"),
        (
            {"data": {"name": "digits", "partition": {"name": "shards", "classes_per_client": 11}}},
            "classes_per_client",
        ),
        (
            {
                "clients": {
                    "num": 4,
                    "per_round": 2,
                    "availability": {"name": "trace", "path": "/no"},
                }
            },
            "availability trace /no: No such file",
        ),
        ({"engine": "flower", "resources": {"client_cpus": 512}}, "exceeds this machine's"),
    ],
    ids=[
        "per_round",
        "range",
        "missing-dataset",
        "impossible-partition",
        "missing-trace",
        "client-cpus",
    ],
)
def test_run_refuses_bad_input_before_training(tiny, write_scenario, tmp_path, change, message):  # type: ignore[no-untyped-def]
    tiny.update(change)
    result = invoke("run", write_scenario(tiny), "--out", tmp_path / "out")
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


def test_run_refuses_to_overwrite_a_run(tiny, write_scenario, tmp_path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "metrics.csv").write_text("round,scope,client,metric,value\n1,server,,accuracy,0.5\n")
    result = invoke("run", write_scenario(tiny), "--out", out)
    assert result.exit_code == 2 and "already holds a run" in result.output
    assert (out / "metrics.csv").read_text().endswith("0.5\n")


def test_jobs_is_refused_for_a_single_run(tiny, write_scenario, tmp_path) -> None:
    result = invoke("run", write_scenario(tiny), "--out", tmp_path / "out", "--jobs", "1")
    assert result.exit_code == 2 and "is for sweeps" in result.output
    assert not (tmp_path / "out").exists()


def test_debug_shows_the_traceback(tiny, write_scenario) -> None:
    tiny["rounds"] = 0
    result = invoke("run", write_scenario(tiny), "--debug")
    assert result.exit_code != 0 and result.exception is not None


@pytest.mark.flower
def test_run_on_flowers_simulation_engine(tiny, write_scenario, tmp_path) -> None:
    """Flower's engine (Ray) gives the same results as the local engine for the same seed."""
    from fedsim import results
    from fedsim.app import serve
    from fedsim.client_app import client_app
    from fedsim.grid import InProcessGrid
    from fedsim.scenario import parse

    tiny["rounds"], tiny["engine"] = 2, "flower"
    result = invoke("run", write_scenario(tiny), "--out", tmp_path / "flower", "--no-progress")
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "flower" / "manifest.json").read_text())
    assert manifest["status"] == "completed"

    scenario = parse({**tiny, "engine": "local"})
    results.prepare(tmp_path / "local", scenario, command="test")
    serve(InProcessGrid(client_app, 4), scenario, tmp_path / "local", show_progress=False)

    def learned(run: Path) -> pd.DataFrame:
        metrics = pd.read_csv(run / "metrics.csv")
        return metrics[~metrics.metric.str.endswith("_time_s")].reset_index(drop=True)

    pd.testing.assert_frame_equal(learned(tmp_path / "flower"), learned(tmp_path / "local"))
