"""DAML's two-phase federated meta step as two exchanges, and the feature statistics they carry.

``meta_train`` (phase 1): each client reports ∇L_tr of its batches at θ (and, with ``mixup:
stats``, per-expert per-class feature sums, squares and counts of its domains); the server
broadcasts the sum of the gradients (clients form θ' = θ − meta_step · sum from it) and the
pooled statistics. ``meta_update`` (phase 2): each client reports its phase-1 gradient (kept in
its state) + ∇_θ' L_obj at θ' on fresh batches + its share of the weight decay; the server sums
them and takes an SGD step with momentum (the momentum buffer is its memory), broadcasting the
step, which every client's next ``fit`` and the central evaluation apply. See
``clients/daml/workload.py`` for the losses.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from clients.workload import Aggregate, Arrays, Metrics, State, TrainConfig
from fedsim.opendg_data import SOURCES, OpenDGClientData

if TYPE_CHECKING:
    from clients.daml.workload import DamlWorkload

META_TRAIN = "meta_train"  # phase 1: meta-train gradients (and feature statistics) up, sum down
META_UPDATE = "meta_update"  # phase 2: meta-objective gradients up, the SGD step down
ROUND = "round"  # a broadcast's round, so that a step is applied once
GRAD, STEP, MOMENTUM = "grad.", "step.", "momentum."
STASH = "meta_train_grad."  # a client's phase-1 gradient, kept for phase 2


@dataclass(frozen=True)
class MetaTrain:
    """Phase 1: each client's ∇L_tr at θ (and feature statistics) up; their sum down."""

    daml: DamlWorkload
    name: str = META_TRAIN
    everyone: bool = True

    def report(
        self, model: nn.Module, data: OpenDGClientData, state: State, config: TrainConfig
    ) -> tuple[Arrays, Metrics]:
        seeds = _seeds(config)
        stats = config.received.get(META_TRAIN)  # last round's statistics
        theta = dict(model.named_parameters())
        grads, metrics = self.daml.train_gradient(model, theta, data, stats, seeds[0])
        out = {GRAD + n: g for n, g in zip(theta, grads, strict=True)}
        state.update({STASH + n: g.detach() for n, g in zip(theta, grads, strict=True)})
        if self.daml.params.mixup == "stats":
            out.update(self.daml.feature_stats(model, data, seeds[0]))
        return out, metrics

    def reduce(
        self, reports: Mapping[int, Arrays], memory: Any, aggregate: Aggregate, round: int
    ) -> tuple[Arrays, Any, Metrics]:
        clients = sorted(reports)
        names = [k for k in reports[clients[0]] if k.startswith(GRAD)]
        out: Arrays = {ROUND: torch.tensor(float(round))}
        for k in names:
            out[k] = torch.stack([reports[c][k] for c in clients]).sum(dim=0)
        if any(k.startswith("stats_sum.") for k in reports[clients[0]]):
            memory = pooled_stats(reports, memory)
            out.update(memory)
        return out, memory, {}


@dataclass(frozen=True)
class MetaUpdate:
    """Phase 2: each client's ∇L_tr(θ) + ∇_θ' L_obj(θ') + its weight decay up; the step down."""

    daml: DamlWorkload
    name: str = META_UPDATE
    everyone: bool = True

    def report(
        self, model: nn.Module, data: OpenDGClientData, state: State, config: TrainConfig
    ) -> tuple[Arrays, Metrics]:
        p = self.daml.params
        seeds = _seeds(config)
        theta = dict(model.named_parameters())
        if p.method == "daml":  # phase 1's gradient, kept by this client
            first = config.received.get(META_TRAIN, {})
            if (
                not first
                or int(first[ROUND]) != config.round
                or STASH + next(iter(theta)) not in state
            ):
                raise RuntimeError("meta_update: this client has no meta_train gradient this round")
            grads = [state.pop(STASH + n) for n in theta]
            fast = {n: t.detach() - p.meta_step * first[GRAD + n] for n, t in theta.items()}
            obj, metrics = self.daml.objective_gradient(
                model, fast, data, _stats_of(first), seeds[1]
            )
            grads = [a + b for a, b in zip(grads, obj, strict=True)]
        else:  # no meta step: the plain gradient
            grads, metrics = self.daml.train_gradient(model, theta, data, None, seeds[0])
        share = len(data.domains) / data.num_sources  # the clients' shares sum to one decay
        out = {
            GRAD + n: g + p.weight_decay * share * t.detach()
            for (n, t), g in zip(theta.items(), grads, strict=True)
        }
        return out, metrics

    def reduce(
        self, reports: Mapping[int, Arrays], memory: Any, aggregate: Aggregate, round: int
    ) -> tuple[Arrays, Any, Metrics]:
        p = self.daml.params
        clients = sorted(reports)
        memory = dict(memory or {})
        out: Arrays = {ROUND: torch.tensor(float(round))}
        norm = 0.0
        for k in reports[clients[0]]:
            name = k[len(GRAD) :]
            g = torch.stack([reports[c][k] for c in clients]).sum(dim=0)
            norm += float(g.pow(2).sum())
            buf = memory.get(MOMENTUM + name)
            buf = g.clone() if buf is None else p.momentum * buf + g
            memory[MOMENTUM + name] = buf
            direction = g + p.momentum * buf if p.nesterov else buf
            out[STEP + name] = -p.lr * direction
        return out, memory, {"gradient_norm": norm**0.5}


