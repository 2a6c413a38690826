"""Data attacks (``byzantine.attack`` of a data kind): byzantine clients train on poisoned data.

Model attacks act in the strategy, on the stacked updates; a data attack changes what a
byzantine client trains on, and the client then trains honestly (client side only).
"""

from __future__ import annotations

from collections.abc import Callable

from fedsim.build import byzantine_clients, data_poison, scenario_federation, seeded_generator
from fedsim.data import Labelled
from fedsim.features.base import ClientMod, Fit, Trained
from fedsim.scenario import Scenario

POISON_STREAM = 1  # the poison's own draws, apart from the client's batch order


def poisoning_mod(scenario: Scenario) -> ClientMod | None:
    poison = data_poison(scenario)
    if poison is None:
        return None
    byzantine = byzantine_clients(scenario)
    num_classes = scenario_federation(scenario).dataset.num_classes

    def mod(fit: Fit, call_next: Callable[[Fit], Trained]) -> Trained:
        if fit.client not in byzantine:
            return call_next(fit)
        x, y = fit.data
        generator = seeded_generator(fit.scenario.seed, fit.client, fit.round, POISON_STREAM)
        x, y = poison(x, y, num_classes, generator)
        return call_next(fit.but(data=Labelled(x, y)))

    return mod
