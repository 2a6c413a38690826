"""Workload ``avgk``: average-K classification with a two-head loss, and a federated threshold.

Garcin, Servajean, Joly, Salmon, WACV 2025 (``notes/workloads-precise.md`` §3), reconstructed
from the abstract (the method text could not be read): a model of the ``model`` registry built
with 2·C outputs, the first C the softmax head and the last C a multi-label (sigmoid) head on the
same features (one Linear of 2·C outputs is exactly two Linear heads of C). Loss: CE of the
softmax head + ``lambda_ml`` · BCE of the multi-label head on pseudo-labels (the true label plus
the most probable others of the detached softmax, K per sample on average; ``pseudo_labels.py``).
With ``lambda_ml: 0`` and ``inference_head: softmax`` it is the CE + softmax-threshold baseline.

A predicted set is S(x) = {j : s_j(x) > λ} on the ``inference_head``'s log-scores, λ chosen so
that K labels are returned per sample on average:

- **global λ** (the exchange ``threshold``): after aggregation, every client scores its
  calibration rows (``calibration_fraction`` of its training data, held out of training) with the
  new global model and sends a sparse histogram of the log-scores on a fixed grid; the server
  sums them and takes λ for mean size K over the union (``calibration.py``). It is broadcast to
  the clients' evaluation and the server's. The average of the clients' own λ is not this λ.
- **per-client λ** (personalised average-K): the same client computes its own λ on its own
  calibration rows, keeps it in its state and reports metrics at it (``*_own``) beside the global.

Metrics: ``avgk_accuracy`` (y ∈ S(x)), ``avg_set_size`` (the realised mean size, never exactly K
off the calibration set), ``accuracy`` (top-1 of the softmax head), ``topk_accuracy`` (top-⌈K⌉ of
the inference head); at the server also ``avgk_accuracy_exact`` (λ calibrated on the test set
itself, ties filled: mean size exactly K, for comparisons at equal set size), the metrics at the
mean of the clients' λ, ``avgk_accuracy_c{j}`` per class and, for a two-head model,
``avgk_accuracy_exact_{head}`` of each head at exactly K. A client reports per class
``avgk_hits_c{j}`` (hits of class j over its samples) and ``share_c{j}`` (its class-j share):
their example-weighted federated means divide to the pooled per-class accuracy.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, NonNegativeFloat, PositiveFloat, PositiveInt, model_validator
from torch import Tensor, nn

from clients import models as _models  # noqa: F401  (registers the built-in models)
from clients.avgk.calibration import (
    LogGrid,
    calibrated_sets,
    histogram,
    merged_threshold,
    pooled_threshold,
)
from clients.avgk.pseudo_labels import pseudo_labels, two_head_loss
from clients.workload import (
    Aggregate,
    Arrays,
    Exchange,
    Labelled,
    Metrics,
    State,
    TrainConfig,
    WorkloadBase,
    eval_batch_size,
    init_parameters,
)
from fedsim.data import Dataset
from fedsim.errors import UserError
from fedsim.registry import MODELS, WORKLOADS, Component, Params, Ref

AVGK = "avgk"
THRESHOLD = "threshold"  # the exchange's name, and the key of the global λ in its broadcast
MEAN_OWN = "mean_client_threshold"  # the mean of the clients' own λ, broadcast beside it
OWN = "own_threshold"  # a client's own λ, in its state
CARRY = "pseudo_carry"  # the pseudo-label budget's remainder, in a client's state
CALIBRATION_SEED = 18  # one fixed draw of the calibration rows, whatever the run's seed
HEADS = ("multilabel", "softmax", "product")


class AvgkParams(Params):
    """Average-K target, the two-head loss's choices (unverified: each a knob) and training."""

    model: Annotated[Component, Ref("model")] = Component(name="mlp")  # fedsim list model
    k: PositiveFloat = 2.0  # the mean set size; may be fractional; < the number of classes
    lambda_ml: NonNegativeFloat = 1.0  # weight of the multi-label head's BCE; 0: CE only
    inference_head: Literal["multilabel", "softmax", "product"] = "multilabel"
    pseudo_scope: Literal["batch", "sample"] = "batch"  # one threshold per batch, or top-K each
    include_true: bool = True  # the true label is always a positive pseudo-label
    bce_reduction: Literal["mean", "sum_classes"] = "mean"  # over B·C, or sum over C, mean over B
    pseudo_k: PositiveFloat | None = None  # K of the pseudo-labels; None: k
    epochs: PositiveInt = 1
    batch_size: PositiveInt = 128
    lr: PositiveFloat = 1e-3  # Adam, as the notes' reproduction
    calibration_fraction: float = Field(default=0.2, gt=0.0, lt=1.0)
    resolution: PositiveFloat = 1e-6  # the threshold grid's step, in log-score
    log_floor: float = Field(default=-50.0, lt=0.0)  # log-scores below it share the lowest bin

    @model_validator(mode="before")
    @classmethod
    def _model_shorthand(cls, data: Any) -> Any:
        """``model: mlp`` is ``model: {name: mlp}``."""
        if isinstance(data, dict) and isinstance(data.get("model"), str):
            data = {**data, "model": {"name": data["model"]}}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> AvgkParams:
        if self.lambda_ml == 0 and self.inference_head != "softmax":
            raise ValueError(
                f"inference_head {self.inference_head!r} reads the multi-label head, which "
                "lambda_ml: 0 leaves untrained; set inference_head: softmax (the CE baseline) "
                "or lambda_ml > 0"
            )
        if -self.log_floor / self.resolution > 2**52:
            raise ValueError(
                f"resolution: {self.resolution} over [{self.log_floor}, 0] is more bins than "
                "float64 tells apart; raise resolution or log_floor"
            )
        return self

    @property
    def grid(self) -> LogGrid:
        return LogGrid(self.resolution, self.log_floor)


