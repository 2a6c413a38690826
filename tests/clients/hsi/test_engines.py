"""The hsi workload on every engine: Flower's engine gives the local engine's metrics (1 and 2
local workers: the conformance suite), a run killed with SIGKILL resumes to the uninterrupted
result; a tile without labels abstains; bad sizes are refused at validation."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch

from clients.hsi.workload import HsiParams, HsiWorkload
from clients.workload import TRAINED, TrainConfig
from fedsim import results
from fedsim.hsi_data import HsiSyntheticParams, hsi_synthetic
from tests.engines import invoke, killed_and_resumed, learned, run_in_process


def hsi_scenario(**changes: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "name": "hsi-engines",
        "seed": 0,
        "rounds": 3,
        "device": "cpu",
        "data": {
            "name": "hsi_synthetic",
            "height": 16,
            "width": 16,
            "bands": 8,
            "classes": 3,
            "similar_pairs": 1,
            "partition": {"name": "tiles", "halo": 1},
        },
        "clients": {"num": 4, "per_round": 4},
        "workload": {"name": "hsi", "epochs": 1, "refine_steps": 3, "band_groups": 2},
        "strategy": {"name": "fedavg", "aggregator": {"name": "mean"}},
        "eval": {"every": 1},
    }
    return {**raw, **changes}


@pytest.fixture(scope="module")
def local_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("hsi") / "local"
    run_in_process(path, hsi_scenario())
    return path


def test_the_run_records_summed_and_central_scores_and_the_tiling(local_run: Path) -> None:
    metrics = learned(local_run)
    server = metrics[metrics.scope == "server"]
    names = set(server.metric)
    assert {
        "oa",
        "aa",
        "kappa",
        "oa_cnn",
        "oa_crf",
        "oa_refine",
        "tiles_oa",
        "tiles_kappa",
    } <= names
    assert {"crf_edges_cut", "halo_bytes", "labelled_pairs"} <= names
    # the tiles' summed matrices cover every test pixel once, as the whole scene does
    test_pixels = metrics[(metrics.metric == "confusion_test_pixels") & (metrics["round"] == 3)]
    scene = hsi_synthetic(
        HsiSyntheticParams(height=16, width=16, bands=8, classes=3, similar_pairs=1)
    )
    assert test_pixels.value.sum() == int(scene.test.sum())


@pytest.mark.flower
def test_flowers_engine_gives_the_local_engines_metrics(local_run: Path, tmp_path: Path) -> None:
    flower = tmp_path / "flower"
    run_in_process(flower, hsi_scenario(engine="flower"))
    assert results.run_status(flower) == "completed"
    pd.testing.assert_frame_equal(learned(flower), learned(local_run))


def test_a_run_killed_with_sigkill_resumes_to_the_uninterrupted_result(
    write_scenario: Any, tmp_path: Path
) -> None:
    raw = hsi_scenario(rounds=6)
    at_kill = killed_and_resumed(write_scenario(raw), tmp_path / "killed")
    reference = run_in_process(tmp_path / "reference", raw)
    assert 1 <= at_kill < 6
    pd.testing.assert_frame_equal(learned(tmp_path / "killed"), learned(reference))


def test_a_tile_without_labels_abstains() -> None:
    scene = hsi_synthetic(
        HsiSyntheticParams(height=8, width=8, bands=8, classes=3, similar_pairs=1)
    )
    window = scene.whole()
    window = dataclasses.replace(window, train=torch.zeros_like(window.train))
    workload = HsiWorkload(HsiParams())
    model = workload.build_model(scene, torch.Generator().manual_seed(0))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    config = TrainConfig(1, 0, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert workload.fit(model, window, {}, config) == {TRAINED: 0.0, "no_labels": 1.0}
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"workload": {"name": "hsi", "patch": 11}},
            r"workload.patch=11 exceeds a tile plus its halo \(9 x 9",
        ),
        (
            {"workload": {"name": "hsi", "band_groups": 3}},
            "band_groups=3 does not divide the data's 8",
        ),
    ],
)
def test_bad_sizes_are_refused_when_the_scenario_is_validated(
    changes: dict[str, Any], message: str, write_scenario: Any
) -> None:
    raw = hsi_scenario(**changes)
    result = invoke("validate", write_scenario(raw))
    assert result.exit_code != 0
    assert re.search(message, result.output), result.output
