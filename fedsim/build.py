"""What the server and the clients both build from a scenario, the same in every process."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from clients import Workload
from clients.workload import split_state
from fedsim import privacy
from fedsim.data import Federation, federation_for
from fedsim.errors import UserError
from fedsim.registry import ANALYSES, ATTACKS, AVAILABILITY, STRATEGIES, WORKLOADS
from fedsim.scenario import Scenario
from strategies.attacks.base import DataAttack, Poison
from strategies.availability import Population
from strategies.flower import PipelineStrategy

if TYPE_CHECKING:  # imports Opacus: only a scenario with central DP loads it (fedsim.privacy)
    from strategies.flower.central_dp import CentralDP

BYZANTINE_STREAM = 13  # keeps the choice of byzantine clients apart from other uses of the seed
MASK_STREAM = 19  # the same for the sparse-training method's initial mask
LOCAL_STREAM = 31  # a client's local entries before its first call
TORCH_STREAM = 41  # torch's global generator in a client's call (a model's own dropout)


def pick_device(choice: str) -> torch.device:
    if choice == "cuda" and not torch.cuda.is_available():
        raise UserError("device: cuda was asked for but no CUDA GPU is visible; use auto or cpu")
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(choice)


def seeded_generator(*seed: int) -> torch.Generator:
    """A torch generator seeded from integers (no global seeding)."""
    return torch.Generator().manual_seed(_entropy(seed))


def seed_torch(*seed: int) -> None:
    """Seed torch's global generators (the CPU's, the current CUDA device's) from integers:
    what a model's own random layers (dropout), which take no generator, draw from. Seeded for
    each client call, they draw alike whichever process, worker or actor runs it. Inside
    ``torch_rng_kept`` only, so that the caller's generators are left as they were."""
    torch.default_generator.manual_seed(_entropy(seed))
    torch.cuda.manual_seed(_entropy(seed))  # queued until CUDA starts, if it has not


@contextlib.contextmanager
def torch_rng_kept() -> Iterator[None]:
    """torch's global generators (the CPU's, the current CUDA device's) as they were before
    the block, whatever it seeded or drew."""
    devices = [torch.cuda.current_device()] if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        yield


@lru_cache(maxsize=4096)
def _entropy(seed: tuple[int, ...]) -> int:
    # Remembered: deriving it costs five times the generator, and a round asks for some twice
    # (a client's two reports of the information plane share their stream).
    return int(np.random.SeedSequence(list(seed)).generate_state(1, dtype=np.uint64)[0])


def build_workload(scenario: Scenario) -> Workload:
    """The scenario's workload, with its analyses' exchanges and central estimates attached
    (the workload itself when it has none): what the server and every client run."""
    workload: Workload = WORKLOADS.build(scenario.workload)
    if not scenario.analysis:
        return workload
    from fedsim.analyses import Analysed

    analyses = [ANALYSES.build(spec) for spec in scenario.analysis]
    dataset = lambda: scenario_federation(scenario).dataset  # noqa: E731  (loaded when asked)
    return Analysed(workload, analyses, scenario.rounds, dataset)  # type: ignore[return-value]


def scenario_federation(scenario: Scenario) -> Federation:
    """The scenario's data, split among its clients (one copy per process, cached)."""
    return federation_for(
        scenario.data.dataset,
        scenario.data.partition,
        scenario.clients.num,
        scenario.seed,
        scenario.data.val_fraction,
    )


def initial_model(workload: Workload, scenario: Scenario, dataset: Any) -> nn.Module:
    """The global model before round 1, the same in every process for the same seed."""
    return initial_model_and_changes(workload, scenario, dataset)[0]


def initial_model_and_changes(
    workload: Workload, scenario: Scenario, dataset: Any, *stream: int
) -> tuple[nn.Module, list[str]]:
    """The global model, and the layers local DP's ``fix_model`` replaced in it."""
    model = workload.build_model(dataset, seeded_generator(scenario.seed, *stream))
    return privacy.private_model(model, scenario)


def local_entries(
    workload: Workload, scenario: Scenario, dataset: Any, client: int
) -> dict[str, torch.Tensor]:
    """``client``'s local entries before its first call: its own draw from (seed, client)."""
    model, _ = initial_model_and_changes(workload, scenario, dataset, client, LOCAL_STREAM)
    return split_state(model.state_dict(), workload.local)[1]


def byzantine_clients(scenario: Scenario) -> frozenset[int]:
    """The ids of the ``byzantine.num`` attacking clients, drawn from the seed."""
    rng = np.random.default_rng([scenario.seed, BYZANTINE_STREAM])
    chosen = rng.choice(scenario.clients.num, size=scenario.byzantine.num, replace=False)
    return frozenset(int(c) for c in chosen)


def data_poison(scenario: Scenario) -> Poison | None:
    """The scenario's data-poisoning attack, if it has one (model attacks act in the strategy)."""
    if not scenario.byzantine.num:
        return None
    attack = ATTACKS.build(scenario.byzantine.attack)
    if not isinstance(attack, DataAttack):
        return None
    return attack.poison


def build_strategy(scenario: Scenario, **options: Any) -> PipelineStrategy | CentralDP:
    """The scenario's strategy, inside Flower's central-DP wrapper when ``privacy`` says so."""
    return privacy.central(pipeline_strategy(scenario, **options), scenario)


def pipeline_strategy(scenario: Scenario, **options: Any) -> PipelineStrategy:
    """The scenario's strategy with its sampling, availability and byzantine clients."""
    attack = None
    if scenario.byzantine.num:
        built = ATTACKS.build(scenario.byzantine.attack)
        attack = None if isinstance(built, DataAttack) else built  # data attacks act in clients
    strategy: PipelineStrategy = STRATEGIES.build(scenario.strategy)(
        per_round=scenario.clients.per_round,
        fraction_evaluate=scenario.eval.clients,
        seed=scenario.seed,
        online=None if scenario.clients.availability.name == "always" else availability(scenario),
        byzantine=byzantine_clients(scenario),
        attack=attack,
        **options,
    )
    return strategy


def availability(scenario: Scenario) -> Callable[[int], np.ndarray]:
    """The scenario's availability schedule: round -> which clients are online."""
    counts = scenario_federation(scenario).class_counts()
    population = Population(scenario.clients.num, scenario.seed, scenario.rounds, counts)
    schedule: Callable[[int], np.ndarray] = AVAILABILITY.build(scenario.clients.availability)(
        population
    )
    return schedule
