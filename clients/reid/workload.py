"""Workload ``reid``: multi-source domain-adaptive person re-ID, one client per domain.

Bai et al., CVPR 2021 (``notes/workloads-precise.md`` §1.2–1.4), federated as §1.4 maps it. A
small CNN (conv -> norm -> ReLU -> max-pool blocks) -> GAP -> embedding -> BN-neck (``DSBN1d``,
bias frozen) -> bias-free identity classifier of ``max_identities`` logits, of which a client uses
the first ``num_identities`` (its own people, or the target's clusters).

- **Local** (never sent): the classifiers (FedPav) and, with ``rdsbn``, every norm layer: the
  backbone's (``RDSBN2d`` with one branch and, with ``gate``, the rectification gate: FedBN + a
  local style gate), the BN-neck and the GCN-BN; the target's pseudo-labels, DBSCAN eps and mean
  teacher live in its ``State``. **Shared** (FedAvg): the convolutions and the embedding (and the
  norm layers when ``rdsbn`` is off: plain shared BatchNorm, i.e. FedAvg), and MDIF's attention
  and GCN weights.
- **MDIF** (``mdif``, §1.2/§1.4): the exchange ``agents`` has each client report its domain's
  agent (softmax-attention-weighted centre of its embeddings: the guard against the code's
  division by a sum of raw scores near 0, see ``clients/reid/mdif.py``); the server keeps running
  agents (0.9/0.1) and broadcasts all of them (zeros before a domain's first report). In a local
  step the client's own agent is its batch's (with gradient), the others the broadcast ones; the
  fused feature goes through a local GCN-BN (``gcn_neck``) and a local classifier
  (``gcn_classifier``) with its own CE term. Retrieval and clustering use the fused feature with
  the broadcast agents only, every sample linked to its domain's agent (the target's at the
  server), in fixed batches of 256.
- **Sources** train on CE with label smoothing + batch-hard soft-margin triplet (on the GAP
  embedding, before the neck).
- **The target** never reads its identities (``DomainClientData.identities`` raises there). Each
  round it first refreshes its norm layers' running statistics on its own images (a no-grad pass,
  as the code forwards target batches through branch 0), then clusters the L2-normalised neck
  features of its images with DBSCAN (cosine distance; ``eps`` from ``rho`` on each round's
  distances unless given: a deviation from the code, which fixes it at epoch 0 after pre-training,
  whereas our round-1 model is untrained and an eps fixed then merges everything later),
  re-initialises its classifier rows with the clusters' normalised centroids (as the code does
  each epoch) and trains on the clustered images with the sources' losses (DBSCAN on
  ``distance: jaccard``, k-reciprocal, as the code; cosine by default, cheaper). With
  ``mean_teacher`` an EMA teacher (``clients/reid/mean_teacher.py``) gives the features to
  cluster and soft targets (MMT's loss mix). A target that trains on nothing (a clustering that
  finds nothing, reported as ``no_clusters`` = 1, or ``pseudo_labels: false``, source-only)
  abstains from the round (``TRAINED`` = 0): the sources' updates alone make the new model.
  Clusters beyond ``max_identities`` are left out (``clusters_dropped``).
- **Central evaluation**: the target's retrieval (``rank1``, ``rank5``, ``rank10``, ``mAP``,
  Market-1501 protocol) on the server's query/gallery split, with the target's own branch: the
  exchange ``target_branch`` has the target client report its local norm and neck entries (running
  statistics, affine, gate) after each round, which the server broadcasts and loads for its
  evaluation. Source clients report a marker only.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, cast

import torch
import torch.nn.functional as F
from pydantic import Field, NonNegativeFloat, PositiveFloat, PositiveInt
from torch import Tensor, nn

from clients.reid import mean_teacher
from clients.reid.losses import (
    IGNORE,
    batch_hard_triplet,
    cross_entropy_ls,
    soft_cross_entropy,
    soft_triplet,
)
from clients.reid.mdif import MDIF, domain_agent
from clients.reid.rdsbn import DSBN1d, RDSBN2d
from clients.reid.retrieval import evaluate as retrieval_scores
from clients.workload import (
    TRAINED,
    Aggregate,
    Arrays,
    Exchange,
    Metrics,
    State,
    TrainConfig,
    init_parameters,
    is_local,
)
from fedsim.errors import UserError
from fedsim.registry import DATASETS, WORKLOADS, Params
from fedsim.reid_data import DomainClientData, DomainDataset, RetrievalSet
from fedsim.scenario import Scenario

REID = "reid"
TARGET_BRANCH = "target_branch"  # the exchange's name
AGENTS = "agents"  # MDIF's exchange, and the key of its broadcast (D, embedding)
KNOWN = "known"  # (D,) 1 where a domain's agent has been reported
IS_TARGET = "is_target"  # the key of a report's marker
EVAL_BATCH = 256  # fixed feature-extraction batch size
RANKS = (1, 5, 10)


class ReidWorkloadParams(Params):
    """The re-ID model, its local training and the target's clustering."""

    rdsbn: bool = True  # local (domain-specific) norm layers; False: plain shared BatchNorm
    gate: bool = True  # the rectification gate on the local norm layers (with rdsbn)
    # the target trains on its clusters; False: it only adapts its local norms and abstains
    pseudo_labels: bool = True
    mdif: bool = True  # fuse features with the domains' agents (exchange ``agents``)
    mean_teacher: bool = False  # the target's EMA teacher: its clusters and soft targets (MMT)
    channels: tuple[PositiveInt, ...] = Field(default=(16, 32, 64), min_length=1, max_length=4)
    embedding: PositiveInt = 64
    max_identities: PositiveInt = 64  # classifier size: the most people (or clusters) of a client
    lr: PositiveFloat = 1e-3  # Adam
    weight_decay: NonNegativeFloat = 5e-4
    epochs: PositiveInt = 2
    batch_size: int = Field(default=32, ge=2)
    label_smoothing: float = Field(default=0.1, ge=0.0, lt=1.0)
    triplet: bool = True
    # DBSCAN eps each round: the mean of the smallest rho fraction of the target's pairwise
    # distances (the code's 1.6e-3 finds nothing at this scale; ~ the same-person pair fraction)
    rho: float = Field(default=0.05, gt=0.0, le=1.0)
    eps: PositiveFloat | None = None  # a fixed DBSCAN eps instead of rho's
    min_samples: int = Field(default=3, ge=1)  # DBSCAN's
    distance: Literal["cosine", "jaccard"] = "cosine"  # jaccard: k-reciprocal, the code's
    k1: PositiveInt = 20  # k-reciprocal neighbours (jaccard)
    k2: PositiveInt = 6  # query expansion (jaccard)
    # Mean teacher (MMT's weights): loss = (1 − w_ce)·CE + (1 − w_tri)·triplet
    # + w_ce·soft CE(student, teacher) + w_tri·soft triplet(student, teacher)
    teacher_momentum: float = Field(default=0.999, gt=0.0, lt=1.0)
    soft_ce_weight: float = Field(default=0.5, ge=0.0, le=1.0)
    soft_triplet_weight: float = Field(default=0.8, ge=0.0, le=1.0)


