"""Workload ``daml``: open domain generalisation with domain-augmented meta-learning.

Shu et al., CVPR 2021 (``notes/workloads-precise.md`` §2.2), federated as §2.4 maps it. One expert
per source domain (an MLP body -> a linear head over the union of the sources' classes). One DAML
iteration, for a client holding the source domains H (a batch of ``batch_size`` per domain):

- meta-train at θ: own-expert CE; KD (``trade2`` · T² · KL) from the other experts' soft labels
  mixed with Dir(1) weights; per expert m a Dirichlet mixup of one batch per domain in m's
  feature space, α = ``mixup_dir`` at domain m and ``mixup_dir2`` elsewhere (``trade``);
- first-order meta step θ' = θ − ``meta_step`` · ∇L_tr (the gradient detached);
- meta-objective at θ', fresh batches: CE of every expert m ≠ d on domain d (``trade3``) and the
  mixup with the concentrations swapped (``trade4``); the update is an SGD step on
  ∇L_tr(θ) + ∇_θ' L_obj(θ').

A mixup slot of a domain the client does not hold is filled (``mixup``) with surrogate features
drawn from that domain's per-class feature means and diagonal variances (``stats``, exchanged
through the server), with the client's own batch permuted again (``within``: ordinary mixup,
nothing shared), or the mixup is left out (``off``). A client's mixup terms are scaled by
|H| / sources, so that the clients' sum weighs each expert's mixup once.

**protocol: exchange** (client = one source domain; ``partition: domains``): the server holds all
experts (the shared model). Each round is the two-phase meta step of §2.4 as two exchanges
(``clients/daml/exchanges.py``):
``meta_train`` (every client reports ∇L_tr,client at θ and, with ``mixup: stats``, its per-class
feature sums; the server broadcasts their sum and the statistics), then ``meta_update`` (every
client forms θ' from the broadcast sum and reports ∇L_tr,client(θ) + ∇_θ' L_obj,client(θ') +
its share of the weight decay; the server sums them, takes the SGD step with momentum, kept in
its memory, and broadcasts the step). The next round's ``fit`` applies the step, so FedAvg of
the identical models is the stepped model, and the central evaluation applies it directly. With
one client per domain and the mixup off this is exactly centralised first-order DAML
(``tests/clients/daml/test_meta_step.py``). One client holding every domain (``clients.num: 1,
partition: sites``) is centralised DAML itself.

**protocol: local** (client = a site holding several domains; ``partition: sites``): each client
runs ``local_steps`` DAML iterations with its own SGD, and FedAvg averages the experts (each
expert is its own parameter group). No exchange.

**Baselines** (``method``): ``erm`` is one model trained with CE on every source (FedSGD-style
under ``exchange``, FedAvg under ``local``); ``ensemble`` one expert per domain trained on own
CE only. Both use the same rejection rule.

**Evaluation**: p(x) = mean of the experts' softmax; "unknown" when max p < τ. τ is the
``tau_quantile`` of max p on the held-out source samples (fair, recorded as ``tau``); the
paper's oracle τ (best of 10 on the target test set) is reported beside it as ``oracle_*``.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, cast

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, NonNegativeFloat, PositiveFloat, PositiveInt, model_validator
from torch import Tensor, nn
from torch.func import functional_call

from clients.daml.exchanges import META_UPDATE, ROUND, MetaTrain, MetaUpdate, apply_step, surrogate
from clients.daml.losses import (
    dirichlet_concentration,
    dirichlet_mixup,
    distillation,
    distilled_soft_labels,
    soft_cross_entropy,
)
from clients.daml.openset import UNKNOWN, fair_tau, open_set_metrics, oracle
from clients.workload import Arrays, Metrics, State, TrainConfig, init_parameters
from fedsim.errors import UserError
from fedsim.opendg_data import SOURCES, OpenDGClientData, OpenDGDataset, OpenDGTest
from fedsim.registry import WORKLOADS, Params

EVAL_BATCH = 1024
# numpy stream tags of one iteration's random draws
BATCHES, KD, MIX, SURROGATE = 1, 2, 3, 4


class DamlParams(Params):
    """DAML's losses and defaults (official code), a small MLP expert, and the federation."""

    method: Literal["daml", "erm", "ensemble"] = "daml"
    protocol: Literal["exchange", "local"] = "exchange"
    mixup: Literal["stats", "within", "off"] = "stats"
    experts: PositiveInt | None = None  # must equal the source domains (1 for erm); None: that
    hidden: PositiveInt = 64
    features: PositiveInt = 64
    batch_size: int = Field(default=24, ge=2)  # per source domain
    temperature: PositiveFloat = 2.0
    trade: NonNegativeFloat = 3.0  # meta-train Dir-mixup
    trade2: NonNegativeFloat = 1.0  # distillation from the other experts
    trade3: NonNegativeFloat = 1.0  # meta-objective CE of the other experts
    trade4: NonNegativeFloat = 3.0  # meta-objective Dir-mixup
    mixup_dir: PositiveFloat = 0.6  # meta-train: at the expert's own domain (meta-test: others)
    mixup_dir2: PositiveFloat = 0.2  # meta-train: at the other domains (meta-test: own)
    meta_step: NonNegativeFloat = 0.01
    lr: PositiveFloat = 0.05  # SGD (the paper's 1e-3 fine-tunes a pretrained ResNet)
    momentum: float = Field(default=0.9, ge=0.0, lt=1.0)
    nesterov: bool = False
    weight_decay: NonNegativeFloat = 5e-4
    local_steps: PositiveInt = 10  # protocol local: DAML iterations per round
    stats_samples: PositiveInt = 256  # images per domain behind the feature statistics
    tau_quantile: float = Field(default=0.05, gt=0.0, lt=1.0)  # fair τ on held-out source data

    @model_validator(mode="after")
    def _experts_match_the_sources(self) -> DamlParams:
        """Checked here too, so that ``fedsim validate`` refuses it: open DG data has 3 sources."""
        needed = 1 if self.method == "erm" else SOURCES
        if self.experts is not None and self.experts != needed:
            raise ValueError(
                f"experts = {self.experts}, but method {self.method} on {SOURCES} source domains "
                f"needs {needed} (one per source domain; erm: one); drop experts or set it to that"
            )
        return self


