"""fedsim's own neighbour sampler (GraphSAGE-style fanouts), vectorised in plain torch.

PyG's ``NeighborLoader`` needs ``pyg-lib`` or ``torch-sparse``; this does the same for one batch:
from the seed nodes, hop by hop, each newly reached node draws up to ``fanout`` of its
in-neighbours without replacement; the result is the subgraph of the nodes reached and the edges
drawn, seeds first.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from fedsim.graphs import Subgraph


def sample_neighbours(
    graph: Subgraph, seeds: Tensor, fanouts: Sequence[int], generator: torch.Generator
) -> Subgraph:
    """The sampled subgraph around ``seeds`` (distinct local ids of ``graph``).

    ``fanouts[i]`` bounds the in-neighbours drawn for each node first reached at hop ``i`` (the
    seeds are hop 0). The subgraph's node ``j < len(seeds)`` is ``seeds[j]``, its targets are
    ``0..len(seeds)-1`` and its degrees count the sampled in-edges (what GCN normalises by on
    a sampled block, as PyG does).
    """
    indptr, neighbours = graph.in_neighbours
    device = seeds.device
    local = torch.full((graph.num_nodes,), -1, dtype=torch.int64, device=device)
    local[seeds] = torch.arange(len(seeds), device=device)
    nodes, srcs, dsts = [seeds], [], []
    frontier, reached = seeds, len(seeds)
    for fanout in fanouts:
        start = indptr[frontier]
        count = indptr[frontier + 1] - start
        total = int(count.sum())
        if total == 0:
            break
        owner = torch.repeat_interleave(torch.arange(len(frontier), device=device), count)
        first = torch.cumsum(count, 0) - count  # where each frontier node's edges begin
        position = start[owner] + torch.arange(total, device=device) - first[owner]
        # A random order of each node's edges: shuffle all, then sort stably by owner.
        order = torch.randperm(total, generator=generator).to(device)
        order = order[torch.argsort(owner[order], stable=True)]
        rank = torch.arange(total, device=device) - first[owner[order]]
        chosen = order[rank < fanout]
        src, dst = neighbours[position[chosen]], frontier[owner[chosen]]
        new = torch.unique(src[local[src] < 0])
        local[new] = torch.arange(reached, reached + len(new), device=device)
        reached += len(new)
        nodes.append(new)
        srcs.append(local[src])
        dsts.append(local[dst])
        frontier = new
    kept = torch.cat(nodes)
    src = torch.cat(srcs) if srcs else torch.zeros(0, dtype=torch.int64, device=device)
    dst = torch.cat(dsts) if dsts else torch.zeros(0, dtype=torch.int64, device=device)
    degree = torch.bincount(dst, minlength=len(kept)).to(graph.degree.dtype)
    targets = torch.arange(len(seeds), device=device)
    return Subgraph(graph.features[kept], src, dst, degree, targets)
