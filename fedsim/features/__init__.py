"""Cross-cutting features as pairs: a server-side half and a client-side mod, one file each.

A feature a scenario turns on (dropout, data poisoning, local DP, sparse training, compressed
updates, FedLaAvg's latest-update replies) acts around the round loop and the local training
call, never inside them, as Flower's own DP wrappers and mods do. ``client_mods`` and
``server_features`` list the ones a scenario turns on, in the order they wrap the call.
"""

from __future__ import annotations

from fedsim.features.base import ClientMod, Fit, ServerFeature, Trained
from fedsim.features.registry import changes_training, client_mods, server_features

__all__ = [
    "ClientMod",
    "Fit",
    "ServerFeature",
    "Trained",
    "changes_training",
    "client_mods",
    "server_features",
]
