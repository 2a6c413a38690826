"""Each client's latest update, kept on disk: O(N·d) client state without O(N·d) memory.

FedLaAvg and MIFA need every client to remember the last update it sent. For N = 1000 clients
of a 1M-parameter model that is 4 GB, too much to hold in Flower's ``context.state`` in one
process. ``ClientMemory`` keeps the vectors in a memory-mapped file instead: a client maps its own
rows for the duration of one call, so resident memory stays at a few vectors whatever N is, and
worker processes on one machine share the file without copies.

Each client has ``SLOTS`` slots, each tagged with the round that wrote it. A client is told which
rounds the server still counts on (the one it last accepted, and the one in the last
checkpoint) and never overwrites those, so a rejected reply or a resumed run finds the vector the
server's average actually holds. The file is sparse: slots never written take no disk.
"""

from __future__ import annotations

import os
from collections.abc import Collection
from pathlib import Path

import numpy as np

SLOTS = 3  # the server's current round, the checkpoint's, and one to write
_EMPTY = 0  # a slot with no valid vector (never written, or a write cut short)


class ClientMemory:
    """Per-client vectors of length ``dim`` in files under ``directory``, addressed by round.

    Round 0 stands for the zero vector every client starts from and is never stored.
    """

    def __init__(self, directory: str | Path, num_clients: int, dim: int) -> None:
        self.directory = Path(directory)
        self.num_clients = num_clients
        self.dim = dim
        self.directory.mkdir(parents=True, exist_ok=True)
        self._values = self.directory / "values.f32"
        self._rounds = self.directory / "rounds.i64"
        # Any process may get here first. A fresh file reads as zeros, which mark every slot
        # empty, so creating one needs no initialisation that another process could race.
        _create(self._rounds, num_clients * SLOTS * 8)
        _create(self._values, num_clients * SLOTS * dim * 4)

    def read(self, client: int, round: int) -> np.ndarray:
        """The vector ``client`` stored in ``round`` (zeros for round 0), as a new array."""
        if round == 0:
            return np.zeros(self.dim, dtype=np.float32)
        slots = self._map_rounds()[client]
        found = np.flatnonzero(slots == round)
        if found.size == 0:
            raise LookupError(
                f"client {client} holds no update from round {round} (it holds rounds "
                f"{sorted(int(r) for r in slots if r != _EMPTY)}); the client memory in "
                f"{self.directory} does not belong to this run's checkpoint"
            )
        return np.array(self._map_values()[client, found[0]])

    def write(self, client: int, round: int, vector: np.ndarray, keep: Collection[int]) -> None:
        """Store ``vector`` as ``client``'s update of ``round``, sparing the rounds in ``keep``."""
        rounds = self._map_rounds()
        slots = rounds[client]
        if round < 1:
            raise ValueError(f"rounds start at 1, got {round}")
        free = [s for s in range(SLOTS) if slots[s] == _EMPTY or slots[s] not in keep]
        if not free:
            raise RuntimeError(f"client {client}: all {SLOTS} memory slots are kept: {keep}")
        # A retried round reuses its slot; otherwise the oldest stale one, so that a third slot
        # (and its disk) is touched only while a checkpoint holds on to an older update.
        slot = min(free, key=lambda s: (slots[s] != round, slots[s] == _EMPTY, slots[s], s))
        # A write cut short leaves no slot that claims a round. Stores to a shared mapping reach
        # the page cache in program order and outlive a killed process, so no msync is needed
        # (it would cost more than the write; only a power cut could lose them).
        slots[slot] = _EMPTY
        self._map_values()[client, slot] = vector
        slots[slot] = round

    def _map_rounds(self) -> np.memmap:
        return np.memmap(self._rounds, dtype=np.int64, mode="r+", shape=(self.num_clients, SLOTS))

    def _map_values(self) -> np.memmap:
        shape = (self.num_clients, SLOTS, self.dim)
        return np.memmap(self._values, dtype=np.float32, mode="r+", shape=shape)


def _create(path: Path, size: int) -> None:
    """Make ``path`` a sparse file of ``size`` bytes unless it exists, atomically."""
    if not path.exists():
        partial = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        with open(partial, "wb") as f:
            f.truncate(size)
        try:
            os.link(partial, path)  # fails if another process made it first; theirs is as good
        except FileExistsError:
            pass
        finally:
            partial.unlink()
    actual = path.stat().st_size
    if actual != size:
        raise ValueError(
            f"{path} has {actual} bytes, expected {size}: it was made for another federation "
            f"or model; use a fresh run directory"
        )