class Expert(nn.Module):
    """Flatten -> Linear -> ReLU -> Linear -> ReLU (the features) -> Linear head."""

    def __init__(self, inputs: int, hidden: int, features: int, classes: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Flatten(),
            nn.Linear(inputs, hidden),
            nn.ReLU(),
            nn.Linear(hidden, features),
            nn.ReLU(),
        )
        self.head = nn.Linear(features, classes)


class Experts(nn.Module):
    """The experts; ``forward(x, m, part)`` runs expert m's ``features``, ``head`` or both."""

    def __init__(self, count: int, inputs: int, hidden: int, features: int, classes: int) -> None:
        super().__init__()
        self.experts = nn.ModuleList(
            Expert(inputs, hidden, features, classes) for _ in range(count)
        )

    @property
    def classes(self) -> int:
        return cast(Expert, self.experts[0]).head.out_features

    def forward(self, x: Tensor, m: int, part: str = "logits") -> Tensor:
        expert = cast(Expert, self.experts[m])
        if part == "features":
            return expert.body(x)
        if part == "head":
            return expert.head(x)
        return expert.head(expert.body(x))

    def probs(self, x: Tensor) -> Tensor:
        """The mean of the experts' softmax: the open-set score."""
        return torch.stack([F.softmax(self(x, m), dim=1) for m in range(len(self.experts))]).mean(0)


@dataclass(frozen=True, eq=False)
class Batch:
    domain: int
    x: Tensor
    y: Tensor


Params_ = dict[str, Tensor]  # parameters by name, as functional_call takes them


