"""A workload with the scenario's analyses attached: the same workload to the core, with the
analyses' exchanges after its own and their central estimates beside its central metrics.

An analysis (registry ``analysis``, e.g. ``information_plane``) is an instrument, not a task:
it trains nothing. It contributes ``exchanges`` (skipped on the rounds it does not measure, by
their ``due``) and ``central_metrics(model, x, y)`` on a probe set the server holds. Both the
server and the clients build the workload through ``fedsim.build.build_workload``, so the core
runs analyses exactly as it runs a workload's own exchanges.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

from clients import Exchange, Metrics, TrainConfig, Workload
from fedsim.data import Dataset, Labelled
from fedsim.errors import UserError


class Analysed:
    """``workload`` plus ``analyses``; every other attribute is the workload's own."""

    def __init__(
        self,
        workload: Workload,
        analyses: list[Any],
        rounds: int,
        dataset: Callable[[], Dataset],
    ) -> None:
        self.workload = workload
        self.analyses = analyses
        self.dataset = dataset  # the federation's data set, for a probe of all its inputs
        for analysis in analyses:
            analysis.attach(rounds)
        self.exchanges: tuple[Exchange, ...] = (
            *workload.exchanges,
            *(e for analysis in analyses for e in analysis.exchanges),
        )

    def __getattr__(self, name: str) -> Any:
        return getattr(self.workload, name)

    def build_model(self, dataset: Any, generator: Any) -> nn.Module:
        """The workload's model, checked to have the layers the analyses probe."""
        model = self.workload.build_model(dataset, generator)
        example = dataset.x_train[:2]
        for analysis in self.analyses:
            try:
                analysis.layers(model, example)
            except ValueError as err:
                raise UserError(f"analysis: {err}") from None
        return model

    def evaluate_central(
        self, model: nn.Module, test: Any, config: TrainConfig, memory: Mapping[str, Any]
    ) -> Metrics:
        metrics = dict(self.workload.evaluate_central(model, test, config, memory))
        for analysis in self.analyses:
            if analysis.params.central and analysis.due(config.round):
                x, y = self._probe(analysis.params.central_probe, test)
                metrics |= analysis.central_metrics(model, x.to(config.device), y)
        return metrics

    def _probe(self, which: str, test: Labelled) -> tuple[Any, Any]:
        if which == "all":  # every input of the data set (SZT's 4,096 patterns, say)
            import torch

            data = self.dataset()
            return torch.cat([data.x_train, data.x_test]), torch.cat([data.y_train, data.y_test])
        return test.inputs, test.labels
