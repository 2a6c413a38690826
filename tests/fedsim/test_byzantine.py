"""Byzantine clients end to end: chosen by seed and recorded, attacking through the pipeline or
their data, and rules whose conditions cannot hold refused before anything runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from fedsim import results
from fedsim.app import serve
from fedsim.build import byzantine_clients
from fedsim.client_app import client_app
from fedsim.engine import preflight
from fedsim.errors import UserError
from fedsim.grid import InProcessGrid
from fedsim.scenario import parse


def run(raw: dict[str, Any], out: Path) -> pd.DataFrame:
    scenario = parse(raw)
    results.prepare(out, scenario, command="test")
    serve(InProcessGrid(client_app, scenario.clients.num), scenario, out, show_progress=False)
    return pd.read_csv(out / "metrics.csv")


def client_metric(metrics: pd.DataFrame, name: str, rnd: int) -> pd.Series:
    rows = metrics[(metrics.scope == "client") & (metrics.metric == name)]
    return rows[rows["round"] == rnd].set_index("client")["value"]


def test_byzantine_clients_are_drawn_from_the_seed_and_recorded(tiny, tmp_path) -> None:
    tiny["byzantine"] = {"num": 2, "attack": {"name": "ipm"}}
    chosen = byzantine_clients(parse(tiny))
    assert len(chosen) == 2 and chosen == byzantine_clients(parse(tiny))
    others = {byzantine_clients(parse({**tiny, "seed": seed})) for seed in range(1, 6)}
    assert len(others | {chosen}) > 1  # another seed, other attackers

    run(tiny, tmp_path / "run")

    events = [json.loads(x) for x in (tmp_path / "run" / "events.jsonl").read_text().splitlines()]
    recorded = [e for e in events if e["event"] == "byzantine_clients"]
    assert recorded[0]["clients"] == sorted(chosen)
    assert recorded[0]["attack"] == {"name": "ipm", "eps": 0.1}


def test_a_model_attack_on_the_mean_hurts_accuracy(tiny, tmp_path) -> None:
    tiny.update(rounds=6, clients={"num": 5, "per_round": 5})
    clean = run(tiny, tmp_path / "clean")
    tiny["byzantine"] = {"num": 1, "attack": {"name": "sign_flip", "scale": 20.0}}
    attacked = run(tiny, tmp_path / "attacked")

    def final(metrics: pd.DataFrame) -> float:
        acc = metrics[(metrics.scope == "server") & (metrics.metric == "accuracy")]
        return float(acc.value.iloc[-1])

    assert final(clean) > 0.5
    assert final(attacked) < final(clean) - 0.2


def test_a_data_attack_changes_only_the_byzantine_clients_training(tiny, tmp_path) -> None:
    tiny.update(rounds=1, clients={"num": 4, "per_round": 4})
    clean = client_metric(run(tiny, tmp_path / "clean"), "train_loss", 1)
    tiny["byzantine"] = {"num": 1, "attack": {"name": "label_flip"}}
    (bad,) = byzantine_clients(parse(tiny))
    flipped = client_metric(run(tiny, tmp_path / "flipped"), "train_loss", 1)

    honest = [c for c in clean.index if c != bad]
    pd.testing.assert_series_equal(flipped[honest], clean[honest])
    assert flipped[bad] != pytest.approx(clean[bad])


def test_a_rule_whose_condition_cannot_hold_is_refused_before_running(tiny) -> None:
    tiny["clients"] = {"num": 6, "per_round": 3}
    tiny["strategy"] = {"name": "fedavg", "aggregator": {"name": "trimmed_mean", "f": 2}}

    with pytest.raises(UserError, match=r"got n=3, f=2.*clients.per_round=3"):
        preflight(parse(tiny))
