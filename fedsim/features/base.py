"""What a feature's two halves see: one client's training call, and the server's round."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from torch import nn

from clients.workload import State, TrainConfig
from fedsim.scenario import Scenario


@dataclass(frozen=True)
class Fit:
    """One client's local training, as client mods see it (change it with ``replace``)."""

    scenario: Scenario
    client: int
    round: int
    model: nn.Module  # loaded with the model sent and the client's local entries
    data: Any
    state: State  # the workload's own state
    config: TrainConfig
    records: RecordDict  # the client's context.state, where mods keep their own entries
    sent: ArrayRecord  # the shared entries as received
    message: ConfigRecord  # the train Message's config
    mask: torch.Tensor | None = None  # the global mask (flat) when the model came masked

    def but(self, **changes: Any) -> Fit:
        return replace(self, **changes)


@dataclass
class Trained:
    """What a client replies: its metrics and one ArrayRecord under ``key`` (the shared model
    under ``arrays``, or an encoded update)."""

    metrics: dict[str, float]
    key: str
    arrays: ArrayRecord


# A client mod wraps the training call: it may change the call, or the reply, or both.
ClientMod = Callable[[Fit, Callable[[Fit], Trained]], Trained]


class ServerFeature:
    """The server's half of a feature; every hook defaults to doing nothing."""

    def start(self, arrays: ArrayRecord) -> ArrayRecord:
        """The global model before round 1 (a fresh run only)."""
        return arrays

    def send(self, messages: list[Message], arrays: ArrayRecord) -> list[Message]:
        """The train or evaluate Messages as they leave the server."""
        return messages

    def after_aggregate(
        self, round: int, arrays: ArrayRecord
    ) -> tuple[ArrayRecord, dict[str, float]]:
        """The new global model, and server metrics of this feature's round."""
        return arrays, {}

    def started(self) -> dict[str, Any]:
        """An event to record when a fresh run starts: ``{"event": ..., **fields}``, {} for none."""
        return {}

    def state_dict(self) -> Any:
        return None

    def load_state_dict(self, state: Any) -> None:
        pass