@dataclass(frozen=True)
class DamlWorkload:
    """DAML's experts, its two-phase federated meta step, and open-set evaluation."""

    reads: ClassVar[str] = "opendg"
    headline: ClassVar[str] = "h_score"
    local: tuple[str, ...] = ()
    params: DamlParams = field(default_factory=DamlParams)

    @property
    def exchanges(self) -> tuple[Any, ...]:
        if self.params.protocol == "local":
            return ()
        if self.params.method == "daml":
            return (MetaTrain(self), MetaUpdate(self))
        return (MetaUpdate(self),)  # no meta step: one gradient round trip

    # -- the model ------------------------------------------------------------------------------

    def build_model(self, dataset: OpenDGDataset, generator: torch.Generator) -> nn.Module:
        count = self.expert_count(dataset.num_sources)
        with torch.device("meta"):
            model = Experts(
                count,
                int(np.prod(dataset.input_shape)),
                self.params.hidden,
                self.params.features,
                dataset.num_known,
            )
        return init_parameters(model.to_empty(device="cpu"), generator)

    def expert_count(self, sources: int) -> int:
        needed = 1 if self.params.method == "erm" else sources
        if self.params.experts is not None and self.params.experts != needed:
            raise UserError(
                f"workload.experts = {self.params.experts}, but method {self.params.method} on "
                f"{sources} source domains needs {needed} (one per source domain; erm: one); "
                "drop workload.experts or set it to that"
            )
        return needed

    # -- one DAML iteration's losses -------------------------------------------------------------

    def meta_train_loss(
        self, model: nn.Module, theta: Params_, batches: Sequence[Batch], stats: Arrays | None,
        seed: int, sources: int,
    ) -> tuple[Tensor, Metrics]:  # fmt: skip
        """L_tr of a client's batches at ``theta``; draws keyed by (seed, tag, domain/expert)."""
        p = self.params
        count = count_experts(model)
        features: dict[tuple[int, int], Tensor] = {}
        ce = kd = torch.zeros(())
        for b in batches:
            logits = []
            for m in range(count):
                features[m, b.domain] = functional_call(model, theta, (b.x, m, "features"))
                logits.append(functional_call(model, theta, (features[m, b.domain], m, "head")))
            own = b.domain if count > 1 else 0
            ce = ce + F.cross_entropy(logits[own], b.y)
            if p.method == "daml" and p.trade2 > 0 and count > 1:
                others = [z for m, z in enumerate(logits) if m != b.domain]
                soft = distilled_soft_labels(others, p.temperature, _rng(seed, KD, b.domain))
                kd = kd + distillation(logits[b.domain], soft, p.temperature)
        loss = ce + p.trade2 * kd
        metrics = {"loss_ce": float(ce.detach()), "loss_kd": float(kd.detach())}
        if self.mixes(count) and p.trade > 0:
            mix = self.mixup_loss(model, theta, features, batches, stats, seed, sources, swap=False)
            loss = loss + p.trade * mix
            metrics["loss_mix"] = float(mix.detach())
        return loss, {**metrics, "loss_tr": float(loss.detach())}

    def meta_test_loss(
        self, model: nn.Module, fast: Params_, batches: Sequence[Batch], stats: Arrays | None,
        seed: int, sources: int,
    ) -> tuple[Tensor, Metrics]:  # fmt: skip
        """L_obj at the fast weights: the other experts' CE and the swapped-α mixup."""
        p = self.params
        count = count_experts(model)
        features: dict[tuple[int, int], Tensor] = {}
        ce = torch.zeros(())
        for b in batches:
            for m in range(count):
                features[m, b.domain] = functional_call(model, fast, (b.x, m, "features"))
                if m != b.domain and p.trade3 > 0:
                    logits = functional_call(model, fast, (features[m, b.domain], m, "head"))
                    ce = ce + F.cross_entropy(logits, b.y)
        loss = p.trade3 * ce
        metrics = {"loss_obj_ce": float(ce.detach())}
        if self.mixes(count) and p.trade4 > 0:
            mix = self.mixup_loss(model, fast, features, batches, stats, seed, sources, swap=True)
            loss = loss + p.trade4 * mix
            metrics["loss_obj_mix"] = float(mix.detach())
        return loss, {**metrics, "loss_obj": float(loss.detach())}

    def mixes(self, count: int) -> bool:
        return self.params.method == "daml" and self.params.mixup != "off" and count > 1

    def mixup_loss(
        self, model: nn.Module, theta: Params_, features: Mapping[tuple[int, int], Tensor],
        batches: Sequence[Batch], stats: Arrays | None, seed: int, sources: int, swap: bool,
    ) -> Tensor:  # fmt: skip
        """Σ over experts of the soft CE of the Dirichlet-mixed features, scaled by |H|/sources."""
        p = self.params
        held = {b.domain: b for b in batches}
        order = sorted(held)
        classes = cast(Experts, model).classes
        own, others = (p.mixup_dir2, p.mixup_dir) if swap else (p.mixup_dir, p.mixup_dir2)
        total = torch.zeros(())
        for m in range(count_experts(model)):
            slots_f, slots_y = [], []
            for d in range(sources):
                if d in held:
                    f, y = features[m, d], held[d].y
                elif p.mixup == "stats" and stats is not None and float(stats["stats_known"][d]):
                    rng = _rng(seed, SURROGATE, m * sources + d)
                    f, y = surrogate(stats, d, m, p.batch_size, rng)
                else:  # within the client: one of its own batches, permuted again
                    f, y = features[m, order[d % len(order)]], held[order[d % len(order)]].y
                slots_f.append(f)
                slots_y.append(F.one_hot(y, classes).float())
            alpha = dirichlet_concentration(m, sources, own, others)
            mixed_f, mixed_y = dirichlet_mixup(slots_f, slots_y, alpha, _rng(seed, MIX, m))
            logits = functional_call(model, theta, (mixed_f, m, "head"))
            total = total + soft_cross_entropy(logits, mixed_y)
        return total * len(held) / sources

    # -- gradients ---------------------------------------------------------------------------------

    def draw(self, data: OpenDGClientData, seed: int) -> list[Batch]:
        """One batch of ``batch_size`` per held domain (with replacement if a domain is smaller)."""
        out = []
        for d in data.domains:
            rng = _rng(seed, BATCHES, d)
            rows = torch.nonzero(data.domain == d).flatten().cpu().numpy()
            chosen = rng.choice(
                rows, size=self.params.batch_size, replace=len(rows) < self.params.batch_size
            )
            idx = torch.from_numpy(chosen).to(data.x.device)
            out.append(Batch(d, data.x[idx], data.y[idx]))
        return out

    def train_gradient(
        self,
        model: nn.Module,
        theta: Mapping[str, Tensor],
        data: OpenDGClientData,
        stats: Arrays | None,
        seed: int,
    ) -> tuple[list[Tensor], Metrics]:
        """∇_θ L_tr of this client's batches drawn from ``seed``."""
        theta = {k: v.detach().requires_grad_(True) for k, v in theta.items()}
        loss, metrics = self.meta_train_loss(
            model, theta, self.draw(data, seed), stats, seed, data.num_sources
        )
        return _grad(loss, theta), metrics

    def objective_gradient(
        self,
        model: nn.Module,
        fast: Mapping[str, Tensor],
        data: OpenDGClientData,
        stats: Arrays | None,
        seed: int,
    ) -> tuple[list[Tensor], Metrics]:
        """∇_θ' L_obj of this client's fresh batches at the fast weights."""
        fast = {k: v.detach().requires_grad_(True) for k, v in fast.items()}
        loss, metrics = self.meta_test_loss(
            model, fast, self.draw(data, seed), stats, seed, data.num_sources
        )
        return _grad(loss, fast), metrics

    def feature_stats(self, model: nn.Module, data: OpenDGClientData, seed: int) -> Arrays:
        """Per held domain: per-class feature sums and squares through every expert, counts."""
        out: Arrays = {}
        classes = data.num_known
        with torch.no_grad():
            for d in data.domains:
                rows = torch.nonzero(data.domain == d).flatten().cpu().numpy()
                rng = _rng(seed, SURROGATE, 1000 + d)
                take = rng.permutation(rows)[: self.params.stats_samples]
                idx = torch.from_numpy(np.sort(take)).to(data.x.device)
                x, y = data.x[idx], data.y[idx]
                onehot = F.one_hot(y, classes).float()  # (n, C)
                feats = torch.stack([model(x, m, "features") for m in range(count_experts(model))])
                out[f"stats_sum.{d}"] = torch.einsum("nc,end->ecd", onehot, feats)
                out[f"stats_sq.{d}"] = torch.einsum("nc,end->ecd", onehot, feats**2)
                out[f"stats_count.{d}"] = onehot.sum(dim=0)
        return out

    # -- the contract ------------------------------------------------------------------------------

    def fit(
        self, model: nn.Module, data: OpenDGClientData, state: State, config: TrainConfig
    ) -> Metrics:
        if self.params.protocol == "local":
            return self.fit_locally(model, data, config)
        # exchange: apply last round's server step; FedAvg of the identical models is the step
        step = config.received.get(META_UPDATE, {})
        if step and int(step[ROUND]) == config.round - 1:
            apply_step(model, step)
        return {"train_loss": self.own_loss(model, data)}

    def fit_locally(self, model: nn.Module, data: OpenDGClientData, config: TrainConfig) -> Metrics:
        """``local_steps`` DAML iterations with the client's own SGD (protocol local)."""
        p = self.params
        names = [n for n, _ in model.named_parameters()]
        nesterov = p.nesterov and p.momentum > 0
        optimiser = torch.optim.SGD(
            model.parameters(), p.lr, p.momentum, weight_decay=p.weight_decay, nesterov=nesterov
        )
        totals: dict[str, float] = {}
        for _ in range(p.local_steps):
            seeds = torch.randint(0, 2**62, (2,), generator=config.generator).tolist()
            theta = dict(model.named_parameters())
            grads, metrics = self.train_gradient(model, theta, data, None, seeds[0])
            if p.method == "daml":
                fast = {
                    n: theta[n].detach() - p.meta_step * g
                    for n, g in zip(names, grads, strict=True)
                }
                obj, more = self.objective_gradient(model, fast, data, None, seeds[1])
                grads = [a + b for a, b in zip(grads, obj, strict=True)]
                metrics = {**metrics, **more}
            optimiser.zero_grad(set_to_none=True)
            for param, g in zip(model.parameters(), grads, strict=True):
                param.grad = g.detach().clone()
            optimiser.step()
            for k, v in metrics.items():
                totals[k] = totals.get(k, 0.0) + v / p.local_steps
        return {**totals, "train_loss": totals["loss_tr"]}

    @torch.no_grad()
    def own_loss(self, model: nn.Module, data: OpenDGClientData) -> float:
        """Own-expert CE on (up to) the first 256 of the client's images."""
        x, y, d = data.x[:256], data.y[:256], data.domain[:256]
        count = count_experts(model)
        losses = [
            F.cross_entropy(model(x[d == k], k if count > 1 else 0), y[d == k], reduction="sum")
            for k in data.domains
        ]
        return float(sum(losses)) / len(y)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, data: Any, state: State, config: TrainConfig) -> Metrics:
        """Closed-set accuracy and NLL of the experts' mean on the client's held-out images."""
        if data is None or len(data) == 0:
            return {}
        model = self.current(model, config)
        probs = _batched_probs(model, data.x)
        nll = F.nll_loss(probs.clamp_min(1e-12).log(), data.y)
        return {"loss": float(nll), "accuracy": float((probs.argmax(1) == data.y).float().mean())}

    @torch.no_grad()
    def evaluate_central(
        self, model: nn.Module, test: OpenDGTest, config: TrainConfig, memory: Mapping[str, Any]
    ) -> Metrics:
        """Open-set metrics on the unseen target at the fair τ, the oracle beside them."""
        model = self.current(model, config)
        probs = _batched_probs(model, test.x)
        tau = fair_tau(_batched_probs(model, test.source_x), self.params.tau_quantile)
        known = test.y != UNKNOWN
        closed = float((probs[known].argmax(1) == test.y[known]).float().mean())
        source = _batched_probs(model, test.source_x)
        source_acc = float((source.argmax(1) == test.source_y).float().mean())
        return {
            **open_set_metrics(probs, test.y, test.classes, tau),
            "tau": tau,
            "closed_accuracy": closed,
            "source_accuracy": source_acc,
            **oracle(probs, test.y, test.classes),
        }

    def current(self, model: nn.Module, config: TrainConfig) -> nn.Module:
        """The model with this round's server step applied (exchange protocol), else as is."""
        step = config.received.get(META_UPDATE, {})
        if self.params.protocol == "exchange" and step and int(step[ROUND]) == config.round:
            model = copy.deepcopy(model)
            apply_step(model, step)
        return model


def count_experts(model: nn.Module) -> int:
    return len(cast(Experts, model).experts)


def _rng(seed: int, tag: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, tag, index])


def _grad(loss: Tensor, params: Params_) -> list[Tensor]:
    grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
    return [
        torch.zeros_like(p) if g is None else g for p, g in zip(params.values(), grads, strict=True)
    ]


def _batched_probs(model: nn.Module, x: Tensor) -> Tensor:
    model.eval()
    return torch.cat([model.probs(chunk) for chunk in x.split(EVAL_BATCH)])  # type: ignore[operator]


@WORKLOADS.register("daml", DamlParams)
def daml(p: DamlParams) -> DamlWorkload:
    """Open domain generalisation (DAML): experts per source domain, federated meta step."""
    return DamlWorkload(params=p)
