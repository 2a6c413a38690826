"""Federated offline model-based optimisation (MBO): each client's private proxy of the score.

Kolli et al. 2023, "Conflict-averse gradient optimization of ensembles for effective offline
model-based optimization", federated: each client trains one ensemble member (a proxy MLP) on its
own offline (design, score) pairs, and the member never leaves the client. The server ascends a
batch of candidate designs; at each step every client returns ∇ of its proxy at the designs and
the server combines the gradients per design (mean, min, MGDA, CAGrad: the aggregator registry).
This module is the client side and knows nothing of Flower: the proxy, its training, its
gradients, and the designs' encoding (discrete designs live in logit space, as in
design-baselines' gradient ascent; continuous ones as they are).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, NonNegativeFloat, PositiveFloat, PositiveInt
from torch import Tensor, nn

from clients.mbo_tasks import MboTask, percentile_scores, to_logits
from clients.workload import init_parameters
from fedsim.data import load_data, split_among_clients
from fedsim.errors import UserError
from fedsim.registry import WORKLOADS, Component, Params


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


@dataclass(frozen=True, eq=False)
class MboFederation:
    """An MBO task and which offline rows each client holds (indices into ``task.offline_*``)."""

    task: MboTask
    train: list[Tensor]
    val: list[Tensor]

    def client_sizes(self) -> list[int]:
        return [len(t) for t in self.train]


def mbo_federation(
    data: Component, partitioner: Component, num_clients: int, seed: int, val_fraction: float
) -> MboFederation:
    """The offline data of the MBO task ``data`` names, split among the clients (cached)."""
    return _mbo_federation(
        data.model_dump_json(), partitioner.model_dump_json(), num_clients, seed, val_fraction
    )


@functools.lru_cache(maxsize=2)
def _mbo_federation(
    data_json: str, partitioner_json: str, num_clients: int, seed: int, val_fraction: float
) -> MboFederation:
    data = Component.model_validate_json(data_json)
    task = load_data(data)
    if not isinstance(task, MboTask):
        raise UserError(
            f"workload mbo needs an offline MBO task as data, got {data.name!r}; "
            "use data: {name: tfbind8_like} or {name: mbo_continuous}"
        )
    partitioner = Component.model_validate_json(partitioner_json)
    train, val = split_among_clients(task.offline_y, partitioner, num_clients, seed, val_fraction)
    return MboFederation(task, train, val)


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

    params: MboParams

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


def _spearman(a: Tensor, b: Tensor) -> float:
    """Spearman's rank correlation (no tie correction: scores are real-valued)."""
    ra = a.argsort().argsort().double()
    rb = b.argsort().argsort().double()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra @ rb) / (ra.norm() * rb.norm()).clamp_min(1e-300))


@WORKLOADS.register("mbo", MboParams)
def mbo(p: MboParams) -> MboWorkload:
    """Federated offline MBO: client proxies, server ascent on designs (data: an MBO task)."""
    return MboWorkload(p)
