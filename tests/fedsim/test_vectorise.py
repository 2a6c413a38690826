"""``resources.vectorize``: the local engine trains a round's clients as one batched model, with
the results of the loop; validation refuses it where no client could be batched."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from clients import vectorised
from fedsim.errors import ScenarioError
from fedsim.scenario import parse
from tests.engines import learned, run_in_process

TOY_FILE = Path(__file__).with_name("toy_workload.py")


@pytest.mark.parametrize(
    "workload",
    [
        {"model": "mlp", "hidden": 32, "momentum": 0.9, "weight_decay": 1e-3},
        {"model": "cnn", "momentum": 0.0},
    ],
)
def test_vectorised_rounds_equal_the_loop(
    tiny: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workload: dict[str, Any]
) -> None:
    # Prepare: digits split by Dirichlet, so the clients run different numbers of steps
    tiny["workload"] = {"name": "classification", "lr": 0.1, **workload}
    tiny["rounds"], tiny["eval"] = 2, {"every": 2, "clients": 0}
    cohorts: list[int] = []
    train = vectorised._train

    def counted(model: Any, members: Any, p: Any) -> Any:
        cohorts.append(len(members))
        return train(model, members, p)

    monkeypatch.setattr(vectorised, "_train", counted)

    # Execute
    looped = run_in_process(tmp_path / "loop", tiny)
    together = run_in_process(tmp_path / "vec", {**tiny, "resources": {"vectorize": True}})

    # Assert
    assert cohorts == [3, 3]  # each round's three clients trained as one model
    want, got = torch.load(looped / "model.pt"), torch.load(together / "model.pt")
    for k in want:
        gap = (got[k] - want[k]).norm() / want[k].norm()
        assert gap < 1e-5, f"{k}: relative gap {gap:.2e}"
    a, b = learned(looped), learned(together)
    assert a[["round", "scope", "client", "metric"]].equals(
        b[["round", "scope", "client", "metric"]]
    )
    assert b.value.to_numpy() == pytest.approx(a.value.to_numpy(), rel=1e-4)


def test_vectorised_cohorts_shared_out_to_two_workers_equal_the_loop(
    tiny: dict[str, Any], tmp_path: Path
) -> None:
    tiny["workload"] = {"name": "classification", "lr": 0.1, "model": "mlp", "momentum": 0.9}
    tiny["rounds"], tiny["eval"] = 2, {"every": 2, "clients": 0}
    looped = run_in_process(tmp_path / "loop", tiny)
    resources = {"vectorize": True, "workers": 2}  # each worker trains its share as one model
    together = run_in_process(tmp_path / "vec2", {**tiny, "resources": resources})
    want, got = torch.load(looped / "model.pt"), torch.load(together / "model.pt")
    for k in want:
        gap = (got[k] - want[k]).norm() / want[k].norm()
        assert gap < 1e-5, f"{k}: relative gap {gap:.2e}"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"engine": "flower"}, "the flower engine trains each client in an actor of its own"),
        (
            {"privacy": {"mode": "local", "noise_multiplier": 1.0, "max_grad_norm": 1.0}},
            "local DP-SGD (privacy.mode: local)",
        ),
        (
            {"plugins": [str(TOY_FILE)], "workload": {"name": "toy_bn"}},
            "workload 'toy_bn' has no vectorised training",
        ),
    ],
)
def test_vectorize_is_refused_where_no_client_could_be_batched(
    tiny: dict[str, Any], forget_plugins: None, changes: dict[str, Any], message: str
) -> None:
    # Prepare
    raw = {**tiny, "resources": {"vectorize": True}, **changes}

    # Execute
    with pytest.raises(ScenarioError) as err:
        parse(raw)

    # Assert
    assert f"resources.vectorize: {message}" in str(err.value)
    assert "resources.vectorize: false" in str(err.value)
