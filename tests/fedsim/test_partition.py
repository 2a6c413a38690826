"""Tests of the partitioners: a conformance suite over every entry, then each rule's own checks."""

from __future__ import annotations

import itertools

import numpy as np
import numpy.typing as npt
import pytest

import fedsim.partition  # noqa: F401  (registers the partitioners)
from fedsim.errors import UserError
from fedsim.partition import Indices
from fedsim.registry import PARTITIONERS, Component

ALL = PARTITIONERS.names()
DETERMINISTIC = {"sorted", "natural", "ensemble"}  # no randomness (ensemble: unless bootstrap)
# Splits whose clients share rows (not partitions): their own tests below.
SHARING = {n for n in ALL if PARTITIONERS.entry(n).declared("shares_rows")}
DISJOINT = sorted(set(ALL) - SHARING)
# Splits that the federation hands each sample's own client id instead of its label.
BY_CLIENT_ID = {n for n in ALL if PARTITIONERS.entry(n).declared("splits") == "client_ids"}


def split(
    name: str, labels: npt.NDArray[np.int64], num_clients: int, seed: int = 0, **options: object
) -> list[Indices]:
    values = client_ids(len(labels), num_clients) if name in BY_CLIENT_ID else labels
    return PARTITIONERS.build(Component(name=name, **options))(
        values, num_clients, np.random.default_rng(seed)
    )


def client_ids(n: int, num_clients: int) -> npt.NDArray[np.int64]:
    """Each of ``n`` samples' client, every client holding one (when n >= num_clients)."""
    return (np.random.default_rng(99).permutation(n) % num_clients).astype(np.int64)


def labels_of(n: int = 2000, num_classes: int = 10, seed: int = 0) -> npt.NDArray[np.int64]:
    return np.random.default_rng(seed).integers(0, num_classes, n).astype(np.int64)


def entropy(counts: npt.NDArray[np.int64]) -> float:
    q = counts[counts > 0] / counts.sum()
    return float(-(q * np.log(q)).sum())


def test_the_documented_partitioners_are_registered() -> None:
    # Execute / Assert
    assert {"iid", "dirichlet", "shards"} <= set(ALL)
    assert all(PARTITIONERS.entry(name).doc for name in ALL)


# ---- conformance: every registered partitioner ----


@pytest.mark.parametrize("name", DISJOINT)
def test_indices_are_sorted_int64_disjoint_and_in_range(name: str) -> None:
    # Prepare
    labels = labels_of()

    # Execute
    parts = split(name, labels, num_clients=20)

    # Assert
    assert len(parts) == 20
    every = np.concatenate(parts)
    assert all(p.dtype == np.int64 and p.ndim == 1 for p in parts)
    assert all(np.all(np.diff(p) > 0) for p in parts)  # sorted, no repeats within a client
    assert len(np.unique(every)) == len(every)  # no index given to two clients
    assert every.min() >= 0 and every.max() < len(labels)


@pytest.mark.parametrize("name", ["iid", "dirichlet", "shards", "sorted", "natural"])
def test_every_sample_is_used(name: str) -> None:
    # Prepare
    labels = labels_of()

    # Execute
    parts = split(name, labels, num_clients=20)

    # Assert
    np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(len(labels)))


@pytest.mark.parametrize("name", sorted(set(ALL) - DETERMINISTIC))
def test_same_seed_same_split_other_seed_other_split(name: str) -> None:
    # Prepare
    labels = labels_of()

    # Execute
    first, again, other = (split(name, labels, 20, seed=s) for s in (1, 1, 2))

    # Assert
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other, strict=True))


@pytest.mark.parametrize("name", ALL)
def test_labels_are_not_modified_and_global_rng_is_not_used(name: str) -> None:
    # Prepare
    labels = labels_of()
    before = labels.copy()
    np.random.seed(123)
    state = np.random.get_state()[1].copy()  # type: ignore[index]

    # Execute
    split(name, labels, 20)

    # Assert
    np.testing.assert_array_equal(labels, before)
    np.testing.assert_array_equal(np.random.get_state()[1], state)  # type: ignore[index]


