"""Target pseudo-labels (notes/workloads-precise.md §1.2) on well-separated synthetic features."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from clients.reid.pseudo_labels import (
    choose_eps,
    cosine_distances,
    jaccard_distances,
    pseudo_labels,
)


def _blobs(
    seed: int = 0, per: int = 12, k: int = 4, dim: int = 16
) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = np.eye(dim)[:k] * 5.0
    truth = np.repeat(np.arange(k), per)
    return centres[truth] + rng.normal(scale=0.3, size=(k * per, dim)), truth


@pytest.mark.parametrize("distance", ["cosine", "jaccard"])
def test_recovers_separated_clusters(distance: str) -> None:
    x, truth = _blobs()
    out = pseudo_labels(x, eps=0.3 if distance == "cosine" else 0.6, distance=distance)  # type: ignore[arg-type]
    assert out.found and out.num_clusters == 4 and out.num_outliers == 0
    assert adjusted_rand_score(truth, out.labels) == 1.0


def test_chosen_eps_is_mean_of_smallest_fraction() -> None:
    d = np.array([[0.0, 0.1, 0.4], [0.1, 0.0, 0.2], [0.4, 0.2, 0.0]])
    # Nonzero upper triangle sorted: 0.1, 0.2, 0.4; round(ρ·3) of them are averaged (at least 1).
    assert choose_eps(d, rho=1 / 3) == pytest.approx(0.1)
    assert choose_eps(d, rho=2 / 3) == pytest.approx(0.15)
    assert choose_eps(d, rho=1e-3) == pytest.approx(0.1)
    x, _ = _blobs(seed=1, per=30)
    # ρ = 0.1 of the pairs (a quarter of them are within a blob); the code's 1.6e-3 was set for
    # Jaccard distances over ~12k images and finds nothing on 120 points.
    out = pseudo_labels(x, rho=0.1)
    assert out.eps == pytest.approx(choose_eps(cosine_distances(x), rho=0.1))
    assert out.num_clusters == 4


def test_no_cluster_is_signalled() -> None:
    x = np.eye(8)  # orthogonal: every cosine distance is 1, no point has 3 neighbours within eps
    out = pseudo_labels(x, eps=0.5)
    assert not out.found and out.num_clusters == 0 and (out.labels == -1).all()
    assert not pseudo_labels(np.ones((5, 3))).found  # all distances 0 → eps 0 → nothing


def test_jaccard_is_a_distance_on_blobs() -> None:
    x, truth = _blobs()
    d = jaccard_distances(x)
    assert np.allclose(np.diag(d), 0.0) and (d >= 0).all() and (d <= 1).all()
    same = truth[:, None] == truth[None, :]
    assert d[same].max() < d[~same].min()
