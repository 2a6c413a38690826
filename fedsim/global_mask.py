"""The server's one global mask for ``workload.sparsity``: how clients agree on a sparse model.

Clients never negotiate a mask among themselves. The server holds it: before round 1 the
method's ``initial_masks``; after each round it prunes the *aggregate* (``server_masks``,
PruneFL / FedDST style) and masks the global model, which it then sends as the values of its
unmasked entries; the positions it sends are the mask every client trains under (a client may
rewire its own copy during local training, RigL / SET, but the next global mask is again the
server's pruning of the aggregate).
"""

from __future__ import annotations

from typing import Any

import torch
from flwr.app import ArrayRecord
from torch import Tensor

from clients.sparsity import Masks, SparsityMethod, apply_masks, density, prunable
from fedsim.errors import UserError
from fedsim.registry import SPARSITY
from fedsim.scenario import Scenario


class GlobalMask:
    """The global mask over the model's weight tensors and the method that moves it."""

    def __init__(self, method: SparsityMethod, rounds: int, generator: torch.Generator) -> None:
        self.method = method
        self.rounds = rounds
        self.generator = generator
        self.masks: Masks = {}

    @classmethod
    def for_scenario(cls, scenario: Scenario, generator: torch.Generator) -> GlobalMask | None:
        spec = scenario.workload.sparsity
        if spec is None:
            return None
        return cls(SPARSITY.build(spec), scenario.rounds, generator)

    def start(self, arrays: ArrayRecord) -> ArrayRecord:
        """The initial global model under the method's initial mask."""
        weights = _weights(arrays)
        if not weights:
            raise UserError(
                "workload.sparsity: the model has no weight tensors (2-D or more) to prune; "
                "remove workload.sparsity or use a model with Linear or Conv layers"
            )
        try:
            self.masks = self.method.initial_masks(weights, self.rounds, self.generator)
        except ValueError as err:
            raise UserError(f"workload.sparsity: {err}") from None
        return self._masked(arrays)

    def after_round(self, round: int, arrays: ArrayRecord) -> ArrayRecord:
        """Prune the new aggregate if the method says so this round, and mask it."""
        new = self.method.server_masks(round, self.rounds, _weights(arrays), self.masks)
        if new is not None:
            self.masks = new
        return self._masked(arrays)

    def flat(self, arrays: ArrayRecord) -> Tensor:
        """The mask over the model flattened in ``arrays``' order; dense tensors all True."""
        parts = [
            self.masks[k].reshape(-1)
            if k in self.masks
            else torch.ones(a.numpy().size, dtype=torch.bool)
            for k, a in arrays.items()
        ]
        return torch.cat(parts)

    @property
    def density(self) -> float:
        return density(self.masks)

    def state_dict(self) -> dict[str, Any]:
        return {"masks": self.masks, "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.masks = dict(state["masks"])
        self.generator.set_state(state["generator"])

    def _masked(self, arrays: ArrayRecord) -> ArrayRecord:
        state = arrays.to_torch_state_dict()
        apply_masks(state, self.masks)
        return ArrayRecord(state)


def _weights(arrays: ArrayRecord) -> dict[str, Tensor]:
    return prunable(arrays.to_torch_state_dict())


def masks_from_flat(flat: Tensor, state: dict[str, Tensor]) -> Masks:
    """The per-tensor masks of the weight tensors from a flat mask over the whole ``state``."""
    weights, masks, offset = prunable(state), {}, 0
    for name, tensor in state.items():
        size = tensor.numel()
        if name in weights:
            masks[name] = flat[offset : offset + size].reshape(tensor.shape)
        offset += size
    return masks
