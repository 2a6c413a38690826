"""``privacy: {mode: local}``: every client trains by DP-SGD, its ε accumulated in its state.

The client half hands the workload DP-SGD as ``config.training`` and reports ε; the server half
records the guarantee (and the layers Opacus replaced) when the run starts. Central DP is a
strategy wrapper (``strategies.flower.central_dp``), built with the strategy.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from fedsim import privacy
from fedsim.features.base import ClientMod, Fit, ServerFeature, Trained
from fedsim.scenario import Scenario


def local_dp_mod(scenario: Scenario) -> ClientMod | None:
    if scenario.privacy.mode != "local":
        return None

    def mod(fit: Fit, call_next: Callable[[Fit], Trained]) -> Trained:
        training = privacy.local_training(fit.scenario, fit.records, fit.client, fit.round)
        try:
            trained = call_next(fit.but(config=replace(fit.config, training=training)))
            trained.metrics.update(privacy.spent(training, fit.scenario, fit.records))
        finally:
            privacy.release(training)  # DP-SGD's hooks off the model that serves every client
        return trained

    return mod


class PrivacyRecord(ServerFeature):
    """Records the run's privacy guarantee (either mode) when it starts."""

    def __init__(self, scenario: Scenario, model_changes: list[str]) -> None:
        self.scenario = scenario
        self.model_changes = model_changes

    def started(self) -> dict[str, Any]:
        spec = self.scenario.privacy.model_dump()
        return {"event": "privacy", **spec, "model_changes": self.model_changes}
