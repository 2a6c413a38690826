"""What travels in the Messages: sparse encodings of models and updates, and their size in bytes.

A flat float vector travels as one ArrayRecord, in the cheapest of three forms:

* ``{dense}`` — every entry;
* ``{values, indices}`` — the chosen entries' values and their flat positions (the smallest
  unsigned integer type that holds them);
* ``{values, bitmap}`` — the values and one bit per entry (``numpy.packbits``).

Shapes are not sent: both ends know the model. The server sends a masked model as its unmasked
entries (record ``model``; the positions are the global mask, so the client learns it from
them), and clients that compress or train sparse reply with their update as a sparse vector
(record ``delta``). The server decodes such a reply into the update record the strategy takes
(``update``, shaped like the model), so any aggregation pipeline works unchanged and the update
reaches it exactly as the client sent it (never as a model from which it is subtracted again).

A Message's size as Flower serialises it is counted in ``fedsim.traffic``.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Mapping
from functools import lru_cache
from typing import cast

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, Error, Message, RecordDict
from flwr.app.message.message import make_message
from flwr.common.constant import SType
from numpy.lib import format as npy
from torch import Tensor

from strategies.flower import UPDATE, arrays, flatten, unflatten, with_record

MODEL = "model"  # a sparse global model in a server Message (replaces ``arrays``)
DELTA = "delta"  # a sparse update in a client's reply (replaces ``arrays``)
ARRAYS = "arrays"
EXCHANGE = "exchange"  # message type ``query.exchange``; its config names the exchange
REPORT = "report"  # an exchange report's record in a client's reply
RECEIVED = "received."  # prefix of the records holding the exchanges' latest broadcasts
DENSE, VALUES, INDICES, BITMAP = "dense", "values", "indices", "bitmap"
DECODE_ERROR = 2  # Error.code of a reply whose encoded update cannot be decoded


# -- encoding a flat vector --------------------------------------------------------------------


def encode(vector: Tensor, support: Tensor | None, keep_support: bool = False) -> ArrayRecord:
    """``vector``'s entries where ``support`` is True, in the cheapest form.

    ``keep_support`` forces a sparse form whenever the support is not full (the receiver needs
    the positions, e.g. a mask); otherwise a dense vector is sent when that is smaller.
    """
    flat = vector.detach().reshape(-1).to("cpu", torch.float32)
    n = flat.numel()
    if support is None or bool(support.all()):
        return ArrayRecord({DENSE: Array(flat.numpy())})
    where = support.reshape(-1).to("cpu")
    positions = where.nonzero().squeeze(1)
    k = positions.numel()
    index_type = np.min_scalar_type(max(n - 1, 0))
    bitmap_bytes, index_bytes = (n + 7) // 8, k * index_type.itemsize
    if not keep_support and 4 * n <= 4 * k + min(bitmap_bytes, index_bytes):
        return ArrayRecord({DENSE: Array(flat.numpy())})
    values = Array(flat[positions].numpy())
    if bitmap_bytes < index_bytes:
        return ArrayRecord({VALUES: values, BITMAP: Array(np.packbits(where.numpy()))})
    return ArrayRecord({VALUES: values, INDICES: Array(positions.numpy().astype(index_type))})


def decode(record: ArrayRecord, size: int) -> tuple[Tensor, Tensor | None]:
    """The flat vector (zeros off the support) and its support (None when sent dense).

    Raises ValueError for a record that does not describe a vector of ``size`` entries.
    """
    keys = set(record.keys())
    if keys == {DENSE}:
        dense = torch.from_numpy(record[DENSE].numpy().copy()).reshape(-1)
        if dense.numel() != size:
            raise ValueError(f"dense vector has {dense.numel()} entries, expected {size}")
        return dense.to(torch.float32), None
    values = torch.from_numpy(record[VALUES].numpy().astype(np.float32)).reshape(-1)
    if keys == {VALUES, INDICES}:
        raw = record[INDICES].numpy().reshape(-1)
        if raw.size and (raw.min() < 0 or raw.max() >= size):
            raise ValueError(f"indices out of range for a vector of {size} entries")
        positions = torch.from_numpy(raw.astype(np.int64))
        support = torch.zeros(size, dtype=torch.bool)
        support[positions] = True
        if int(support.sum()) != positions.numel():
            raise ValueError("indices repeat")
    elif keys == {VALUES, BITMAP}:
        bits = record[BITMAP].numpy().reshape(-1)
        if bits.size != (size + 7) // 8:
            raise ValueError(f"bitmap has {bits.size} bytes, expected {(size + 7) // 8}")
        support = torch.from_numpy(np.unpackbits(bits, count=size).astype(bool))
        positions = support.nonzero().squeeze(1)
    else:
        raise ValueError(f"unknown sparse encoding with arrays {sorted(keys)}")
    if values.numel() != positions.numel():
        raise ValueError(f"{values.numel()} values for {positions.numel()} positions")
    vector = torch.zeros(size, dtype=torch.float32)
    vector[positions] = values
    return vector, support


# -- the server's side -------------------------------------------------------------------------


def send_masked(messages: Iterable[Message], mask: Tensor) -> list[Message]:
    """Each message's ``arrays`` (the global model) as its entries under the flat ``mask``."""
    out, encoded = [], {}
    for msg in messages:
        content = msg.content
        if ARRAYS not in content.array_records:
            out.append(msg)
            continue
        arrays = content.array_records[ARRAYS]
        if id(arrays) not in encoded:  # one encoding for the model every client receives
            encoded[id(arrays)] = encode(flatten(arrays), mask, keep_support=True)
        records = {k: v for k, v in content.items() if k != ARRAYS}
        msg.content = RecordDict({MODEL: encoded[id(arrays)], **records})
        out.append(msg)
    return out


