"""Client availability schedules: which clients are online in a round. Pure, seeded, no Flower.

A schedule is built for a population (number of clients, seed, rounds, each client's label
counts) and answers ``online(round) -> bool mask over all clients``; the same round always gives
the same mask, so a resumed run sees what an uninterrupted one saw.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
from pydantic import Field

from fedsim.errors import UserError
from fedsim.registry import AVAILABILITY, Params, UserPath

Mask = np.ndarray  # (num_clients,) bool
Schedule = Callable[[int], Mask]
_AVAILABILITY_STREAM = 7  # keeps these draws apart from other uses of the same seed


@dataclass(frozen=True)
class Population:
    num_clients: int
    seed: int
    rounds: int
    label_counts: np.ndarray  # (num_clients, num_classes): each client's samples per class


def _rng(seed: int, round: int) -> np.random.Generator:
    return np.random.default_rng([seed, _AVAILABILITY_STREAM, round])


@AVAILABILITY.register("always")
def always(p: Params) -> Callable[[Population], Schedule]:
    """Every client is online in every round (Flower's own assumption)."""
    return lambda pop: lambda round: np.ones(pop.num_clients, dtype=bool)


class BernoulliParams(Params):
    p: float | list[float] = Field(
        0.5, description="probability online; one value or one per client"
    )


@AVAILABILITY.register("bernoulli", BernoulliParams)
def bernoulli(params: BernoulliParams) -> Callable[[Population], Schedule]:
    """Each client online with probability p each round, independently (as MIFA assumes)."""

    def build(pop: Population) -> Schedule:
        if isinstance(params.p, list) and len(params.p) != pop.num_clients:
            raise UserError(
                f"clients.availability.p has {len(params.p)} values for {pop.num_clients} clients"
            )
        p = np.broadcast_to(np.asarray(params.p, dtype=float), (pop.num_clients,)).copy()
        if ((p < 0) | (p > 1)).any():
            raise UserError("clients.availability.p: probabilities must lie in [0, 1]")
        return lambda round: _rng(pop.seed, round).random(pop.num_clients) < p

    return build


class DiurnalParams(Params):
    rounds_on: int = Field(10, ge=1, description="E: rounds group 0 is online per period")
    alpha: float = Field(0.5, gt=0, description="group 1 is online alpha*E rounds per period")
    grouping: Literal["by_label", "random"] = "by_label"
    classes: list[int] = Field([0, 1, 2, 3, 4], description="by_label: group 0's classes")
    fraction: float = Field(0.5, gt=0, lt=1, description="random: share of clients in group 0")


@AVAILABILITY.register("diurnal", DiurnalParams)
def diurnal(params: DiurnalParams) -> Callable[[Population], Schedule]:
    """FedLaAvg's day/night cycle: group 0 online E rounds, then group 1 for alpha*E rounds."""
    day = params.rounds_on
    night = int(params.alpha * day)  # the paper's floor(alpha * E)
    if night < 1:
        raise UserError(f"diurnal needs alpha * rounds_on >= 1, got {params.alpha} * {day}")

    def build(pop: Population) -> Schedule:
        if params.grouping == "by_label":
            classes = [c for c in params.classes if c < pop.label_counts.shape[1]]
            in_classes = pop.label_counts[:, classes].sum(axis=1)
            group0 = in_classes * 2 > pop.label_counts.sum(axis=1)  # mostly those classes
        else:
            order = _rng(pop.seed, 0).permutation(pop.num_clients)
            group0 = np.zeros(pop.num_clients, dtype=bool)
            group0[order[: round(params.fraction * pop.num_clients)]] = True

        def online(round: int) -> Mask:
            is_day = (round - 1) % (day + night) < day
            return group0.copy() if is_day else ~group0

        return online

    return build


class MarkovParams(Params):
    p_on_to_off: float = Field(0.1, gt=0, le=1)
    p_off_to_on: float = Field(0.3, gt=0, le=1)


@AVAILABILITY.register("markov", MarkovParams)
def markov(params: MarkovParams) -> Callable[[Population], Schedule]:
    """A two-state on/off Markov chain per client, started from its stationary law."""
    stationary_on = params.p_off_to_on / (params.p_on_to_off + params.p_off_to_on)

    def build(pop: Population) -> Schedule:
        states = [_rng(pop.seed, 1).random(pop.num_clients) < stationary_on]  # round 1

        def online(round: int) -> Mask:
            while len(states) < round:  # each round's draw depends only on (seed, round)
                u = _rng(pop.seed, len(states) + 1).random(pop.num_clients)
                prev = states[-1]
                states.append(np.where(prev, u >= params.p_on_to_off, u < params.p_off_to_on))
            return states[round - 1].copy()

        return online

    return build


class TraceParams(Params):
    # relative to the scenario file's folder
    path: Annotated[str, UserPath()] = Field(
        description="CSV: one row per client, one 0/1 column per round"
    )


@AVAILABILITY.register("trace", TraceParams)
def trace(params: TraceParams) -> Callable[[Population], Schedule]:
    """Availability read from a CSV file: row i, column r says whether client i is online in r."""

    def build(pop: Population) -> Schedule:
        table = _read_trace(Path(params.path))
        if table.shape[0] != pop.num_clients:
            raise UserError(
                f"{params.path}: {table.shape[0]} rows, but the federation has "
                f"{pop.num_clients} clients (one row per client)"
            )
        if table.shape[1] < pop.rounds:
            raise UserError(
                f"{params.path}: {table.shape[1]} rounds (columns), but the scenario runs "
                f"{pop.rounds}; give at least one column per round"
            )
        return lambda round: table[:, round - 1].copy()

    return build


def _read_trace(path: Path) -> Mask:
    try:
        with open(path, newline="") as f:
            rows = [row for row in csv.reader(f) if row]
    except OSError as err:
        raise UserError(f"availability trace {path}: {err.strerror}") from None
    if not rows or len({len(r) for r in rows}) != 1:
        raise UserError(f"availability trace {path}: every row needs the same number of columns")
    try:
        table = np.array([[int(v) for v in row] for row in rows])
    except ValueError:
        raise UserError(f"availability trace {path}: values must be 0 or 1") from None
    if not np.isin(table, (0, 1)).all():
        raise UserError(f"availability trace {path}: values must be 0 or 1")
    return table.astype(bool)
