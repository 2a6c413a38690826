"""The Flower app end to end on the in-process grid: results, determinism, failing clients."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
from torch import nn

from clients.classification import ClassificationParams, ClassificationWorkload
from clients.workload import TrainConfig
from fedsim import results
from fedsim.app import central_threads, serve, threads
from fedsim.client_app import client_app
from fedsim.errors import UserError
from fedsim.grid import InProcessGrid
from fedsim.registry import WORKLOADS
from fedsim.scenario import parse


def run(raw: dict[str, Any], out: Path) -> pd.DataFrame:
    scenario = parse(raw)
    results.prepare(out, scenario, command="test")
    serve(InProcessGrid(client_app, scenario.clients.num), scenario, out, show_progress=False)
    return pd.read_csv(out / "metrics.csv")


def events(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]


def central_accuracy(metrics: pd.DataFrame) -> pd.Series:
    rows = metrics[(metrics.scope == "server") & (metrics.metric == "accuracy")]
    return rows.set_index("round")["value"]


def test_run_directory_holds_every_file(tiny, tmp_path) -> None:
    metrics = run(tiny, tmp_path / "run")
    files = {p.name for p in (tmp_path / "run").iterdir()}
    assert files == {
        "scenario.yaml",
        "metrics.csv",
        "events.jsonl",
        "manifest.json",
        "checkpoint.pt",
        "model.pt",
    }
    assert list(metrics.columns) == ["round", "scope", "client", "metric", "value"]
    assert set(metrics.scope) == {"server", "client", "federated"}
    assert list(central_accuracy(metrics).index) == [1, 2, 3]
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["status"] == "completed" and manifest["wall_time_s"] > 0
    assert manifest["versions"]["flwr"].startswith("1.")


def test_training_learns(tiny, tmp_path) -> None:
    tiny["rounds"] = 8
    accuracy = central_accuracy(run(tiny, tmp_path / "run"))
    assert accuracy[8] > 0.8 and accuracy[8] > accuracy[1]


def test_client_rows_are_keyed_by_client_id_and_sampled_per_round(tiny, tmp_path) -> None:
    metrics = run(tiny, tmp_path / "run")
    trained = metrics[(metrics.scope == "client") & (metrics.metric == "train_loss")]
    per_round = trained.groupby("round")["client"].apply(lambda c: sorted(c.astype(int)))
    assert all(len(clients) == 3 for clients in per_round)  # per_round: 3 of 4
    assert set().union(*per_round) <= {0, 1, 2, 3}


def test_same_seed_same_metrics_other_seed_other_metrics(tiny, tmp_path) -> None:
    def learned(seed: int, name: str) -> pd.DataFrame:
        tiny["seed"] = seed
        metrics = run(tiny, tmp_path / name)
        return metrics[~metrics.metric.str.endswith("_time_s")].reset_index(drop=True)

    first, again, other = learned(0, "a"), learned(0, "b"), learned(1, "c")
    pd.testing.assert_frame_equal(first, again)
    assert not first["value"].equals(other["value"])


def test_clients_leave_the_callers_torch_generator_as_they_found_it(tiny, tmp_path) -> None:
    # Each client call seeds torch's generator for the model's own dropout, inside its call only
    torch.manual_seed(123)
    before = torch.get_rng_state()
    run(tiny, tmp_path / "run")
    assert torch.equal(torch.get_rng_state(), before)


def test_eval_every_k_rounds_and_the_last(tiny, tmp_path) -> None:
    tiny["rounds"], tiny["eval"] = 5, {"every": 2, "clients": 0.5}
    metrics = run(tiny, tmp_path / "run")
    assert list(central_accuracy(metrics).index) == [2, 4, 5]
    evaluated = metrics[(metrics.scope == "federated") & (metrics.metric == "eval_clients")]
    assert list(evaluated.value) == [2.0, 2.0, 2.0]  # half of the 4 clients


@dataclass(frozen=True)
class FlakyWorkload(ClassificationWorkload):
    """Client 1 raises in every round; in round 2 every client returns NaN weights."""

    def fit(self, model: torch.nn.Module, data, state, config: TrainConfig) -> dict[str, float]:  # type: ignore[no-untyped-def]
        if config.client == 1:
            raise RuntimeError("disk on fire")
        metrics = super().fit(model, data, state, config)
        if config.round == 2:
            with torch.no_grad():
                next(model.parameters()).fill_(float("nan"))
        return metrics


if "flaky_for_tests" not in WORKLOADS:
    WORKLOADS.register("flaky_for_tests", ClassificationParams)(FlakyWorkload)


def test_failing_clients_are_recorded_and_the_run_goes_on(tiny, tmp_path) -> None:
    tiny["workload"]["name"] = "flaky_for_tests"
    tiny["clients"]["per_round"] = 4
    metrics = run(tiny, tmp_path / "run")
    failed = [e for e in events(tmp_path / "run") if e["event"] == "client_failed"]
    crashes = [e for e in failed if e["client"] == 1 and e["phase"] == "train"]
    assert len(crashes) == 3 and "RuntimeError: disk on fire" in crashes[0]["reason"]
    nans = [e for e in failed if e["round"] == 2 and e["client"] != 1]
    assert len(nans) == 3 and all("NaN" in e["reason"] for e in nans)
    skipped = [e for e in events(tmp_path / "run") if e["event"] == "round_skipped"]
    assert [e["round"] for e in skipped] == [2]
    counts = metrics[(metrics.scope == "federated") & (metrics.metric == "train_failures")]
    assert list(counts.value) == [1.0, 4.0, 1.0]
    accuracy = central_accuracy(metrics)
    assert accuracy[2] == accuracy[1]  # round 2 kept the model, round 3 trained again
    assert not accuracy.isna().any()


def test_interrupted_run_keeps_completed_rounds(tiny, tmp_path, monkeypatch) -> None:
    calls = {"n": 0}

    def interrupt_after_round_two(self: Any, accuracy: float | None) -> None:
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr("fedsim.app.RoundProgress.advance", interrupt_after_round_two)
    with pytest.raises(KeyboardInterrupt):
        run(tiny, tmp_path / "run")
    metrics = pd.read_csv(tmp_path / "run" / "metrics.csv")
    assert sorted(metrics["round"].unique()) == [1, 2]
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["status"] == "interrupted"


def test_an_existing_run_is_never_overwritten(tiny, tmp_path) -> None:
    run(tiny, tmp_path / "run")
    before = (tmp_path / "run" / "metrics.csv").read_bytes()
    with pytest.raises(UserError, match="already holds a run"):
        results.prepare(tmp_path / "run", parse(tiny), command="again")
    assert (tmp_path / "run" / "metrics.csv").read_bytes() == before


def test_only_online_clients_train_and_short_rounds_are_recorded(tiny, tmp_path) -> None:
    # one class per client; diurnal: classes 0-4 online in rounds 1-2, the others in round 3
    tiny["data"]["partition"] = {"name": "shards", "classes_per_client": 1}
    tiny["clients"] = {
        "num": 10,
        "per_round": 6,
        "availability": {"name": "diurnal", "rounds_on": 2, "alpha": 0.5},
    }
    metrics = run(tiny, tmp_path / "run")
    online = {e["round"]: e["clients"] for e in events(tmp_path / "run") if e["event"] == "online"}
    trained = metrics[(metrics.scope == "client") & (metrics.metric == "train_loss")]
    for rnd in (1, 2, 3):
        assert sorted(trained[trained["round"] == rnd].client.astype(int)) == online[rnd]
    assert online[1] == online[2] and set(online[1]).isdisjoint(online[3])
    assert sorted(online[1] + online[3]) == list(range(10))
    short = [e for e in events(tmp_path / "run") if e["event"] == "few_clients_online"]
    assert [(e["round"], e["online"], e["wanted"]) for e in short] == [(r, 5, 6) for r in (1, 2, 3)]


def test_dropout_fails_sampled_clients_mid_round_reproducibly(tiny, tmp_path) -> None:
    tiny["clients"] = {"num": 4, "per_round": 4, "dropout": 0.5}

    def dropped(name: str) -> list[tuple[int, int]]:
        run(tiny, tmp_path / name)
        return [
            (e["round"], e["client"])
            for e in events(tmp_path / name)
            if e["event"] == "client_failed" and "simulated dropout" in e["reason"]
        ]

    first, again = dropped("a"), dropped("b")
    assert first == again and 0 < len(first) < 12  # 12 client-rounds, each dropped w.p. 0.5


def test_a_large_models_central_evaluation_runs_on_every_core() -> None:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert central_threads(nn.Linear(10, 10)) == 1  # 110 parameters: one thread pays best
    assert central_threads(nn.Linear(300, 300)) == cores  # 90,300

    before = torch.get_num_threads()
    with threads(before + 1):
        assert torch.get_num_threads() == before + 1
    assert torch.get_num_threads() == before
