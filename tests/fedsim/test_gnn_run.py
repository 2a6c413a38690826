"""A partitioned GNN run end to end on the in-process grid: partition costs recorded, it learns."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from fedsim import results
from fedsim.app import serve
from fedsim.client_app import client_app
from fedsim.grid import InProcessGrid
from fedsim.scenario import parse


def gnn_scenario(aggregator: str) -> dict[str, Any]:
    return {
        "name": "tiny-gnn",
        "rounds": 4,
        "data": {
            "name": "csbm",
            "num_nodes": 400,
            "homophily": 0.9,
            "feature_snr": 2.0,
            "partition": {"name": "metis", "edges": "halo", "hops": 1},
        },
        "clients": {"num": 4, "per_round": 4},
        "workload": {"name": "gnn", "model": "sage", "fanouts": [5, 5], "epochs": 5},
        "strategy": {"name": "fedavg", "aggregator": {"name": aggregator}},
        "eval": {"every": 2},
    }


@pytest.mark.parametrize("aggregator", ["mean", "median"])
def test_a_gnn_federation_learns_and_records_its_partition(aggregator, tmp_path: Path) -> None:
    scenario = parse(gnn_scenario(aggregator))
    out = tmp_path / "run"
    results.prepare(out, scenario, command="test")
    serve(InProcessGrid(client_app, scenario.clients.num), scenario, out, show_progress=False)
    metrics = pd.read_csv(out / "metrics.csv")
    server = metrics[metrics.scope == "server"].set_index(["round", "metric"])["value"]
    assert 0 < server[(1, "edge_cut")] < 0.5  # METIS on a homophilous graph cuts little
    assert server[(1, "replication_factor")] > 1 and server[(1, "halo_bytes")] > 0
    assert server[(4, "accuracy")] > 0.5  # five classes: chance is 0.2
    clients = metrics[(metrics.scope == "client") & (metrics.metric == "eval_accuracy")]
    assert set(clients.client) == {0, 1, 2, 3}
