"""``clients.dropout``: a sampled client fails mid-round with probability p (client side only)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from fedsim.features.base import ClientMod, Fit, Trained
from fedsim.scenario import Scenario

DROPOUT_STREAM = 11  # keeps the dropout draws apart from other uses of the seed


class ClientDropout(RuntimeError):
    """A simulated failure mid-round (``clients.dropout``), not a fault of the client's code."""


def dropout_mod(scenario: Scenario) -> ClientMod | None:
    p = scenario.clients.dropout
    if not p:
        return None

    def mod(fit: Fit, call_next: Callable[[Fit], Trained]) -> Trained:
        draw = np.random.default_rng([fit.scenario.seed, fit.client, fit.round, DROPOUT_STREAM])
        if draw.random() < p:
            raise ClientDropout(f"simulated dropout (clients.dropout={p})")
        return call_next(fit)

    return mod
