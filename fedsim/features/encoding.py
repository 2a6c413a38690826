"""Updates sent encoded (``compression``, or any sparse training): the client half.

The client replies with its update (trained − received), compressed with error feedback kept in
its state, as a sparse vector (``fedsim.wire``); the server decodes every encoded reply back
before the strategy sees it, whatever feature encoded it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from flwr.app import Array, ArrayRecord

from clients.compression import Compressor
from fedsim import wire
from fedsim.features.base import ClientMod, Fit, Trained
from fedsim.registry import COMPRESSORS
from fedsim.scenario import Scenario
from strategies.flower import flatten

RESIDUAL = "compression-residual"  # a client's error-feedback memory in its context.state


def encodes_updates(scenario: Scenario) -> bool:
    return scenario.workload.sparsity is not None or scenario.compression.name != "none"


def update_encoding_mod(scenario: Scenario) -> ClientMod | None:
    if not encodes_updates(scenario):
        return None
    compressor: Compressor = COMPRESSORS.build(scenario.compression)

    def mod(fit: Fit, call_next: Callable[[Fit], Trained]) -> Trained:
        trained = call_next(fit)
        update = flatten(trained.arrays) - flatten(fit.sent)
        kept = fit.records.array_records.get(RESIDUAL)
        residual = torch.from_numpy(kept["residual"].numpy().copy()) if kept is not None else None
        out = compressor.compress(update, residual)
        if out.residual is not None:
            fit.records[RESIDUAL] = ArrayRecord({"residual": Array(out.residual.numpy())})
        return Trained(trained.metrics, wire.DELTA, wire.encode(out.sent, out.support))

    return mod
