"""FedLaAvg and MIFA as a Flower strategy; the algorithm and its client protocol are in
``strategies.fedlaavg``."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Any, Literal

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.serverapp import Grid
from torch import Tensor

from strategies.fedlaavg import KEEP_ROUNDS, LATEST_ROUND, MEMORY_DIR, latest_average
from strategies.flower.pipeline_strategy import PipelineStrategy, flatten, reply_arrays
from strategies.pipeline import Stage, chain


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