class ReidNet(nn.Module):
    """Conv blocks -> GAP -> embedding -> BN-neck -> classifier; norm layers named ``norm*``.

    A client's model has one norm branch (its domain's); ``branches`` > 1 is the centralised
    reference's model, one branch per domain, chosen by the ``branch`` of each forward pass.
    """

    def __init__(
        self,
        in_channels: int,
        channels: tuple[int, ...],
        embedding: int,
        classes: int,
        rdsbn: bool,
        gate: bool,
        mdif_domains: int = 0,
        branches: int = 1,
    ) -> None:
        super().__init__()
        if branches > 1 and not rdsbn:
            raise ValueError("several norm branches need rdsbn (domain-specific norms)")
        self.rdsbn = rdsbn
        self.convs = nn.ModuleList()
        self.norms = nn.ModuleList()
        width = in_channels
        for c in channels:
            self.convs.append(nn.Conv2d(width, c, 3, padding=1, bias=False))
            self.norms.append(RDSBN2d(c, branches, gate) if rdsbn else nn.BatchNorm2d(c))
            width = c
        self.embed = nn.Linear(width, embedding)
        self.neck = DSBN1d(embedding, branches)
        self.classifier = nn.Linear(embedding, classes, bias=False)
        self.mdif: MDIF | None = None
        if mdif_domains:  # shared: attention and GCN; local: the GCN-BN and its classifier
            self.mdif = MDIF(embedding, mdif_domains)
            self.gcn_neck = DSBN1d(embedding, 1)
            self.gcn_classifier = nn.Linear(embedding, classes, bias=False)

    def embedding(self, x: Tensor, branch: int = 0) -> Tensor:
        """The GAP embedding (before the neck): the triplet loss's feature."""
        for conv, norm in zip(self.convs, self.norms, strict=True):
            x = conv(x)
            x = norm(x, branch) if self.rdsbn else norm(x)
            x = F.max_pool2d(F.relu(x), 2, ceil_mode=True)
        return cast(Tensor, self.embed(x.mean(dim=(2, 3))))

    def forward(self, x: Tensor, branch: int = 0) -> tuple[Tensor, Tensor, Tensor]:
        """(embedding, neck feature, logits)."""
        f = self.embedding(x, branch)
        neck = self.neck(f, branch)
        return f, neck, self.classifier(neck)

    def fused(self, f: Tensor, agents: Tensor, domain: int, batch_agent: bool = True) -> Tensor:
        """GCN-BN'd MDIF features of embeddings ``f`` of one ``domain``, each sample linked to
        that domain's agent: in training the batch's own agent (with gradient) and the others the
        broadcast ones; at test (``batch_agent=False``) the broadcast running agents only (§1.2)."""
        assert self.mdif is not None
        links = torch.full((f.shape[0],), domain, dtype=torch.long, device=f.device)
        nodes = self.mdif.agents(f, links, agents) if batch_agent else agents
        return cast(Tensor, self.gcn_neck(self.mdif(f, nodes, links), 0))

    @torch.no_grad()
    def extract(
        self, x: Tensor, agents: Tensor | None = None, domain: int = 0, branch: int = 0
    ) -> tuple[Tensor, Tensor | None]:
        """L2-normalised (neck, MDIF) features in eval mode, in fixed batches; the MDIF ones
        (the retrieval features, with ``agents``) only with MDIF."""
        was = self.training
        self.eval()
        necks, gcns = [], []
        for b in x.split(EVAL_BATCH):
            f, neck, _ = self(b, branch)
            necks.append(F.normalize(neck, dim=1))
            if self.mdif is not None and agents is not None:
                gcns.append(F.normalize(self.fused(f, agents, domain, False), dim=1))
        self.train(was)
        empty = x.new_zeros(0, self.classifier.in_features)
        neck_all = torch.cat(necks) if necks else empty
        return neck_all, (torch.cat(gcns) if gcns else None)

    def features(self, x: Tensor, agents: Tensor | None = None, domain: int = 0) -> Tensor:
        """The retrieval features: MDIF's with agents, else the neck's."""
        neck, gcn = self.extract(x, agents, domain)
        return neck if gcn is None else gcn


