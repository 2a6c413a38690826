"""The mbo workload's client side: encoding, proxy training, proxy gradients, the federation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clients.mbo import MboParams, MboWorkload
from fedsim.data import federation_for, load_data
from fedsim.errors import ScenarioError
from fedsim.mbo_tasks import decode_logits, tfbind8_like
from fedsim.registry import Component
from fedsim.scenario import parse

SMALL = Component(name="mbo_continuous", dim=4, pool=1500, max_percentile=40.0)


def workload(**options: object) -> MboWorkload:
    return MboWorkload(params=MboParams.model_validate(options))


def test_discrete_designs_are_encoded_as_logits_that_decode_to_the_same_sequences() -> None:
    # Prepare
    task = tfbind8_like(0)
    rows = task.pool_x[[0, 777, 65535]]

    # Execute
    x = workload().encode(task, rows)

    # Assert: flat (n, 32) log-probabilities whose argmax is the sequence, scored as the oracle
    assert x.shape == (3, 32)
    np.testing.assert_allclose(x.exp().reshape(3, 8, 4).sum(-1).numpy(), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(decode_logits(x.reshape(3, 8, 4)), decode_logits(rows))
    best = workload().encode(task, task.pool_x[[task.pool_y.argmax()]])
    assert workload().scores(task, best) == {"p100": 1.0, "p50": 1.0}


def test_proxy_gradient_of_a_linear_proxy_is_its_weight_vector() -> None:
    # Prepare: a depth-1 proxy whose output layer reads hidden unit 0 only, with its
    # LeakyReLU in the linear part, so f(x) = w·x + b everywhere on these designs
    task = load_data(SMALL)
    w = workload(depth=1, hidden=3)
    proxy = w.build_proxy(task, torch.Generator().manual_seed(0))
    first, last = proxy.net[0], proxy.net[2]
    with torch.no_grad():
        first.weight.copy_(torch.tensor([[1.0, -2.0, 0.5, 3.0], [0, 0, 0, 0], [0, 0, 0, 0]]))
        first.bias.fill_(100.0)
        last.weight.copy_(torch.tensor([[2.0, 0.0, 0.0]]))
        last.bias.zero_()
    designs = torch.randn(5, 4, generator=torch.Generator().manual_seed(1))

    # Execute
    values, grads = w.gradients(proxy, designs)

    # Assert
    expected = 2 * torch.tensor([1.0, -2.0, 0.5, 3.0])
    torch.testing.assert_close(grads, expected.expand(5, 4))
    torch.testing.assert_close(values, 2 * (designs @ torch.tensor([1.0, -2.0, 0.5, 3.0]) + 100))


def test_a_trained_proxy_ranks_held_out_designs() -> None:
    # Prepare: 400 offline designs of a 4-dim task; 300 to train, 100 held out
    task = load_data(SMALL)
    w = workload(epochs=60, hidden=32)
    x, y = w.encode(task, task.offline_x), w.standardise(task, task.offline_y)
    proxy = w.build_proxy(task, torch.Generator().manual_seed(0))
    untrained = w.evaluate_proxy(proxy, x[300:], y[300:])

    # Execute
    w.fit_proxy(proxy, x[:300], y[:300], torch.Generator().manual_seed(0))
    trained = w.evaluate_proxy(proxy, x[300:], y[300:])

    # Assert
    assert trained["proxy_val_mse"] < 0.5 * untrained["proxy_val_mse"]
    assert trained["proxy_val_spearman"] > 0.7


def test_the_federation_splits_the_offline_rows_and_refuses_a_classification_dataset() -> None:
    # Execute
    fed = federation_for(SMALL, Component(name="sorted"), 3, seed=0, val_fraction=0.0)

    # Assert: every offline row once; client 0 holds the lowest scores
    rows = torch.cat(fed.train).sort().values
    assert torch.equal(rows, torch.arange(len(fed.task.offline_y)))
    y = fed.task.offline_y
    assert y[fed.train[0]].max() <= y[fed.train[1]].min() <= y[fed.train[2]].min()
    raw = {"name": "x", "rounds": 1, "data": {"name": "digits"}, "workload": {"name": "mbo"}}
    with pytest.raises(ScenarioError, match="reads mbo_task data"):
        parse(raw)
