"""The scenario's ``privacy:`` section at work: where local and central DP meet the Flower app.

Local DP trains each client by DP-SGD (``clients.privacy.DPSGD``) and keeps the client's
accountant history in its ``context.state``, so ε accumulates over every round it trained in.
Central DP wraps the scenario's strategy in Flower's server-side DP wrapper
(``strategies.flower.central_dp``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
from flwr.app import ConfigRecord, RecordDict
from torch import nn

from clients.workload import Labelled, LocalTraining, PlainTraining, TrainConfig, Workload
from fedsim.scenario import CentralPrivacy, LocalPrivacy, Scenario
from strategies.flower import PipelineStrategy

# clients.privacy and strategies.flower.central_dp import Opacus, about a second and a half of
# start-up in every process (and every sweep worker) that imports the engine; they are imported
# where a scenario with ``privacy:`` needs them, so a run without DP never loads Opacus.
if TYPE_CHECKING:
    from clients.privacy import HistoryEntry
    from strategies.flower.central_dp import CentralDP

STATE_KEY = "privacy"  # the client's context.state entry holding its accountant history
NOISE_STREAM = 19  # keeps DP-SGD's noise apart from other uses of the seed
DRY_RUN_SAMPLES = 8  # a preflight DP-SGD run on this many of client 0's samples


# -- local DP: the client side ---------------------------------------------------------------


def local_training(scenario: Scenario, state: RecordDict, client: int, rnd: int) -> LocalTraining:
    """How ``client`` trains in round ``rnd``: DP-SGD from its saved history, or plain SGD."""
    spec = scenario.privacy
    if not isinstance(spec, LocalPrivacy):
        return PlainTraining()
    from clients.privacy import DPSGD

    entropy = np.random.SeedSequence([scenario.seed, client, rnd, NOISE_STREAM])
    return DPSGD(
        spec.noise_multiplier,
        spec.max_grad_norm,
        noise_seed=int(entropy.generate_state(1, dtype=np.uint64)[0] >> 1),
        poisson=spec.poisson,
        accountant=spec.accountant,
        history=load_history(state),
    )


def spent(training: LocalTraining, scenario: Scenario, state: RecordDict) -> dict[str, float]:
    """After a client trained: save its history in ``state``; its ε so far as a metric.

    A workload that never called ``training.setup`` did not train privately: refused, since
    its model would be released as if it had.
    """
    spec = scenario.privacy
    if not isinstance(spec, LocalPrivacy):
        return {}
    from clients.privacy import DPSGD

    if not isinstance(training, DPSGD):
        return {}
    if not training.trained:
        raise RuntimeError(
            f"workload {scenario.workload.name!r} does not support local DP: its fit never "
            f"called config.training.setup; train through config.training (see "
            f"clients/workload.py) or remove privacy"
        )
    history = training.history()
    save_history(state, history)
    if spec.noise_multiplier <= 0:
        return {}  # ε is infinite: there is no privacy to report
    return {"epsilon": training.epsilon(spec.delta)}


def release(training: LocalTraining) -> None:
    """Take DP-SGD's hooks off the model, which the process reuses for other clients."""
    if not training.private:
        return  # plain SGD hooked nothing (and Opacus need not be imported to know it)
    from clients.privacy import DPSGD

    if isinstance(training, DPSGD):
        training.close()


def load_history(state: RecordDict) -> list[HistoryEntry]:
    if STATE_KEY not in state:
        return []
    record = state.config_records[STATE_KEY]
    sigmas = cast(list[float], record["noise_multiplier"])
    rates = cast(list[float], record["sample_rate"])
    steps = cast(list[int], record["steps"])
    return [(float(s), float(q), int(k)) for s, q, k in zip(sigmas, rates, steps, strict=True)]


def save_history(state: RecordDict, history: list[HistoryEntry]) -> None:
    state[STATE_KEY] = ConfigRecord(
        {
            "noise_multiplier": [float(s) for s, _, _ in history],
            "sample_rate": [float(q) for _, q, _ in history],
            "steps": [int(k) for _, _, k in history],
        }
    )


def private_model(model: nn.Module, scenario: Scenario) -> tuple[nn.Module, list[str]]:
    """The model local DP can train (Opacus's checks; ``fix_model`` replaces layers)."""
    spec = scenario.privacy
    if not isinstance(spec, LocalPrivacy):
        return model, []
    from clients.privacy import opacus_compatible

    return opacus_compatible(model, spec.fix_model)


def dry_run(scenario: Scenario, workload: Workload, model: nn.Module, data: Any) -> None:
    """A few DP-SGD steps on a few samples: a workload or model that cannot train privately
    fails here, before the run, rather than in every client of every round."""
    state = RecordDict()
    training = local_training(scenario, state, client=0, rnd=0)
    config = TrainConfig(0, 0, torch.Generator().manual_seed(0), torch.device("cpu"), training)
    x, y = data
    try:
        workload.fit(model, Labelled(x[:DRY_RUN_SAMPLES], y[:DRY_RUN_SAMPLES]), {}, config)
        spent(training, scenario, state)
    finally:
        release(training)


# -- central DP: the server side -------------------------------------------------------------


def central(strategy: PipelineStrategy, scenario: Scenario) -> PipelineStrategy | CentralDP:
    """``strategy`` inside Flower's server-side DP wrapper when the scenario asks for it."""
    spec = scenario.privacy
    if not isinstance(spec, CentralPrivacy):
        return strategy
    from strategies.flower.central_dp import AdaptiveClippingDP, CentralAccount, FixedClippingDP

    n = scenario.clients.per_round
    account = CentralAccount(spec.noise_multiplier, n / scenario.clients.num, spec.delta)
    if spec.clipping == "fixed":
        return FixedClippingDP(
            strategy,
            spec.noise_multiplier,
            spec.clipping_norm,
            n,
            seed=scenario.seed,
            account=account,
        )
    return AdaptiveClippingDP(
        strategy,
        spec.noise_multiplier,
        n,
        initial_clipping_norm=spec.clipping_norm,
        target_clipped_quantile=spec.target_clipped_quantile,
        clip_norm_lr=spec.clip_norm_lr,
        clipped_count_stddev=spec.clipped_count_stddev,
        seed=scenario.seed,
        account=account,
    )
