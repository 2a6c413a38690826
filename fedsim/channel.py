"""A Connection between the local engine's processes that hands large arrays over in shared memory.

A worker's reply may hold a whole model (6.4 MB for a 1.6M-parameter CNN). Pickled into a
Connection, its bytes are copied five times (into the pickle, into the socket in 200 kB
pieces, out of it, into one buffer, into the unpickled object), and the reader must be woken
for every piece while the workers hold both cores. Here each Flower ``Array`` of at least
``OUT_OF_BAND`` bytes travels out of band (pickle protocol 5): the sender writes it into one of
its ``SLOTS`` shared-memory slots (a ``memfd`` whose descriptor crosses the socket once), the
Connection carries the rest of the pickle and where the arrays lie, and the receiver copies
each array out and tells the sender the slot is free again: two copies, one wake-up.

Where Linux's ``memfd_create`` is missing, objects are pickled into the Connection as before.
"""

from __future__ import annotations

import contextlib
import io
import mmap
import os
import pickle
from multiprocessing.connection import Connection
from multiprocessing.reduction import recv_handle, send_handle
from typing import Any

from flwr.app import Array

OUT_OF_BAND = 1 << 16  # bytes; a smaller array costs less in the pickle than a slot's bookkeeping
SLOTS = 2  # a sender writes one while the receiver copies the other out
SHARED_MEMORY = hasattr(os, "memfd_create")

_FREED = "freed"  # the receiver has copied a slot out
_OBJECT = "object"  # an object, pickled by the Connection (``slots=False``)
_PICKLED = "pickled"  # an object's pickle, with nothing out of band
_IN_SLOT = "in slot"  # an object whose large arrays lie in a slot


class Channel:
    """``send`` and ``recv`` over ``conn`` (a duplex ``Pipe`` end), large arrays in shared memory.

    Each end owns the slots it writes. A slot is used round and round; the sender waits for the
    receiver's word that it is free only when all of its slots are still unread, which happens
    only if the receiver falls ``SLOTS`` objects behind.

    ``slots=False`` pickles whatever this end sends into the Connection. An end that waits on
    several Channels at once for their objects (``multiprocessing.connection.wait``) sends that
    way: otherwise a freed-slot word could wake it with no object behind it yet.
    """

    def __init__(self, conn: Connection, *, slots: bool = True) -> None:
        self.conn = conn
        self.slots = slots and SHARED_MEMORY
        self._slots: list[tuple[int, mmap.mmap] | None] = [None] * SLOTS  # written here
        self._mapped: dict[int, mmap.mmap] = {}  # the other end's slots, by number
        self._next = 0
        self._unfreed = 0

    def send(self, obj: Any) -> None:
        if not self.slots:
            self.conn.send((_OBJECT, obj))
            return
        arrays: list[pickle.PickleBuffer] = []
        stream = io.BytesIO()
        _ArrayPickler(stream, arrays.append).dump(obj)
        if not arrays:
            self.conn.send((_PICKLED, stream.getvalue()))
            return
        views = [a.raw() for a in arrays]
        lengths = [v.nbytes for v in views]
        while self._unfreed == SLOTS:
            self._take_freed()
        slot = self._next
        self._next = (slot + 1) % SLOTS
        memory, grown = self._slot(slot, sum(lengths))
        start = 0
        for view in views:
            memory[start : start + view.nbytes] = view
            start += view.nbytes
        self.conn.send((_IN_SLOT, (slot, grown, lengths, stream.getvalue())))
        if grown:
            fd, _ = self._slots[slot]  # type: ignore[misc]
            send_handle(self.conn, fd, 0)
        self._unfreed += 1

    def recv(self) -> Any:
        while True:
            kind, body = self.conn.recv()
            if kind == _FREED:
                self._unfreed -= 1
                continue
            if kind == _OBJECT:
                return body
            if kind == _PICKLED:
                return pickle.loads(body)
            slot, grown, lengths, pickled = body
            if grown:
                self._map(slot, recv_handle(self.conn))
            memory = memoryview(self._mapped[slot])
            buffers, start = [], 0
            for length in lengths:
                buffers.append(memory[start : start + length])
                start += length
            try:
                obj = pickle.loads(pickled, buffers=buffers)  # each array copied out
            finally:
                for buffer in buffers:
                    buffer.release()
                memory.release()
            with contextlib.suppress(OSError):  # a sender that has died reads nothing more
                self.conn.send((_FREED, slot))
            return obj

    def close(self) -> None:
        for held in self._slots:
            if held is not None:
                os.close(held[0])
                held[1].close()
        for memory in self._mapped.values():
            memory.close()
        self._slots = [None] * SLOTS
        self._mapped.clear()
        self.conn.close()

    # -- helpers -----------------------------------------------------------------------------

    def _take_freed(self) -> None:
        kind, _ = self.conn.recv()
        # Each end sends work only once the other has taken what it sent: anything else here is
        # the other end closing while this one still had objects for it.
        if kind != _FREED:
            raise EOFError("the receiving end stopped taking objects")
        self._unfreed -= 1

    def _slot(self, slot: int, size: int) -> tuple[mmap.mmap, bool]:
        """Slot ``slot``'s memory, at least ``size`` bytes, and whether it was made anew."""
        held = self._slots[slot]
        if held is not None and len(held[1]) >= size:
            return held[1], False
        if held is not None:
            os.close(held[0])
            held[1].close()
        fd = os.memfd_create("fedsim-channel", os.MFD_CLOEXEC)
        os.ftruncate(fd, max(size, 1))
        self._slots[slot] = (fd, mmap.mmap(fd, max(size, 1)))
        return self._slots[slot][1], True  # type: ignore[index]

    def _map(self, slot: int, fd: int) -> None:
        try:
            memory = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
        finally:
            os.close(fd)  # the mapping keeps the memory
        if slot in self._mapped:
            self._mapped[slot].close()
        self._mapped[slot] = memory


class _ArrayPickler(pickle.Pickler):
    """Pickles a large Flower ``Array``'s bytes out of band, every other object as pickle does."""

    def __init__(self, stream: io.BytesIO, out_of_band: Any) -> None:
        super().__init__(stream, protocol=5, buffer_callback=out_of_band)

    def reducer_override(self, obj: Any) -> Any:
        if type(obj) is Array and len(obj.data) >= OUT_OF_BAND:
            return _array, (obj.dtype, tuple(obj.shape), obj.stype, pickle.PickleBuffer(obj.data))
        return NotImplemented


def _array(dtype: str, shape: tuple[int, ...], stype: str, data: Any) -> Array:
    """An Array rebuilt on the receiving end: its bytes copied out of the slot, which is reused."""
    return Array(dtype, shape, stype, bytes(data))
