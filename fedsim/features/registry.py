"""Which features a scenario turns on, in the order their client mods wrap the training call."""

from __future__ import annotations

from typing import Any

from fedsim.errors import UserError
from fedsim.features.base import ClientMod, ServerFeature
from fedsim.features.dropout import dropout_mod
from fedsim.features.encoding import encodes_updates, update_encoding_mod
from fedsim.features.latest_update import latest_update_mod
from fedsim.features.local_dp import PrivacyRecord, local_dp_mod
from fedsim.features.poisoning import poisoning_mod
from fedsim.features.sparse import sparse_model, sparse_training_mod
from fedsim.scenario import Scenario

# Outermost first: a dropped client never trains; poisoned data is what DP-SGD then trains on;
# the reply is encoded (or replaced by FedLaAvg's difference) after training under the mask.
_CLIENT_MODS = (
    dropout_mod,
    poisoning_mod,
    local_dp_mod,
    update_encoding_mod,
    latest_update_mod,
    sparse_training_mod,
)


# Mods that decide whether a client trains, or change its reply, but not the training itself:
# a cohort may train the clients they wrap together (``resources.vectorize``).
_AROUND_TRAINING = (dropout_mod, latest_update_mod)


def client_mods(scenario: Scenario) -> list[ClientMod]:
    return [mod for make in _CLIENT_MODS if (mod := make(scenario)) is not None]


def changes_training(scenario: Scenario) -> bool:
    """Whether a client mod the scenario turns on changes a client's training call (its data,
    its minibatches and steps, its model), so that each client must train alone."""
    return any(make(scenario) is not None for make in _CLIENT_MODS if make not in _AROUND_TRAINING)


def server_features(
    scenario: Scenario, strategy: Any, model_changes: list[str]
) -> list[ServerFeature]:
    """The server halves, checked against what the strategy's clients reply."""
    replies = getattr(strategy, "replies", "model")
    if encodes_updates(scenario) and replies != "model":
        raise UserError(
            f"strategy {scenario.strategy.name} has clients reply {replies}, which "
            "workload.sparsity and compression do not encode; use strategy fedavg"
        )
    features: list[ServerFeature] = []
    sparse = sparse_model(scenario)
    if sparse is not None:
        features.append(sparse)
    if scenario.privacy.mode != "none":
        features.append(PrivacyRecord(scenario, model_changes))
    return features
