"""The two kinds of attack and the helper that turns a function into a model-poisoning stage.

A model-poisoning attack is a pipeline stage placed first: it sees the round's updates ``U`` and
``info.byzantine`` and replaces the byzantine rows with what those clients send instead. It may
look at the honest rows (omniscient attacks, as in ByzFL and Blades) because it is handed them,
never by reaching into the engine. A data-poisoning attack changes what a byzantine client trains
on; its updates then go through the pipeline untouched.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from strategies.pipeline import RoundInfo, Stage, stateless

# (honest rows (h, d), the byzantine clients' own rows (b, d), generator) -> their rows (b, d)
Forge = Callable[[Tensor, Tensor, torch.Generator], Tensor]


def model_attack(forge: Forge, needs_honest: bool = True) -> Stage:
    """A stage that replaces the byzantine rows of ``U`` with ``forge``'s output.

    Rounds with no byzantine client sampled (or, for attacks that need them, no honest one)
    pass through unchanged. Random draws are seeded from the round, so runs are reproducible.
    """

    def attack(updates: Tensor, info: RoundInfo) -> Tensor:
        byzantine = info.byzantine
        if byzantine is None or not bool(byzantine.any()):
            return updates
        honest = updates[~byzantine]
        if needs_honest and honest.shape[0] == 0:
            return updates
        generator = torch.Generator().manual_seed(_round_seed(info.round))
        out = updates.clone()
        out[byzantine] = forge(honest, updates[byzantine], generator).to(updates.dtype)
        return out

    return stateless(attack)


def _round_seed(round: int) -> int:
    return int(np.random.SeedSequence([round, 17]).generate_state(1)[0])


class Poison(Protocol):
    """Changes a byzantine client's training data: ``(x, y) -> (x', y')``."""

    def __call__(
        self, x: Tensor, y: Tensor, num_classes: int, generator: torch.Generator
    ) -> tuple[Tensor, Tensor]: ...


@dataclass(frozen=True)
class DataAttack:
    """A data-poisoning attack: byzantine clients train honestly on ``poison``ed data."""

    poison: Poison
    poisons: str = "samples"  # the kind of data it poisons (a dataset's ``kind``)