def calibration_split(n: int, fraction: float) -> tuple[Tensor, Tensor]:
    """A client's (training rows, calibration rows) of its ``n``: one fixed random draw."""
    n_cal = math.floor(fraction * n)
    if n_cal < 1 or n_cal >= n:
        raise ValueError(
            f"workload.calibration_fraction: {fraction} of {n} training samples leaves "
            f"{n_cal} for calibration and {n - n_cal} for training; each needs >= 1: change "
            "calibration_fraction or give the clients more data"
        )
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(CALIBRATION_SEED))
    return perm[n_cal:].sort().values, perm[:n_cal].sort().values


def log_scores(logits: Tensor, head: str) -> Tensor:
    """The (n, C) log-scores of ``head`` from the model's (n, 2C) outputs."""
    c = logits.shape[1] // 2
    softmax, multilabel = logits[:, :c], logits[:, c:]
    if head == "softmax":
        return F.log_softmax(softmax, dim=1)
    if head == "multilabel":
        return F.logsigmoid(multilabel)
    return F.log_softmax(softmax, dim=1) + F.logsigmoid(multilabel)


@torch.inference_mode()
def outputs(model: nn.Module, x: Tensor) -> Tensor:
    model.eval()
    return torch.cat([model(chunk) for chunk in x.split(eval_batch_size(model, x.device))])


def _received(config: TrainConfig, key: str) -> float | None:
    value = config.received.get(THRESHOLD, {}).get(key)
    return None if value is None else float(value.reshape(-1)[0])


def at_threshold(scores: Tensor, y: Tensor, threshold: float, suffix: str = "") -> Metrics:
    """Average-K accuracy and realised mean set size of the sets at ``threshold``."""
    sets = scores.double() > threshold
    return {
        f"avgk_accuracy{suffix}": float(sets[torch.arange(len(y)), y].double().mean()),
        f"avg_set_size{suffix}": float(sets.sum(dim=1).double().mean()),
    }


