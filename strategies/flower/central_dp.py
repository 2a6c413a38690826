"""Central differential privacy: Flower's server-side DP wrappers around a fedsim strategy.

``FixedClippingDP`` and ``AdaptiveClippingDP`` are Flower's own
``DifferentialPrivacyServerSide{Fixed,Adaptive}Clipping`` (DP-FedAvg, McMahan et al. 2018;
adaptive clipping, Andrew et al. 2021): each reply's update is clipped to the clipping norm C, the
wrapped strategy aggregates, and Gaussian noise of std z·C/n (n sampled clients) is added to the
new model. fedsim changes only what it must:

- noise (and adaptive clipping's noisy count) is drawn from the scenario's seed and the round, not
  from NumPy's global generator, so a run, and a resumed run, is reproducible;
- the adaptive wrapper's noise is calibrated to the norm the round's updates were clipped to
  (Flower updates the norm first and noises with the next round's norm);
- the adaptive norm moves as in Andrew et al.: C ← C·exp(−η(b̄ − γ)) with b̄ the (noisy)
  fraction of updates *not* clipped. Flower 1.41 puts the clipped fraction in b̄'s place, so its
  norm shrinks when most updates are clipped and grows when few are, away from the γ-quantile;
- each round records the noise multiplier, the clipping norm, the noise std and the ε spent,
  and the wrapper's state (the adaptive norm, the releases so far) goes into checkpoints;
- replies reach Flower's clipping as updates (a model reply becomes ``update`` = x_i − x) and
  are clipped as such, so a clipped update reaches the strategy exactly, never as a model
  x + clip(u) from which the strategy would subtract x again.

ε is the client-level guarantee of the sampled Gaussian mechanism applied once per released
round with sampling rate q = clients per round / clients, computed by Opacus's RDP accountant
(the analysis of DP-FedAvg, which treats the fixed-size sample as a Poisson one).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, Message, MetricRecord
from flwr.serverapp.strategy import (
    DifferentialPrivacyServerSideAdaptiveClipping,
    DifferentialPrivacyServerSideFixedClipping,
)
from flwr.supercore.differential_privacy import compute_stdv
from opacus.accountants import RDPAccountant

from strategies.flower.pipeline_strategy import PipelineStrategy, as_update

NOISE_STREAM = 17  # keeps the model noise apart from other uses of the seed
COUNT_STREAM = 18  # adaptive clipping's noisy count of clipped updates


class CentralAccount:
    """ε of central DP after some released rounds (Opacus's RDP accountant)."""

    def __init__(self, noise_multiplier: float, sample_rate: float, delta: float) -> None:
        self.noise_multiplier = noise_multiplier
        self.sample_rate = sample_rate
        self.delta = delta
        self.releases = 0

    def epsilon(self) -> float:
        if self.releases == 0:
            return 0.0
        if self.noise_multiplier <= 0:
            return math.inf
        accountant = RDPAccountant()
        accountant.history = [(self.noise_multiplier, self.sample_rate, self.releases)]
        return float(accountant.get_epsilon(self.delta))


class _CentralDP:
    """What fedsim adds to both of Flower's wrappers (mixed in before them)."""

    inner: PipelineStrategy  # the wrapped strategy (Flower's wrappers call it ``strategy``)
    noise_multiplier: float  # the model's noise multiplier (adaptive: after the count's share)
    clipping_norm: float
    num_sampled_clients: int
    current_arrays: ArrayRecord  # the model sent this round (set by Flower's configure_train)

    def _fedsim_setup(self, inner: PipelineStrategy, seed: int, account: CentralAccount) -> None:
        self.inner = inner
        self.seed = seed
        self.account = account
        self._round = 0
        self._round_norm = self.clipping_norm  # the norm this round's updates are clipped to

    def _rng(self, stream: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self._round, stream])

    def _add_noise_to_aggregated_arrays(self, aggregated: ArrayRecord) -> ArrayRecord:
        """Flower's Gaussian noise (std from ``compute_stdv``), drawn from the seed and round."""
        std = compute_stdv(self.noise_multiplier, self._round_norm, self.num_sampled_clients)
        rng = self._rng(NOISE_STREAM)
        noisy = {}
        for key, array in aggregated.items():
            values = array.numpy()
            noise = rng.normal(0.0, std, values.shape).astype(values.dtype)
            noisy[key] = Array(np.asarray(values + noise))
        return ArrayRecord(noisy)

    def _recorded_round(
        self,
        server_round: int,
        replies: Iterable[Message],
        aggregate: Any,
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Run Flower's ``aggregate_train`` (``aggregate``) and record what it did.

        Flower clips ``reply - current_arrays``; with every reply an update and zeros as the
        reference, that is the update itself, and the clipped update is what it hands on.
        """
        sent = self.current_arrays
        replies = [as_update(reply, sent) for reply in replies]
        self._round, self._round_norm = server_round, self.clipping_norm
        recorder = self.inner.recorder
        if any(reply.has_error() for reply in replies):
            failed = sorted(
                self.inner._client(r.metadata.src_node_id) for r in replies if r.has_error()
            )
            recorder.event(
                "round_skipped",
                round=server_round,
                reason=f"central DP: clients {failed} failed; Flower's DP wrapper skips the round",
            )
        self.current_arrays = ArrayRecord(
            {key: Array(np.zeros_like(array.numpy())) for key, array in sent.items()}
        )
        try:
            with _quiet_flwr():
                arrays, metrics = aggregate(server_round, replies)
        finally:
            self.current_arrays = sent
        if arrays is not None:
            self.account.releases += 1
        values = {
            "dp_noise_multiplier": self.account.noise_multiplier,
            "dp_clipping_norm": self._round_norm,
            "dp_noise_std": compute_stdv(
                self.noise_multiplier, self._round_norm, self.num_sampled_clients
            ),
        }
        if self.account.noise_multiplier > 0:
            values["epsilon"] = self.account.epsilon()
        recorder.metrics(server_round, "server", None, values)
        return arrays, metrics

    def state_dict(self) -> dict[str, Any]:
        return {
            "strategy": self.inner.state_dict(),
            "clipping_norm": self.clipping_norm,
            "releases": self.account.releases,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.inner.load_state_dict(state["strategy"])
        self.clipping_norm = float(state["clipping_norm"])
        self.account.releases = int(state["releases"])


class FixedClippingDP(_CentralDP, DifferentialPrivacyServerSideFixedClipping):
    """Flower's server-side fixed clipping around a fedsim strategy (seeded, recorded)."""

    def __init__(
        self,
        strategy: PipelineStrategy,
        noise_multiplier: float,
        clipping_norm: float,
        num_sampled_clients: int,
        *,
        seed: int,
        account: CentralAccount,
    ) -> None:
        DifferentialPrivacyServerSideFixedClipping.__init__(
            self, strategy, noise_multiplier, clipping_norm, num_sampled_clients
        )
        self._fedsim_setup(strategy, seed, account)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        flower = super().aggregate_train
        return self._recorded_round(server_round, replies, flower)


class AdaptiveClippingDP(_CentralDP, DifferentialPrivacyServerSideAdaptiveClipping):
    """Flower's server-side adaptive clipping around a fedsim strategy (seeded, recorded)."""

    def __init__(
        self,
        strategy: PipelineStrategy,
        noise_multiplier: float,
        num_sampled_clients: int,
        *,
        initial_clipping_norm: float,
        target_clipped_quantile: float,
        clip_norm_lr: float,
        clipped_count_stddev: float | None,
        seed: int,
        account: CentralAccount,
    ) -> None:
        DifferentialPrivacyServerSideAdaptiveClipping.__init__(
            self,
            strategy,
            noise_multiplier,
            num_sampled_clients,
            initial_clipping_norm,
            target_clipped_quantile,
            clip_norm_lr,
            clipped_count_stddev,
        )
        self._fedsim_setup(strategy, seed, account)

    def _noisy_fraction(self, count: int, total: int) -> float:
        """Flower's noisy fraction of clipped updates, drawn from the seed and round."""
        noisy = self._rng(COUNT_STREAM).normal(count, self.clipped_count_stddev)
        return float(noisy) / float(total)

    def _geometric_update(self, clipped_fraction: float) -> None:
        """Andrew et al.'s step, on the fraction of updates left unclipped (see the module)."""
        super()._geometric_update(1.0 - clipped_fraction)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        flower = super().aggregate_train
        return self._recorded_round(server_round, replies, flower)


CentralDP = FixedClippingDP | AdaptiveClippingDP


@contextmanager
def _quiet_flwr() -> Iterator[None]:
    """Flower's wrappers log every clipped reply at INFO; fedsim records the round instead."""
    logger = logging.getLogger("flwr")
    level = logger.level
    logger.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        logger.setLevel(level)
