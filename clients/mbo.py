"""Federated offline model-based optimisation (MBO): each client's private proxy of the score.

Kolli et al. 2023, "Conflict-averse gradient optimization of ensembles for effective offline
model-based optimization", federated: each client trains one ensemble member (a proxy MLP) on its
own offline (design, score) pairs, and the member never leaves the client. The server ascends a
batch of candidate designs; at each step every client returns ∇ of its proxy at the designs and
the server combines the gradients per design (mean, min, MGDA, CAGrad: the aggregator registry).
An ordinary workload of the contract: the proxy is the client's model, kept whole on the client
(``local = ("*",)``), and the design ascent is one exchange, ``ascent``: in its first round each
client fits its proxy and reports its best offline designs, and the server starts from the best
``designs`` of them; in every later round each client reports its proxy's values and gradients
at the broadcast designs, and the scenario's pipeline (attack -> pre-aggregators -> aggregator ->
server optimiser) combines them design by design, each design with its own pipeline state. The
step is added to the design, so ``strategy.server_opt.lr`` is the ascent step size. Discrete
designs live in logit space, as in design-baselines' gradient ascent; continuous ones as they are.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, NonNegativeFloat, PositiveFloat, PositiveInt
from torch import Tensor, nn

from clients.workload import (
    Aggregate,
    Arrays,
    Metrics,
    State,
    TrainConfig,
    init_parameters,
)
from fedsim.mbo_tasks import MboClientData, MboTask, percentile_scores, to_logits
from fedsim.registry import WORKLOADS, Params


class MboParams(Params):
    """The clients' proxies (design-baselines' MLP, smaller) and the server's batch of designs."""

    hidden: PositiveInt = 64
    depth: PositiveInt = 2  # hidden layers
    epochs: PositiveInt = 50
    batch_size: PositiveInt = 128
    lr: PositiveFloat = 1e-3  # Adam
    weight_decay: NonNegativeFloat = 0.0
    # candidate designs the server ascends; they start as the best designs of the offline data
    designs: int = Field(64, ge=1, le=4096)


