"""The Flower side of the strategies: ``Strategy`` subclasses that drive fedsim's pipelines.

Everything here imports Flower; the registrations (``strategies.fedavg``, ``strategies.fedlaavg``)
import it only when a run builds a strategy, so validating a scenario never loads Flower.
"""

from strategies.flower import arrays
from strategies.flower.pipeline_strategy import (
    ARRAYS,
    EPSILON,
    NUM_EXAMPLES,
    UPDATE,
    FlowerLog,
    PipelineStrategy,
    Recorder,
    as_update,
    flatten,
    reply_update,
    unflatten,
    with_phase,
    with_record,
)

__all__ = [
    "ARRAYS",
    "EPSILON",
    "NUM_EXAMPLES",
    "UPDATE",
    "FlowerLog",
    "PipelineStrategy",
    "Recorder",
    "arrays",
    "as_update",
    "flatten",
    "reply_update",
    "unflatten",
    "with_phase",
    "with_record",
]
