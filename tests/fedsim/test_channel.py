"""The local engine's Channel: objects arrive equal, large arrays through reused shared memory."""

from __future__ import annotations

import multiprocessing as mp
import os
import threading

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from fedsim import channel
from fedsim.channel import Channel

pytestmark = pytest.mark.skipif(not channel.SHARED_MEMORY, reason="no memfd_create here")


def _content(seed: int, large: int = 40_000) -> RecordDict:
    rng = np.random.default_rng(seed)
    arrays = ArrayRecord()
    arrays["big"] = Array(rng.standard_normal(large).astype(np.float32))  # out of band
    arrays["small"] = Array(rng.standard_normal(7))  # stays in the pickle
    arrays["ints"] = Array(rng.integers(0, 9, size=(300, 100), dtype=np.int64))
    return RecordDict(
        {
            "arrays": arrays,
            "metrics": MetricRecord({"num-examples": seed, "loss": 0.5}),
            "config": ConfigRecord({"name": f"client {seed}"}),
        }
    )


def _same(a: RecordDict, b: RecordDict) -> bool:
    left, right = a["arrays"], b["arrays"]
    arrays_equal = list(left.keys()) == list(right.keys()) and all(
        (x.dtype, tuple(x.shape), x.stype, x.data) == (y.dtype, tuple(y.shape), y.stype, y.data)
        for x, y in zip(left.values(), right.values(), strict=True)
    )
    return (
        arrays_equal
        and dict(a["metrics"]) == dict(b["metrics"])
        and dict(a["config"]) == dict(b["config"])
    )


def _pair() -> tuple[Channel, Channel]:
    """A receiving end that waits on Channels (as the grid's driver does) and a sending end."""
    here, there = mp.Pipe()
    return Channel(here, slots=False), Channel(there)


def _echo(conn) -> None:  # type: ignore[no-untyped-def]
    ch = Channel(conn)
    while (obj := ch.recv()) is not None:
        ch.send(obj)


def test_objects_cross_processes_equal_and_each_keeps_its_own_bytes() -> None:
    here, there = mp.Pipe()
    proc = mp.get_context("fork").Process(target=_echo, args=(there,), daemon=True)
    proc.start()
    there.close()
    ch = Channel(here, slots=False)
    sent = [_content(seed) for seed in range(5)] + [_content(9, large=90_000)]  # a slot grows
    got = []
    for content in sent:
        ch.send(content)
        got.append(ch.recv())
    ch.send(None)
    proc.join(timeout=10)
    ch.close()
    # compared at the end: every earlier object outlived its slot being written over
    assert all(_same(a, b) for a, b in zip(sent, got, strict=True))
    assert proc.exitcode == 0


def test_slots_are_reused_and_made_anew_only_to_grow(monkeypatch: pytest.MonkeyPatch) -> None:
    made = []
    real = os.memfd_create

    def counted(name: str, flags: int = 0) -> int:
        made.append(name)
        return real(name, flags)

    monkeypatch.setattr(os, "memfd_create", counted)
    receiver, sender = _pair()
    sizes = [40_000] * 6 + [90_000] * 2 + [40_000] * 2
    got = []
    for i, size in enumerate(sizes):
        sender.send(_content(i, large=size))
        got.append(receiver.recv())
    assert len(made) == channel.SLOTS + 2  # each slot once, then each once more to grow
    expected = [_content(i, large=n) for i, n in enumerate(sizes)]
    assert all(_same(a, b) for a, b in zip(expected, got, strict=True))
    receiver.close()
    sender.close()


def test_a_sender_waits_while_every_slot_is_unread() -> None:
    receiver, sender = _pair()
    for i in range(channel.SLOTS):
        sender.send(_content(i))  # nothing read yet: these fill the slots
    third = threading.Thread(target=sender.send, args=(_content(7),))
    third.start()
    third.join(timeout=0.5)
    assert third.is_alive()  # it waits for a slot
    first = receiver.recv()
    third.join(timeout=10)
    assert not third.is_alive()
    rest = [receiver.recv() for _ in range(channel.SLOTS)]
    assert _same(first, _content(0))
    assert _same(rest[-1], _content(7))
    receiver.close()
    sender.close()


def test_a_sender_waiting_for_a_slot_stops_when_the_receiver_closes() -> None:
    receiver, sender = _pair()
    for i in range(channel.SLOTS):
        sender.send(_content(i))
    receiver.send(None)  # the end, while the sender still has objects for it
    with pytest.raises(EOFError, match="stopped taking objects"):
        sender.send(_content(7))
    receiver.close()
    sender.close()


def test_small_objects_and_machines_without_memfd_are_pickled(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    receiver, sender = _pair()
    sender.send({"no arrays": 1})
    assert receiver.recv() == {"no arrays": 1}
    monkeypatch.setattr(channel, "SHARED_MEMORY", False)
    here, there = mp.Pipe()
    plain_receiver, plain_sender = Channel(here), Channel(there)
    assert not plain_sender.slots
    sending = threading.Thread(target=plain_sender.send, args=(_content(3),))
    sending.start()  # larger than the socket's buffer: it waits for the reader
    assert _same(plain_receiver.recv(), _content(3))
    sending.join(timeout=10)
    for ch in (receiver, sender, plain_receiver, plain_sender):
        ch.close()
