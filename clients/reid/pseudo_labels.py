"""Pseudo-labels for the unlabelled target client: DBSCAN on cosine or k-reciprocal distances.

Follows ``notes/workloads-precise.md`` §1.2 (adaptation, per epoch): L2-normalised target features,
k-reciprocal Jaccard distance (k1 = 20, k2 = 6, λ = 0, Zhong et al., CVPR 2017), DBSCAN
(``min_samples = 4``, ``metric = "precomputed"``) with ``eps`` fixed once as the mean of the
smallest ρ = 1.6e-3 fraction of the pairwise distances (upper triangle, nonzero). §1.4: the
clusters and their eps stay on the client. Plain cosine distance (the default here, cheaper) is the
issue's alternative; ``distance="jaccard"`` is the code's choice.

Labels are 0..K-1 for the K clusters and -1 for outliers; ``PseudoLabels.found`` is False when no
cluster was found, which the workload records as an event (the round goes on with sources only).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import NDArray
from sklearn.cluster import DBSCAN

Distance = Literal["cosine", "jaccard"]


@dataclass(frozen=True)
class PseudoLabels:
    """Cluster index per sample (-1 = outlier), the eps used, and the counts."""

    labels: NDArray[np.int64]
    eps: float
    num_clusters: int
    num_outliers: int

    @property
    def found(self) -> bool:
        """Whether DBSCAN found at least one cluster."""
        return self.num_clusters > 0


def _normalised(features: NDArray[np.floating]) -> NDArray[np.float64]:
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"features must be a non-empty (n, d) array, got shape {x.shape}")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def cosine_distances(features: NDArray[np.floating]) -> NDArray[np.float64]:
    """``1 − cos`` (n, n) between the rows of ``features``, clipped to [0, 2], diagonal 0."""
    x = _normalised(features)
    d = np.clip(1.0 - x @ x.T, 0.0, 2.0)
    np.fill_diagonal(d, 0.0)
    return d


def jaccard_distances(
    features: NDArray[np.floating], k1: int = 20, k2: int = 6
) -> NDArray[np.float64]:
    """k-reciprocal Jaccard distance (Zhong et al., 2017, λ = 0) between the rows (n, n).

    Each sample's k1-reciprocal neighbours, expanded by those of its members whose own
    ⌈k1/2⌉-reciprocal sets overlap by more than 2/3, weighted by ``exp(−d²)``, normalised to sum 1,
    then averaged over the k2 nearest neighbours (query expansion); distance
    ``1 − Σ min(V_i, V_j) / Σ max(V_i, V_j)``.
    """
    x = _normalised(features)
    n = x.shape[0]
    k1, k2 = min(k1, n - 1), min(k2, n)
    d2 = np.clip(2.0 - 2.0 * (x @ x.T), 0.0, 4.0)
    rank = np.argsort(d2, axis=1, kind="stable")

    def reciprocal(i: int, k: int) -> NDArray[np.int64]:
        forward = rank[i, : k + 1]
        backward = rank[forward, : k + 1]
        return forward[(backward == i).any(axis=1)]

    v = np.zeros((n, n))
    half = int(np.around(k1 / 2))
    for i in range(n):
        members = reciprocal(i, k1)
        expanded = members
        for c in members:
            cand = reciprocal(int(c), half)
            if len(np.intersect1d(cand, members)) > 2 / 3 * len(cand):
                expanded = np.append(expanded, cand)
        expanded = np.unique(expanded)
        w = np.exp(-d2[i, expanded])
        v[i, expanded] = w / w.sum()
    if k2 > 1:
        v = v[rank[:, :k2]].mean(axis=1)
    dist = np.empty((n, n))
    for i in range(n):
        nz = np.flatnonzero(v[i])
        shared = np.minimum(v[i, nz], v[:, nz]).sum(axis=1)
        dist[i] = 1.0 - shared / (2.0 - shared)
    dist = np.clip(dist, 0.0, 1.0)
    np.fill_diagonal(dist, 0.0)
    return dist


def choose_eps(distances: NDArray[np.floating], rho: float = 1.6e-3) -> float:
    """Mean of the smallest ``rho`` fraction of the nonzero upper-triangle distances (§1.2).

    At least one pair is used; with no nonzero pair the result is 0.
    """
    if not 0 < rho <= 1:
        raise ValueError(f"rho must be in (0, 1], got {rho}")
    upper = distances[np.triu_indices_from(distances, k=1)]
    upper = np.sort(upper[upper > 0])
    if upper.size == 0:
        return 0.0
    top = max(1, int(np.round(rho * upper.size)))
    return float(upper[:top].mean())


def pseudo_labels(
    features: NDArray[np.floating],
    eps: float | None = None,
    distance: Distance = "cosine",
    min_samples: int = 4,
    rho: float = 1.6e-3,
    k1: int = 20,
    k2: int = 6,
) -> PseudoLabels:
    """Cluster ``features`` (n, d) with DBSCAN on precomputed distances.

    ``eps=None`` chooses it with :func:`choose_eps` (the caller keeps it for later rounds, as the
    code fixes it at epoch 0). A non-positive eps finds no cluster (every label -1).
    """
    if distance == "cosine":
        dist = cosine_distances(features)
    elif distance == "jaccard":
        dist = jaccard_distances(features, k1, k2)
    else:
        raise ValueError(f"distance must be 'cosine' or 'jaccard', got {distance!r}")
    if eps is None:
        eps = choose_eps(dist, rho)
    n = dist.shape[0]
    if eps <= 0:
        labels = np.full(n, -1, dtype=np.int64)
    else:
        fitted = DBSCAN(eps=eps, min_samples=min_samples, metric="precomputed").fit(dist)
        labels = fitted.labels_.astype(np.int64)
    num_clusters = int(labels.max()) + 1 if labels.size else 0
    return PseudoLabels(labels, float(eps), num_clusters, int((labels == -1).sum()))
