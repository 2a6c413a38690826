"""Runs that train sparse and compress their updates: masks, bytes, checkpoints, refusals."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

from fedsim import results
from fedsim.engine import run_local
from fedsim.errors import ScenarioError, UserError
from fedsim.scenario import parse

D = 64 * 32 + 32 + 32 * 10 + 10  # the tiny MLP's parameters (digits: 8x8 inputs, 10 classes)


def run(raw: dict, run_dir: Path) -> pd.DataFrame:
    scenario = parse(raw)
    results.prepare(run_dir, scenario, command="test")
    run_local(scenario, run_dir, show_progress=False)
    metrics = pd.read_csv(run_dir / "metrics.csv")
    return metrics[metrics.scope == "server"].pivot(index="round", columns="metric", values="value")


def test_every_run_records_bytes_and_topk_uploads_what_a_hand_count_says(tiny, tmp_path) -> None:
    dense = run(tiny, tmp_path / "dense")
    tiny["compression"] = {"name": "topk", "ratio": 0.1}
    topk = run(tiny, tmp_path / "topk")
    clients = tiny["clients"]["per_round"]
    # Dense replies carry the 4·D bytes of the model; top-k ones ceil(0.1·D) float32 values and
    # uint16 indices (D < 65536), well below the D/8-byte bitmap... plus a .npy header each.
    k = math.ceil(0.1 * D)
    payload = (128 + 4 * k) + (128 + min(2 * k, (D + 7) // 8))
    assert (dense.bytes_up / clients >= 4 * D).all()
    framing = topk.bytes_up / clients - payload
    assert ((framing > 0) & (framing < 1500)).all()
    assert (dense.bytes_down == topk.bytes_down).all()  # the model still goes down dense
    assert (dense.eval_bytes_down > 0).all() and (dense.eval_bytes_up > 0).all()


def test_sparse_training_keeps_the_global_model_at_its_density(tiny, tmp_path) -> None:
    tiny["workload"]["sparsity"] = {"name": "rigl", "density": 0.25, "every": 2}
    metrics = run(tiny, tmp_path / "rigl")
    weights = 64 * 32 + 32 * 10
    assert metrics.density.tolist() == pytest.approx(
        [round(0.25 * weights) / weights] * 3, abs=0.01
    )
    model = results.load_checkpoint(tmp_path / "rigl").model  # type: ignore[union-attr]
    nonzero = sum(int((model[k] != 0).sum()) for k in ("net.1.weight", "net.3.weight"))
    masks = results.load_checkpoint(tmp_path / "rigl").features["0"]["masks"]  # type: ignore[union-attr]
    assert nonzero <= sum(int(m.sum()) for m in masks.values())
    # The global model goes down as its unmasked entries: far fewer bytes than dense.
    assert (metrics.bytes_down < 0.5 * 4 * D * tiny["clients"]["per_round"]).all()


def test_a_sparse_run_with_error_feedback_resumes_to_the_uninterrupted_result(
    tiny, tmp_path, monkeypatch
) -> None:
    tiny["rounds"] = 4
    tiny["workload"]["sparsity"] = {"name": "gmp", "density": 0.3, "start": 1, "end": 3}
    tiny["compression"] = {"name": "topk", "ratio": 0.2}
    reference = run(tiny, tmp_path / "reference")

    from fedsim import progress

    original = progress.RoundProgress.advance
    calls = []

    def stop_after_two(self, accuracy):  # type: ignore[no-untyped-def]
        original(self, accuracy)
        calls.append(accuracy)
        if len(calls) == 2:  # as a Ctrl-C after round 2's checkpoint
            raise KeyboardInterrupt

    monkeypatch.setattr(progress.RoundProgress, "advance", stop_after_two)
    with pytest.raises(KeyboardInterrupt):
        run(tiny, tmp_path / "killed")
    monkeypatch.setattr(progress.RoundProgress, "advance", original)
    run_local(parse(tiny), tmp_path / "killed", show_progress=False)
    resumed = pd.read_csv(tmp_path / "killed" / "metrics.csv")
    resumed = resumed[resumed.scope == "server"].pivot(
        index="round", columns="metric", values="value"
    )
    learned = [c for c in reference.columns if not c.endswith("_time_s")]
    pd.testing.assert_frame_equal(resumed[learned], reference[learned])


def test_bad_sparsity_and_compression_are_refused_with_a_readable_message(tiny) -> None:
    tiny["workload"]["sparsity"] = {"name": "rigll", "density": 0.1}
    tiny["compression"] = {"name": "topk", "ratio": 0}
    with pytest.raises(ScenarioError) as err:
        parse(tiny)
    text = str(err.value)
    assert "workload.sparsity.name: unknown sparsity 'rigll'; did you mean 'rigl'?" in text
    assert "compression.ratio" in text


def test_latest_averaging_strategies_refuse_encoded_updates(tiny, tmp_path) -> None:
    tiny["strategy"] = {"name": "mifa"}
    tiny["compression"] = {"name": "topk", "ratio": 0.1}
    with pytest.raises(UserError, match="use strategy fedavg"):
        run(tiny, tmp_path / "mifa")
