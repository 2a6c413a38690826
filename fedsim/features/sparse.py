"""``workload.sparsity``: sparse training under one global mask the server holds.

Server half: the mask starts with the method's initial mask, the server prunes each new
aggregate (``fedsim.global_mask``) and sends the model as its unmasked entries (``fedsim.wire``).
Client half: local training under the mask it received, rewired by RigL / SET where the method
says so. The update travels encoded (``fedsim.features.encoding``).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from flwr.app import ArrayRecord, Message

from clients.sparsity import SparsityMethod, masked_training
from fedsim import wire
from fedsim.build import MASK_STREAM, seeded_generator
from fedsim.features.base import ClientMod, Fit, ServerFeature, Trained
from fedsim.global_mask import GlobalMask, masks_from_flat
from fedsim.registry import SPARSITY
from fedsim.scenario import Scenario


class SparseModel(ServerFeature):
    """The global mask: applied to the initial model and to every aggregate, sent as positions."""

    def __init__(self, mask: GlobalMask) -> None:
        self.mask = mask

    def start(self, arrays: ArrayRecord) -> ArrayRecord:
        return self.mask.start(arrays)

    def send(self, messages: list[Message], arrays: ArrayRecord) -> list[Message]:
        return wire.send_masked(messages, self.mask.flat(arrays))

    def after_aggregate(
        self, round: int, arrays: ArrayRecord
    ) -> tuple[ArrayRecord, dict[str, float]]:
        arrays = self.mask.after_round(round, arrays)  # the next global mask
        return arrays, {"density": self.mask.density}

    def state_dict(self) -> Any:
        return self.mask.state_dict()

    def load_state_dict(self, state: Any) -> None:
        self.mask.load_state_dict(state)


def sparse_model(scenario: Scenario) -> SparseModel | None:
    mask = GlobalMask.for_scenario(scenario, seeded_generator(scenario.seed, MASK_STREAM))
    return SparseModel(mask) if mask is not None else None


def sparse_training_mod(scenario: Scenario) -> ClientMod | None:
    spec = scenario.workload.sparsity
    if spec is None:
        return None
    method: SparsityMethod = SPARSITY.build(spec)

    def mod(fit: Fit, call_next: Callable[[Fit], Trained]) -> Trained:
        with _under_mask(method, fit):
            return call_next(fit)

    return mod


def _under_mask(method: SparsityMethod, fit: Fit) -> AbstractContextManager[object]:
    """Local training under the global mask the server sent (rewired by RigL / SET)."""
    if fit.mask is None:  # no weight pruned yet
        return nullcontext()
    masks = masks_from_flat(fit.mask, fit.model.state_dict())
    generator = seeded_generator(fit.scenario.seed, fit.client, fit.round, MASK_STREAM)
    rewiring = method.rewiring(fit.round, fit.scenario.rounds, generator)
    return masked_training(fit.model, masks, rewiring)
