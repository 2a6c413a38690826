"""Conformance suite: the shared checks every registered aggregator and pre-aggregator must pass.

Rules are built with their default parameters, so a rule added later is checked without touching
this file (scikit-learn's ``check_estimator`` for fedsim's aggregators).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor

import strategies  # noqa: F401  (registers the aggregators)
from fedsim.registry import AGGREGATORS, PREAGGREGATORS, Registry
from strategies.pipeline import RoundInfo, chain

ALL = AGGREGATORS.names()
ALL_PRE = PREAGGREGATORS.names()
# every rule with a number f of byzantine clients to tolerate, as (registry, name)
WITH_F = [
    (registry, entry.name)
    for registry in (AGGREGATORS, PREAGGREGATORS)
    for entry in registry
    if "f" in entry.params.model_fields
]
# every aggregator and pre-aggregator, for the checks that hold for both kinds
EVERY_RULE = [
    (registry, name) for registry in (AGGREGATORS, PREAGGREGATORS) for name in registry.names()
]
EVERY_RULE_IDS = [name for _, name in EVERY_RULE]
N, D = 7, 5


def run(
    name: str, updates: Tensor, info: RoundInfo, registry: Registry[Any] = AGGREGATORS
) -> Tensor:
    """One round of rule ``name`` from a fresh state."""
    stage = registry.build(name)
    out, _ = stage.update(updates, stage.init(updates.shape[1]), info)
    return out


def run_pre(name: str, updates: Tensor, info: RoundInfo) -> Tensor:
    return run(name, updates, info, PREAGGREGATORS)


def permuted_round(updates: Tensor, info: RoundInfo) -> tuple[Tensor, RoundInfo, Tensor]:
    """The same round with the clients in another order (every client moves)."""
    perm = torch.tensor([3, 6, 0, 5, 1, 2, 4])
    assert sorted(perm.tolist()) == list(range(N))
    assert (perm != torch.arange(N)).all()
    permuted = RoundInfo(
        round=info.round,
        client_ids=tuple(info.client_ids[i] for i in perm.tolist()),
        num_examples=info.num_examples[perm],
        objectives=None if info.objectives is None else info.objectives[perm],
    )
    return updates[perm], permuted, perm


def as_multiset(rows: Tensor) -> Tensor:
    """Rows in a canonical order (by their projection on a fixed direction)."""
    direction = torch.linspace(1.0, 2.0, rows.shape[1], dtype=rows.dtype)
    return rows[(rows @ direction).argsort()]


def round_inputs(seed: int = 0, n: int = N, d: int = D) -> tuple[Tensor, RoundInfo]:
    gen = torch.Generator().manual_seed(seed)
    updates = torch.randn(n, d, generator=gen)
    counts = torch.randint(1, 100, (n,), generator=gen).to(torch.float32)
    # objective values for the rules that combine several objectives (min); others ignore them
    values = torch.randn(n, generator=gen)
    info = RoundInfo(3, tuple(range(10, 10 + n)), counts, objectives=values)
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


@pytest.mark.parametrize(("registry", "name"), EVERY_RULE, ids=EVERY_RULE_IDS)
def test_inputs_are_not_mutated(registry: Registry[Any], name: str) -> None:
    # Prepare
    updates, info = round_inputs()
    updates_before, counts_before = updates.clone(), info.num_examples.clone()

    # Execute
    run(name, updates, info, registry)

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
    updates_permuted, permuted, _ = permuted_round(updates, info)

    # Execute
    out = run(name, updates, info)
    out_permuted = run(name, updates_permuted, permuted)

    # Assert
    assert torch.allclose(out, out_permuted, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("registry", "name"), EVERY_RULE, ids=EVERY_RULE_IDS)
def test_same_inputs_give_the_same_output(registry: Registry[Any], name: str) -> None:
    # Prepare
    updates, info = round_inputs()

    # Execute
    first = run(name, updates, info, registry)
    second = run(name, updates.clone(), info, registry)

    # Assert
    assert torch.equal(first, second)


@pytest.mark.parametrize(("registry", "name"), EVERY_RULE, ids=EVERY_RULE_IDS)
@pytest.mark.parametrize("scale", [1e-6, 1.0, 1e4])
def test_finite_input_gives_finite_output(registry: Registry[Any], name: str, scale: float) -> None:
    # Prepare
    updates, info = round_inputs(seed=2)
    updates = updates * scale
    updates[0] = 50 * scale  # one far-off client

    # Execute
    out = run(name, updates, info, registry)

    # Assert
    assert torch.isfinite(out).all()


# ---- every rule with an f ----


def test_the_rules_with_an_f_are_found() -> None:
    # Assert
    names = {name for _, name in WITH_F}
    assert {"krum", "trimmed_mean", "nnm"} <= names
    assert "median" not in names


@pytest.mark.parametrize(("registry", "name"), WITH_F, ids=[name for _, name in WITH_F])
def test_f_too_large_for_n_is_refused_with_the_numbers(registry: Registry[Any], name: str) -> None:
    # Prepare
    updates, info = round_inputs()
    stage = registry.build(name, f=N)

    # Execute / Assert
    with pytest.raises(ValueError, match=rf"^{name} needs .*got n={N}, f={N}"):
        stage.update(updates, stage.init(D), info)


# ---- pre-aggregators ----


def test_the_registry_holds_the_documented_preaggregators() -> None:
    # Assert
    assert {"bucketing", "clip", "nnm"} <= set(ALL_PRE)
    assert all(PREAGGREGATORS.entry(name).doc for name in ALL_PRE)


@pytest.mark.parametrize("name", ALL_PRE)
def test_preaggregator_output_is_at_most_n_float32_rows_of_length_d(name: str) -> None:
    # Prepare
    updates, info = round_inputs()

    # Execute
    out = run_pre(name, updates, info)

    # Assert
    assert out.ndim == 2
    assert 1 <= out.shape[0] <= N
    assert out.shape[1] == D
    assert out.dtype == torch.float32


@pytest.mark.parametrize("name", ALL_PRE)
def test_identical_rows_give_identical_rows(name: str) -> None:
    # Prepare
    _, info = round_inputs()
    v = torch.tensor([0.5, -1.25, 3.0, 0.0, 1e-3])
    updates = v.repeat(N, 1)

    # Execute
    out = run_pre(name, updates, info)

    # Assert
    assert torch.allclose(out, out[0].expand_as(out), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ALL_PRE)
def test_permuting_clients_permutes_the_preaggregated_rows(name: str) -> None:
    # Prepare: the output, as a multiset of rows, does not depend on the order of arrival
    updates, info = round_inputs()
    updates_permuted, permuted, _ = permuted_round(updates, info)

    # Execute
    out = run_pre(name, updates, info)
    out_permuted = run_pre(name, updates_permuted, permuted)

    # Assert
    assert out.shape == out_permuted.shape
    assert torch.allclose(as_multiset(out), as_multiset(out_permuted), rtol=1e-5, atol=1e-6)


# A pre-aggregator that changes n (bucketing) hands the next stage rows that are no longer one
# client each: ``chain`` gives it anonymous, equally weighted rows.
@pytest.mark.parametrize("pre", ALL_PRE)
@pytest.mark.parametrize("name", ALL)
def test_every_preaggregator_feeds_every_aggregator(pre: str, name: str) -> None:
    # Prepare: enough clients for every default f after bucketing (ceil(n / s) rows)
    updates, info = round_inputs(n=3 * N)
    pipeline = chain(PREAGGREGATORS.build(pre), AGGREGATORS.build(name))
    if name == "min" and pre == "bucketing":  # a bucket mean is no one objective's gradient
        with pytest.raises(ValueError, match="objective"):
            pipeline.update(updates, pipeline.init(D), info)
        return

    # Execute
    out, _ = pipeline.update(updates, pipeline.init(D), info)

    # Assert
    assert out.shape == (D,)
    assert torch.isfinite(out).all()
