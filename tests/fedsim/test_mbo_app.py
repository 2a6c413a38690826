"""The mbo workload end to end: proxies on the clients, design ascent on the server."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch

from fedsim import results
from fedsim.app import serve
from fedsim.client_app import client_app
from fedsim.engine import preflight, run_local
from fedsim.engine import run as engine_run
from fedsim.errors import ScenarioError, UserError
from fedsim.grid import InProcessGrid
from fedsim.scenario import parse


def mbo_scenario(**changes: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "name": "mbo-test",
        "seed": 0,
        "rounds": 6,
        "data": {"name": "mbo_continuous", "dim": 4, "pool": 1500, "partition": {"name": "iid"}},
        "clients": {"num": 3, "per_round": 3},
        "workload": {"name": "mbo", "hidden": 16, "epochs": 10, "designs": 8},
        "strategy": {
            "name": "fedavg",
            "aggregator": {"name": "mean"},
            "server_opt": {"name": "sgd", "lr": 0.05},
        },
        "eval": {"every": 2},
    }
    raw.update(changes)
    return raw


def run(raw: dict[str, Any], out: Path) -> pd.DataFrame:
    scenario = parse(raw)
    results.prepare(out, scenario, command="test")
    serve(InProcessGrid(client_app, scenario.clients.num), scenario, out, show_progress=False)
    return pd.read_csv(out / "metrics.csv")


def server(metrics: pd.DataFrame, name: str) -> pd.Series:
    rows = metrics[(metrics.scope == "server") & (metrics.metric == name)]
    return rows.set_index("round")["value"]


def test_ascent_on_the_mean_raises_the_ensembles_prediction_and_reports_scores(tmp_path) -> None:
    # Execute
    metrics = run(mbo_scenario(), tmp_path / "run")

    # Assert: proxies trained in round 1's ascent report (which starts the designs), the mean
    # proxy value climbs at every later step of a small-step ascent on the mean, and the oracle
    # scores are reported at eval rounds
    trained = metrics[(metrics.scope == "client") & (metrics["round"] == 1)]
    assert set(trained.client) == {0, 1, 2}
    assert "ascent_proxy_train_mse" in set(trained.metric)
    evaluated = metrics[(metrics.scope == "client") & (metrics["round"] == 2)]
    assert set(evaluated[evaluated.metric == "eval_proxy_val_spearman"].client) == {0, 1, 2}
    climb = server(metrics, "proxy_mean")
    assert list(climb.index) == [2, 3, 4, 5, 6]
    assert (climb.diff().dropna() > 0).all()
    assert list(server(metrics, "p100").index) == [2, 4, 6]
    assert server(metrics, "p50").between(-1, 2).all()
    designs = torch.load(tmp_path / "run" / "broadcasts.pt")["ascent"]["designs"]
    assert designs.shape == (8, 4)
    # Every step's traffic is recorded: 3 clients get the 8x4 float32 designs (128 bytes each)
    # and reply with values and gradients (8 + 32 floats), framing on top.
    steps = server(metrics, "ascent_bytes_down").loc[2:]
    assert (steps > 3 * 128).all()
    assert (server(metrics, "ascent_bytes_up").loc[2:] > 3 * 4 * 40).all()
    assert "bytes_down" not in set(metrics.metric)  # nothing is shared, so nothing trains


@pytest.mark.parametrize("rule", ["min", "mgda", "cagrad"])
def test_every_combiner_runs_the_ascent(rule: str, tmp_path) -> None:
    raw = mbo_scenario(rounds=3, eval={"every": 1})
    raw["strategy"]["aggregator"] = {"name": rule}
    metrics = run(raw, tmp_path / rule)
    assert server(metrics, "p100").notna().all() and len(server(metrics, "p100")) == 3


def test_ensemble_clients_on_the_same_rows_still_train_different_proxies(tmp_path) -> None:
    # Prepare: every client all the rows and nothing held out, so only the seeds differ
    raw = mbo_scenario(rounds=2, eval={"every": 1})
    raw["data"] = {**raw["data"], "partition": {"name": "ensemble"}, "val_fraction": 0.0}

    # Execute
    metrics = run(raw, tmp_path / "run")

    # Assert: each client draws its own initial proxy and batch order, so the fitted proxies
    # differ: their training losses, and their predictions at the designs (identical proxies
    # would make the worst prediction equal the mean); with no held-out rows, no client fails
    trained = metrics[(metrics.scope == "client") & (metrics.metric == "ascent_proxy_train_mse")]
    assert trained.client.tolist() == [0, 1, 2] and trained.value.nunique() == 3
    assert server(metrics, "proxy_min")[2] < server(metrics, "proxy_mean")[2] - 1e-3
    events = (tmp_path / "run" / "events.jsonl").read_text()
    assert "client_failed" not in events


def test_a_resumed_ascent_ends_where_an_uninterrupted_one_does(tmp_path) -> None:
    # Prepare: a reference run, and a run that stopped after 3 of its 6 rounds
    raw = mbo_scenario()
    raw["strategy"]["server_opt"]["momentum"] = 0.5  # per-design state must resume too
    reference, cut = tmp_path / "reference", tmp_path / "cut"
    run(raw, reference)
    run({**raw, "rounds": 3}, cut)
    (cut / "scenario.yaml").write_text(parse(raw).to_yaml())

    # Execute
    run_local(parse(raw), cut, show_progress=False)

    # Assert
    done = torch.load(reference / "broadcasts.pt")["ascent"]["designs"]
    again = torch.load(cut / "broadcasts.pt")["ascent"]["designs"]
    torch.testing.assert_close(again, done, rtol=0, atol=0)
    kinds = [json.loads(line)["event"] for line in (cut / "events.jsonl").read_text().splitlines()]
    assert "run_resumed" in kinds


def test_impossible_mbo_scenarios_fail_before_anything_runs() -> None:
    with pytest.raises(ScenarioError, match="reads mbo_task data"):
        parse(mbo_scenario(data={"name": "digits"}))
    classification = mbo_scenario(workload={"name": "classification"}, data={"name": "digits"})
    classification["strategy"]["aggregator"] = {"name": "min"}
    with pytest.raises(UserError, match="only the mbo workload"):
        preflight(parse(classification))


@pytest.mark.flower
def test_flowers_engine_ascends_the_same_designs_as_the_local_engine(tmp_path) -> None:
    # Prepare
    raw = mbo_scenario(rounds=2)
    local = run(raw, tmp_path / "local")
    scenario = parse({**raw, "engine": "flower"})
    results.prepare(tmp_path / "flower", scenario, command="test")

    # Execute: the proxies train in Ray actors and answer query.gradients Messages there
    engine_run(scenario, tmp_path / "flower", show_progress=False)

    # Assert
    flower = pd.read_csv(tmp_path / "flower" / "metrics.csv")
    learned = [m[~m.metric.str.endswith("_time_s")].reset_index(drop=True) for m in (flower, local)]
    pd.testing.assert_frame_equal(*learned)
    designs = [
        torch.load(tmp_path / d / "broadcasts.pt")["ascent"]["designs"] for d in ("flower", "local")
    ]
    torch.testing.assert_close(*designs, rtol=0, atol=0)
