"""Query-vs-gallery retrieval scores: CMC rank-k and mAP under the Market-1501 protocol.

Follows ``notes/workloads-precise.md`` §1.2 (metrics: mAP, CMC R-1/5/10, Market protocol) and the
issue's evaluation item: for each query, gallery entries with the same identity **and** the same
camera are excluded; a query left with no gallery entry of its identity is skipped and counted.
Features are L2-normalised; distances are computed in batches of queries on the given device. Ties
in distance are broken by gallery order (stable sort), so the scores are deterministic.

AP of a query = mean over its valid matches of the precision at that match's rank (Market-1501's
evaluation code computes the same sum of precisions at each hit); rank-k = 1 if the first valid
match is within the first k valid gallery entries.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

Metric = Literal["cosine", "euclidean"]


@dataclass(frozen=True)
class RetrievalScores:
    """CMC at the requested ranks, mAP, and how many queries counted / were skipped."""

    cmc: dict[int, float]
    mean_ap: float
    num_queries: int
    num_skipped: int


def distances(
    query: Tensor,
    gallery: Tensor,
    metric: Metric = "cosine",
    batch_size: int = 512,
    device: torch.device | str | None = None,
) -> Tensor:
    """Distances (Q, G) between L2-normalised query and gallery features, on CPU.

    ``cosine``: 1 − cos; ``euclidean``: ‖q − g‖ of the normalised features (= √(2 − 2 cos), the
    same ranking). Computed ``batch_size`` queries at a time on ``device``.
    """
    if metric not in ("cosine", "euclidean"):
        raise ValueError(f"metric must be 'cosine' or 'euclidean', got {metric!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    dev = torch.device(device) if device is not None else query.device
    g = F.normalize(gallery.to(dev, torch.float32), dim=1)
    out = []
    for start in range(0, query.shape[0], batch_size):
        q = F.normalize(query[start : start + batch_size].to(dev, torch.float32), dim=1)
        cos = q @ g.T
        d = 1.0 - cos if metric == "cosine" else (2.0 - 2.0 * cos).clamp_min(0.0).sqrt()
        out.append(d.cpu())
    return torch.cat(out) if out else torch.empty(0, gallery.shape[0])


def evaluate(
    query: Tensor,
    query_ids: Tensor,
    query_cams: Tensor,
    gallery: Tensor,
    gallery_ids: Tensor,
    gallery_cams: Tensor,
    ranks: Sequence[int] = (1, 5, 10),
    metric: Metric = "cosine",
    batch_size: int = 512,
    device: torch.device | str | None = None,
) -> RetrievalScores:
    """Rank-k and mAP of ``query`` (Q, d) against ``gallery`` (G, d), Market-1501 protocol."""
    if query.shape[0] != query_ids.shape[0] or query.shape[0] != query_cams.shape[0]:
        raise ValueError("query, query_ids and query_cams must have the same length")
    if gallery.shape[0] != gallery_ids.shape[0] or gallery.shape[0] != gallery_cams.shape[0]:
        raise ValueError("gallery, gallery_ids and gallery_cams must have the same length")
    if any(k < 1 for k in ranks):
        raise ValueError(f"ranks must be >= 1, got {list(ranks)}")
    hits = {k: 0.0 for k in ranks}
    ap_sum, counted = 0.0, 0
    g_ids, g_cams = gallery_ids.cpu(), gallery_cams.cpu()
    for start in range(0, query.shape[0], batch_size):
        stop = start + batch_size
        d = distances(query[start:stop], gallery, metric, batch_size, device)
        order = torch.argsort(d, dim=1, stable=True)
        q_ids = query_ids[start:stop].cpu()[:, None]
        q_cams = query_cams[start:stop].cpu()[:, None]
        same_id = g_ids[order] == q_ids
        valid = ~(same_id & (g_cams[order] == q_cams))
        match = same_id & valid
        # Rank (1-based) of each entry among the valid ones, and matches seen up to it.
        rank = valid.cumsum(dim=1)
        found = match.cumsum(dim=1)
        n_match = match.sum(dim=1)
        keep = n_match > 0
        if not bool(keep.any()):
            continue
        precision = torch.where(match, found / rank.clamp_min(1), 0.0)
        ap = precision.sum(dim=1)[keep] / n_match[keep]
        first = torch.where(match, rank, rank.shape[1] + 1).min(dim=1).values[keep]
        ap_sum += float(ap.sum())
        counted += int(keep.sum())
        for k in ranks:
            hits[k] += float((first <= k).sum())
    skipped = query.shape[0] - counted
    if counted == 0:
        return RetrievalScores({k: 0.0 for k in ranks}, 0.0, 0, skipped)
    return RetrievalScores(
        {k: h / counted for k, h in hits.items()}, ap_sum / counted, counted, skipped
    )