def pooled_stats(reports: Mapping[int, Arrays], memory: Any) -> Arrays:
    """Per-domain, per-expert, per-class feature means and variances and class frequencies,
    pooled over the clients that hold the domain; a domain nobody reported keeps its last."""
    first = reports[min(reports)]
    example = next(v for k, v in first.items() if k.startswith("stats_sum."))
    experts, classes, dim = example.shape
    domains = sorted(
        {int(k.split(".")[1]) for r in reports.values() for k in r if k.startswith("stats_sum.")}
    )
    if memory:
        mean, var = memory["stats_mean"].clone(), memory["stats_var"].clone()
        freq, known = memory["stats_freq"].clone(), memory["stats_known"].clone()
    else:
        mean = torch.zeros(SOURCES, experts, classes, dim)
        var = torch.ones(SOURCES, experts, classes, dim)
        freq, known = torch.zeros(SOURCES, classes), torch.zeros(SOURCES)
    for d in domains:
        parts = [r for r in reports.values() if f"stats_sum.{d}" in r]
        s = torch.stack([r[f"stats_sum.{d}"] for r in parts]).sum(dim=0)
        q = torch.stack([r[f"stats_sq.{d}"] for r in parts]).sum(dim=0)
        n = torch.stack([r[f"stats_count.{d}"] for r in parts]).sum(dim=0)
        seen = n > 0
        m = s / n.clamp_min(1)[None, :, None]
        v = (q / n.clamp_min(1)[None, :, None] - m**2).clamp_min(0.0)
        mean[d][:, seen] = m[:, seen]
        var[d][:, seen] = v[:, seen]
        freq[d] = n / n.sum().clamp_min(1)
        known[d] = 1.0
    return {"stats_mean": mean, "stats_var": var, "stats_freq": freq, "stats_known": known}


def surrogate(
    stats: Arrays, domain: int, expert: int, batch: int, rng: np.random.Generator
) -> tuple[Tensor, Tensor]:
    """``batch`` features of ``domain`` through ``expert``: labels by the domain's class
    frequencies, features ~ N(class mean, diagonal class variance); constants (no gradient)."""
    freq = stats["stats_freq"][domain].double().cpu().numpy()
    labels = rng.choice(len(freq), size=batch, p=freq / freq.sum())
    y = torch.from_numpy(labels).to(stats["stats_mean"].device)
    mean = stats["stats_mean"][domain, expert][y]
    std = stats["stats_var"][domain, expert][y].sqrt()
    noise = torch.from_numpy(rng.standard_normal(tuple(mean.shape)).astype(np.float32))
    return (mean + std * noise.to(mean.device)).detach(), y


def _stats_of(broadcast: Arrays) -> Arrays | None:
    return broadcast if "stats_mean" in broadcast else None


def _seeds(config: TrainConfig) -> list[int]:
    """Two seeds per round: phase 1's draws, then phase 2's fresh batches (both exchanges get
    the same generator, so they draw the same two)."""
    return [int(s) for s in torch.randint(0, 2**62, (2,), generator=config.generator)]


def apply_step(model: nn.Module, step: Arrays) -> None:
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.add_(step[STEP + name].to(param.device))
