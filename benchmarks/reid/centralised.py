"""The centralised reference of the re-ID ladder: every domain's data in one process, one model.

What the paper's code trains (notes/workloads-precise.md §1.2), at the ladder's size and with the
workload's pieces: one ``ReidNet`` with a norm branch per domain (RDSBN with the gate), a joint
classifier over ``[source 1 people | … | source S people | target clusters]``, and each step one
batch of one domain through its branch, the domains in turn (sources on their labels, the target
on its DBSCAN clusters, re-clustered and its classifier rows re-initialised with the centroids
every round). No MDIF: it is a federated-vs-centralised reference for the RDSBN rung, trained for
as many epochs as the federated clients (``rounds × epochs``). Retrieval of the target's
query/gallery split with the target's branch after every round.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from clients.reid.losses import IGNORE, batch_hard_triplet, cross_entropy_ls
from clients.reid.pseudo_labels import pseudo_labels
from clients.reid.retrieval import evaluate as retrieval_scores
from clients.reid.workload import RANKS, ReidNet, ReidWorkloadParams
from clients.workload import init_parameters
from fedsim.build import scenario_federation, seeded_generator
from fedsim.reid_data import DomainClientData
from fedsim.scenario import Scenario


def train(scenario: Scenario) -> list[dict[str, float]]:
    """Train the centralised model of ``scenario`` (one client per domain, the target last);
    the target's ``mAP`` and ``rank1/5/10`` after each round."""
    p = ReidWorkloadParams(**scenario.workload.options)
    federation = scenario_federation(scenario)
    domains = [federation.train_data(c) for c in range(scenario.clients.num)]
    target = next(i for i, d in enumerate(domains) if d.is_target)
    sources = [d for d in domains if not d.is_target]
    # The joint label space: each source's people after the previous sources', then the clusters.
    offsets = [sum(d.num_identities for d in sources[:i]) for i in range(len(sources))]
    first_cluster = sum(d.num_identities for d in sources)
    net = ReidNet(
        domains[0].images.shape[1],
        p.channels,
        p.embedding,
        first_cluster + p.max_identities,
        rdsbn=True,
        gate=p.gate,
        branches=len(domains),
    )
    init_parameters(net, seeded_generator(scenario.seed, 0))
    labels: list[Tensor] = [d.identities + off for d, off in zip(sources, offsets, strict=True)]
    labels.insert(target, torch.full((len(domains[target]),), IGNORE))
    test = federation.test_data()
    history = []
    for rnd in range(1, scenario.rounds + 1):
        labels[target], clusters = _cluster(net, domains[target], first_cluster, p)
        # With no cluster the target's labels are all -1: the sources alone train this round.
        classes = first_cluster + clusters
        _epochs(net, domains, labels, classes, p, seeded_generator(scenario.seed, 0, rnd))
        query, _ = net.extract(test.query_images, branch=domains[target].domain)
        gallery, _ = net.extract(test.gallery_images, branch=domains[target].domain)
        scores = retrieval_scores(
            query,
            test.query_identities,
            test.query_cameras,
            gallery,
            test.gallery_identities,
            test.gallery_cameras,
            ranks=RANKS,
        )
        history.append(
            {
                "round": rnd,
                "mAP": scores.mean_ap,
                "clusters": float(clusters),
                **{f"rank{k}": v for k, v in scores.cmc.items()},
            }
        )
    return history


def _cluster(
    net: ReidNet, data: DomainClientData, first: int, p: ReidWorkloadParams
) -> tuple[Tensor, int]:
    """The target's pseudo-labels in the joint label space (``first`` + cluster, -1 outliers),
    after its branch's statistics followed its images; the clusters' classifier rows set to
    their normalised centroids."""
    net.train()
    with torch.no_grad():
        for batch in data.images.split(p.batch_size):
            if len(batch) > 1:
                net(batch, data.domain)
    feats, _ = net.extract(data.images, branch=data.domain)
    found = pseudo_labels(
        feats.numpy(),
        eps=p.eps,
        distance=p.distance,
        min_samples=p.min_samples,
        rho=p.rho,
        k1=p.k1,
        k2=p.k2,
    )
    found_labels = torch.from_numpy(found.labels)
    n = min(found.num_clusters, p.max_identities)
    kept = (found_labels >= 0) & (found_labels < n)
    if n:
        centres = torch.zeros(n, feats.shape[1]).index_add_(0, found_labels[kept], feats[kept])
        with torch.no_grad():
            net.classifier.weight[first : first + n] = F.normalize(centres, dim=1)
    return torch.where(kept, found_labels + first, IGNORE), n


def _epochs(
    net: ReidNet,
    domains: list[DomainClientData],
    labels: list[Tensor],
    classes: int,
    p: ReidWorkloadParams,
    generator: torch.Generator,
) -> None:
    """``p.epochs`` passes over every domain, one batch of one domain per step, in turn; CE
    over the joint classifier's first ``classes`` rows (the people and this round's clusters)."""
    net.train()
    optimizer = torch.optim.Adam(net.parameters(), lr=p.lr, weight_decay=p.weight_decay)
    for _ in range(p.epochs):
        queues = []
        for d, y in zip(domains, labels, strict=True):
            rows = torch.nonzero(y != IGNORE).flatten()
            order = rows[torch.randperm(len(rows), generator=generator)]
            queues.append([(d, y, b) for b in order.split(p.batch_size) if len(b) > 1])
        for step in range(max(len(q) for q in queues)):
            for queue in queues:
                if step >= len(queue):
                    continue
                d, y, rows = queue[step]
                f, _, logits = net(d.images[rows], d.domain)
                loss = cross_entropy_ls(logits[:, :classes], y[rows], p.label_smoothing)
                if p.triplet:
                    loss = loss + batch_hard_triplet(f, y[rows])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