def _branch(model: nn.Module, patterns: tuple[str, ...]) -> dict[str, Tensor]:
    """The float local entries a domain's features depend on (all but the classifiers), less the
    frozen neck biases: constant 0 on every client, the server's model holds them already."""
    frozen = {k for k, q in model.named_parameters() if not q.requires_grad}
    return {
        k: v
        for k, v in model.state_dict().items()
        if is_local(k, v, patterns)
        and v.is_floating_point()
        and k not in frozen
        and not k.startswith(("classifier.", "gcn_classifier."))
    }


@dataclass(frozen=True)
class TargetBranch:
    """The target client reports its norm/neck entries; the server passes them on."""

    patterns: tuple[str, ...]
    name: str = TARGET_BRANCH
    everyone: bool = True

    def report(
        self, model: nn.Module, data: DomainClientData, state: State, config: TrainConfig
    ) -> tuple[Arrays, Metrics]:
        marker = torch.tensor(1.0 if data.is_target else 0.0)
        arrays = {IS_TARGET: marker}
        if data.is_target:
            arrays.update({k: v.detach().clone() for k, v in _branch(model, self.patterns).items()})
        return arrays, {}

    def reduce(
        self, reports: Mapping[int, Arrays], memory: Any, aggregate: Aggregate, round: int
    ) -> tuple[Arrays, Any, Metrics]:
        targets = [c for c in sorted(reports) if float(reports[c][IS_TARGET]) == 1.0]
        if not targets:
            raise ValueError("the target's client did not report its branch this round")
        # Several target clients (a split target domain): their entries averaged.
        keys = [k for k in reports[targets[0]] if k != IS_TARGET]
        broadcast = {
            k: torch.stack([reports[c][k].float() for c in targets]).mean(dim=0) for k in keys
        }
        broadcast[IS_TARGET] = torch.tensor(float(len(targets)))
        return broadcast, {"round": round}, {"target_clients": float(len(targets))}


