"""Tests of the pipeline combinators, the mean aggregator and the sgd server optimiser."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor

import strategies
from fedsim.registry import AGGREGATORS, SERVER_OPTIMISERS
from strategies.pipeline import RoundInfo, Stage, chain, stateless


def adder(amount: float) -> Stage:
    return stateless(lambda u, info: u + amount)


def counter(tag: str, log: list[tuple[str, int, Any]]) -> Stage:
    """A stage whose state counts its calls; it logs (tag, d or call number, round)."""

    def init(d: int) -> int:
        log.append((tag, d, None))
        return 0

    def update(u: Tensor, state: int, info: RoundInfo) -> tuple[Tensor, int]:
        log.append((tag, state + 1, info.round))
        return u, state + 1

    return Stage(init, update)


# ---- RoundInfo ----


def test_uniform_round_info_has_unit_counts_and_ids_from_zero() -> None:
    # Execute
    info = RoundInfo.uniform(3)
    later = RoundInfo.uniform(2, round=5)

    # Assert
    assert info.round == 1
    assert info.client_ids == (0, 1, 2)
    assert torch.equal(info.num_examples, torch.ones(3))
    assert info.num_examples.is_floating_point()
    assert later.round == 5 and later.client_ids == (0, 1)


# ---- stateless ----


def test_stateless_applies_the_function_and_passes_the_state_through() -> None:
    # Prepare
    seen: list[RoundInfo] = []

    def double(u: Tensor, info: RoundInfo) -> Tensor:
        seen.append(info)
        return 2 * u

    stage = stateless(double)
    info = RoundInfo.uniform(2, round=4)
    marker = object()

    # Execute
    out, state = stage.update(torch.tensor([[1.0, 2.0], [3.0, 4.0]]), marker, info)

    # Assert
    assert stage.init(7) is None
    assert torch.equal(out, torch.tensor([[2.0, 4.0], [6.0, 8.0]]))
    assert state is marker
    assert seen == [info]


# ---- chain ----


def test_chain_applies_stages_in_the_order_given() -> None:
    # Prepare
    x = torch.tensor([1.0])
    times_two = stateless(lambda u, info: 2 * u)
    info = RoundInfo.uniform(1)

    # Execute
    add_then_double, _ = chain(adder(1.0), times_two).update(x, (None, None), info)
    double_then_add, _ = chain(times_two, adder(1.0)).update(x, (None, None), info)

    # Assert
    assert add_then_double.item() == 4.0  # (1 + 1) * 2
    assert double_then_add.item() == 3.0  # 1 * 2 + 1


def test_chain_state_is_the_tuple_of_stage_states_threaded_through_rounds() -> None:
    # Prepare
    log: list[tuple[str, int, Any]] = []
    stage = chain(counter("a", log), adder(0.5), counter("b", log))
    x = torch.zeros(2, 3)

    # Execute
    state0 = stage.init(3)
    out, state1 = stage.update(x, state0, RoundInfo.uniform(2, round=1))
    _, state2 = stage.update(x, state1, RoundInfo.uniform(2, round=2))

    # Assert
    assert state0 == (0, None, 0)
    assert state1 == (1, None, 1)
    assert state2 == (2, None, 2)
    assert torch.equal(out, torch.full((2, 3), 0.5))
    assert log == [
        ("a", 3, None),
        ("b", 3, None),
        ("a", 1, 1),
        ("b", 1, 1),
        ("a", 2, 2),
        ("b", 2, 2),
    ]


def test_chain_refuses_a_state_of_the_wrong_length() -> None:
    # Prepare
    stage = chain(adder(1.0), adder(2.0))

    # Execute / Assert
    with pytest.raises(ValueError):
        stage.update(torch.zeros(1), (None,), RoundInfo.uniform(1))


def test_empty_chain_is_the_identity() -> None:
    # Prepare
    stage = chain()
    x = torch.tensor([[1.0, -2.0]])

    # Execute
    out, state = stage.update(x, stage.init(2), RoundInfo.uniform(1))

    # Assert
    assert torch.equal(out, x)
    assert state == ()


# ---- mean: known answers ----

UPDATES = torch.tensor([[1.0, 0.0], [3.0, 4.0]])
COUNTS = torch.tensor([1.0, 3.0])


def test_mean_weights_clients_by_their_sample_counts() -> None:
    # Prepare
    stage = AGGREGATORS.build("mean")
    info = RoundInfo(round=1, client_ids=(0, 1), num_examples=COUNTS)

    # Execute
    out, _ = stage.update(UPDATES, stage.init(2), info)

    # Assert: (1*[1, 0] + 3*[3, 4]) / 4
    assert torch.allclose(out, torch.tensor([2.5, 3.0]))


def test_unweighted_mean_ignores_the_sample_counts() -> None:
    # Prepare
    stage = AGGREGATORS.build("mean", weighted=False)
    info = RoundInfo(round=1, client_ids=(0, 1), num_examples=COUNTS)

    # Execute
    out, _ = stage.update(UPDATES, stage.init(2), info)

    # Assert: ([1, 0] + [3, 4]) / 2
    assert torch.allclose(out, torch.tensor([2.0, 2.0]))


def test_functional_aggregate_uses_the_registry_and_its_options() -> None:
    # Prepare
    info = RoundInfo(round=1, client_ids=(0, 1), num_examples=COUNTS)

    # Execute
    weighted = strategies.aggregate("mean", UPDATES, info)
    unweighted = strategies.aggregate("mean", UPDATES, info, weighted=False)
    default_info = strategies.aggregate("mean", UPDATES)

    # Assert
    assert torch.allclose(weighted, torch.tensor([2.5, 3.0]))
    assert torch.allclose(unweighted, torch.tensor([2.0, 2.0]))
    assert torch.allclose(default_info, torch.tensor([2.0, 2.0]))  # uniform counts


# ---- sgd server optimiser: known answers ----

GRADS = [torch.tensor([1.0, 2.0]), torch.tensor([0.0, -1.0]), torch.tensor([2.0, 0.0])]


def test_sgd_without_momentum_scales_by_lr_and_keeps_no_state() -> None:
    # Prepare
    stage = SERVER_OPTIMISERS.build("sgd", lr=0.5)
    state = stage.init(2)

    # Execute
    steps = []
    for g in GRADS:
        step, state = stage.update(g, state, RoundInfo.uniform(1))
        steps.append(step)

    # Assert
    assert state is None
    for step, g in zip(steps, GRADS, strict=True):
        assert torch.allclose(step, 0.5 * g)


def test_sgd_with_momentum_accumulates_velocity_over_rounds() -> None:
    # Prepare
    stage = SERVER_OPTIMISERS.build("sgd", lr=0.5, momentum=0.9)
    state = stage.init(2)
    # v1 = g1 = [1, 2]
    # v2 = 0.9 v1 + g2 = [0.9, 1.8] + [0, -1] = [0.9, 0.8]
    # v3 = 0.9 v2 + g3 = [0.81, 0.72] + [2, 0] = [2.81, 0.72]
    velocities = [[1.0, 2.0], [0.9, 0.8], [2.81, 0.72]]

    # Execute
    steps, states = [], []
    for g in GRADS:
        step, state = stage.update(g, state, RoundInfo.uniform(1))
        steps.append(step)
        states.append(state)

    # Assert
    assert torch.equal(stage.init(2), torch.zeros(2))
    for step, state, v in zip(steps, states, velocities, strict=True):
        assert torch.allclose(state, torch.tensor(v))
        assert torch.allclose(step, 0.5 * torch.tensor(v))


def test_sgd_decays_its_step_by_the_round() -> None:
    # lr_t = 0.8 * 0.5^(t - 1): 0.8, 0.4, 0.2 in rounds 1, 2, 3
    stage = SERVER_OPTIMISERS.build("sgd", lr=0.8, decay=0.5)
    for rnd, (g, lr) in enumerate(zip(GRADS, [0.8, 0.4, 0.2], strict=True), start=1):
        info = RoundInfo.uniform(1, round=rnd)
        step, _ = stage.update(g, None, info)
        assert torch.allclose(step, lr * g)


@pytest.mark.parametrize(
    "options", [{"lr": 0.0}, {"momentum": 1.0}, {"momentum": -0.1}, {"decay": 0.0}, {"decay": 1.5}]
)
def test_sgd_refuses_out_of_range_hyper_parameters(options: dict[str, float]) -> None:
    # Execute / Assert
    with pytest.raises(ValueError):
        SERVER_OPTIMISERS.build("sgd", **options)
