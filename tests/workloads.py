"""Small helpers for tests that call a workload directly, outside a run."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from clients import TrainConfig

# The config of an evaluation outside a round (workloads that need none ignore it).
EVAL = TrainConfig(0, 0, torch.Generator().manual_seed(0), torch.device("cpu"))


def shape_of(input_shape: tuple[int, ...], num_classes: int) -> SimpleNamespace:
    """A stand-in dataset for ``build_model``: only its input shape and number of classes."""
    return SimpleNamespace(input_shape=tuple(input_shape), num_classes=num_classes)