@dataclass(frozen=True)
class Agents:
    """MDIF's exchange (§1.4): each client reports its domain's agent (the attention-weighted
    centre of its embeddings, over all its images); the server keeps a running agent per domain
    (``r ← 0.9 r + 0.1 a``, the first report as is; a domain's clients averaged) and broadcasts
    them all, with a mask of the domains reported so far (the others are 0)."""

    name: str = AGENTS
    everyone: bool = True

    def report(
        self, model: nn.Module, data: DomainClientData, state: State, config: TrainConfig
    ) -> tuple[Arrays, Metrics]:
        net = cast(ReidNet, model)
        assert net.mdif is not None
        was = net.training
        net.eval()
        with torch.no_grad():
            f = torch.cat([net.embedding(b) for b in data.images.split(EVAL_BATCH)])
            agent = domain_agent(f, net.mdif.scores(f))
        net.train(was)
        arrays = {
            "agent": agent,
            "domain": torch.tensor(float(data.domain)),
            "num_domains": torch.tensor(float(data.num_domains)),
        }
        return arrays, {}

    def reduce(
        self, reports: Mapping[int, Arrays], memory: Any, aggregate: Aggregate, round: int
    ) -> tuple[Arrays, Any, Metrics]:
        first = next(iter(reports.values()))
        num_domains = int(first["num_domains"])
        memory = memory or {
            AGENTS: torch.zeros(num_domains, first["agent"].shape[0]),
            KNOWN: torch.zeros(num_domains),
        }
        agents, known = memory[AGENTS].clone(), memory[KNOWN].clone()
        for d in range(num_domains):
            mine = [r["agent"].float() for r in reports.values() if int(r["domain"]) == d]
            if not mine:
                continue
            new = torch.stack(mine).mean(dim=0)
            agents[d] = new if known[d] == 0 else 0.9 * agents[d] + 0.1 * new
            known[d] = 1.0
        memory = {AGENTS: agents, KNOWN: known}
        return dict(memory), memory, {"agents_known": float(known.sum())}


