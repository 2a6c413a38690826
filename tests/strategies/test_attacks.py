"""Attacks: shared checks over every model-poisoning attack, and known answers per attack."""

from __future__ import annotations

from statistics import NormalDist

import pytest
import torch
from torch import Tensor

import strategies  # noqa: F401  (registers the attacks)
from fedsim.registry import ATTACKS
from strategies.attacks.alie import default_z
from strategies.attacks.base import DataAttack
from strategies.pipeline import RoundInfo, Stage

MODEL_ATTACKS = [n for n in ATTACKS.names() if not isinstance(ATTACKS.build(n), DataAttack)]
DATA_ATTACKS = [n for n in ATTACKS.names() if n not in MODEL_ATTACKS]
N, D = 8, 6


def inputs(byzantine: list[int], seed: int = 0, n: int = N) -> tuple[Tensor, RoundInfo]:
    updates = torch.randn(n, D, generator=torch.Generator().manual_seed(seed))
    mask = torch.zeros(n, dtype=torch.bool)
    mask[byzantine] = True
    return updates, RoundInfo(4, tuple(range(n)), torch.ones(n), mask)


def attack(stage: Stage, updates: Tensor, info: RoundInfo) -> Tensor:
    out, _ = stage.update(updates, stage.init(updates.shape[1]), info)
    return out


def test_the_registry_holds_the_documented_attacks() -> None:
    expected = {"gaussian", "random", "sign_flip", "scale", "alie", "ipm", "min_max", "mimic"}
    assert set(MODEL_ATTACKS) == expected
    assert set(DATA_ATTACKS) == {"label_flip", "noisy_data"}


@pytest.mark.parametrize("name", MODEL_ATTACKS)
def test_only_byzantine_rows_change_and_inputs_stay_intact(name: str) -> None:
    updates, info = inputs(byzantine=[1, 5])
    before = updates.clone()

    out = attack(ATTACKS.build(name), updates, info)

    assert torch.equal(updates, before)
    assert out.shape == updates.shape and out.dtype == updates.dtype
    honest = ~info.byzantine  # type: ignore[operator]
    assert torch.equal(out[honest], updates[honest])
    assert not torch.equal(out[~honest], updates[~honest])
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", MODEL_ATTACKS)
def test_deterministic_and_identity_without_byzantine_clients(name: str) -> None:
    updates, info = inputs(byzantine=[2])
    stage = ATTACKS.build(name)
    assert torch.equal(attack(stage, updates, info), attack(stage, updates, info))
    clean, none = inputs(byzantine=[])
    assert torch.equal(attack(stage, clean, none), clean)


def test_sign_flip_ipm_mimic_and_scale_by_hand() -> None:
    updates, info = inputs(byzantine=[0, 3])
    honest = updates[[1, 2, 4, 5, 6, 7]]
    mean = honest.mean(dim=0)
    flipped = attack(ATTACKS.build("sign_flip", scale=2.0), updates, info)
    torch.testing.assert_close(flipped[0], -2 * mean)
    torch.testing.assert_close(attack(ATTACKS.build("ipm", eps=0.5), updates, info)[3], -0.5 * mean)
    torch.testing.assert_close(attack(ATTACKS.build("mimic"), updates, info)[0], honest[0])
    torch.testing.assert_close(
        attack(ATTACKS.build("scale", factor=-3.0), updates, info)[3], -3 * updates[3]
    )


def test_alie_uses_the_papers_z_from_n_and_f() -> None:
    # n = 10, f = 2: s = floor(10/2 + 1) - 2 = 4 supporters, z = Phi^-1((10 - 4) / 10)
    assert default_z(10, 2) == pytest.approx(NormalDist().inv_cdf(0.6))
    updates, info = inputs(byzantine=[8, 9], n=10)
    honest = updates[:8]
    expected = honest.mean(dim=0) - default_z(10, 2) * honest.std(dim=0, unbiased=False)
    torch.testing.assert_close(attack(ATTACKS.build("alie"), updates, info)[9], expected)


def test_min_max_goes_exactly_as_far_as_the_honest_diameter_allows() -> None:
    updates, info = inputs(byzantine=[0], seed=3)
    honest = updates[1:]
    diameter = torch.cdist(honest, honest).max()

    forged = attack(ATTACKS.build("min_max"), updates, info)[0]

    farthest = (honest - forged).norm(dim=1).max()
    torch.testing.assert_close(farthest, diameter, rtol=1e-4, atol=1e-5)
    assert (forged - honest.mean(dim=0)).norm() > 0.1  # it did move away from the mean


def test_gaussian_has_the_asked_spread() -> None:
    _, info = inputs(byzantine=list(range(N)))
    forged = attack(ATTACKS.build("gaussian", sigma=3.0), torch.zeros(N, 500), info)
    assert forged.std().item() == pytest.approx(3.0, rel=0.05)


def test_random_sends_the_update_of_a_uniform_gradient() -> None:
    # Prepare: 2 byzantine clients of N, 2,000 coordinates, honest rows far from the noise
    _, info = inputs(byzantine=[0, 3])
    updates = torch.full((N, 2000), 100.0)

    # Execute: the update of a U[0, 1) gradient at learning rate 0.5
    forged = attack(ATTACKS.build("random", scale=0.5), updates, info)

    # Assert: byzantine rows in (-0.5, 0], spread as U[0, 1) scaled; the honest rows untouched
    rows = forged[[0, 3]]
    assert rows.shape == (2, updates.shape[1])
    assert bool((rows <= 0).all()) and bool((rows > -0.5).all())
    assert rows.mean().item() == pytest.approx(-0.25, abs=0.05)
    assert torch.equal(forged[~info.byzantine], updates[~info.byzantine])


def test_label_flip_and_noisy_data_change_what_is_trained_on() -> None:
    x, y = torch.randn(50, 4), torch.arange(50) % 10
    gen = torch.Generator().manual_seed(0)
    flip = ATTACKS.build("label_flip")
    x2, y2 = flip.poison(x, y, 10, gen)
    assert torch.equal(x2, x) and torch.equal(y2, 9 - y)
    x3, y3 = ATTACKS.build("noisy_data", sigma=2.0).poison(x, y, 10, gen)
    assert torch.equal(y3, y)
    assert (x3 - x).std().item() == pytest.approx(2.0 * x.std().item(), rel=0.15)
