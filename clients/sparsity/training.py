"""Local training under masks, for any workload that steps a ``torch.optim`` optimiser.

``masked_training`` hooks every optimiser step taken inside it (torch's global step hooks) that
updates the model's masked weights: before the step the gradients of pruned entries are zeroed
(so momentum does not build up behind a mask), after it the weights are masked again. With a
``Rewiring`` every ``every`` steps the masks change by drop-and-grow (RigL, SET), grown entries
starting from zero. The workload needs no change; it never learns that its model is sparse.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim.optimizer import (
    Optimizer,
    register_optimizer_step_post_hook,
    register_optimizer_step_pre_hook,
)

from clients.sparsity.masks import Masks
from clients.sparsity.rewire import drop_and_grow


@dataclass(frozen=True)
class Rewiring:
    """Drop-and-grow every ``every`` local steps: drop ``fraction`` of each layer's active entries,
    grow as many where ``grow_score(weight, dense_grad)`` is largest."""

    every: int
    fraction: float
    grow_score: Callable[[Tensor, Tensor], Tensor]


@contextmanager
def masked_training(
    model: nn.Module, masks: Masks, rewiring: Rewiring | None = None
) -> Iterator[Masks]:
    """Keep ``model``'s weights under ``masks`` through every optimiser step taken inside.

    Yields the live masks (changed in place by rewiring).
    """
    params = {n: p for n, p in model.named_parameters() if n in masks}
    missing = set(masks) - set(params)
    if missing:
        raise ValueError(f"masks name tensors that are not parameters of the model: {missing}")
    live = {n: masks[n].to(params[n].device) for n in params}
    ids = {id(p) for p in params.values()}
    steps = 0
    grads: dict[str, Tensor] = {}

    def ours(optimizer: Optimizer) -> bool:
        return any(id(p) in ids for group in optimizer.param_groups for p in group["params"])

    def rewiring_due() -> bool:
        return rewiring is not None and rewiring.fraction > 0 and (steps + 1) % rewiring.every == 0

    def before(optimizer: Optimizer, args: Any, kwargs: Any) -> None:
        if not ours(optimizer):
            return
        with torch.no_grad():
            for name, p in params.items():
                if p.grad is None:
                    continue
                if rewiring_due():  # RigL grows by the dense gradient: keep it before masking
                    grads[name] = p.grad.detach().clone()
                p.grad.mul_(live[name])

    def after(optimizer: Optimizer, args: Any, kwargs: Any) -> None:
        nonlocal steps
        if not ours(optimizer):
            return
        with torch.no_grad():
            if rewiring_due():
                assert rewiring is not None
                for name, grad in grads.items():
                    old = live[name]
                    new = drop_and_grow(
                        params[name],
                        old,
                        rewiring.grow_score(params[name], grad),
                        rewiring.fraction,
                    )
                    params[name].masked_fill_(new & ~old, 0.0)  # grown connections start at zero
                    live[name] = new
                grads.clear()
            for name, p in params.items():
                p.mul_(live[name])
        steps += 1

    with torch.no_grad():
        for name, p in params.items():
            p.mul_(live[name])
    handles = [register_optimizer_step_pre_hook(before), register_optimizer_step_post_hook(after)]
    try:
        yield live
    finally:
        for handle in handles:
            handle.remove()