@pytest.mark.parametrize("name", DISJOINT)
def test_any_label_values_work(name: str) -> None:
    # Prepare: labels need not be 0..C-1
    labels = np.array([3, 7, 11] * 40, dtype=np.int64)

    # Execute
    parts = split(name, labels, num_clients=6)

    # Assert
    assert sum(len(p) for p in parts) == len(labels)


@pytest.mark.parametrize("name", DISJOINT)
def test_more_clients_than_samples_is_a_user_error(name: str) -> None:
    # Prepare
    labels = labels_of(n=5)

    # Execute / Assert
    with pytest.raises(UserError, match=r"needs .*got 6 clients"):
        split(name, labels, num_clients=6)


# ---- ensemble ----


def test_ensemble_gives_every_client_every_row() -> None:
    parts = split("ensemble", labels_of(n=50), num_clients=3)
    assert all(np.array_equal(p, np.arange(50)) and p.dtype == np.int64 for p in parts)


def test_ensemble_bootstrap_resamples_each_client_with_replacement() -> None:
    # Execute
    parts = split("ensemble", labels_of(n=1000), num_clients=3, bootstrap=True)
    again = split("ensemble", labels_of(n=1000), num_clients=3, bootstrap=True)

    # Assert: n rows each, drawn with replacement (about 1 - 1/e distinct), sorted, seeded
    for part in parts:
        assert len(part) == 1000 and part.dtype == np.int64 and np.all(np.diff(part) >= 0)
        assert len(np.unique(part)) / 1000 == pytest.approx(1 - np.exp(-1), abs=0.03)
    assert not np.array_equal(parts[0], parts[1])
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))


# ---- sorted ----


def test_sorted_gives_contiguous_bands_of_real_valued_labels() -> None:
    # Prepare: scores, as an MBO task's clients hold
    scores = np.random.default_rng(0).normal(size=103)

    # Execute
    parts = split("sorted", scores, num_clients=5)

    # Assert: near-equal sizes, client k's band entirely below client k+1's, whatever the seed
    assert [len(p) for p in parts] == [21, 21, 21, 20, 20]
    for low, high in itertools.pairwise(parts):
        assert scores[low].max() < scores[high].min()
    again = split("sorted", scores, num_clients=5, seed=9)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))


# ---- iid ----


def test_iid_sizes_differ_by_at_most_one() -> None:
    # Prepare
    labels = labels_of(n=2003)

    # Execute
    sizes = [len(p) for p in split("iid", labels, num_clients=10)]

    # Assert: 2003 = 3 * 201 + 7 * 200
    assert sorted(sizes) == [200] * 7 + [201] * 3


def test_iid_label_mix_follows_the_population() -> None:
    # Prepare
    labels = labels_of(n=20_000)

    # Execute
    parts = split("iid", labels, num_clients=4)

    # Assert: each client's class shares are within 2 points of the 10% of the whole
    for p in parts:
        shares = np.bincount(labels[p], minlength=10) / len(p)
        assert np.abs(shares - 0.1).max() < 0.02


# ---- dirichlet ----


def test_dirichlet_every_client_reaches_min_size() -> None:
    # Prepare: a single draw gives all 20 clients 50 samples only about 10% of the time
    labels = labels_of()

    # Execute
    parts = split("dirichlet", labels, num_clients=20, alpha=0.5, min_size=50)

    # Assert
    assert min(len(p) for p in parts) >= 50


def test_dirichlet_smaller_alpha_skews_the_label_mix() -> None:
    # Prepare
    labels = labels_of()

    def mean_entropy(alpha: float) -> float:
        parts = split("dirichlet", labels, num_clients=10, alpha=alpha, min_size=1)
        return float(np.mean([entropy(np.bincount(labels[p], minlength=10)) for p in parts]))

    # Execute
    skewed, uniform = mean_entropy(0.1), mean_entropy(100.0)

    # Assert: log(10) = 2.30 is a perfectly even mix
    assert skewed < 1.5 < 2.2 < uniform


