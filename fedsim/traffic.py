"""The bytes a Message takes as Flower serialises it, counted from its records' lengths.

Flower (1.41, 1.42) ships a Message as a tree of content-addressed objects: its record dict, its
records, their arrays and the arrays' chunks (at most 5 MB each), each deflated to
``<kind> <ids of its children> <body length>\\0<body>`` and sent once per distinct content. Every
object id is a SHA-256 hex digest, so the framing's size depends only on lengths, on small JSON
bodies (names, dtypes, shapes, chunk indices), and on which objects are equal. Serialising a
reply to measure it would copy and hash its every byte (milliseconds for a model of a few MB,
on every reply of every round); here equal chunks are found by comparing bytes, never hashing
them. ``tests/fedsim/test_traffic.py`` checks the count against Flower's own deflation.

Counted: every distinct object of a message's records, and the record dict. Left out: the
message header and config records, which carry fedsim's own plumbing (the scenario text, the
run directory) and would make the count depend on where a run is written.
"""

from __future__ import annotations

import json
from collections.abc import Hashable, Sequence
from functools import lru_cache
from typing import cast

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.common.constant import FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE as CHUNK
from flwr.supercore.constant import HEAD_BODY_DIVIDER, HEAD_VALUE_DIVIDER

ID = "0" * 64  # stands for any object id: a SHA-256 hex digest, always this long
PROBE = 16  # bytes read at a chunk's start, middle and end before comparing it whole

Objects = dict[Hashable, int]  # an object's content key -> its deflated size


def framed(kind: str, children: int, body: int) -> int:
    """The deflated size of an object of class ``kind`` with ``children`` distinct child ids
    and a body of ``body`` bytes."""
    ids = children * len(ID) + max(children - 1, 0)  # joined by ","
    header = len(kind) + 2 * len(HEAD_VALUE_DIVIDER) + ids + len(str(body))
    return header + len(HEAD_BODY_DIVIDER) + body


# An Array's body is the JSON of its dtype, shape, stype and chunk indices; this is its length
# with two empty strings and two empty lists (2 characters each), which the values replace.
_EMPTY_ARRAY_BODY = len(json.dumps({"dtype": "", "shape": [], "stype": "", "arraychunk_ids": []}))
_EMPTY_ARRAY_BODY -= 4 * 2


@lru_cache(maxsize=64)
def _json_str_len(text: str) -> int:
    return len(json.dumps(text))  # quotes and escapes included (json.dumps writes ASCII)


def _json_ints_len(values: Sequence[int]) -> int:
    """``len(json.dumps(list(values)))``, without building the text."""
    return 2 + sum(len(str(v)) for v in values) + 2 * max(len(values) - 1, 0)


def _refs_body(names: Sequence[str]) -> int:
    """An ArrayRecord's or RecordDict's body: the JSON map of its names to their objects' ids."""
    return len(json.dumps(dict.fromkeys(names, ID)).encode())


class Counter:
    """Counts Messages, remembering each record it has seen: the Messages of a round share one
    model record and one record per broadcast, counted once rather than per client."""

    def __init__(self) -> None:
        self._chunks: dict[tuple[int, bytes], list[np.ndarray]] = {}
        self._records: dict[int, tuple[Hashable, Objects]] = {}

    def message_bytes(self, msg: Message) -> int:
        if not msg.has_content():
            return 0
        content: RecordDict = msg.content
        objects: Objects = {}  # keyed by content: equal objects count once
        records: list[Hashable] = []
        for record in content.values():
            key, nested = self._record(record)
            records.append(key)
            if not isinstance(record, ConfigRecord):
                objects.update(nested)
        body = _refs_body(list(content.keys()))
        return sum(objects.values()) + framed("RecordDict", len(set(records)), body)

    def _record(self, record: object) -> tuple[Hashable, Objects]:
        seen = self._records.get(id(record))
        if seen is None:
            if isinstance(record, ArrayRecord):
                seen = self._array_record(record)
            else:  # metric and config records: small protobufs, deflated as they are
                deflated = cast(bytes, record.deflate())  # type: ignore[attr-defined]
                seen = (type(record).__name__, deflated), {}
                seen[1][seen[0]] = len(deflated)
            self._records[id(record)] = seen
        return seen

    def _array_record(self, record: ArrayRecord) -> tuple[Hashable, Objects]:
        objects: Objects = {}
        names = list(record.keys())
        arrays = [self._array(cast(Array, record[name]), objects) for name in names]
        key = ("ArrayRecord", tuple(zip(names, arrays, strict=True)))
        objects[key] = framed("ArrayRecord", len(set(arrays)), _refs_body(names))
        return key, objects

    def _array(self, array: Array, objects: Objects) -> Hashable:
        data = memoryview(array.data)
        chunks = []
        for start in range(0, len(data), CHUNK):
            chunk = data[start : start + CHUNK]
            key = self._chunk_key(chunk)
            objects[key] = framed("ArrayChunk", 0, len(chunk))
            chunks.append(key)
        unique = list(dict.fromkeys(chunks))  # Flower indexes its chunks in first-seen order
        body = (
            _EMPTY_ARRAY_BODY
            + _json_str_len(array.dtype)
            + _json_ints_len(array.shape)
            + _json_str_len(array.stype)
            + _json_ints_len([unique.index(c) for c in chunks])
        )
        key = ("Array", array.dtype, tuple(array.shape), array.stype, tuple(chunks))
        objects[key] = framed("Array", len(unique), body)
        return key

    def _chunk_key(self, chunk: memoryview) -> Hashable:
        """Equal bytes, equal key: chunks that agree at a few places are compared whole."""
        n = len(chunk)
        mid = n // 2
        probe = (n, bytes(chunk[:PROBE]) + bytes(chunk[mid : mid + PROBE]) + bytes(chunk[-PROBE:]))
        same = self._chunks.setdefault(probe, [])
        values = np.frombuffer(chunk, dtype=np.uint8)
        for i, other in enumerate(same):
            if np.array_equal(values, other):
                return ("ArrayChunk", probe, i)
        same.append(values)
        return ("ArrayChunk", probe, len(same) - 1)


def message_bytes(msg: Message) -> int:
    """Bytes of the records ``msg`` carries as Flower serialises them (config records left out)."""
    return Counter().message_bytes(msg)


def bytes_each_way(sent: Sequence[Message], replies: Sequence[Message]) -> tuple[int, int]:
    """(bytes sent to clients, bytes they replied) for one exchange of Messages."""
    down = Counter()
    return (
        sum(down.message_bytes(m) for m in sent),
        sum(Counter().message_bytes(m) for m in replies),
    )
