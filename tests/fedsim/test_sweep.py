"""Sweeps: the grid of an explicit sweep block, validated first, run, resumed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedsim import sweep
from fedsim.errors import ScenarioError


@pytest.fixture
def grid(tiny):  # type: ignore[no-untyped-def]
    tiny["rounds"] = 2
    tiny["sweep"] = {"strategy.aggregator.weighted": [True, False], "seed": [0, 1, 2]}
    return tiny


def test_expand_is_the_product_in_key_order(grid) -> None:
    points = sweep.expand(grid)
    assert [p.values for p in points][:4] == [
        {"strategy.aggregator.weighted": True, "seed": 0},
        {"strategy.aggregator.weighted": True, "seed": 1},
        {"strategy.aggregator.weighted": True, "seed": 2},
        {"strategy.aggregator.weighted": False, "seed": 0},
    ]
    assert len(points) == 6
    assert points[3].scenario.seed == 0
    assert points[3].scenario.strategy.options["aggregator"]["weighted"] is False
    assert len({p.dirname for p in points}) == 6
    assert points[3].dirname == "0003-weighted=False_seed=0"


def test_a_component_value_names_its_point_directory_briefly(tiny) -> None:
    tiny["sweep"] = {"strategy.aggregator": [{"name": "mean"}, {"name": "trimmed_mean", "f": 1}]}
    names = [p.dirname for p in sweep.expand(tiny)]
    assert names == ["0000-aggregator=mean", "0001-aggregator=trimmed_mean-f1"]


def test_a_list_outside_sweep_is_never_a_grid(tiny) -> None:
    tiny["seed"] = [0, 1]
    with pytest.raises(ScenarioError, match="seed: Input should be a valid integer"):
        sweep.expand({**tiny, "sweep": {"rounds": [1]}})


def test_bad_sweep_blocks(tiny) -> None:
    with pytest.raises(ScenarioError, match="expected a non-empty list"):
        sweep.expand({**tiny, "sweep": {"seed": 3}})
    with pytest.raises(ScenarioError, match="expected a mapping"):
        sweep.expand({**tiny, "sweep": [1, 2]})


def test_every_point_is_validated_before_anything_runs(grid, tmp_path) -> None:
    grid["sweep"]["workload.lr"] = [0.1, -1.0]
    with pytest.raises(ScenarioError) as err:
        sweep.run(grid, tmp_path / "out", show_progress=False, echo=lambda _: None)
    (problem,) = err.value.problems
    assert problem.startswith("workload.lr: Input should be greater than 0")
    assert "point 1 (strategy.aggregator.weighted=True, seed=0, workload.lr=-1.0)" in problem
    assert not (tmp_path / "out").exists()


def index(path: Path) -> dict:  # type: ignore[type-arg]
    return json.loads((path / "sweep.json").read_text())


def test_run_writes_a_run_per_point_and_resumes_skipping_finished_points(grid, tmp_path) -> None:
    # Prepare / Execute: a whole sweep
    out = sweep.run(grid, tmp_path / "out", show_progress=False, echo=lambda _: None)

    # Assert
    points = index(out)["points"]
    assert [p["status"] for p in points] == ["completed"] * 6
    for point in points:
        assert (out / point["dir"] / "metrics.csv").exists()
    assert (out / "sweep.yaml").exists() and not (out / "scenario.yaml").exists()

    # Prepare: point 4 interrupted before it wrote anything
    data = index(out)
    data["points"][4]["status"] = "pending"
    (out / "sweep.json").write_text(json.dumps(data))
    for name in ("metrics.csv", "events.jsonl", "checkpoint.pt", "model.pt"):
        (out / points[4]["dir"] / name).unlink()
    before = {
        p["dir"]: (out / p["dir"] / "metrics.csv").stat().st_mtime_ns
        for p in points
        if p["id"] != "0004"
    }
    said: list[str] = []

    # Execute
    sweep.run_points(out, show_progress=False, echo=said.append)

    # Assert: only point 4 ran again
    after = {p["dir"]: (out / p["dir"] / "metrics.csv").stat().st_mtime_ns for p in points}
    assert [d for d in after if before.get(d) != after[d]] == [points[4]["dir"]]
    assert [p["status"] for p in index(out)["points"]] == ["completed"] * 6
    assert said == ["fedsim: 5 points already complete, skipped"]


def test_one_job_runs_the_points_one_after_another_in_this_process(
    tiny, tmp_path, monkeypatch
) -> None:
    # Prepare: two points, and no process pool to be had
    tiny["rounds"] = 1
    tiny["sweep"] = {"seed": [0, 1]}

    def no_pool(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise AssertionError("jobs=1 started a process pool")

    monkeypatch.setattr(sweep, "ProcessPoolExecutor", no_pool)

    # Execute
    out = sweep.run(tiny, tmp_path / "out", show_progress=False, echo=lambda _: None, jobs=1)

    # Assert
    assert [p["status"] for p in index(out)["points"]] == ["completed"] * 2
