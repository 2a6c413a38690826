"""SZT: the 12-bit task of Shwartz-Ziv & Tishby, regenerated exactly (no download).

Inputs are all 4,096 patterns of 12 bits in binary counting order (row i is i in binary, the
first column the most significant bit). The published labels (``var_u.mat``) are a function of
three invariants of the bits as vertices of an icosahedron: active bits w, active edges e,
active antipodal pairs a — the rule below reproduces every one of the 4,096 labels
(``notes/workloads-precise.md`` §5.2), P(y=1) = 0.5171.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field

from fedsim.data import Dataset, _dataset
from fedsim.registry import DATASETS, DatasetParams

BITS = 12
NEIGHBOURS = {
    0: (1, 3, 5, 10, 11), 1: (0, 2, 3, 4, 11), 2: (1, 3, 4, 8, 9), 3: (0, 1, 2, 8, 10),
    4: (1, 2, 6, 9, 11), 5: (0, 6, 7, 10, 11), 6: (4, 5, 7, 9, 11), 7: (5, 6, 8, 9, 10),
    8: (2, 3, 7, 9, 10), 9: (2, 4, 6, 7, 8), 10: (0, 3, 5, 7, 8), 11: (0, 1, 4, 5, 6),
}  # fmt: skip
ANTIPODES = ((0, 9), (1, 7), (2, 5), (3, 6), (4, 10), (8, 11))
EDGES = tuple((u, v) for u, vs in NEIGHBOURS.items() for v in vs if u < v)


def inputs() -> np.ndarray:
    """The 4,096 patterns, (4096, 12) of 0/1, in binary counting order."""
    i = np.arange(2**BITS)[:, None]
    return ((i >> np.arange(BITS - 1, -1, -1)) & 1).astype(np.uint8)


def labels(x: np.ndarray) -> np.ndarray:
    """The published label of each pattern, from (active bits, active edges, active antipodes)."""
    w = x.sum(axis=1)
    e = sum(x[:, u] & x[:, v] for u, v in EDGES)
    a = sum(x[:, u] & x[:, v] for u, v in ANTIPODES)
    y = np.where(w >= 8, 1, 0)
    y = np.where(w == 5, e >= 7, y)
    y = np.where(w == 6, (e >= 7) | ((e == 6) & (a == 0)), y)
    y = np.where(w == 7, ~((e == 8) & (a == 2)), y)
    return y.astype(np.int64)


class SztParams(DatasetParams):
    # rows: the reference's split, the first 80 % of rows train (P(y=1) 0.44 vs 0.84 in test);
    # shuffled: a split drawn from ``seed`` (the default, with comparable label balances).
    split: Literal["shuffled", "rows"] = "shuffled"
    test_fraction: float = Field(default=0.2, gt=0.0, lt=1.0)
    seed: int = Field(default=0, ge=0)  # of the split; independent of the scenario's seed


@DATASETS.register("szt", SztParams)
def szt(p: SztParams) -> Dataset:
    """The 4,096 12-bit inputs of the information-bottleneck papers, labels by the exact rule."""
    x = inputs().astype(np.float32)
    y = labels(inputs())
    order = np.arange(len(y))
    if p.split == "shuffled":
        order = np.random.default_rng(p.seed).permutation(len(y))
    n_train = len(y) - round(p.test_fraction * len(y))  # 3,277 / 819 as the reference
    train, test = order[:n_train], order[n_train:]
    return _dataset("szt", x[train], y[train], x[test], y[test], num_classes=2)
