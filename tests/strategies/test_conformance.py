"""Conformance suite: the shared checks every registered aggregator must pass.

Rules are built with their default parameters, so an aggregator added later is checked without
touching this file (scikit-learn's ``check_estimator`` for fedsim's aggregators).
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

import strategies  # noqa: F401  (registers the aggregators)
from fedsim.registry import AGGREGATORS
from strategies.pipeline import RoundInfo

ALL = AGGREGATORS.names()
N, D = 7, 5


def run(name: str, updates: Tensor, info: RoundInfo) -> Tensor:
    """One round of aggregator ``name`` from a fresh state."""
    stage = AGGREGATORS.build(name)
    out, _ = stage.update(updates, stage.init(updates.shape[1]), info)
    return out


def round_inputs(seed: int = 0, n: int = N, d: int = D) -> tuple[Tensor, RoundInfo]:
    gen = torch.Generator().manual_seed(seed)
    updates = torch.randn(n, d, generator=gen)
    counts = torch.randint(1, 100, (n,), generator=gen).to(torch.float32)
    info = RoundInfo(round=3, client_ids=tuple(range(10, 10 + n)), num_examples=counts)
    return updates, info


def test_the_registry_holds_the_documented_aggregators() -> None:
    # Execute / Assert
    assert "mean" in ALL
    assert all(AGGREGATORS.entry(name).doc for name in ALL)


@pytest.mark.parametrize("name", ALL)
def test_output_is_one_float32_vector_of_length_d(name: str) -> None:
    # Prepare
    updates, info = round_inputs()

    # Execute
    out = run(name, updates, info)

    # Assert
    assert out.shape == (D,)
    assert out.dtype == torch.float32


@pytest.mark.parametrize("name", ALL)
def test_inputs_are_not_mutated(name: str) -> None:
    # Prepare
    updates, info = round_inputs()
    updates_before, counts_before = updates.clone(), info.num_examples.clone()

    # Execute
    run(name, updates, info)

    # Assert
    assert torch.equal(updates, updates_before)
    assert torch.equal(info.num_examples, counts_before)
    assert info.client_ids == tuple(range(10, 10 + N))


@pytest.mark.parametrize("name", ALL)
def test_identical_updates_give_that_update(name: str) -> None:
    # Prepare
    _, info = round_inputs()
    v = torch.tensor([0.5, -1.25, 3.0, 0.0, 1e-3])
    updates = v.repeat(N, 1)

    # Execute
    out = run(name, updates, info)

    # Assert
    assert torch.allclose(out, v, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ALL)
def test_permuting_clients_does_not_change_the_result(name: str) -> None:
    # Prepare
    updates, info = round_inputs()
    perm = torch.tensor([3, 6, 0, 5, 1, 2, 4])
    assert sorted(perm.tolist()) == list(range(N))
    assert (perm != torch.arange(N)).all()  # every client moves
    permuted = RoundInfo(
        round=info.round,
        client_ids=tuple(info.client_ids[i] for i in perm.tolist()),
        num_examples=info.num_examples[perm],
    )

    # Execute
    out = run(name, updates, info)
    out_permuted = run(name, updates[perm], permuted)

    # Assert
    assert torch.allclose(out, out_permuted, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ALL)
def test_same_inputs_give_the_same_output(name: str) -> None:
    # Prepare
    updates, info = round_inputs()

    # Execute
    first = run(name, updates, info)
    second = run(name, updates.clone(), info)

    # Assert
    assert torch.equal(first, second)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("scale", [1e-6, 1.0, 1e4])
def test_finite_input_gives_finite_output(name: str, scale: float) -> None:
    # Prepare
    updates, info = round_inputs(seed=2)
    updates = updates * scale
    updates[0] = 50 * scale  # one far-off client

    # Execute
    out = run(name, updates, info)

    # Assert
    assert torch.isfinite(out).all()
