"""Sparse training: masks, their schedules and the registered methods (pure torch, no Flower)."""

from clients.sparsity import methods as methods
from clients.sparsity.masks import Masks, apply_masks, density, prunable
from clients.sparsity.methods import SparsityMethod
from clients.sparsity.training import Rewiring, masked_training

__all__ = [
    "Masks",
    "Rewiring",
    "SparsityMethod",
    "apply_masks",
    "density",
    "masked_training",
    "prunable",
]
