"""Rank-k and mAP (Market-1501 protocol, notes/workloads-precise.md §1.2) on known answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

from clients.reid.retrieval import distances, evaluate


def _at(angles: list[float]) -> torch.Tensor:
    t = torch.tensor(angles)
    return torch.stack([t.cos(), t.sin()], dim=1)


# Gallery by angle (= by distance from query 0): a, b, c, d, e.
GALLERY = _at([0.1, 0.2, 0.3, 0.4, 0.5])
G_IDS = torch.tensor([1, 2, 1, 3, 1])
G_CAMS = torch.tensor([0, 1, 1, 1, 2])
QUERY = _at([0.0, 1.0, 0.2])
Q_IDS = torch.tensor([1, 9, 2])
Q_CAMS = torch.tensor([0, 0, 0])


@pytest.mark.parametrize("batch_size", [1, 2, 512])
@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_hand_worked(batch_size: int, metric: str) -> None:
    # Query 0 (id 1, cam 0): a is same id + same camera → excluded; valid order b c d e with
    # matches c, e at ranks 2 and 4: AP = (1/2 + 2/4) / 2 = 0.5, first hit at rank 2.
    # Query 1 (id 9): no match → skipped. Query 2 (id 2): b first → AP 1, rank 1.
    s = evaluate(
        QUERY, Q_IDS, Q_CAMS, GALLERY, G_IDS, G_CAMS, ranks=(1, 2, 5),
        metric=metric, batch_size=batch_size,  # type: ignore[arg-type]
    )  # fmt: skip
    assert s.num_queries == 2 and s.num_skipped == 1
    assert s.cmc == pytest.approx({1: 0.5, 2: 1.0, 5: 1.0})
    assert s.mean_ap == pytest.approx(0.75)


def test_distances_batched_and_metrics() -> None:
    q, g = torch.randn(7, 5), torch.randn(4, 5)
    cos = distances(q, g, "cosine", batch_size=3)
    torch.testing.assert_close(cos, distances(q, g, "cosine", batch_size=100))
    qn, gn = torch.nn.functional.normalize(q, dim=1), torch.nn.functional.normalize(g, dim=1)
    torch.testing.assert_close(cos, 1 - qn @ gn.T)
    torch.testing.assert_close(distances(q, g, "euclidean"), torch.cdist(qn, gn), atol=1e-5, rtol=0)


def test_map_equals_sklearn_average_precision() -> None:
    gen = torch.Generator().manual_seed(0)
    q, g = torch.randn(40, 8, generator=gen), torch.randn(200, 8, generator=gen)
    q_ids, g_ids = (
        torch.randint(0, 15, (40,), generator=gen),
        torch.randint(0, 15, (200,), generator=gen),
    )
    q_cams, g_cams = (
        torch.randint(0, 3, (40,), generator=gen),
        torch.randint(0, 3, (200,), generator=gen),
    )
    s = evaluate(q, q_ids, q_cams, g, g_ids, g_cams, batch_size=16)
    d = distances(q, g).numpy()
    aps, r1 = [], []
    for i in range(40):
        valid = ~((g_ids == q_ids[i]) & (g_cams == q_cams[i])).numpy()
        truth = (g_ids == q_ids[i]).numpy()[valid]
        if truth.any():
            aps.append(average_precision_score(truth, -d[i][valid]))
            r1.append(truth[np.argmin(d[i][valid])])
    assert s.num_queries == len(aps) and s.num_skipped == 40 - len(aps)
    assert s.mean_ap == pytest.approx(float(np.mean(aps)), abs=1e-6)
    assert s.cmc[1] == pytest.approx(float(np.mean(r1)))


def test_all_skipped_and_bad_input() -> None:
    s = evaluate(QUERY[:1], torch.tensor([7]), Q_CAMS[:1], GALLERY, G_IDS, G_CAMS)
    assert s.num_queries == 0 and s.num_skipped == 1 and s.mean_ap == 0.0
    with pytest.raises(ValueError, match="same length"):
        evaluate(QUERY, Q_IDS[:1], Q_CAMS, GALLERY, G_IDS, G_CAMS)
    with pytest.raises(ValueError, match="metric"):
        distances(QUERY, GALLERY, "l1")  # type: ignore[arg-type]
