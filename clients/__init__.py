"""Workloads: models and local training, registered in ``fedsim.registry.WORKLOADS``.

Importing this package registers every workload, sparse-training method and update compressor.
Nothing here imports Flower or ``strategies``.
"""

from clients import classification as classification
from clients import compression as compression
from clients import gnn as gnn
from clients import infoplane_models as infoplane_models
from clients import mbo as mbo
from clients import sparsity as sparsity
from clients.avgk import workload as avgk_workload  # noqa: F401  (registers "avgk")
from clients.daml import workload as daml_workload  # noqa: F401  (registers "daml")
from clients.hsi import workload as hsi_workload  # noqa: F401  (registers "hsi")
from clients.reid import workload as reid_workload  # noqa: F401  (registers "reid")
from clients.workload import (
    Aggregate,
    Arrays,
    Exchange,
    Labelled,
    Metrics,
    State,
    TrainConfig,
    Workload,
    WorkloadBase,
    init_parameters,
)

__all__ = [
    "Aggregate",
    "Arrays",
    "Exchange",
    "Labelled",
    "Metrics",
    "State",
    "TrainConfig",
    "Workload",
    "WorkloadBase",
    "init_parameters",
]
