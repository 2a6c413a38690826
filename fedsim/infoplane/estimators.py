"""Mutual information between a layer's activity T and the input X or the label Y, in bits.

The estimators of Chelombiev, Houghton & O'Donnell (ICLR 2019), as their code computes them.
The network is deterministic and X uniform over distinct inputs, so for binned estimates
H(T|X) = 0 and I(X;T) = H(T), I(T;Y) = H(T) − Σ_y p(y) H(T|Y=y), with plug-in entropies over
the codes of T (one bin index per unit). Binning is split into its two halves so that they can
be federated: edges (from the activity's levels) and counts of (code, label) rows. KDE bounds
(Kolchinsky & Tracey) need every pairwise distance, so they only run where all the data is.
Pure numpy: nothing here knows of models, clients or Flower.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

Floats = npt.NDArray[np.floating]
Ints = npt.NDArray[np.integer]

TANH_LOW = -1.000001  # the reference's lowest edge for activations bounded below by −1
# Codes compare the values with every edge, rather than bisect, for more values and fewer
# edges than these (measured crossing points).
FEW_EDGES, FEW_VALUES = 64, 2048
CODES_BLOCK = 2**16  # values compared with every edge at once: 64 kB of bytes per edge
_INT8_MAX = 127  # codes up to it, and labels within int8, make histogram rows of bytes


def entropy_bits(counts: npt.NDArray[np.integer]) -> float:
    """Plug-in entropy, in bits, of the distribution the counts describe."""
    c = np.asarray(counts, dtype=np.float64)
    c = c[c > 0]
    p = c / c.sum()
    return float(-(p * np.log2(p)).sum())


# ---- edges ------------------------------------------------------------------------------------


def levels(values: Floats, low: float) -> Floats:
    """The sorted distinct values of a layer's activity (all units pooled), ``low`` excluded:
    what the exact federated protocol sends, and what adaptive edges are made of."""
    u = distinct(np.asarray(values, dtype=np.float32).ravel())
    return u[u != np.float32(low)]


def distinct(values: Floats) -> Floats:
    """``np.unique(values)`` of a flat array, at half its cost (a sort and one comparison;
    numpy's own adds passes that matter at 100k values)."""
    s = np.sort(values)
    keep = np.empty(len(s), dtype=bool)
    keep[:1] = True
    np.not_equal(s[1:], s[:-1], out=keep[1:])
    u = s[keep]
    if len(u) and np.isnan(u[-1]):  # NaN differs from NaN: keep one, as np.unique does
        u = u[: np.searchsorted(u, u[-1]) + 1]
    return u


def adaptive_edges(unique: Floats, low: float, bins: int) -> Floats:
    """Entropy-based adaptive binning (EBAB): equal numbers of *distinct* levels per bin.

    ``[low] + [U[⌊k·|U|/bins⌋] for k < bins] + [U[-1]]`` as the reference builds it; values at
    ``low`` (ReLU's exact zeros, say) get a bin of their own.
    """
    u = np.asarray(unique, dtype=np.float32)
    if u.size == 0:
        return np.array([low], dtype=np.float32)
    picks = [u[(k * u.size) // bins] for k in range(bins)]
    return np.array([min(low, float(u[0])), *picks, u[-1]], dtype=np.float32)


def fixed_edges(low: float, high: float, bins: int) -> Floats:
    """Fixed-width bins from ``low`` to ``high`` (the activity's range, or the reference's
    running maximum)."""
    return np.linspace(low, max(high, low + 1e-6), bins, dtype=np.float32)


def sketch(unique: Floats, size: int) -> Floats:
    """``size`` evenly spaced order statistics of a client's distinct levels (the first and the
    last included): a quantile sketch of them, sent instead of the levels."""
    u = np.asarray(unique, dtype=np.float32)
    if u.size <= size:
        return u
    picks = np.round(np.linspace(0, u.size - 1, size)).astype(np.int64)
    return u[picks]


def sketched_edges(sketches: list[Floats], counts: list[int], low: float, bins: int) -> Floats:
    """Approximate EBAB edges from clients' sketches of their distinct levels.

    Each sketch point stands for ``count / len(sketch)`` levels of its client; the edges are the
    quantiles, at k/bins, of the union's levels under that weighting. Exact when a sketch holds
    all of its client's levels and clients share no level.
    """
    points = [np.asarray(s, dtype=np.float32) for s in sketches if len(s)]
    if not points:
        return np.array([low], dtype=np.float32)
    weights = [np.full(len(s), c / len(s)) for s, c in zip(sketches, counts, strict=True) if len(s)]
    values = np.concatenate(points)
    weight = np.concatenate(weights)
    order = np.argsort(values, kind="stable")
    values, cum = values[order], np.cumsum(weight[order])
    total = cum[-1]
    picks = [
        values[min(np.searchsorted(cum, k * total / bins, side="right"), len(values) - 1)]
        for k in range(bins)
    ]
    return np.array([min(low, float(values[0])), *picks, values[-1]], dtype=np.float32)


# ---- codes and counts -------------------------------------------------------------------------


def codes(activity: Floats, edges: Floats) -> Ints:
    """Each unit's bin index (the same edges for every unit), as ``np.digitize`` gives it:
    rows (N, units), int8 for up to 127 edges, else int16."""
    a = np.asarray(activity, dtype=np.float32).reshape(len(activity), -1)
    e = np.asarray(edges, dtype=np.float32)
    if len(e) > FEW_EDGES or a.size <= FEW_VALUES:
        return np.digitize(a, e).astype(np.int8 if len(e) <= _INT8_MAX else np.int16)
    # Many values, few edges: count the edges at or below each value (digitize's index for
    # increasing edges), every edge compared with a block of values in one broadcast and the
    # comparisons summed as bytes: ~10x faster than digitize's binary search at 26k values
    # and 31 edges, and twice a loop over the edges. The count (at most FEW_EDGES) fits int8.
    flat = a.reshape(-1)
    count = np.empty(flat.shape, dtype=np.int8)
    column = e[:, None]
    for start in range(0, len(flat), CODES_BLOCK):
        block = flat[start : start + CODES_BLOCK]
        np.sum(
            (block >= column).view(np.int8),
            axis=0,
            dtype=np.int8,
            out=count[start : start + len(block)],
        )
    count[np.isnan(flat)] = len(e)  # where digitize puts NaN
    return count.reshape(a.shape)


def code_counts(code_rows: Ints, labels: Ints) -> tuple[Ints, Ints]:
    """The sparse histogram {(code row, label): count}, as (rows with the label last, counts):
    what a client sends, and what the server sums. Rows come out sorted (so rows of one code
    are adjacent), in the narrowest of int8 and int16 that holds them (``row_type``)."""
    code_rows = np.asarray(code_rows)
    joint = np.empty((len(code_rows), code_rows.shape[1] + 1), dtype=row_type(code_rows, labels))
    joint[:, :-1] = code_rows
    joint[:, -1] = labels
    return _unique_rows(joint, np.ones(len(joint), dtype=np.int64))


def merge_counts(parts: list[tuple[Ints, Ints]]) -> tuple[Ints, Ints]:
    """The histogram of the union: identical (code, label) rows summed."""
    kind = row_type(*(rows for rows, _ in parts))
    rows = np.concatenate([np.asarray(r).astype(kind, copy=False) for r, _ in parts])
    counts = np.concatenate([np.asarray(c, dtype=np.int64) for _, c in parts])
    return _unique_rows(rows, counts)


def row_type(*parts: Ints) -> np.dtype:
    """int8 when every value of ``parts`` (codes, labels) fits it, else int16: with bins and
    labels below 128, the rows a client sends, and those the sorts compare, are half as long.
    The type depends only on the values, so a union's rows get the same type wherever they
    are counted (and sort alike: the federated estimate equals the pooled one exactly)."""
    for part in parts:
        values = np.asarray(part)
        if values.dtype == np.int8 or values.size == 0:
            continue
        if values.min() < -_INT8_MAX - 1 or values.max() > _INT8_MAX:
            return np.dtype(np.int16)
    return np.dtype(np.int8)


def _unique_rows(rows: Ints, counts: Ints) -> tuple[Ints, Ints]:
    """Distinct rows, ordered by their bytes, and the summed counts of each: one sort of the
    rows as opaque byte strings (faster than ``np.unique(axis=0)``, and than ``np.unique`` of
    the byte strings, which sorts them once more to number them)."""
    rows = np.ascontiguousarray(rows)
    if len(rows) == 0:
        return rows, np.zeros(0, dtype=np.int64)
    row = np.dtype((np.void, rows.dtype.itemsize * rows.shape[1]))
    order = np.argsort(rows.view(row).ravel())
    ordered = rows[order]
    as_bytes = ordered.view(row).ravel()
    starts = np.flatnonzero(np.concatenate([[True], as_bytes[1:] != as_bytes[:-1]]))
    summed = np.add.reduceat(np.asarray(counts, dtype=np.int64)[order], starts)
    return ordered[starts], summed


def binned_mi(rows: Ints, counts: Ints) -> tuple[float, float]:
    """(I(X;T), I(T;Y)) in bits from a (code, label) histogram as ``code_counts`` or
    ``merge_counts`` return it: distinct rows, sorted, so that the rows of one code (which
    differ in the label, the last column, only) are adjacent.
    I(X;T) = H(T) and I(T;Y) = H(T) + H(Y) − H(T,Y), each entropy one bincount."""
    rows, counts = np.asarray(rows), np.asarray(counts, dtype=np.int64)
    code_part = np.ascontiguousarray(rows[:, :-1])  # compared as one byte string per row
    code_part = code_part.view(np.dtype((np.void, code_part.itemsize * code_part.shape[1])))
    changed = code_part[1:, 0] != code_part[:-1, 0]
    code = np.zeros(len(rows), dtype=np.int64)  # each row's code, numbered
    code[1:] = np.cumsum(changed)
    label = rows[:, -1].astype(np.int64)
    label -= label.min(initial=0)
    h_t = entropy_bits(np.bincount(code, weights=counts))
    h_y = entropy_bits(np.bincount(label, weights=counts))
    h_ty = entropy_bits(np.bincount(code * (int(label.max(initial=0)) + 1) + label, weights=counts))
    return h_t, h_t + h_y - h_ty


# ---- kernel density bounds ----------------------------------------------------------------------


def _kde_entropy_nats(t: Floats, variance: float) -> float:
    """−(1/N) Σ_i ln[(1/N) Σ_j exp(−‖t_i − t_j‖² / (2·variance))] + (d/2)(1 + ln 2π·variance)."""
    t = np.asarray(t, dtype=np.float64).reshape(len(t), -1)
    n, d = t.shape
    sq = (t * t).sum(axis=1)
    dist = np.maximum(sq[:, None] + sq[None, :] - 2.0 * t @ t.T, 0.0)
    z = -dist / (2.0 * variance)
    top = z.max(axis=1, keepdims=True)  # log-sum-exp, stable
    log_mean = top[:, 0] + np.log(np.exp(z - top).sum(axis=1)) - math.log(n)
    return float(-log_mean.mean() + d / 2 * (1 + math.log(2 * math.pi * variance)))


def kde_mi(activity: Floats, labels: Ints, variance: float, upper: bool) -> tuple[float, float]:
    """(I(X;T), I(T;Y)) in bits, Kolchinsky–Tracey pairwise bounds with Gaussian noise of
    ``variance`` added to T: the KL form (upper) or the Bhattacharyya form (lower, the KL form
    at variance 4·s² plus (d/2)·ln(1/4))."""
    t = np.asarray(activity, dtype=np.float64).reshape(len(activity), -1)
    d = t.shape[1]
    labels = np.asarray(labels)

    def h(sub: Floats) -> float:
        if upper:
            return _kde_entropy_nats(sub, variance)
        return _kde_entropy_nats(sub, 4 * variance) + d / 2 * math.log(0.25)

    h_t_given_x = d / 2 * math.log(2 * math.pi * math.e * variance)
    h_t = h(t)
    h_t_given_y = sum(np.mean(labels == y) * h(t[labels == y]) for y in np.unique(labels))
    return (h_t - h_t_given_x) / math.log(2), (h_t - h_t_given_y) / math.log(2)
