"""FedLaAvg and MIFA as a Flower strategy; the algorithm and its client protocol are in
``strategies.fedlaavg``.

A client that speaks the protocol keeps its latest update itself and replies with the change
(``latest-difference``); any other client replies as Flower's clients do, with its model (or its
update), and the server keeps that client's latest update for it (O(d) server memory per such
client, so O(N·d) when none speaks the protocol: fine for a small federation, not for
thousands of clients of a large model).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Any, Literal

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.serverapp import Grid
from torch import Tensor

from strategies.fedlaavg import (
    DIFFERENCE,
    KEEP_ROUNDS,
    LATEST_ROUND,
    MEMORY_DIR,
    latest_average,
)
from strategies.flower.pipeline_strategy import (
    ARRAYS,
    UPDATE,
    PipelineStrategy,
    flatten,
    reply_update,
)
from strategies.pipeline import Stage, chain


class FedLaAvgStrategy(PipelineStrategy):
    """Pick K online clients, fold their update differences into ū, step with the server optimiser.

    K is ``round(beta·N)`` when ``beta`` is given, else ``per_round``; with neither, every online
    client trains (MIFA). ``pick='oldest'`` takes the online clients that last trained longest
    ago (never first; ties broken at random from the seed), as the paper does; ``'random'``
    picks uniformly. N is the number of nodes at the first round (set ``min_available_nodes``
    to N in a ServerApp of your own, so that none is missed).

    A reply is either the protocol's difference Δ_i or, from a client that does not speak it,
    its model (or update) u_i, whose previous value the server keeps in ``held`` to form Δ_i.
    A client keeps to one of the two for a run; a reply of the other kind is refused.
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
        # The latest update ū holds of each client that replies with its model: the server
        # keeps it for them. `_pending`: this round's, until they are folded in.
        self.held: dict[int, Tensor] = {}
        self._pending: dict[int, Tensor] = {}

    replies = "the change of their latest update"
    reply_records = (DIFFERENCE, ARRAYS, UPDATE)

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
            "held": {client: update.clone() for client, update in self.held.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self._set_population(state["num_clients"])
        self.last_picked = dict(state["last_picked"])
        self.accepted = dict(state["accepted"])
        self.held = dict(state.get("held", {}))
        self._checkpointed = dict(self.accepted)

    # -- Flower's methods ------------------------------------------------------------------------

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        if self.num_clients is None:
            self._set_population(len(self._nodes(grid)))
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

    def _problem(self, msg: Message, template: ArrayRecord | None) -> str | None:
        reason = super()._problem(msg, template)
        if reason is not None or template is None:
            return reason
        client = self._client(msg.metadata.src_node_id)
        if DIFFERENCE in msg.content.array_records:
            if client in self.held:
                return (
                    f"reply carries {DIFFERENCE!r}, but this client replied with its model "
                    "before and the server keeps its latest update"
                )
        elif self.accepted.get(client, 0) and client not in self.held:
            return (
                f"reply carries the model, but this client replied with {DIFFERENCE!r} before "
                "and keeps its latest update itself"
            )
        return None

    def _updates(self, replies: Sequence[Message], global_flat: Tensor) -> Tensor:
        """Each reply's Δ_i: as sent, or the client's update minus the one the server holds."""
        self._pending = {}
        rows = self._update_rows(len(replies), global_flat)
        for row, msg in zip(rows, replies, strict=True):
            records = msg.content.array_records
            if DIFFERENCE in records:
                flatten(records[DIFFERENCE], out=row)
                continue
            client = self._client(msg.metadata.src_node_id)
            update = reply_update(msg, global_flat)
            self._pending[client] = update
            held = self.held.get(client)
            if held is None:
                row.copy_(update)
            else:
                torch.sub(update, held, out=row)
        return rows

    def _folded_in(self, server_round: int, clients: Sequence[int]) -> None:
        for client in clients:
            self.accepted[client] = server_round
            if client in self._pending:
                self.held[client] = self._pending[client]
        self._pending = {}

    def _choose(self, nodes: list[int], count: int, server_round: int, phase: int) -> list[int]:
        if phase != 0 or self.pick == "random":
            return super()._choose(nodes, count, server_round, phase)
        tie_break = np.random.default_rng([self.seed, server_round, phase]).random(len(nodes))
        age = np.array([self.last_picked.get(self._client(n), 0) for n in nodes])
        order = np.lexsort((tie_break, age))  # least recently picked first
        return sorted((nodes[i] for i in order[:count]), key=self._client)
