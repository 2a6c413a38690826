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
calls ``latest_difference`` and replies with Δ_i in an ArrayRecord ``latest-difference`` (same
names and shapes as the model) and ``num-examples`` in ``metrics``. fedsim's ClientApp does this
by itself. A ClientApp that does not speak the protocol replies as Flower's clients do, with its
model under ``arrays``; the strategy then keeps that client's u_i on the server (O(d) each), which
is simplest for a small federation and costs O(N·d) server memory for N such clients.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Annotated, Any, Literal

import numpy as np
import torch
from pydantic import Field
from torch import Tensor

from fedsim.registry import SERVER_OPTIMISERS, STRATEGIES, Component, Params, Ref
from strategies.client_memory import ClientMemory
from strategies.pipeline import RoundInfo, Stage

if TYPE_CHECKING:
    from strategies.flower.fedlaavg import FedLaAvgStrategy

LATEST_ROUND = "latest-round"
KEEP_ROUNDS = "keep-rounds"
MEMORY_DIR = "client-memory"
DIFFERENCE = "latest-difference"  # the record of a protocol reply: Δ_i
SUM_BLOCK = 1 << 16  # columns of Σ Δ_i summed at a time


def latest_average(num_clients: int) -> Stage:
    """ū ← ū + Σ_i Δ_i / N; outputs ū. The running sum is float64 so it does not drift."""

    def init(d: int) -> Tensor:
        return torch.zeros(d, dtype=torch.float64)

    def update(diffs: Tensor, mean: Tensor, info: RoundInfo) -> tuple[Tensor, Tensor]:
        mean = mean.clone()
        # In column blocks: a float64 copy of all of (n, d) at once would hold twice the rows.
        for start in range(0, diffs.shape[1], SUM_BLOCK):
            block = slice(start, start + SUM_BLOCK)
            mean[block] += diffs[:, block].to(torch.float64).sum(dim=0) / num_clients
        return mean.to(diffs.dtype), mean

    return Stage(init, update)


def latest_difference(
    memory: ClientMemory, client: int, config: Mapping[str, Any], update: np.ndarray
) -> np.ndarray:
    """Client side: store ``update`` (x_i − x, flat) as this round's; return what to send (Δ_i)."""
    server_round = int(config["server-round"])
    previous = memory.read(client, int(config[LATEST_ROUND]))
    keep = [int(r) for r in config[KEEP_ROUNDS]]
    memory.write(client, server_round, update, keep=keep)
    return update - previous


def is_latest_averaging(config: Mapping[str, Any]) -> bool:
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
    from strategies.flower.fedlaavg import FedLaAvgStrategy  # Flower only once a run builds it

    server_opt = SERVER_OPTIMISERS.build(p.server_opt)

    def build(**options: Any) -> FedLaAvgStrategy:
        return FedLaAvgStrategy(server_opt, beta=p.beta, pick=p.pick, **options)

    return build


class MifaParams(Params):
    server_opt: Annotated[Component, Ref("server_optimiser")] = Component(name="sgd")


@STRATEGIES.register("mifa", MifaParams)
def mifa(p: MifaParams) -> Callable[..., FedLaAvgStrategy]:
    """MIFA: every online client trains; the server averages all clients' latest updates."""
    from strategies.flower.fedlaavg import FedLaAvgStrategy  # Flower only once a run builds it

    server_opt = SERVER_OPTIMISERS.build(p.server_opt)

    def build(**options: Any) -> FedLaAvgStrategy:
        return FedLaAvgStrategy(server_opt, **{**options, "per_round": None})

    return build