@dataclass(frozen=True)
class GlobalThreshold:
    """Clients send histograms of their calibration log-scores; the server returns λ for mean
    size K over their union (and the mean of the clients' own λ, for comparison)."""

    params: AvgkParams
    name: str = THRESHOLD
    everyone: bool = True  # λ is a quantile of every client's scores, not of this round's few

    def report(
        self, model: nn.Module, data: Labelled, state: State, config: TrainConfig
    ) -> tuple[Arrays, Metrics]:
        _, rows = calibration_split(len(data.labels), self.params.calibration_fraction)
        scores = log_scores(
            outputs(model, data.inputs[rows.to(data.inputs.device)]), self.params.inference_head
        ).cpu()
        own = pooled_threshold(scores, self.params.k)
        state[OWN] = torch.tensor(own, dtype=torch.float64)
        bins, counts = histogram(scores, self.params.grid)
        arrays = {
            "bins": bins,
            "counts": counts,
            "samples": torch.tensor([len(rows)]),
            OWN: torch.tensor([own], dtype=torch.float64),
        }
        return arrays, {OWN: own, "calibration_samples": float(len(rows))}

    def reduce(
        self, reports: Mapping[int, Arrays], memory: Any, aggregate: Aggregate, round: int
    ) -> tuple[Arrays, Any, Metrics]:
        clients = sorted(reports)
        histograms = [(reports[c]["bins"].long(), reports[c]["counts"].long()) for c in clients]
        samples = sum(int(reports[c]["samples"].sum()) for c in clients)
        lam = merged_threshold(histograms, samples, self.params.k, self.params.grid)
        mean_own = float(torch.cat([reports[c][OWN].double() for c in clients]).mean())
        broadcast = {
            THRESHOLD: torch.tensor([lam], dtype=torch.float64),
            MEAN_OWN: torch.tensor([mean_own], dtype=torch.float64),
        }
        metrics = {
            THRESHOLD: lam,
            "threshold_score": math.exp(lam),
            MEAN_OWN: mean_own,
            "calibration_samples": float(samples),
            "histogram_bins": float(sum(len(b) for b, _ in histograms)),
        }
        return broadcast, {"reductions": (memory or {}).get("reductions", 0) + 1}, metrics


