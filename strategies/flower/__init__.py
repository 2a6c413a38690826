"""The Flower side of the strategies: ``Strategy`` subclasses that drive fedsim's pipelines.

Everything here imports Flower; the registrations (``strategies.fedavg``, ``strategies.fedlaavg``)
import it only when a run builds a strategy, so validating a scenario never loads Flower.
"""

from strategies.flower.pipeline_strategy import (
    EPSILON,
    NUM_EXAMPLES,
    PipelineStrategy,
    Recorder,
    flatten,
    reply_arrays,
    unflatten,
    with_phase,
)

__all__ = [
    "EPSILON",
    "NUM_EXAMPLES",
    "PipelineStrategy",
    "Recorder",
    "flatten",
    "reply_arrays",
    "unflatten",
    "with_phase",
]