@dataclass(frozen=True)
class ReidWorkload:
    """RDSBN-style local norms, CE + triplet on sources, DBSCAN pseudo-labels on the target."""

    reads: ClassVar[str] = "domains"
    headline: ClassVar[str] = "mAP"
    params: ReidWorkloadParams = field(default_factory=ReidWorkloadParams)

    @property
    def local(self) -> tuple[str, ...]:
        """The classifiers always (disjoint label spaces: FedPav); with ``rdsbn`` every norm
        layer too (FedBN); without it the norms are shared, as in plain FedAvg."""
        heads = ("classifier.*", "gcn_classifier.*")
        return ("norms.*", "neck.*", "gcn_neck.*", *heads) if self.params.rdsbn else heads

    @property
    def exchanges(self) -> tuple[Exchange, ...]:
        # Without local norms the server's model is the target's: no branch to pass on.
        branch = (TargetBranch(self.local),) if self.params.rdsbn else ()
        return ((Agents(),) if self.params.mdif else ()) + branch

    def check(self, scenario: Scenario) -> list[str]:
        """MDIF fuses several source domains: at least two must take part."""
        if not self.params.mdif:
            return []
        data = DATASETS.params(scenario.data.dataset)
        partition = scenario.data.partition.options.get("sources")
        sources = len(set(partition)) if partition else getattr(data, "sources", 0)
        if sources >= 2:
            return []
        return [
            f"workload.mdif fuses several source domains: it needs at least 2 taking part, got "
            f"{sources}; raise data.sources (or data.partition.sources) or set workload.mdif=false"
        ]

    def build_model(self, dataset: DomainDataset, generator: torch.Generator) -> nn.Module:
        p = self.params
        most = max(
            (
                int(torch.unique(dataset.identities[dataset.train_rows(d)]).numel())
                for d in range(dataset.num_domains)
                if d != dataset.target
            ),
            default=0,
        )
        if most > p.max_identities:
            raise UserError(
                f"workload.max_identities={p.max_identities} is below the {most} people of a "
                "source domain (a client may hold them all); raise workload.max_identities"
            )
        if p.mdif and dataset.num_sources < 2:
            raise UserError(
                f"workload.mdif fuses several source domains: it needs data.sources >= 2, got "
                f"{dataset.num_sources}; raise data.sources or set workload.mdif=false"
            )
        with torch.device("meta"):
            model = ReidNet(
                dataset.input_shape[0],
                p.channels,
                p.embedding,
                p.max_identities,
                p.rdsbn,
                p.gate,
                dataset.num_domains if p.mdif else 0,
            )
        return init_parameters(model.to_empty(device="cpu"), generator)

    # ---- training ---------------------------------------------------------------------------

    def fit(
        self, model: nn.Module, data: DomainClientData, state: State, config: TrainConfig
    ) -> Metrics:
        net = cast(ReidNet, model)
        if not data.is_target:
            n_cls = data.num_identities
            if n_cls > self.params.max_identities:
                raise UserError(
                    f"client {config.client} holds {n_cls} people, more than "
                    f"workload.max_identities={self.params.max_identities}"
                )
            return self._train(net, data, data.identities, n_cls, config)
        # The target: adapt its norms, cluster, train on the clusters; with nothing to train on
        # it abstains (TRAINED = 0: the round goes on with the sources' updates only).
        self._adapt_norms(net, data.images)
        if not self.params.pseudo_labels:
            return {TRAINED: 0.0}
        teacher = mean_teacher.teacher_of(net, state) if self.params.mean_teacher else None
        labels, n_cls, metrics = self._cluster(net, teacher, data, state, config)
        if n_cls == 0:
            return {**metrics, TRAINED: 0.0}
        trained = self._train(net, data, labels, n_cls, config, teacher, state)
        if teacher is not None:
            mean_teacher.save(teacher, state)
        return {**metrics, **trained}

    @torch.no_grad()
    def _adapt_norms(self, net: ReidNet, images: Tensor) -> None:
        """One no-grad train-mode pass: the target's running statistics follow its images."""
        net.train()
        for batch in images.split(self.params.batch_size):
            if len(batch) > 1:
                f, _, _ = net(batch)
                if net.mdif is not None:
                    net.gcn_neck(f, 0)  # its statistics before the first fusion

    def _cluster(
        self,
        net: ReidNet,
        teacher: nn.Module | None,
        data: DomainClientData,
        state: State,
        config: TrainConfig,
    ) -> tuple[Tensor, int, Metrics]:
        """Pseudo-labels of the target's images (kept in ``state``) from the teacher's features
        (the model's without one), and the classifiers' rows: the clusters' centroids."""
        # Imported here: scikit-learn's DBSCAN brings sklearn.neighbors, which a run without a
        # target never needs (tests/architecture/test_start_up.py).
        from clients.reid.pseudo_labels import pseudo_labels

        p = self.params
        images = data.images
        seer = cast(ReidNet, teacher) if teacher is not None else net
        neck, fused = seer.extract(images, _agents(net, config), data.domain)
        feats = neck if fused is None else fused
        eps = p.eps  # None: chosen from this round's distances (see the module docstring)
        found = pseudo_labels(
            feats.cpu().numpy(),
            eps=eps,
            distance=p.distance,
            min_samples=p.min_samples,
            rho=p.rho,
            k1=p.k1,
            k2=p.k2,
        )
        state["eps"] = torch.tensor(found.eps, dtype=torch.float64)
        labels = torch.tensor(found.labels, dtype=torch.int64, device=images.device)
        dropped = max(found.num_clusters - p.max_identities, 0)
        labels = torch.where(labels >= p.max_identities, IGNORE, labels)
        n_cls = min(found.num_clusters, p.max_identities)
        state["pseudo_labels"] = labels.cpu().clone()
        metrics: Metrics = {
            "clusters": float(n_cls),
            "outliers": float(found.num_outliers),
            "no_clusters": 0.0 if found.found else 1.0,
            "clusters_dropped": float(dropped),
        }
        if n_cls:
            with torch.no_grad():
                keep = labels >= 0
                for model in (net, seer):  # the student's and the teacher's (MMT does both)
                    heads = [(model.classifier, neck)]
                    if fused is not None:
                        heads.append((model.gcn_classifier, fused))
                    for head, x in heads:
                        centres = torch.zeros(n_cls, x.shape[1], device=x.device)
                        centres.index_add_(0, labels[keep], x[keep])
                        head.weight[:n_cls] = F.normalize(centres, dim=1)
        return labels, n_cls, metrics

    def _train(
        self,
        net: ReidNet,
        data: DomainClientData,
        labels: Tensor,
        n_cls: int,
        config: TrainConfig,
        teacher: nn.Module | None = None,
        state: State | None = None,
    ) -> Metrics:
        """Local epochs on the labelled (or clustered) images; with a ``teacher``, MMT's mix of
        hard and soft losses, and the teacher's EMA step after each of the student's."""
        p = self.params
        images, agents = data.images, _agents(net, config)
        rows = torch.nonzero(labels != IGNORE).flatten()
        net.train()
        optimizer: torch.optim.Optimizer = torch.optim.Adam(
            [q for q in net.parameters() if q.requires_grad], lr=p.lr, weight_decay=p.weight_decay
        )
        model, optimizer = config.training.setup(
            net, optimizer, len(rows), p.batch_size, config.generator
        )
        total, seen = 0.0, 0
        for batches in config.training.passes(p.epochs, None, images.device):
            for idx in batches:
                if idx.numel() < 2:  # BatchNorm needs two samples
                    continue
                chosen = rows[idx]
                x, y = images[chosen], labels[chosen]
                outputs = _outputs(model, net, x, agents, data.domain, n_cls)
                ce = torch.stack(
                    [cross_entropy_ls(z, y, p.label_smoothing) for z in outputs.logits]
                ).sum()
                zero = outputs.embedding.new_zeros(())
                tri = batch_hard_triplet(outputs.embedding, y) if p.triplet else zero
                if teacher is None:
                    loss = ce + tri
                else:
                    with torch.no_grad():
                        taught = _outputs(
                            teacher, cast(ReidNet, teacher), x, agents, data.domain, n_cls
                        )
                    soft_ce = torch.stack(
                        [
                            soft_cross_entropy(z, t)
                            for z, t in zip(outputs.logits, taught.logits, strict=True)
                        ]
                    ).sum()
                    soft_tri = soft_triplet(outputs.embedding, taught.embedding, y)
                    w_ce, w_tri = p.soft_ce_weight, p.soft_triplet_weight
                    loss = (1 - w_ce) * ce + (1 - w_tri) * tri + w_ce * soft_ce + w_tri * soft_tri
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                if teacher is not None and state is not None:
                    mean_teacher.update(teacher, net, state, p.teacher_momentum)
                total, seen = total + float(loss.detach()) * idx.numel(), seen + idx.numel()
        return {"train_loss": total / max(seen, 1), TRAINED: float(len(rows))}

    # ---- evaluation -------------------------------------------------------------------------

    def evaluate(
        self, model: nn.Module, data: DomainClientData, state: State, config: TrainConfig
    ) -> Metrics:
        """A source client's retrieval on its held-out people (none without them)."""
        if data.retrieval is None:
            return {}
        net = cast(ReidNet, model)
        return _retrieval(net, data.retrieval, config.device, _agents(net, config), data.domain)

    def evaluate_central(
        self,
        model: nn.Module,
        test: RetrievalSet,
        config: TrainConfig,
        memory: Mapping[str, Any],
    ) -> Metrics:
        """The target's retrieval, with its branch as last reported (none before that); with
        shared norms (no ``rdsbn``) the global model is the target's."""
        if self.params.rdsbn:
            branch = config.received.get(TARGET_BRANCH)
            if branch is None:
                return {}
            entries = {k: v for k, v in branch.items() if k != IS_TARGET}
            model = copy.deepcopy(model)
            model.load_state_dict(entries, strict=False)
        net = cast(ReidNet, model)
        target = net.mdif.num_domains - 1 if net.mdif is not None else 0
        return _retrieval(net, test, config.device, _agents(net, config), target)