class Proxy(nn.Module):
    """MLP: flat design -> predicted (standardised) score; LeakyReLU, as design-baselines."""

    def __init__(self, inputs: int, hidden: int, depth: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = inputs
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.LeakyReLU()]
            width = hidden
        layers.append(nn.Linear(width, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x).squeeze(-1)


@dataclass(frozen=True)
class MboWorkload:
    """Proxies trained by Adam on MSE; gradients of them at the server's designs."""

    reads: ClassVar[str] = "mbo_task"
    headline: ClassVar[str] = "p100"
    local: tuple[str, ...] = ("*",)  # the proxy never leaves its client
    params: MboParams = field(default_factory=MboParams)

    @property
    def exchanges(self) -> tuple[Ascent, ...]:
        return (Ascent(self),)

    def build_model(self, dataset: MboTask, generator: torch.Generator) -> nn.Module:
        """A fresh proxy of the task's designs (the client's own, never shared)."""
        return self.build_proxy(dataset, generator)

    def fit(self, model: nn.Module, data: Any, state: State, config: TrainConfig) -> Metrics:
        """Nothing to train in the model rounds: the proxy is fitted in the ascent's first
        report, and nothing of it is shared."""
        return {}

    def evaluate(self, model: nn.Module, data: Any, state: State, config: TrainConfig) -> Metrics:
        """The fitted proxy's MSE and Spearman correlation on the client's held-out rows."""
        if FITTED not in state or len(data.y_val) < 2:  # val_fraction 0 holds out nothing
            return {}
        x, y = self.rows(data.task, data.x_val, data.y_val)
        return self.evaluate_proxy(model, x, y)

    def evaluate_central(
        self, model: nn.Module, test: MboTask, config: TrainConfig, memory: Mapping[str, Any]
    ) -> Metrics:
        """Normalised oracle scores of the designs the ascent has reached."""
        designs = config.received.get(ASCENT, {}).get("designs")
        if designs is None:
            return {}
        best = float(test.normalised(test.best_offline))
        return {**self.scores(test, designs), "best_offline": best}

    def rows(self, task: MboTask, x: Any, y: Any) -> tuple[Tensor, Tensor]:
        """Designs encoded as the proxies see them, scores standardised."""
        return self.encode(task, x), self.standardise(task, y)

    def encode(self, task: MboTask, designs: Any) -> Tensor:
        """Designs as the proxies see them and the server moves them: flat float32 rows.

        Discrete one-hot designs become log-probabilities (``to_logits``), continuous ones stay.
        """
        x = np.asarray(designs, dtype=np.float32)
        if len(task.dim) == 2:  # (length, alphabet) one-hot sequences
            x = to_logits(x)
        return torch.from_numpy(np.ascontiguousarray(x.reshape(len(x), -1)))

    def scores(self, task: MboTask, designs: Tensor) -> dict[str, float]:
        """Normalised oracle scores (``p100``, ``p50``) of flat designs in the encoded space."""
        x = designs.detach().cpu().numpy().reshape(len(designs), *task.dim)
        return percentile_scores(task, x)

    def standardise(self, task: MboTask, y: Any) -> Tensor:
        """Scores standardised by the offline data's mean and std: two numbers every client may
        know (a Design-Bench dataset's normalisation), so that all proxies speak one scale."""
        mean, std = float(task.offline_y.mean()), float(task.offline_y.std())
        return torch.as_tensor((np.asarray(y) - mean) / std, dtype=torch.float32)

    def build_proxy(self, task: MboTask, generator: torch.Generator) -> nn.Module:
        """A fresh CPU proxy whose parameters are drawn from ``generator`` only."""
        with torch.device("meta"):
            proxy = Proxy(int(np.prod(task.dim)), self.params.hidden, self.params.depth)
        return init_parameters(proxy.to_empty(device="cpu"), generator)

    def fit_proxy(
        self, proxy: nn.Module, x: Tensor, y: Tensor, generator: torch.Generator
    ) -> dict[str, float]:
        """Train ``proxy`` in place on encoded designs ``x`` and standardised scores ``y``."""
        p = self.params
        optimiser = torch.optim.Adam(proxy.parameters(), lr=p.lr, weight_decay=p.weight_decay)
        proxy.train()
        total, seen = 0.0, 0
        for _ in range(p.epochs):
            order = torch.randperm(len(x), generator=generator).to(x.device)
            total, seen = 0.0, 0
            for start in range(0, len(x), p.batch_size):
                batch = order[start : start + p.batch_size]
                loss = F.mse_loss(proxy(x[batch]), y[batch])
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                total, seen = total + loss.item() * len(batch), seen + len(batch)
        return {"proxy_train_mse": total / max(seen, 1)}

    @torch.no_grad()
    def evaluate_proxy(self, proxy: nn.Module, x: Tensor, y: Tensor) -> dict[str, float]:
        """MSE and Spearman rank correlation of the proxy on held-out designs."""
        if len(x) < 2:
            return {}
        proxy.eval()
        pred = proxy(x)
        return {
            "proxy_val_mse": float(F.mse_loss(pred, y)),
            "proxy_val_spearman": _spearman(pred, y),
        }

    def gradients(self, proxy: nn.Module, designs: Tensor) -> tuple[Tensor, Tensor]:
        """The proxy's values (m,) and its gradients (m, D) at flat designs (m, D)."""
        proxy.eval()
        x = designs.detach().clone().requires_grad_(True)
        values = proxy(x)
        (grads,) = torch.autograd.grad(values.sum(), x)
        return values.detach(), grads


ASCENT = "ascent"  # the exchange's name: the key of its broadcast in ``config.received``
FITTED = "fitted"  # a client's state entry once its proxy is trained


@dataclass(frozen=True)
class Ascent:
    """The design ascent as an exchange: proxies' gradients up, ascended designs down."""

    mbo: MboWorkload
    name: str = ASCENT
    everyone: bool = True  # every client answers every step

    def report(
        self, model: nn.Module, data: MboClientData, state: State, config: TrainConfig
    ) -> tuple[Arrays, Metrics]:
        designs = config.received.get(self.name, {}).get("designs")
        if FITTED not in state:  # this client's first step: fit its proxy, kept local
            x, y = self.mbo.rows(data.task, data.x, data.y)
            metrics = self.mbo.fit_proxy(model, x, y, config.generator)
            state[FITTED] = torch.ones(())
            if designs is None:  # the ascent has no designs yet: this client's best ones
                order = torch.argsort(y, descending=True, stable=True)[: self.mbo.params.designs]
                return {"designs": x[order].contiguous(), "scores": y[order].contiguous()}, metrics
        if designs is None:
            raise RuntimeError("the ascent has no designs, but this client's proxy is fitted")
        values, grads = self.mbo.gradients(model, designs)
        return {"values": values, "gradients": grads}, {}

    def reduce(
        self, reports: Mapping[int, Arrays], memory: Any, aggregate: Aggregate, round: int
    ) -> tuple[Arrays, Any, Metrics]:
        clients = sorted(reports)  # arrival order depends on the engine
        if memory is None:  # the first step: start from the best designs the clients reported
            designs = torch.cat([reports[c]["designs"] for c in clients])
            scores = torch.cat([reports[c]["scores"] for c in clients])
            order = torch.argsort(scores, descending=True, stable=True)[: self.mbo.params.designs]
            start = designs[order].clone()
            return {"designs": start}, {"designs": start, "states": [None] * len(start)}, {}
        designs, states = memory["designs"], list(memory["states"])
        for c in clients:
            if tuple(reports[c]["gradients"].shape) != tuple(designs.shape):
                got = tuple(reports[c]["gradients"].shape)
                raise ValueError(f"client {c} sent gradients of shape {got}, not {designs.shape}")
        values = torch.stack([reports[c]["values"] for c in clients])  # (k, m)
        grads = torch.stack([reports[c]["gradients"] for c in clients])  # (k, m, D)
        moved = designs.clone()
        for j in range(len(designs)):  # each design with its own pipeline state
            step, states[j] = aggregate(grads[:, j], clients, states[j], values[:, j])
            moved[j] += step
        memory = {"designs": moved, "states": states}
        return {"designs": moved}, memory, ensemble_metrics(values, grads)


def ensemble_metrics(values: Tensor, grads: Tensor) -> dict[str, float]:
    """How much the proxies agree: their mean and worst prediction, and gradient conflict."""
    out = {"proxy_mean": float(values.mean()), "proxy_min": float(values.min(dim=0).values.mean())}
    k = grads.shape[0]
    if k > 1:
        unit = torch.nn.functional.normalize(grads, dim=2)  # (k, m, D)
        cos = torch.einsum("imd,jmd->mij", unit, unit)
        pairs = torch.triu_indices(k, k, offset=1)
        # share of client pairs whose gradients point against each other, over all designs
        out["gradient_conflict"] = float((cos[:, pairs[0], pairs[1]] < 0).float().mean())
    return out


def _spearman(a: Tensor, b: Tensor) -> float:
    """Spearman's rank correlation (no tie correction: scores are real-valued)."""
    ra = a.argsort().argsort().double()
    rb = b.argsort().argsort().double()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra @ rb) / (ra.norm() * rb.norm()).clamp_min(1e-300))


@WORKLOADS.register("mbo", MboParams)
def mbo(p: MboParams) -> MboWorkload:
    """Federated offline MBO: client proxies, server ascent on designs (data: an MBO task)."""
    return MboWorkload(params=p)
