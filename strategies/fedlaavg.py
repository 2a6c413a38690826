"""FedLaAvg (Yan et al., 2020) and MIFA (Gu et al., 2021): average every client's *latest* update.

Under intermittent availability FedAvg averages only the clients online this round, so the model
drifts towards whoever is online. FedLaAvg keeps, for every client i, its latest update
u_i = x_i − x (the paper's g_i = (x − x_i)/η times −η; with a constant local learning rate the
two are the same algorithm, and u_i spares a division and a multiplication by η) and steps
x ← x + ū with ū = (1/N)·Σ_i u_i over *all* N clients, stale ones included; a client that has
never trained counts as 0.

Memory is split as in the authors' code: the server keeps only ū (O(d)); each client keeps its
own u_i and sends the *difference* Δ_i = u_i^new − u_i^old, so ū ← ū + Σ Δ_i / N. Clients keep
u_i in a ``ClientMemory`` (memory-mapped; see ``client_memory``) whose directory the train
config names under ``client-memory``.

The client protocol, for any ClientApp: a train Message's config carries ``latest-round`` (the
round of this client's update that ū holds, 0 for none) and ``keep-rounds``; the client trains,
calls ``latest_difference`` and replies with Δ_i in ``arrays`` (same names and shapes as the
model) and ``num-examples`` in ``metrics``. fedsim's ClientApp does this by itself.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from typing import Annotated, Any, Literal

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.serverapp import Grid
from pydantic import Field
from torch import Tensor

from fedsim.registry import SERVER_OPTIMISERS, STRATEGIES, Component, Params, Ref
from strategies.client_memory import ClientMemory
from strategies.flower import PipelineStrategy, flatten, reply_arrays
from strategies.pipeline import RoundInfo, Stage, chain

LATEST_ROUND = "latest-round"
KEEP_ROUNDS = "keep-rounds"
MEMORY_DIR = "client-memory"


def latest_average(num_clients: int) -> Stage:
    """ū ← ū + Σ_i Δ_i / N; outputs ū. The running sum is float64 so it does not drift."""

    def init(d: int) -> Tensor:
        return torch.zeros(d, dtype=torch.float64)

    def update(diffs: Tensor, mean: Tensor, info: RoundInfo) -> tuple[Tensor, Tensor]:
        mean = mean + diffs.to(torch.float64).sum(dim=0) / num_clients
        return mean.to(diffs.dtype), mean

    return Stage(init, update)


class FedLaAvgStrategy(PipelineStrategy):
    """Pick K online clients, fold their update differences into ū, step with the server optimiser.

    K is ``round(beta·N)`` when ``beta`` is given, else ``per_round``; with neither, every online
    client trains (MIFA). ``pick='oldest'`` takes the online clients that last trained longest
    ago (never first; ties broken at random from the seed), as the paper does; ``'random'``
    picks uniformly.
    """

    def __init__(
        self,
        server_opt: Stage,
        *,
        beta: float | None = None,
        pick: Literal["oldest", "random"] = "oldest",
        **options: Any,
    ) -> None:
        super().__init__(server_opt, **options)  # the pipeline is built once N is known
        self.server_opt = server_opt
        self.beta = beta
        self.pick = pick
        self.num_clients: int | None = None
        self.last_picked: dict[int, int] = {}  # client -> last round it was picked
        self.accepted: dict[int, int] = {}  # client -> round of its update that ū holds
        self._checkpointed: dict[int, int] = {}  # `accepted` as the last checkpoint saw it

    replies = "the change of their latest update"

    # -- checkpoints -----------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The strategy's state for a checkpoint.

        From here on clients also spare the updates this checkpoint refers to, so that a run
        resumed from it finds them.
        """
        self._checkpointed = dict(self.accepted)
        return {
            **super().state_dict(),
            "num_clients": self.num_clients,
            "last_picked": dict(self.last_picked),
            "accepted": dict(self.accepted),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self._set_population(state["num_clients"])
        self.last_picked = dict(state["last_picked"])
        self.accepted = dict(state["accepted"])
        self._checkpointed = dict(self.accepted)

    # -- Flower's methods ------------------------------------------------------------------------

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        if self.num_clients is None:
            self._set_population(len(list(grid.get_node_ids())))
        return super().configure_train(server_round, arrays, config, grid)

    # -- helpers ---------------------------------------------------------------------------------

    def _set_population(self, num_clients: int) -> None:
        self.num_clients = num_clients
        if self.beta is not None:
            self.per_round = max(1, round(self.beta * num_clients))
        self.pipeline = chain(latest_average(num_clients), self.server_opt)

    def _client_config(self, client: int, server_round: int) -> dict[str, Any]:
        self.last_picked[client] = server_round
        latest = self.accepted.get(client, 0)
        # Clients keep their latest updates in the strategy's folder (the run directory), so
        # that the memory resumes with the run.
        memory = os.path.join(self.workdir, "client_memory") if self.workdir else ""
        return {
            MEMORY_DIR: memory,
            LATEST_ROUND: latest,
            KEEP_ROUNDS: sorted({latest, self._checkpointed.get(client, 0)}),
        }

    def _updates(self, replies: Sequence[Message], global_flat: Tensor) -> Tensor:
        return torch.stack([flatten(reply_arrays(msg)) for msg in replies])

    def _folded_in(self, server_round: int, clients: Sequence[int]) -> None:
        for client in clients:
            self.accepted[client] = server_round

    def _choose(self, nodes: list[int], count: int, server_round: int, phase: int) -> list[int]:
        if phase != 0 or self.pick == "random":
            return super()._choose(nodes, count, server_round, phase)
        tie_break = np.random.default_rng([self.seed, server_round, phase]).random(len(nodes))
        age = np.array([self.last_picked.get(self._client(n), 0) for n in nodes])
        order = np.lexsort((tie_break, age))  # least recently picked first
        return sorted((nodes[i] for i in order[:count]), key=self._client)


def latest_difference(
    memory: ClientMemory, client: int, config: ConfigRecord, update: np.ndarray
) -> np.ndarray:
    """Client side: store ``update`` (x_i − x, flat) as this round's; return what to send (Δ_i)."""
    server_round = int(config["server-round"])  # type: ignore[arg-type]
    previous = memory.read(client, int(config[LATEST_ROUND]))  # type: ignore[arg-type]
    keep = [int(r) for r in config[KEEP_ROUNDS]]  # type: ignore[union-attr]
    memory.write(client, server_round, update, keep=keep)
    return update - previous


def is_latest_averaging(config: ConfigRecord) -> bool:
    """Whether a train Message asks for FedLaAvg's reply (Δ_i) rather than the model."""
    return LATEST_ROUND in config


# -- registry ------------------------------------------------------------------------------------


class FedLaAvgParams(Params):
    beta: float | None = Field(
        None,
        gt=0,
        le=1,
        description="K = round(beta·N) clients per round; default clients.per_round",
    )
    pick: Literal["oldest", "random"] = "oldest"
    server_opt: Annotated[Component, Ref("server_optimiser")] = Component(name="sgd")


@STRATEGIES.register("fedlaavg", FedLaAvgParams)
def fedlaavg(p: FedLaAvgParams) -> Callable[..., FedLaAvgStrategy]:
    """FedLaAvg: K online clients a round (oldest first); averages all clients' latest updates."""
    server_opt = SERVER_OPTIMISERS.build(p.server_opt)

    return partial(FedLaAvgStrategy, server_opt, beta=p.beta, pick=p.pick)


class MifaParams(Params):
    server_opt: Annotated[Component, Ref("server_optimiser")] = Component(name="sgd")


@STRATEGIES.register("mifa", MifaParams)
def mifa(p: MifaParams) -> Callable[..., FedLaAvgStrategy]:
    """MIFA: every online client trains; the server averages all clients' latest updates."""
    server_opt = SERVER_OPTIMISERS.build(p.server_opt)

    def build(**options: Any) -> FedLaAvgStrategy:
        return FedLaAvgStrategy(server_opt, **{**options, "per_round": None})

    return build
