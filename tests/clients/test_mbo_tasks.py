"""Tests of the synthetic offline-MBO tasks: oracles, offline truncation, metrics."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from fedsim.mbo_tasks import (
    MboTask,
    continuous,
    decode_logits,
    one_hot,
    percentile_scores,
    sequence_oracle,
    tfbind8_like,
    to_logits,
)


@functools.cache
def discrete(seed: int = 0) -> MboTask:
    return tfbind8_like(seed)


@functools.cache
def cont(seed: int = 0) -> MboTask:
    return continuous(seed, dim=24, pool=4000, max_percentile=40.0)


TASKS = {"discrete": discrete, "continuous": cont}


# ---- determinism -------------------------------------------------------------------------------


@pytest.mark.parametrize("build", [tfbind8_like, functools.partial(continuous, pool=2000)])
def test_same_seed_same_task_other_seed_other_task(build) -> None:
    a, b, c = build(3), build(3), build(4)
    np.testing.assert_array_equal(a.pool_x, b.pool_x)
    np.testing.assert_array_equal(a.pool_y, b.pool_y)
    np.testing.assert_array_equal(a.offline_index, b.offline_index)
    assert not np.array_equal(a.pool_y, c.pool_y)
    assert not np.array_equal(a.offline_index, c.offline_index)


# ---- discrete task -----------------------------------------------------------------------------


def test_discrete_pool_is_every_sequence_and_offline_is_the_bottom_half() -> None:
    task = discrete()
    assert task.dim == (8, 4)
    assert task.pool_x.shape == (4**8, 8, 4)
    sequences = decode_logits(task.pool_x)
    assert len(np.unique(sequences, axis=0)) == 65_536
    assert len(task.offline_index) == 32_768
    assert task.offline_x.shape == (32_768, 8, 4)
    assert task.offline_y.max() < task.hidden_y.min()
    assert task.best_offline == task.offline_y.max()
    assert (task.y_min, task.y_max) == (task.pool_y.min(), task.pool_y.max())


def test_sequence_oracle_matches_a_hand_loop() -> None:
    oracle = sequence_oracle(seed=5)
    sequences = np.random.default_rng(0).integers(0, 4, size=(6, 8))
    by_hand = []
    for s in sequences:
        total = sum(oracle.weights[p, s[p]] for p in range(8))
        for k, (i, j) in enumerate(oracle.pairs):
            total += oracle.epistasis[k, s[i], s[j]]
        by_hand.append(total)
    np.testing.assert_allclose(oracle(one_hot(sequences)), by_hand, rtol=1e-12)
    np.testing.assert_allclose(oracle.score_sequences(sequences), by_hand, rtol=1e-12)


def test_epistasis_changes_the_score_by_the_pairwise_weight() -> None:
    oracle = sequence_oracle(seed=5)
    assert oracle.pairs.shape == (12, 2)
    i = int(oracle.pairs[0, 0])
    s = np.zeros(8, dtype=np.int64)
    t = s.copy()
    t[i] = 2  # only position i changes
    expected = oracle.weights[i, 2] - oracle.weights[i, 0]
    for k, (a, b) in enumerate(oracle.pairs.tolist()):
        if i in (a, b):  # every pair touching position i changes
            expected += oracle.epistasis[k, t[a], t[b]] - oracle.epistasis[k, s[a], s[b]]
    diff = oracle.score_sequences(t[None])[0] - oracle.score_sequences(s[None])[0]
    assert diff == pytest.approx(expected, abs=1e-12)
    no_epistasis = oracle.weights[i, 2] - oracle.weights[i, 0]
    assert abs(diff - no_epistasis) > 1e-3  # the pair term is really there


def test_logits_decode_to_the_same_sequence_and_score() -> None:
    task = discrete()
    designs = task.offline_x[:50]
    logits = to_logits(designs)
    np.testing.assert_array_equal(decode_logits(logits), decode_logits(designs))
    np.testing.assert_array_equal(task.oracle(logits), task.offline_y[:50])


def test_discrete_torch_oracle_equals_the_oracle_on_one_hot_and_has_a_gradient() -> None:
    task = discrete()
    x = torch.tensor(task.pool_x[::9000], dtype=torch.float64)
    np.testing.assert_allclose(task.torch_oracle(x).numpy(), task.pool_y[::9000], atol=1e-12)
    logits = torch.tensor(to_logits(task.offline_x[:4]), requires_grad=True)
    task.torch_oracle(torch.softmax(logits, dim=-1)).sum().backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
    assert logits.grad.abs().sum() > 0


# ---- continuous task ---------------------------------------------------------------------------


def test_continuous_offline_is_below_the_percentile_and_pool_best_is_above() -> None:
    task = cont()
    assert task.dim == (24,)
    assert task.offline_x.shape == (1600, 24)
    assert task.offline_y.max() <= np.percentile(task.pool_y, 40.0)
    assert task.pool_y.max() > task.best_offline
    assert task.offline_y.max() < task.hidden_y.min()


def test_continuous_torch_oracle_matches_numpy_and_gradient_checks() -> None:
    task = cont()
    x = torch.tensor(task.pool_x[:3], dtype=torch.float64, requires_grad=True)
    np.testing.assert_allclose(task.torch_oracle(x).detach().numpy(), task.pool_y[:3], atol=1e-12)
    assert torch.autograd.gradcheck(task.torch_oracle, (x,))


# ---- splits and metrics ------------------------------------------------------------------------


@pytest.mark.parametrize("name", TASKS)
def test_normalisation_maps_pool_extremes_to_zero_and_one(name: str) -> None:
    task = TASKS[name]()
    np.testing.assert_allclose(task.normalised([task.y_min, task.y_max]), [0.0, 1.0])
    assert task.worst == task.y_min
    best_row, worst_row = task.pool_y.argmax(), task.pool_y.argmin()
    scores = percentile_scores(task, task.pool_x[[best_row, worst_row, best_row]])
    assert scores == {"p100": pytest.approx(1.0), "p50": pytest.approx(1.0)}
    offline = percentile_scores(task, task.offline_x)
    assert offline["p100"] == pytest.approx(float(task.normalised(task.best_offline)))
    assert 0.0 <= offline["p50"] < offline["p100"] < 1.0