@dataclass(frozen=True)
class _Outputs:
    embedding: Tensor  # the GAP embedding (the triplet losses' feature)
    logits: tuple[Tensor, ...]  # the classifier's, and with MDIF the fused branch's (§1.2)


def _outputs(
    model: nn.Module, net: ReidNet, x: Tensor, agents: Tensor | None, domain: int, n_cls: int
) -> _Outputs:
    """One forward pass of ``model`` (``net`` or its training wrapper), logits cut to the
    client's ``n_cls`` identities."""
    f, _, logits = model(x)
    heads = [logits[:, :n_cls]]
    if agents is not None:
        heads.append(net.gcn_classifier(net.fused(f, agents, domain))[:, :n_cls])
    return _Outputs(f, tuple(heads))


def _agents(net: ReidNet, config: TrainConfig) -> Tensor | None:
    """MDIF's agents (D, d): the broadcast ones, zeros before the first (None without MDIF)."""
    if net.mdif is None:
        return None
    broadcast = config.received.get(AGENTS, {}).get(AGENTS)
    if broadcast is None:
        return torch.zeros(net.mdif.num_domains, net.mdif.dim, device=config.device)
    return broadcast.to(config.device)


def _retrieval(
    net: ReidNet,
    test: RetrievalSet,
    device: torch.device,
    agents: Tensor | None = None,
    domain: int = 0,
) -> Metrics:
    scores = retrieval_scores(
        net.features(test.query_images, agents, domain),
        test.query_identities,
        test.query_cameras,
        net.features(test.gallery_images, agents, domain),
        test.gallery_identities,
        test.gallery_cameras,
        ranks=RANKS,
        device=device,
    )
    metrics = {f"rank{k}": v for k, v in scores.cmc.items()}
    metrics["mAP"] = scores.mean_ap
    return metrics


@WORKLOADS.register(REID, ReidWorkloadParams)
def reid(p: ReidWorkloadParams) -> ReidWorkload:
    """Multi-source domain-adaptive re-ID: local (R)DSBN, CE + triplet, target pseudo-labels."""
    return ReidWorkload(p)