@dataclass(frozen=True)
class AvgkWorkload(WorkloadBase):
    """Two heads, CE + λ·BCE on average-K pseudo-labels, sets thresholded at a federated λ."""

    params: AvgkParams
    exchanges: tuple[Exchange, ...] = ()
    headline = "avgk_accuracy"

    def build_model(self, dataset: Dataset, generator: torch.Generator) -> nn.Module:
        c = dataset.num_classes
        p = self.params
        for name, k in (("k", p.k), ("pseudo_k", p.pseudo_k)):
            if k is not None and k >= c:
                raise UserError(
                    f"workload.{name}: average-{k} needs fewer than the {c} classes of "
                    f"{dataset.name}; choose {name} < {c}"
                )
        build = MODELS.build(p.model)
        with torch.random.fork_rng(devices=[]):  # construction's draws are overwritten below
            model = build(dataset.input_shape, 2 * c).cpu()
        try:
            return init_parameters(model, generator)
        except TypeError as err:
            raise UserError(f"workload.model {p.model.name!r}: {err}") from None

    def fit(self, model: nn.Module, data: Labelled, state: State, config: TrainConfig) -> Metrics:
        p = self.params
        train, _ = calibration_split(len(data.labels), p.calibration_fraction)
        train = train.to(data.labels.device)
        x, y = data.inputs[train], data.labels[train]
        model.train()
        optimizer: torch.optim.Optimizer = torch.optim.Adam(model.parameters(), lr=p.lr)
        model, optimizer = config.training.setup(
            model, optimizer, len(y), p.batch_size, config.generator
        )
        pseudo_k = p.pseudo_k if p.pseudo_k is not None else p.k
        carry = float(state.get(CARRY, torch.zeros(())).item())
        loss_sum, ce_sum, seen = 0.0, 0.0, 0
        for batches in config.training.passes(p.epochs, None, x.device):
            for idx in batches:
                if idx.numel() == 0:
                    continue
                logits = model(x[idx])
                c = logits.shape[1] // 2
                softmax, multilabel = logits[:, :c], logits[:, c:]
                targets = softmax  # unused when lambda_ml is 0
                if p.lambda_ml > 0:
                    targets, carry = pseudo_labels(
                        softmax.detach().softmax(dim=1),
                        y[idx],
                        pseudo_k,
                        p.pseudo_scope,
                        p.include_true,
                        carry,
                    )
                loss, ce = two_head_loss(
                    softmax, multilabel, y[idx], targets, p.lambda_ml, p.bce_reduction
                )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                loss_sum += loss.item() * idx.numel()
                ce_sum += ce.item() * idx.numel()
                seen += idx.numel()
        if not math.isfinite(loss_sum):
            raise FloatingPointError(
                f"round {config.round}: the loss became non-finite (lr={p.lr})"
            )
        if p.lambda_ml > 0:
            state[CARRY] = torch.tensor(carry, dtype=torch.float64)
        seen = max(seen, 1)
        return {"train_loss": loss_sum / seen, "train_ce": ce_sum / seen}

    def _scored(self, model: nn.Module, data: Labelled) -> tuple[Tensor, Tensor, Tensor, Metrics]:
        """(log-scores, labels, softmax logits, the metrics that need no threshold)."""
        x, y = data
        if len(y) == 0:
            raise ValueError("no evaluation data")
        logits = outputs(model, x)
        c = logits.shape[1] // 2
        scores = log_scores(logits, self.params.inference_head)
        top = scores.topk(math.ceil(self.params.k - 1e-9), dim=1).indices
        metrics = {
            "loss": float(F.cross_entropy(logits[:, :c], y)),
            "accuracy": float((logits[:, :c].argmax(dim=1) == y).double().mean()),
            "topk_accuracy": float((top == y[:, None]).any(dim=1).double().mean()),
        }
        return scores, y, logits, metrics

    def evaluate(
        self, model: nn.Module, data: Labelled, state: State, config: TrainConfig
    ) -> Metrics:
        scores, y, _, metrics = self._scored(model, data)
        lam = _received(config, THRESHOLD)
        if lam is not None:
            metrics |= at_threshold(scores, y, lam)
            hits = (scores.double() > lam)[torch.arange(len(y)), y]
            for j in range(scores.shape[1]):
                metrics[f"avgk_hits_c{j}"] = float((hits & (y == j)).double().mean())
                metrics[f"share_c{j}"] = float((y == j).double().mean())
        if OWN in state:
            metrics |= at_threshold(scores, y, float(state[OWN]), "_own")
        return metrics

    def evaluate_central(
        self, model: nn.Module, test: Labelled, config: TrainConfig, memory: Mapping[str, Any]
    ) -> Metrics:
        scores, y, logits, metrics = self._scored(model, test)
        exact = calibrated_sets(scores, self.params.k, torch.Generator().manual_seed(0))
        metrics["avgk_accuracy_exact"] = float(exact[torch.arange(len(y)), y].double().mean())
        if self.params.lambda_ml > 0:  # every head of the two-head model, at exactly K
            for head in HEADS:
                sets = calibrated_sets(
                    log_scores(logits, head), self.params.k, torch.Generator().manual_seed(0)
                )
                hits = sets[torch.arange(len(y)), y].double().mean()
                metrics[f"avgk_accuracy_exact_{head}"] = float(hits)
        lam, mean_own = _received(config, THRESHOLD), _received(config, MEAN_OWN)
        if lam is None:  # no round of the exchange has succeeded yet
            return metrics
        metrics |= at_threshold(scores, y, lam)
        if mean_own is not None:
            metrics |= at_threshold(scores, y, mean_own, "_mean_threshold")
        hits = (scores.double() > lam)[torch.arange(len(y)), y]
        for j in range(scores.shape[1]):
            if bool((y == j).any()):
                metrics[f"avgk_accuracy_c{j}"] = float(hits[y == j].double().mean())
        return metrics


@WORKLOADS.register(AVGK, AvgkParams)
def avgk(params: AvgkParams) -> AvgkWorkload:
    """Average-K classification: two-head loss (Garcin et al. 2025), federated global threshold."""
    return AvgkWorkload(params, (GlobalThreshold(params),))
