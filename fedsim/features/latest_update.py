"""FedLaAvg's replies: the change in a client's latest update, which the client keeps on disk.

The server half is the strategy itself (``strategies.fedlaavg``), whose train Messages ask for
this reply; the client half answers them, and leaves every other Message alone.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from fedsim.errors import UserError
from fedsim.features.base import ClientMod, Fit, Trained
from fedsim.scenario import Scenario
from strategies import fedlaavg
from strategies.client_memory import ClientMemory
from strategies.flower import flatten, unflatten


def latest_update_mod(scenario: Scenario) -> ClientMod | None:
    def mod(fit: Fit, call_next: Callable[[Fit], Trained]) -> Trained:
        trained = call_next(fit)
        if not fedlaavg.is_latest_averaging(fit.message):
            return trained
        directory = fit.message.get(fedlaavg.MEMORY_DIR)
        if not directory:
            raise UserError(
                f"latest averaging needs the train config entry {fedlaavg.MEMORY_DIR!r}"
            )
        update = (flatten(trained.arrays) - flatten(fit.sent)).numpy()
        memory = ClientMemory(str(directory), fit.scenario.clients.num, update.size)
        diff = fedlaavg.latest_difference(memory, fit.client, fit.message, update)
        return Trained(
            trained.metrics, fedlaavg.DIFFERENCE, unflatten(torch.from_numpy(diff), fit.sent)
        )

    return mod
