"""Classification workload: a model of the ``model`` registry (an MLP, a small CNN, LeNet-300-100
or one's own) trained by minibatch SGD (FedAvg / FedProx)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any

import torch
import torch.nn.functional as F
from pydantic import Field, NonNegativeFloat, PositiveFloat, PositiveInt, model_validator
from torch import nn

from clients import models as _models  # noqa: F401  (registers the built-in models)
from clients import vectorised
from clients.workload import (
    Fitted,
    Labelled,
    Member,
    State,
    TrainConfig,
    WorkloadBase,
    eval_batch_size,
    init_parameters,
)
from fedsim.data import Dataset
from fedsim.errors import UserError
from fedsim.registry import MODELS, WORKLOADS, Component, Params, Ref


class ClassificationParams(Params):
    """Model and local-training hyper-parameters of the classification workload."""

    model: Annotated[Component, Ref("model")] = Component(name="mlp")  # fedsim list model
    epochs: PositiveInt = 1
    # Exactly this many minibatch steps instead of whole epochs (FedLaAvg's C local iterations).
    steps: PositiveInt | None = None
    batch_size: PositiveInt = 32
    lr: PositiveFloat = 0.05
    momentum: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0
    weight_decay: NonNegativeFloat = 0.0
    mu: NonNegativeFloat = 0.0  # FedProx proximal weight; 0 is plain FedAvg local training

    @model_validator(mode="before")
    @classmethod
    def _model_shorthand(cls, data: Any) -> Any:
        """``model: mlp`` is ``model: {name: mlp}``; ``hidden`` beside it, as scenarios wrote
        the MLP's widths before models were components, is the MLP's ``hidden``."""
        if not isinstance(data, dict) or not ({"model", "hidden"} & data.keys()):
            return data
        data = dict(data)
        model = data.get("model", "mlp")
        if isinstance(model, str):
            model = {"name": model}
        elif isinstance(model, Component):
            model = model.model_dump()
        if "hidden" in data:
            hidden = data.pop("hidden")
            name = model.get("name") if isinstance(model, dict) else None
            if name != "mlp":
                raise ValueError(
                    f"hidden: an option of the mlp model, but the model is {name!r}; remove "
                    "hidden, or give a model's options inside it: model: {name: mlp, hidden: 64}"
                )
            if "hidden" in model:
                raise ValueError("hidden: given twice, beside model and in it; keep model.hidden")
            model = {**model, "hidden": hidden}
        data["model"] = model
        return data


@dataclass(frozen=True)
class ClassificationWorkload(WorkloadBase):
    """Cross-entropy classification; local training is SGD with an optional FedProx term."""

    params: ClassificationParams

    def build_model(self, dataset: Dataset, generator: torch.Generator) -> nn.Module:
        """A fresh CPU model (``model``) whose parameters are drawn from ``generator`` only."""
        build = MODELS.build(self.params.model)
        # Construction may draw PyTorch's default initialisation from the global RNG: its state
        # is restored, and init_parameters then fills every parameter from ``generator``.
        # (Building on the meta device would draw nothing, but would lose the values of
        # buffers a model of one's own sets in its constructor.)
        with torch.random.fork_rng(devices=[]):
            model = build(dataset.input_shape, dataset.num_classes).cpu()
        try:
            return init_parameters(model, generator)
        except TypeError as err:  # a parameter that init_parameters cannot draw
            raise UserError(f"workload.model {self.params.model.name!r}: {err}") from None

    def fit(
        self, model: nn.Module, data: Labelled, state: State, config: TrainConfig
    ) -> dict[str, float]:
        """Train ``model`` in place by minibatch SGD: ``epochs`` passes, or ``steps`` batches.

        With ``mu > 0`` the FedProx objective CE(w) + mu/2·||w − w₀||² is minimised, w₀ being the
        weights at the start of the call (Li et al., 2020). Returns the per-sample mean
        cross-entropy ``train_loss`` (without the proximal term) and ``train_accuracy`` over every
        batch seen.
        """
        x, y = data
        n = x.shape[0]
        if n == 0:
            raise ValueError("client has no training data")
        if y.shape[0] != n:
            raise ValueError(f"x and y differ in length: {n} != {y.shape[0]}")
        p = self.params
        training = config.training
        if p.mu > 0 and training.private:
            raise ValueError(
                "FedProx (workload.mu > 0) cannot run under DP-SGD: the private optimiser "
                "replaces the gradient, proximal term included; set workload.mu: 0"
            )
        model.train()
        params = [q for q in model.parameters() if q.requires_grad]
        optimizer: torch.optim.Optimizer = torch.optim.SGD(
            params, lr=p.lr, momentum=p.momentum, weight_decay=p.weight_decay
        )
        model, optimizer = training.setup(model, optimizer, n, p.batch_size, config.generator)
        anchor = [q.detach().clone() for q in params] if p.mu > 0 else []
        loss_sum = torch.zeros((), device=x.device)
        correct = torch.zeros((), dtype=torch.int64, device=x.device)
        seen = 0
        for epoch, batches in enumerate(training.passes(p.epochs, p.steps, x.device)):
            pass_loss = torch.zeros((), device=x.device)
            for idx in batches:
                xb, yb = x[idx], y[idx]
                logits = model(xb)
                # Poisson sampling (DP-SGD) can draw an empty batch; its step is noise alone.
                loss = F.cross_entropy(logits, yb) if idx.numel() else logits.sum() * 0.0
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if anchor:
                    # The proximal term's gradient is mu·(w − w₀); adding it directly is exact and
                    # spares autograd a graph over every parameter at each step.
                    with torch.no_grad():
                        for q, q0 in zip(params, anchor, strict=True):
                            if q.grad is not None:
                                q.grad.add_(q - q0, alpha=p.mu)
                optimizer.step()
                pass_loss += loss.detach() * idx.numel()
                correct += (logits.detach().argmax(dim=1) == yb).sum()
                seen += idx.numel()
            # One host sync per pass: a non-finite batch loss makes the pass's sum non-finite.
            if not torch.isfinite(pass_loss).item():
                raise FloatingPointError(
                    f"round {config.round}: training loss became non-finite in pass {epoch + 1}"
                    f" over the data (lr={p.lr}); the weights are unusable"
                )
            loss_sum += pass_loss
        seen = max(seen, 1)  # Poisson sampling may, rarely, draw no sample at all
        return {
            "train_loss": loss_sum.item() / seen,
            "train_accuracy": correct.item() / seen,
        }

    def fit_cohort(self, model: nn.Module, members: Sequence[Member]) -> list[Fitted | None]:
        """Several clients' ``fit`` as one batched model (``clients.vectorised``)."""
        if type(self).fit is not ClassificationWorkload.fit:  # a subclass trains its own way
            return [None] * len(members)
        return vectorised.fit_cohort(model, members, self.params)

    def evaluate(
        self, model: nn.Module, data: Labelled, state: State, config: TrainConfig
    ) -> dict[str, float]:
        """Mean cross-entropy ``loss`` and ``accuracy`` of ``model`` on ``(x, y)``, without grad."""
        x, y = data
        n = x.shape[0]
        if n == 0:
            raise ValueError("no evaluation data")
        if y.shape[0] != n:
            raise ValueError(f"x and y differ in length: {n} != {y.shape[0]}")
        model.eval()
        loss_sum = torch.zeros((), dtype=torch.float64, device=x.device)
        correct = torch.zeros((), dtype=torch.int64, device=x.device)
        batch = eval_batch_size(model, x.device)
        with torch.inference_mode():
            for start in range(0, n, batch):
                xb, yb = x[start : start + batch], y[start : start + batch]
                logits = model(xb)
                loss_sum += F.cross_entropy(logits, yb, reduction="sum").double()
                correct += (logits.argmax(dim=1) == yb).sum()
        return {"loss": loss_sum.item() / n, "accuracy": correct.item() / n}


@WORKLOADS.register("classification", ClassificationParams)
def classification(params: ClassificationParams) -> ClassificationWorkload:
    """Classification with a model of the model registry, trained by SGD (FedProx if mu > 0)."""
    return ClassificationWorkload(params)
