"""Local DP-SGD for a workload: the accountant's ε, the no-noise limit, models Opacus refuses."""

from __future__ import annotations

import math

import pytest
import torch
from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent
from torch import nn

from clients.classification import ClassificationParams, ClassificationWorkload
from clients.privacy import DPSGD, opacus_compatible, spent_epsilon
from clients.workload import Labelled, TrainConfig
from tests.workloads import shape_of

N, BATCH, DELTA = 64, 16, 1e-5


def workload(**params: object) -> ClassificationWorkload:
    defaults: dict[str, object] = {"model": "mlp", "hidden": 16, "batch_size": BATCH, "lr": 0.1}
    return ClassificationWorkload(ClassificationParams(**{**defaults, **params}))


def data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(N, 1, 4, 4, generator=g), torch.randint(0, 3, (N,), generator=g)


def model(w: ClassificationWorkload) -> nn.Module:
    return w.build_model(shape_of((1, 4, 4), 3), torch.Generator().manual_seed(1))


def fit(w: ClassificationWorkload, m: nn.Module, training: DPSGD | None, rnd: int = 1) -> None:
    x, y = data()
    generator = torch.Generator().manual_seed(rnd)
    config = TrainConfig(rnd, 0, generator, torch.device("cpu"))
    if training is not None:
        config = TrainConfig(rnd, 0, generator, torch.device("cpu"), training)
    try:
        w.fit(m, Labelled(x, y), {}, config)
    finally:
        if training is not None:
            training.close()


def independent_epsilon(sigma: float, q: float, steps: int, delta: float) -> float:
    """Mironov's RDP of the sampled Gaussian, straight from Opacus's analysis functions."""
    orders = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64))
    rdp = compute_rdp(q=q, noise_multiplier=sigma, steps=steps, orders=orders)
    eps, _ = get_privacy_spent(orders=orders, rdp=rdp, delta=delta)
    return float(eps)


def test_epsilon_accumulates_over_rounds_as_opacus_accounts_it() -> None:
    # Prepare: a client trains 2 epochs a round for 3 rounds, its history carried between them.
    w, m, history = workload(epochs=2), model(workload()), []
    steps_per_round = 2 * math.ceil(N / BATCH)  # Poisson batches: ceil(n/B) to an epoch
    epsilons = []
    for rnd in (1, 2, 3):
        # Execute
        training = DPSGD(1.1, 1.0, noise_seed=rnd, history=history)
        fit(w, m, training, rnd)
        history = training.history()
        epsilons.append(training.epsilon(DELTA))
        # Assert: the steps so far, at q = 1/ceil(n/B), in Opacus's accountant
        expected = independent_epsilon(1.1, BATCH / N, rnd * steps_per_round, DELTA)
        assert epsilons[-1] == pytest.approx(expected, rel=1e-9)
    assert history == [(1.1, BATCH / N, 3 * steps_per_round)]
    assert epsilons[0] < epsilons[1] < epsilons[2]


def test_no_noise_and_no_clipping_reproduce_plain_sgd() -> None:
    # With noise 0, an infinite clip and the plain batches, DP-SGD's step is the sum of the
    # per-sample gradients over the expected batch size B, i.e. the batch mean (N is a multiple
    # of B, so every batch is full). Only float32 summation order differs: per-sample gradients
    # summed by Opacus against autograd's batched product, ~1e-7 relative per step.
    plain, private = model(workload()), model(workload())
    fit(workload(epochs=3), plain, None)
    fit(workload(epochs=3), private, DPSGD(0.0, math.inf, noise_seed=0, poisson=False))
    for (name, a), (_, b) in zip(
        plain.state_dict().items(), private.state_dict().items(), strict=True
    ):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=name)
    assert not torch.equal(plain.state_dict()["net.1.weight"], model(workload()).net[1].weight)


def test_noise_changes_the_model_and_a_seed_fixes_it() -> None:
    runs = []
    for seed in (0, 0, 1):
        m = model(workload())
        fit(workload(), m, DPSGD(1.0, 1.0, noise_seed=seed))
        runs.append(m.state_dict()["net.1.weight"])
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])


def test_closing_leaves_the_shared_model_as_it_was() -> None:
    m = model(workload())
    fit(workload(), m, DPSGD(1.0, 1.0, noise_seed=0))
    assert not any(hasattr(p, "grad_sample") for p in m.parameters())
    assert not any(mod._forward_hooks or mod._backward_hooks for mod in m.modules())
    fit(workload(), m, None)  # plain training on the same module still works


def test_epsilon_of_no_noise_is_infinite_and_of_nothing_zero() -> None:
    assert spent_epsilon([], DELTA, "rdp") == 0.0
    assert spent_epsilon([(0.0, 0.5, 3)], DELTA, "rdp") == math.inf


def test_fedprox_under_dp_sgd_is_refused() -> None:
    with pytest.raises(ValueError, match=r"FedProx.*workload.mu: 0"):
        fit(workload(mu=0.1), model(workload()), DPSGD(1.0, 1.0, noise_seed=0))


def batchnorm_model() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.BatchNorm1d(8), nn.Linear(8, 3))


def test_batchnorm_is_refused_naming_the_layer_and_the_fix() -> None:
    with pytest.raises(ValueError) as err:
        opacus_compatible(batchnorm_model(), fix=False)
    message = str(err.value)
    assert "layer 2 (BatchNorm1d)" in message
    assert "GroupNorm" in message and "privacy.fix_model: true" in message


def test_fix_model_replaces_batchnorm_and_says_so() -> None:
    fixed, changes = opacus_compatible(batchnorm_model(), fix=True)
    assert changes == ["2: BatchNorm1d -> GroupNorm"]
    assert isinstance(fixed[2], nn.GroupNorm)
    assert opacus_compatible(fixed, fix=False) == (fixed, [])


def test_steps_mode_takes_exactly_that_many_poisson_steps() -> None:
    training = DPSGD(1.0, 1.0, noise_seed=0)
    fit(workload(steps=7), model(workload()), training)
    assert training.history() == [(1.0, BATCH / N, 7)]
