"""Partitioners: how a dataset's training samples are dealt out among the clients.

A partitioner's factory takes its params and returns ``split(labels, num_clients, rng)``, which
gives each client a sorted int64 array of indices into ``labels``. Every index goes to at most one
client (the partitioners here use them all), except for a split whose params declare
``shares_rows`` (``ensemble``: every client the same rows); the only randomness is ``rng``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt
from pydantic import NonNegativeInt, PositiveFloat, PositiveInt

from fedsim.errors import UserError
from fedsim.registry import PARTITIONERS, Params

Indices = npt.NDArray[np.int64]
Labels = npt.NDArray[Any]
Split = Callable[[Labels, int, np.random.Generator], list[Indices]]

# Resampling budget of `dirichlet` before it gives up on `min_size`.
DIRICHLET_TRIES = 100


class IidParams(Params):
    pass


@PARTITIONERS.register("iid", IidParams)
def iid(p: IidParams) -> Split:
    """Uniformly at random, near-equal sizes (they differ by at most one sample)."""

    def split(labels: Labels, num_clients: int, rng: np.random.Generator) -> list[Indices]:
        n = _check_inputs("iid", labels, num_clients, min_size=1)
        return [np.sort(part) for part in np.array_split(rng.permutation(n), num_clients)]

    return split


class SortedParams(Params):
    pass


@PARTITIONERS.register("sorted", SortedParams)
def sorted_bands(p: SortedParams) -> Split:
    """Contiguous bands of label order: client 0 the lowest labels (or scores), near-equal sizes.

    Extreme non-IID: for classes, McMahan et al.'s sorted split; for real-valued labels (an MBO
    task's scores), each client sees one band of quality. Ties keep sample order; no randomness.
    """

    def split(labels: Labels, num_clients: int, rng: np.random.Generator) -> list[Indices]:
        _check_inputs("sorted", labels, num_clients, min_size=1)
        order = np.argsort(labels, kind="stable").astype(np.int64)
        return [np.sort(part) for part in np.array_split(order, num_clients)]

    return split


class DirichletParams(Params):
    alpha: PositiveFloat = 0.5  # concentration: small → each client dominated by a few classes
    min_size: NonNegativeInt = 2  # resample until every client holds at least this many samples


@PARTITIONERS.register("dirichlet", DirichletParams)
def dirichlet(p: DirichletParams) -> Split:
    """Label skew: each class spread over the clients in Dir(alpha) proportions (Hsu et al. 2019).

    For every class c, proportions q_c ~ Dir(alpha·1) over the clients; client k receives
    ``q_c[k]`` of class c's samples. Draws are repeated until every client has ``min_size`` samples.
    """

    def split(labels: Labels, num_clients: int, rng: np.random.Generator) -> list[Indices]:
        n = _check_inputs("dirichlet", labels, num_clients, min_size=p.min_size)
        classes, y = np.unique(labels, return_inverse=True)
        class_sizes = np.bincount(y, minlength=len(classes))
        counts = _dirichlet_counts(p, class_sizes, num_clients, rng)
        # Deal each class's shuffled samples to clients in the drawn counts: `owner[i]` is the
        # client of sample i. Building one owner array keeps this O(n log n) for any client count.
        owner = np.empty(n, dtype=np.int64)
        for c in range(len(classes)):
            members = rng.permutation(np.flatnonzero(y == c))
            owner[members] = np.repeat(np.arange(num_clients), counts[c])
        return _group_by_owner(owner, num_clients)

    return split


def _dirichlet_counts(
    p: DirichletParams,
    class_sizes: npt.NDArray[np.int64],
    num_clients: int,
    rng: np.random.Generator,
) -> npt.NDArray[np.int64]:
    """Samples of each class per client, shape (classes, clients), with every client >= min_size."""
    best = 0  # the largest smallest-client seen, to report how far off the draws were
    for _ in range(DIRICHLET_TRIES):
        shares = rng.dirichlet(np.full(num_clients, p.alpha), size=len(class_sizes))
        # Cut points on the cumulative shares make every class's counts sum exactly to its size.
        cuts = np.floor(np.cumsum(shares, axis=1)[:, :-1] * class_sizes[:, None]).astype(np.int64)
        cuts = np.minimum(cuts, class_sizes[:, None])  # cumsum may exceed 1 by rounding
        bounds = np.concatenate(
            [np.zeros((len(class_sizes), 1), np.int64), cuts, class_sizes[:, None]], axis=1
        )
        counts = np.diff(bounds, axis=1)
        smallest = int(counts.sum(axis=0).min())
        if smallest >= p.min_size:
            return counts
        best = max(best, smallest)
    raise UserError(
        f"dirichlet partitioner needs every client to hold >= min_size={p.min_size} samples, "
        f"got at best a smallest client of {best} in {DIRICHLET_TRIES} draws "
        f"(alpha={p.alpha}, {num_clients} clients, {int(class_sizes.sum())} samples); "
        "raise alpha, lower min_size or use fewer clients"
    )


class ShardsParams(Params):
    classes_per_client: PositiveInt = 2  # distinct labels on each client


@PARTITIONERS.register("shards", ShardsParams)
def shards(p: ShardsParams) -> Split:
    """Pathological non-IID: every client holds exactly ``classes_per_client`` classes.

    The label-skewed split of McMahan et al. 2017, with classes rather than sorted shards dealt out.

    Clients take classes in turn from a random permutation of the classes, repeated round-robin,
    so every class is held by (nearly) the same number of clients; each class's samples are then
    split evenly among its holders. A class with fewer samples than holders leaves some of them
    without it.
    """

    def split(labels: Labels, num_clients: int, rng: np.random.Generator) -> list[Indices]:
        n = _check_inputs("shards", labels, num_clients, min_size=1)
        classes, y = np.unique(labels, return_inverse=True)
        k, num_classes = p.classes_per_client, len(classes)
        if k > num_classes:
            raise UserError(
                f"shards partitioner needs classes_per_client <= number of classes, got "
                f"classes_per_client={k} with {num_classes} classes; lower classes_per_client"
            )
        if num_clients * k < num_classes:
            # Otherwise some classes would belong to nobody and their samples would be dropped.
            raise UserError(
                f"shards partitioner needs num_clients * classes_per_client >= number of classes, "
                f"got {num_clients} * {k} < {num_classes}; raise classes_per_client or the clients"
            )
        # k consecutive entries of a cyclic permutation are distinct because k <= num_classes.
        walk = np.resize(rng.permutation(num_classes), num_clients * k).reshape(num_clients, k)
        owner = np.empty(n, dtype=np.int64)
        for c in range(num_classes):
            holders = np.flatnonzero((walk == c).any(axis=1))
            members = rng.permutation(np.flatnonzero(y == c))
            for client, part in zip(holders, np.array_split(members, len(holders)), strict=True):
                owner[part] = client
        return _group_by_owner(owner, num_clients)

    return split


class NaturalParams(Params):
    # The federation hands this split each training row's own client id, not its label.
    splits: ClassVar[str] = "client_ids"


@PARTITIONERS.register("natural", NaturalParams)
def natural(p: NaturalParams) -> Split:
    """The data's own clients (LEAF's writers): one client per distinct client id of the rows.

    Client k holds the rows of the k-th smallest id; ``clients.num`` must be the number of
    distinct ids. No randomness.
    """

    def split(client_ids: Labels, num_clients: int, rng: np.random.Generator) -> list[Indices]:
        ids, owner = np.unique(client_ids, return_inverse=True)
        if len(ids) != num_clients:
            raise UserError(
                f"natural partitioner needs one client per distinct client id of the data, got "
                f"{num_clients} clients for {len(ids)} distinct client ids; set clients.num: "
                f"{len(ids)} (and clients.per_round at most that)"
            )
        return _group_by_owner(owner.astype(np.int64).reshape(-1), num_clients)

    return split


class EnsembleParams(Params):
    # Not a partition: the clients hold the same rows (conformance checks of disjointness skip it).
    shares_rows: ClassVar[bool] = True
    bootstrap: bool = False  # each client a seeded resample with replacement, of the same size


@PARTITIONERS.register("ensemble", EnsembleParams)
def ensemble(p: EnsembleParams) -> Split:
    """Every client holds all the rows (or, with ``bootstrap``, its own seeded bootstrap of
    them): an ensemble of models trained on the same data, differing in their seeds, as the
    offline-MBO ensembles of Kolli et al. are built."""

    def split(labels: Labels, num_clients: int, rng: np.random.Generator) -> list[Indices]:
        n = _check_inputs("ensemble", labels, 1, min_size=1)
        if not p.bootstrap:
            return [np.arange(n, dtype=np.int64) for _ in range(num_clients)]
        return [np.sort(rng.integers(0, n, size=n)).astype(np.int64) for _ in range(num_clients)]

    return split


def _check_inputs(name: str, labels: Labels, num_clients: int, min_size: int) -> int:
    """Number of samples, after checking that ``num_clients`` clients of ``min_size`` can fit."""
    if labels.ndim != 1:
        raise ValueError(f"{name} partitioner needs 1-D labels, got shape {labels.shape}")
    n = len(labels)
    if num_clients < 1:
        raise UserError(f"{name} partitioner needs at least 1 client, got {num_clients}")
    if num_clients * min_size > n:
        raise UserError(
            f"{name} partitioner needs num_clients * {min_size} <= samples, got {num_clients} "
            f"clients * {min_size} > {n} samples; use fewer clients"
            + (" or lower min_size" if name == "dirichlet" else "")
        )
    return n


def _group_by_owner(owner: npt.NDArray[np.int64], num_clients: int) -> list[Indices]:
    """Sorted index arrays of each client, given the client of every sample."""
    # A stable sort keeps each client's indices in increasing order.
    order = np.argsort(owner, kind="stable").astype(np.int64)
    sizes = np.bincount(owner, minlength=num_clients)
    return list(np.split(order, np.cumsum(sizes)[:-1]))
