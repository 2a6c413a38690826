"""The aggregation pipeline: stages as pairs of pure functions over stacked client updates.

Client updates arrive as one tensor ``U`` of shape ``(n, d)`` (flattened deltas ``x_i - x``) and a
``RoundInfo``. A stage is ``init(d) -> state`` and ``update(U, state, info) -> (out, state)``;
a pipeline is ``preagg* -> aggregator -> server optimiser`` chained into one stage whose output is
the step added to the global model (optax's gradient transformations, applied to FL).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor


class RoundInfo(NamedTuple):
    """What a stage may know about the round besides the updates."""

    round: int
    client_ids: tuple[int, ...]
    num_examples: Tensor  # (n,) float, samples each client trained on
    # (n,) bool: which rows come from simulated byzantine clients (for the attack stage only;
    # a defence never looks at it). None when the scenario has none.
    byzantine: Tensor | None = None
    # (n,) the value of the objective each row is the gradient of, for combiners of several
    # objectives (the `min` rule). Only the mbo workload's design ascent supplies them.
    objectives: Tensor | None = None

    @classmethod
    def uniform(cls, n: int, round: int = 1) -> RoundInfo:
        return cls(round, tuple(range(n)), torch.ones(n))

    def anonymous(self, n: int) -> RoundInfo:
        """The info of ``n`` rows that no longer belong to one client each (e.g. bucket means):
        equal weights, ids 0..n-1."""
        return RoundInfo.uniform(n, self.round)


class Stage(NamedTuple):
    init: Callable[[int], Any]
    update: Callable[[Tensor, Any, RoundInfo], tuple[Tensor, Any]]


def stateless(fn: Callable[[Tensor, RoundInfo], Tensor]) -> Stage:
    """A stage with no state from a plain function of the updates."""

    def update(updates: Tensor, state: Any, info: RoundInfo) -> tuple[Tensor, Any]:
        return fn(updates, info), state

    return Stage(init=lambda d: None, update=update)


def chain(*stages: Stage) -> Stage:
    """Apply stages in order; the state is the tuple of their states.

    A stage that changes the number of rows (bucketing) hands the next ones anonymous rows.
    """

    def init(d: int) -> tuple[Any, ...]:
        return tuple(stage.init(d) for stage in stages)

    def update(x: Tensor, states: Sequence[Any], info: RoundInfo) -> tuple[Tensor, Any]:
        new_states = []
        for stage, state in zip(stages, states, strict=True):
            rows = x.shape[0] if x.dim() == 2 else None
            x, state = stage.update(x, state, info)
            new_states.append(state)
            if x.dim() == 2 and x.shape[0] != rows:
                info = info.anonymous(x.shape[0])
        return x, tuple(new_states)

    return Stage(init, update)