def test_dirichlet_impossible_min_size_names_the_numbers() -> None:
    # Prepare
    labels = labels_of(n=100)

    # Execute / Assert: 30 clients * 4 > 100 samples
    with pytest.raises(UserError, match=r"got 30 clients \* 4 > 100 samples.*min_size"):
        split("dirichlet", labels, num_clients=30, min_size=4)


def test_dirichlet_gives_up_with_advice_when_draws_keep_failing() -> None:
    # Prepare: 100 clients * 15 fits in 2,000 samples, but not at alpha=0.01
    labels = labels_of()

    # Execute / Assert
    with pytest.raises(UserError, match=r"min_size=15.*alpha=0.01.*100 clients.*raise alpha"):
        split("dirichlet", labels, num_clients=100, alpha=0.01, min_size=15)


# ---- shards ----


@pytest.mark.parametrize("k", [1, 2, 3, 10])
def test_shards_each_client_holds_exactly_k_classes(k: int) -> None:
    # Prepare
    labels = labels_of()

    # Execute
    parts = split("shards", labels, num_clients=20, classes_per_client=k)

    # Assert
    assert all(len(np.unique(labels[p])) == k for p in parts)


def test_shards_balances_classes_and_splits_each_evenly() -> None:
    # Prepare: 10 classes * 100 samples; 20 clients * 2 classes = 4 holders per class
    labels = np.repeat(np.arange(10), 100)

    # Execute
    parts = split("shards", labels, num_clients=20, classes_per_client=2)

    # Assert: each class is held by 4 clients with 25 samples each, so every client has 50
    holders = np.zeros(10, dtype=int)
    for p in parts:
        classes, counts = np.unique(labels[p], return_counts=True)
        holders[classes] += 1
        assert counts.tolist() == [25, 25]
    assert holders.tolist() == [4] * 10


def test_shards_class_assignment_depends_on_the_seed() -> None:
    # Prepare
    labels = np.repeat(np.arange(10), 100)

    def mix(seed: int) -> list[list[int]]:
        parts = split("shards", labels, num_clients=5, seed=seed)
        return [np.unique(labels[p]).tolist() for p in parts]

    # Execute / Assert
    assert mix(0) != mix(1)


def test_shards_more_classes_per_client_than_classes_is_a_user_error() -> None:
    # Prepare
    labels = labels_of(num_classes=3)

    # Execute / Assert
    with pytest.raises(UserError, match=r"classes_per_client=4 with 3 classes"):
        split("shards", labels, num_clients=5, classes_per_client=4)


def test_shards_too_few_clients_to_hold_every_class_is_a_user_error() -> None:
    # Prepare
    labels = labels_of()

    # Execute / Assert: 3 clients * 2 classes leave 4 of 10 classes unheld
    with pytest.raises(UserError, match=r"got 3 \* 2 < 10"):
        split("shards", labels, num_clients=3, classes_per_client=2)


# ---- natural ----


def test_natural_gives_each_distinct_id_its_rows_in_sorted_id_order() -> None:
    # Prepare: writer ids need not be numbers, nor 0..C-1
    ids = np.array(["w7", "a2", "w7", "m0", "a2", "w7"])

    # Execute
    parts = PARTITIONERS.build("natural")(ids, 3, np.random.default_rng(0))

    # Assert: a2, m0, w7
    assert [p.tolist() for p in parts] == [[1, 4], [3], [0, 2, 5]]


def test_natural_needs_one_client_per_distinct_id() -> None:
    with pytest.raises(UserError, match=r"got 4 clients for 3 distinct client ids.*clients.num: 3"):
        PARTITIONERS.build("natural")(np.array([5, 6, 7, 5]), 4, np.random.default_rng(0))
