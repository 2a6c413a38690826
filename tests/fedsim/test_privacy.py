"""The ``privacy:`` section end to end: ε per client, central DP, clear errors."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
from opacus.accountants import RDPAccountant
from torch import nn

from clients.classification import ClassificationWorkload
from fedsim import results
from fedsim.app import serve
from fedsim.build import scenario_federation
from fedsim.client_app import client_app
from fedsim.engine import preflight
from fedsim.errors import ScenarioError, UserError
from fedsim.grid import InProcessGrid
from fedsim.scenario import load, parse

LOCAL = {"mode": "local", "noise_multiplier": 1.0, "max_grad_norm": 1.0}
CENTRAL = {"mode": "central", "noise_multiplier": 0.5, "clipping_norm": 1.0}
UNIFORM = {"name": "fedavg", "aggregator": {"name": "mean", "weighted": False}}


def run(raw: dict[str, Any], out: Path) -> pd.DataFrame:
    scenario = parse(raw)
    preflight(scenario)
    results.prepare(out, scenario, command="test")
    serve(InProcessGrid(client_app, scenario.clients.num), scenario, out, show_progress=False)
    return pd.read_csv(out / "metrics.csv")


def events(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]


def rdp_epsilon(sigma: float, q: float, steps: int, delta: float = 1e-5) -> float:
    accountant = RDPAccountant()
    accountant.history = [(sigma, q, steps)]
    return float(accountant.get_epsilon(delta))


def test_local_dp_records_each_clients_epsilon_accumulated_over_its_rounds(tiny, tmp_path) -> None:
    tiny["rounds"], tiny["privacy"] = 4, LOCAL
    metrics = run(tiny, tmp_path / "run")
    eps = metrics[(metrics.scope == "client") & (metrics.metric == "epsilon")]
    scenario = parse(tiny)
    sizes = scenario_federation(scenario).client_sizes()
    batch = scenario.workload.options["batch_size"]
    for client, rows in eps.groupby(eps.client.astype(int)):
        values = rows.sort_values("round").value.to_numpy()
        assert (values[1:] > values[:-1]).all()  # grows with every round the client trains
        # Its k-th training round: k epochs of ceil(n/B) Poisson steps, from context.state.
        per_epoch = math.ceil(sizes[client] / batch)
        expected = [rdp_epsilon(1.0, 1 / per_epoch, k * per_epoch) for k in (1, 2, 3, 4)]
        assert values == pytest.approx(expected[: len(values)], rel=1e-9)
    federated = metrics[(metrics.scope == "federated") & (metrics.metric == "epsilon")]
    assert (federated.set_index("round").value == eps.groupby("round").value.max()).all()
    assert events(tmp_path / "run")[1]["event"] == "privacy"


@pytest.mark.parametrize("privacy", [LOCAL, {**CENTRAL, "clipping": "adaptive"}])
def test_a_resumed_private_run_ends_as_an_uninterrupted_one(tiny, tmp_path, monkeypatch, privacy):  # type: ignore[no-untyped-def]
    # The clients' accountant histories and the adaptive norm travel in the checkpoint.
    tiny.update(strategy=UNIFORM, privacy=privacy, rounds=4)
    tiny["privacy"] = {**privacy, "noise_multiplier": 0.1} if privacy is not LOCAL else LOCAL
    reference = run(tiny, tmp_path / "reference")
    calls = {"n": 0}

    def interrupt_after_round_two(self: Any, accuracy: float | None) -> None:
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr("fedsim.app.RoundProgress.advance", interrupt_after_round_two)
        with pytest.raises(KeyboardInterrupt):
            run(tiny, tmp_path / "resumed")
    scenario = parse(tiny)
    grid = InProcessGrid(client_app, scenario.clients.num)  # a fresh process's empty states
    serve(grid, scenario, tmp_path / "resumed", show_progress=False)
    resumed = pd.read_csv(tmp_path / "resumed" / "metrics.csv")
    learned = [
        m[~m.metric.str.endswith("_time_s")].reset_index(drop=True) for m in (reference, resumed)
    ]
    pd.testing.assert_frame_equal(learned[1], learned[0])


def test_local_dp_without_noise_or_clip_reproduces_the_plain_run(tiny, tmp_path) -> None:
    # One full batch per epoch (batch_size > any client's data) and the plain batch order: the
    # DP-SGD step is then the plain gradient step; float32 summation order aside (~1e-7).
    tiny["workload"].update(batch_size=1000, epochs=2)
    run(tiny, tmp_path / "plain")
    tiny["privacy"] = {**LOCAL, "noise_multiplier": 0.0, "max_grad_norm": math.inf}
    tiny["privacy"]["poisson"] = False
    metrics = run(tiny, tmp_path / "private")
    assert "epsilon" not in set(metrics.metric)  # no noise: no finite ε to report
    plain = torch.load(tmp_path / "plain" / "model.pt")
    private = torch.load(tmp_path / "private" / "model.pt")
    for name, weights in plain.items():
        torch.testing.assert_close(private[name], weights, rtol=1e-4, atol=1e-5, msg=name)


def test_central_dp_records_noise_clipping_and_epsilon_and_is_reproducible(tiny, tmp_path) -> None:
    tiny.update(strategy=UNIFORM, privacy=CENTRAL)
    first = run(tiny, tmp_path / "a")
    again = run(tiny, tmp_path / "b")
    learned = ~first.metric.str.endswith("_time_s")
    pd.testing.assert_frame_equal(first[learned], again[~again.metric.str.endswith("_time_s")])
    server = first[first.scope == "server"].pivot_table("value", "round", "metric")
    assert (server.dp_noise_multiplier == 0.5).all() and (server.dp_clipping_norm == 1.0).all()
    assert server.dp_noise_std.iloc[0] == pytest.approx(0.5 * 1.0 / 3)  # z·C/n, n = per_round
    expected = [rdp_epsilon(0.5, 3 / 4, r) for r in (1, 2, 3)]  # q = per_round / num
    assert server.epsilon.to_list() == pytest.approx(expected, rel=1e-9)


def test_central_dp_noise_moves_the_model(tiny, tmp_path) -> None:
    tiny.update(strategy=UNIFORM, rounds=1)
    run(tiny, tmp_path / "plain")
    tiny["privacy"] = CENTRAL
    run(tiny, tmp_path / "noisy")
    plain, noisy = (torch.load(tmp_path / d / "model.pt") for d in ("plain", "noisy"))
    assert not torch.allclose(plain["net.1.weight"], noisy["net.1.weight"])


def test_adaptive_clipping_records_the_norm_of_every_round(tiny, tmp_path) -> None:
    tiny.update(strategy=UNIFORM)
    tiny["privacy"] = {**CENTRAL, "noise_multiplier": 0.0, "clipping": "adaptive"}
    tiny["privacy"]["clipping_norm"] = 0.01  # far below the updates: every one is clipped
    metrics = run(tiny, tmp_path / "run")
    norms = metrics[metrics.metric == "dp_clipping_norm"].value.to_list()
    # Andrew et al.: no update left unclipped, so C grows by exp(lr·γ) = exp(0.2·0.5) a round.
    assert norms == pytest.approx([0.01 * math.exp(0.1) ** r for r in range(3)])


@pytest.mark.parametrize(
    ("privacy", "message"),
    [
        ({**LOCAL, "noise_multiplier": -1}, "privacy.local.noise_multiplier"),
        ({**LOCAL, "delta": 1.0}, "privacy.local.delta: Input should be less than 1"),
        ({**LOCAL, "max_grad_norm": math.inf}, "give a finite max_grad_norm"),
        ({**LOCAL, "clipping": "fixed"}, "privacy.local.clipping: unknown key"),
        ({"mode": "locl"}, "privacy: Input tag 'locl'"),
        ({**CENTRAL, "clip_norm_lr": 0.5}, "only apply to clipping: adaptive"),
        (CENTRAL, "set strategy.aggregator: {name: mean, weighted: false}"),
    ],
)
def test_impossible_settings_fail_validation(tiny, privacy, message) -> None:
    tiny["privacy"] = privacy
    with pytest.raises(ScenarioError, match=message.replace("{", r"\{").replace("}", r"\}")):
        parse(tiny)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"clients": {"num": 4, "per_round": 1}}, "needs clients.per_round >= 2"),
        ({"clients": {"num": 4, "per_round": 3, "dropout": 0.1}}, "set clients.dropout: 0"),
        ({"strategy": {"name": "fedavg", "aggregator": {"name": "median"}}}, "uniform mean"),
        ({"strategy": {**UNIFORM, "server_opt": {"name": "sgd", "momentum": 0.9}}}, "momentum"),
        ({"byzantine": {"num": 1, "attack": {"name": "sign_flip"}}}, "bypass it"),
    ],
)
def test_central_dp_refuses_what_breaks_its_guarantee(tiny, change, message) -> None:
    tiny.update({"strategy": UNIFORM, "privacy": CENTRAL, **change})
    with pytest.raises(ScenarioError, match=message):
        parse(tiny)


def test_flowers_own_check_of_adaptive_noise_fails_in_preflight(tiny) -> None:
    # Flower splits the noise between the count and the model: z < 2 · per_round/20 needed.
    tiny.update(strategy=UNIFORM)
    tiny["privacy"] = {**CENTRAL, "noise_multiplier": 1.0, "clipping": "adaptive"}
    with pytest.raises(UserError, match=r"privacy: .*clipped_count_stddev.*per_round=3"):
        preflight(parse(tiny))


def batchnorm_mlp(self, dataset, generator) -> nn.Module:  # type: ignore[no-untyped-def]
    layers = [nn.Flatten(), nn.Linear(math.prod(dataset.input_shape), 16), nn.BatchNorm1d(16)]
    model = nn.Sequential(*layers, nn.ReLU(), nn.Linear(16, dataset.num_classes))
    with torch.no_grad():  # drawn from the generator only, as workloads must
        for p in model.parameters():
            p.copy_(torch.rand(p.shape, generator=generator) - 0.5)
    return model


def test_batchnorm_fails_preflight_and_fix_model_trains_and_says_what_changed(
    tiny, tmp_path, monkeypatch
) -> None:
    monkeypatch.setattr(ClassificationWorkload, "build_model", batchnorm_mlp)
    tiny.update(name="tiny-batchnorm", privacy=LOCAL, rounds=1)
    with pytest.raises(UserError, match=r"layer net\.2|layer 2 \(BatchNorm1d\).*GroupNorm"):
        preflight(parse(tiny))
    tiny["privacy"] = {**LOCAL, "fix_model": True}
    metrics = run(tiny, tmp_path / "run")
    assert (metrics[metrics.metric == "epsilon"].value > 0).all()
    privacy = next(e for e in events(tmp_path / "run") if e["event"] == "privacy")
    assert privacy["model_changes"] == ["2: BatchNorm1d -> GroupNorm"]


def test_a_workload_that_ignores_dp_sgd_fails_preflight(tiny, monkeypatch) -> None:
    def fit_without_training(self, model, x, y, config):  # type: ignore[no-untyped-def]
        return {"train_loss": 0.0}

    monkeypatch.setattr(ClassificationWorkload, "fit", fit_without_training)
    tiny["privacy"] = LOCAL
    with pytest.raises(UserError, match="does not support local DP"):
        preflight(parse(tiny))


def test_fedprox_with_local_dp_fails_preflight(tiny) -> None:
    tiny["workload"]["mu"] = 0.1
    tiny["privacy"] = LOCAL
    with pytest.raises(UserError, match="FedProx"):
        preflight(parse(tiny))


def test_the_mbo_workload_refuses_privacy() -> None:
    with pytest.raises(ScenarioError, match="workload 'mbo' shares no model"):
        load(
            Path(__file__).parents[2] / "scenarios" / "mbo.yaml",
            ["privacy={mode: local, noise_multiplier: 1, max_grad_norm: 1}"],
        )
