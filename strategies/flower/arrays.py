"""Flower's Arrays read without copies: the ``.npy`` bytes an Array holds, viewed as the array.

``Array.numpy()`` parses the ``.npy`` header's text as a Python literal and copies the data out,
which costs more than the rest of reading a small array, and a server reads every reply's arrays.
Flower keeps the dtype and shape beside the bytes, so a plain C-ordered ``.npy`` can be viewed
where it lies; anything else takes Flower's own way.
"""

from __future__ import annotations

import math

import numpy as np
from flwr.app import Array
from flwr.common.constant import SType

NPY_MAGIC = b"\x93NUMPY"


def view(array: Array) -> np.ndarray:
    """``array``'s values, read-only, sharing the Array's bytes where they can."""
    data = array.data
    if array.stype == SType.NUMPY and data[:6] == NPY_MAGIC and data[6] in (1, 2, 3):
        size = 2 if data[6] == 1 else 4  # the header length's bytes, by format version
        start = 8 + size + int.from_bytes(data[8 : 8 + size], "little")
        dtype, shape = np.dtype(array.dtype), tuple(array.shape)
        count = math.prod(shape)
        header = bytes(data[8 + size : start])
        if b"'fortran_order': False" in header and len(data) - start == count * dtype.itemsize:
            return np.frombuffer(data, dtype, count, start).reshape(shape)
    return array.numpy()