def receive_updates(replies: Iterable[Message], sent: ArrayRecord) -> list[Message]:
    """Replies whose update came encoded, with it decoded under ``update`` (names and shapes of
    ``sent``, the model sent); a reply that does not decode becomes an error reply saying why."""
    size, out = sum(a.numpy().size for a in sent.values()), []
    for reply in replies:
        if reply.has_error() or DELTA not in reply.content.array_records:
            out.append(reply)
            continue
        try:
            delta, _ = decode(reply.content.array_records[DELTA], size)
        except (ValueError, KeyError) as err:
            error = Error(code=DECODE_ERROR, reason=f"undecodable update: {err}")
            out.append(make_message(metadata=reply.metadata, error=error))
            continue
        out.append(with_record(reply, DELTA, UPDATE, unflatten(delta, sent)))
    return out


# -- the client's side -------------------------------------------------------------------------


def received_model(content: RecordDict, template: ArrayRecord) -> tuple[ArrayRecord, Tensor | None]:
    """The global model a server Message carries and, when it came masked, the flat mask."""
    if MODEL not in content:  # item access: ``content.array_records`` is rebuilt at each call
        return cast(ArrayRecord, content[ARRAYS]), None
    vector, support = decode(
        cast(ArrayRecord, content[MODEL]), sum(a.numpy().size for a in template.values())
    )
    return unflatten(vector, template), support


def tensors(record: ArrayRecord) -> dict[str, Tensor]:
    """``record``'s arrays as tensors, decoded once per record: on the local engine every
    client of a round receives the same model and broadcast records. Read-only by contract:
    loading them copies (``load_state_dict``); whoever changes one must clone it first."""
    key = identity(record)
    hit = _decoded.get(key)
    if hit is not None and hit[0]() is record:
        return hit[1]
    decoded = decode_record(record)
    _decoded[key] = (weakref.ref(record), decoded)
    while len(_decoded) > _DECODED_KEPT:  # the oldest first: last round's records
        del _decoded[next(iter(_decoded))]
    return decoded


def identity(record: ArrayRecord) -> tuple[int, tuple[int, ...]]:
    """What tells ``record`` apart from any other while it lives: itself and its arrays (one
    replaced makes another record). Pair it with a weak reference: ids are reused."""
    return id(record), tuple(id(array) for array in record.values())


def decode_record(record: ArrayRecord) -> dict[str, Tensor]:
    """``record``'s arrays as tensors of their own, not kept: for a record read once (a
    client's report), which ``tensors``' cache would only evict the shared ones for."""
    return {name: torch.from_numpy(_numpy(array)) for name, array in record.items()}


def record(tensors: Mapping[str, Tensor]) -> ArrayRecord:
    """``tensors`` as an ArrayRecord, each array the bytes ``np.save`` writes (what Flower's
    own conversion stores), without ``np.save``'s per-array cost, which dominates for the
    small arrays of reports and metrics."""
    out = ArrayRecord()  # item by item: ArrayRecord(dict) would copy every Array again
    for name, tensor in tensors.items():
        out[name] = _array(tensor.detach().cpu().numpy())
    return out


def _array(a: np.ndarray) -> Array:
    if not a.flags.c_contiguous or a.dtype.hasobject:
        return Array(np.ascontiguousarray(a))
    name, descr = _dtype_text(a.dtype)
    # One copy of the values (``header + a.tobytes()`` made two: 0.8 → 0.2 ms for 6.4 MB).
    data = b"".join((npy_header(descr, a.shape), a.data))
    return Array(name, tuple(a.shape), SType.NUMPY, data)


@lru_cache(maxsize=64)
def _dtype_text(dtype: np.dtype) -> tuple[str, str]:
    """The dtype's name, as Flower records it, and its ``.npy`` description, as the header
    writes it."""
    return str(dtype), repr(npy.dtype_to_descr(dtype))


NPY_PREFIX = b"\x93NUMPY\x01\x00"  # the magic string, then format version 1.0
NPY_ALIGN = 64  # the .npy header ends on a multiple of it
NPY_GROWTH_DIGITS = 21  # room numpy leaves for the first axis to grow in place


def npy_header(descr: str, shape: tuple[int, ...]) -> bytes:
    """The version 1.0 ``.npy`` header that ``np.save`` writes for a C-ordered array, built
    directly: numpy's writer costs 15–30 µs an array, and a report's arrays (a client's
    distinct levels, its histogram rows) take a new shape at every call. ``descr`` is the
    dtype's description as the header spells it (``_dtype_text``)."""
    text = f"{{'descr': {descr}, 'fortran_order': False, 'shape': {shape!r}, }}"
    if shape:
        text += " " * (NPY_GROWTH_DIGITS - len(repr(shape[0])))
    length = len(text) + 1  # with the final newline
    pad = NPY_ALIGN - (len(NPY_PREFIX) + 2 + length) % NPY_ALIGN
    size = (length + pad).to_bytes(2, "little")
    return NPY_PREFIX + size + text.encode("latin1") + b" " * pad + b"\n"


def _numpy(array: Array) -> np.ndarray:
    """``array.numpy()``, writable, without parsing its ``.npy`` header's text."""
    return np.array(arrays.view(array))  # a copy: the caller owns its tensors


_DECODED_KEPT = 16  # a round's model and broadcasts, with room for a previous round's
_decoded: dict[tuple[int, tuple[int, ...]], tuple[weakref.ref[ArrayRecord], dict[str, Tensor]]] = {}


# -- sizes ---------------------------------------------------------------------------------------


def array_bytes(record: ArrayRecord) -> int:
    """The serialised arrays' bytes alone (``.npy`` headers included), without Flower's framing."""
    return sum(len(cast(Array, a).data) for a in record.values())
