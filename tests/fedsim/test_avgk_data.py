"""The average-K datasets: injected ambiguity, long tail, and the exact Gaussian posterior."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import multivariate_normal

from fedsim.avgk_data import (
    FASHION_GROUPS,
    GaussianAvgkParams,
    bayes_average_k_accuracy,
    long_tail_counts,
    posterior,
    relabel_within_groups,
)
from fedsim.data import FASHION_MNIST_DIR, load_data
from fedsim.errors import ScenarioError
from fedsim.registry import Component


def test_long_tail_counts_fall_geometrically_from_head_to_tail() -> None:
    counts = long_tail_counts(1000, 5, 16.0)

    assert counts == [1000, 500, 250, 125, 62]  # ratio 16^(1/4) = 2 per class


def test_relabelling_stays_in_the_group_at_the_asked_rate() -> None:
    labels = np.random.default_rng(0).integers(0, 10, 20_000)

    noisy = relabel_within_groups(labels, FASHION_GROUPS, 0.3, np.random.default_rng(1))
    unchanged = relabel_within_groups(labels, FASHION_GROUPS, 0.0, np.random.default_rng(1))

    assert np.array_equal(unchanged, labels)
    grouped = np.isin(labels, [c for g in FASHION_GROUPS for c in g])
    assert np.array_equal(noisy[~grouped], labels[~grouped])  # 1, 3, 8 are in no group
    for group in FASHION_GROUPS:
        inside = np.isin(labels, group)
        assert np.isin(noisy[inside], group).all()
    assert (noisy[grouped] != labels[grouped]).mean() == pytest.approx(0.3, abs=0.015)


def test_posterior_matches_bayes_rule_with_scipys_densities() -> None:
    p = GaussianAvgkParams(groups=[2, 3], dim=7, long_tail=4.0, sigma=1.5)
    x = torch.from_numpy(np.random.default_rng(0).normal(3.0, 3.0, size=(5, 7)))

    got = posterior(p, x)

    dens = np.stack(
        [multivariate_normal(mu, 1.5**2 * np.eye(7)).pdf(x.numpy()) for mu in p.means()], 1
    )
    joint = dens * p.priors()
    np.testing.assert_allclose(got.numpy(), joint / joint.sum(1, keepdims=True), rtol=1e-9)


def test_bayes_ceiling_is_the_sum_of_the_k_n_largest_posterior_entries() -> None:
    prob = torch.tensor([[0.6, 0.3, 0.1], [0.9, 0.05, 0.05]])

    # K = 1: 0.9 + 0.6; K = 1.5: + 0.3; K = 2: + 0.1 (then 0.05)
    assert bayes_average_k_accuracy(prob, 1.0) == pytest.approx(0.75)
    assert bayes_average_k_accuracy(prob, 1.5) == pytest.approx(0.9)
    assert bayes_average_k_accuracy(prob, 2.0) == pytest.approx(0.95)


def test_gaussian_dataset_draws_its_classes_from_the_priors() -> None:
    d = load_data(Component(name="avgk_gaussian", num_samples=4000, long_tail=10.0))

    counts = np.bincount(d.y_train.numpy(), minlength=10)
    assert d.num_classes == 10 and d.x_train.shape == (3000, 16) and d.x_test.shape == (1000, 16)
    assert counts[0] > 5 * counts[9]


def test_gaussian_dataset_needs_an_axis_per_class() -> None:
    with pytest.raises(ValueError, match="dim"):
        GaussianAvgkParams(groups=[5, 5], dim=8)


@pytest.mark.skipif(not FASHION_MNIST_DIR.is_dir(), reason=f"{FASHION_MNIST_DIR} is absent")
def test_fashion_mnist_avgk_is_long_tailed_in_train_balanced_in_test() -> None:
    spec = Component(name="fashion_mnist_avgk", train_per_class=400, long_tail=10.0, test_size=500)

    d = load_data(spec)

    assert np.bincount(d.y_train.numpy(), minlength=10).tolist() == long_tail_counts(400, 10, 10)
    assert np.bincount(d.y_test.numpy(), minlength=10).tolist() == [50] * 10
    assert d.x_train.shape[1:] == (1, 28, 28)
    assert math.isclose(float(d.x_train.mean()), 0.0, abs_tol=0.2)


def test_fashion_mnist_avgk_refuses_more_images_than_it_has() -> None:
    from fedsim.scenario import parse

    with pytest.raises(ScenarioError, match="train_per_class"):
        parse(
            {
                "name": "x",
                "rounds": 1,
                "data": {"name": "fashion_mnist_avgk", "train_per_class": 7000},
                "workload": {"name": "avgk"},
            }
        )
