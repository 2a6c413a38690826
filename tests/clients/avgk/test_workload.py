"""The avgk workload end to end: its threshold exchange against a pooled recomputation, its bad
input, and the same metrics on every engine and after ``kill -9``."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch

from clients.avgk.calibration import pooled_threshold
from clients.avgk.workload import (
    OWN,
    THRESHOLD,
    AvgkParams,
    AvgkWorkload,
    calibration_split,
    log_scores,
    outputs,
)
from clients.models import SmallCNN
from fedsim import checkpoint
from fedsim.build import scenario_federation
from fedsim.client_app import STATE
from fedsim.data import load_data
from fedsim.errors import ScenarioError, UserError
from fedsim.registry import WORKLOADS, Component
from fedsim.scenario import parse
from tests.engines import killed_and_resumed, learned, run_in_process

ROOT = Path(__file__).parents[3]
WORKLOAD = {"name": "avgk", "k": 1.5, "model": {"name": "mlp", "hidden": 32}, "lr": 0.005}


def scenario(**changes: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "name": "avgk-test",
        "seed": 0,
        "rounds": 3,
        "data": {"name": "digits", "partition": {"name": "dirichlet", "alpha": 0.5}},
        "clients": {"num": 3, "per_round": 2},
        "workload": WORKLOAD,
        "strategy": {"name": "fedavg", "aggregator": {"name": "mean"}},
        "eval": {"every": 1},
    }
    return {**raw, **changes}


def run(out: Path, raw: dict[str, Any]) -> pd.DataFrame:
    return learned(run_in_process(out, raw))


def server(metrics: pd.DataFrame, name: str) -> list[float]:
    rows = metrics[(metrics.scope == "server") & (metrics.metric == name)]
    return rows.sort_values("round")["value"].tolist()


@pytest.fixture(scope="module")
def local_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("avgk") / "local"
    run(out, scenario())
    return out


# ---- the exchange, recomputed from the saved model -------------------------------------------


def test_global_and_own_thresholds_are_those_of_the_clients_calibration_rows(
    local_run: Path,
) -> None:
    # Prepare: the final model, and every client's calibration rows scored with it
    parsed = parse(scenario())
    workload = WORKLOADS.build(parsed.workload.component)
    federation = scenario_federation(parsed)
    model = workload.build_model(federation.dataset, torch.Generator())
    model.load_state_dict(torch.load(local_run / "model.pt", weights_only=True))
    params = AvgkParams.model_validate(parsed.workload.component.options)
    scores = []
    for c in range(3):
        data = federation.train_data(c)
        _, rows = calibration_split(len(data.labels), params.calibration_fraction)
        scores.append(log_scores(outputs(model, data.inputs[rows]), params.inference_head))
    broadcast = torch.load(local_run / "broadcasts.pt", weights_only=True)[THRESHOLD]
    states = checkpoint.load(local_run).clients  # type: ignore[union-attr]

    # Assert: the broadcast λ is the pooled one to the grid; each client kept its own λ
    lam = float(broadcast[THRESHOLD])
    assert 0 < lam - pooled_threshold(torch.cat(scores), 1.5) <= params.resolution + 1e-9
    own = [float(states[c]["arrays"][STATE][OWN]) for c in range(3)]
    assert own == pytest.approx([pooled_threshold(s, 1.5) for s in scores], abs=1e-12)
    assert lam != pytest.approx(sum(own) / 3, abs=1e-3)


def test_central_metrics_use_the_broadcast_threshold(local_run: Path) -> None:
    # Prepare
    parsed = parse(scenario())
    dataset = load_data(parsed.data.dataset)
    workload = WORKLOADS.build(parsed.workload.component)
    model = workload.build_model(dataset, torch.Generator())
    model.load_state_dict(torch.load(local_run / "model.pt", weights_only=True))
    lam = float(torch.load(local_run / "broadcasts.pt", weights_only=True)[THRESHOLD][THRESHOLD])
    metrics = learned(local_run)

    # Execute: the sets at λ on the test set, by hand
    scores = log_scores(outputs(model, dataset.x_test), "multilabel").double()
    sets = scores > lam
    hit = sets[torch.arange(len(dataset.y_test)), dataset.y_test]

    # Assert
    assert server(metrics, "avgk_accuracy")[-1] == pytest.approx(float(hit.double().mean()))
    assert server(metrics, "avg_set_size")[-1] == pytest.approx(float(sets.sum(1).double().mean()))
    per_class = [server(metrics, f"avgk_accuracy_c{j}")[-1] for j in range(10)]
    by_hand = [float(hit[dataset.y_test == j].double().mean()) for j in range(10)]
    assert per_class == pytest.approx(by_hand)
    assert abs(server(metrics, "avg_set_size")[-1] - 1.5) < 0.3  # λ from other data: about K


def test_a_cnns_outputs_come_in_cpu_sized_batches_equal_to_one_pass() -> None:
    # Prepare: a convolutional model of the registry, 300 test images (five batches of 64)
    model = SmallCNN((1, 12, 12), 4).eval()
    x = torch.randn(300, 1, 12, 12, generator=torch.Generator().manual_seed(0))
    seen: list[int] = []
    model.register_forward_pre_hook(lambda _, args: seen.append(len(args[0])))

    # Execute
    chunked = outputs(model, x)

    # Assert
    assert seen == [64, 64, 64, 64, 44]  # clients.workload.eval_batch_size: 64 on a CPU
    with torch.no_grad():
        assert torch.allclose(chunked, model(x), atol=1e-6)


# ---- bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"k": 0}, "k"),
        ({"lambda_ml": -0.1}, "lambda_ml"),
        ({"inference_head": "mean"}, "inference_head"),
        ({"lambda_ml": 0}, "inference_head"),
        ({"calibration_fraction": 1.0}, "calibration_fraction"),
    ],
)
def test_bad_parameters_are_refused_when_parsed(change: dict[str, Any], named: str) -> None:
    with pytest.raises(ScenarioError, match=named):
        parse(scenario(workload={**WORKLOAD, **change}))


def test_k_of_the_class_count_or_more_is_refused_before_training() -> None:
    dataset = load_data(Component(name="digits"))

    with pytest.raises(UserError, match="fewer than the 10 classes"):
        AvgkWorkload(AvgkParams(k=10)).build_model(dataset, torch.Generator())


def test_a_calibration_set_too_small_is_refused() -> None:
    with pytest.raises(ValueError, match="calibration_fraction"):
        calibration_split(4, 0.2)  # floor(0.8) = 0 calibration rows


# ---- engines and resuming (1 vs 2 workers: the conformance suite) ---------------------------


@pytest.mark.flower
def test_flowers_engine_gives_the_local_engines_metrics(local_run: Path, tmp_path: Path) -> None:
    flower = run(tmp_path / "flower", scenario(engine="flower"))

    pd.testing.assert_frame_equal(flower, learned(local_run))


def test_a_run_killed_with_sigkill_resumes_to_the_uninterrupted_result(
    write_scenario: Any, tmp_path: Path
) -> None:
    # Prepare / Execute: a `fedsim run` killed with rounds to go, resumed; the same uninterrupted
    raw = scenario(rounds=12)
    at_kill = killed_and_resumed(write_scenario(raw), tmp_path / "killed", after_rounds=3)
    reference = run(tmp_path / "reference", raw)

    # Assert: the same metrics (thresholds, own λ and the pseudo-label carry included)
    assert 2 <= at_kill < 12
    pd.testing.assert_frame_equal(learned(tmp_path / "killed"), reference)
    assert math.isfinite(server(reference, "avgk_accuracy")[-1])
