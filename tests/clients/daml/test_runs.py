"""The daml workload in whole runs: Flower's engine equals the local one, a run killed with
SIGKILL resumes to the uninterrupted result, the other mappings run, bad input is one message."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch

from clients.daml.workload import DamlParams, DamlWorkload
from fedsim import checkpoint
from fedsim.registry import DATASETS, Component
from fedsim.scenario import ScenarioError, load, parse
from tests.engines import ROOT, killed_and_resumed, learned, run_in_process


def tiny(**changes: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "name": "daml-tiny",
        "seed": 0,
        "rounds": 3,
        "data": {"name": "opendg_synthetic", "per_class": 12, "partition": {"name": "domains"}},
        "clients": {"num": 3, "per_round": 3},
        "workload": {"name": "daml", "hidden": 16, "features": 8},
        "strategy": {"name": "fedavg", "aggregator": {"name": "mean"}},
        "eval": {"every": 1},
    }
    return {**raw, **changes}


def run(out: Path, raw: dict[str, Any]) -> Path:
    return run_in_process(out, raw)


def server(run_dir: Path, metric: str) -> list[float]:
    m = learned(run_dir)
    return m[(m.scope == "server") & (m.metric == metric)].sort_values("round").value.tolist()


@pytest.mark.flower
def test_flowers_engine_gives_the_local_engines_metrics(tmp_path: Path) -> None:
    local = run(tmp_path / "local", tiny())
    flower = run(tmp_path / "flower", tiny(engine="flower"))
    pd.testing.assert_frame_equal(learned(flower), learned(local))
    got, want = checkpoint.load(flower), checkpoint.load(local)
    assert got is not None and want is not None
    torch.testing.assert_close(got.model, want.model, rtol=0, atol=0)


def test_a_run_killed_with_sigkill_resumes_to_the_uninterrupted_result(
    write_scenario: Any, tmp_path: Path
) -> None:
    # Prepare / Execute: a `fedsim run` killed with rounds to go, resumed; the same uninterrupted
    raw = tiny(rounds=10)
    at_kill = killed_and_resumed(write_scenario(raw), tmp_path / "killed", after_rounds=3)
    reference = run(tmp_path / "reference", raw)

    # Assert: the same metrics (the server's momentum and the feature statistics included)
    assert 2 <= at_kill < 10
    pd.testing.assert_frame_equal(learned(tmp_path / "killed"), learned(reference))


@pytest.mark.parametrize(
    "changes",
    [
        {"workload": {"name": "daml", "protocol": "local", "local_steps": 2, "hidden": 16}},
        {"workload": {"name": "daml", "method": "erm", "protocol": "local", "local_steps": 2}},
        {"clients": {"num": 1, "per_round": 1}},  # centralised: one client, every domain
    ],
)
def test_the_other_mappings_run_and_report_fair_and_oracle_scores(
    changes: dict[str, Any], tmp_path: Path
) -> None:
    raw = tiny(rounds=2, **changes)
    raw["data"] = {**raw["data"], "partition": {"name": "sites"}}
    out = run(tmp_path / "run", raw)
    for metric in ("h_score", "tau", "oracle_h_score", "closed_accuracy"):
        assert len(server(out, metric)) == 2, metric
    assert all(0.0 <= v <= 1.0 for v in server(out, "h_score") + server(out, "oracle_h_score"))


def test_the_exchanges_of_each_method() -> None:
    names = {
        method: [e.name for e in DamlWorkload(params=DamlParams(method=method)).exchanges]
        for method in ("daml", "erm", "ensemble")
    }
    assert names == {
        "daml": ["meta_train", "meta_update"],
        "erm": ["meta_update"],
        "ensemble": ["meta_update"],
    }
    assert DamlWorkload(params=DamlParams(protocol="local")).exchanges == ()


def test_experts_that_do_not_match_the_sources_are_refused() -> None:
    raw = tiny()
    for method, experts, needed in (("daml", 2, 3), ("ensemble", 1, 3), ("erm", 3, 1)):
        raw["workload"] = {"name": "daml", "method": method, "experts": experts}
        with pytest.raises(ScenarioError, match=f"needs {needed} \\(one per source domain"):
            parse(raw)
    data = DATASETS.build(Component(name="opendg_synthetic", per_class=5))
    gen = torch.Generator().manual_seed(0)
    assert len(DamlWorkload(params=DamlParams(method="erm")).build_model(data, gen).experts) == 1
    assert len(DamlWorkload(params=DamlParams(experts=3)).build_model(data, gen).experts) == 3


def test_the_scenario_validates() -> None:
    scenario = load(ROOT / "scenarios" / "opendg.yaml")
    assert scenario.workload.component.name == "daml"
