"""Schedules of sparse training, in rounds: Zhu & Gupta's cubic, iterative, RigL's cosine."""

from __future__ import annotations

import math


def cubic_density(t: int, start: int, end: int, initial: float, final: float) -> float:
    """Gradual magnitude pruning (Zhu & Gupta, 2017) as a density.

    Sparsity s_t = s_f + (s_i − s_f)·(1 − (t − t₀)/(t_end − t₀))³ for t₀ ≤ t ≤ t_end (s = 1 −
    density); before t₀ the initial density, after t_end the final one.
    """
    if end <= start:
        raise ValueError(f"gradual pruning needs end > start, got start={start}, end={end}")
    s_i, s_f = 1.0 - initial, 1.0 - final
    progress = min(max((t - start) / (end - start), 0.0), 1.0)
    return 1.0 - (s_f + (s_i - s_f) * (1.0 - progress) ** 3)


def iterative_density(t: int, start: int, every: int, iterations: int, final: float) -> float:
    """Iterative magnitude pruning: at rounds start, start+every, … (``iterations`` of them) the
    density drops to final^(i/iterations), each step pruning the same fraction of what is left;
    one iteration is one-shot pruning. 1.0 before ``start``.
    """
    if t < start:
        return 1.0
    done = min(iterations, (t - start) // every + 1)
    return final ** (done / iterations)


def pruning_rounds(start: int, every: int, iterations: int) -> list[int]:
    return [start + i * every for i in range(iterations)]


def cosine_drop_fraction(t: int, alpha: float, end: int) -> float:
    """RigL's drop fraction α/2·(1 + cos(π t / T_end)) for t < T_end, then 0 (mask frozen).

    Here t counts rounds from 0 (round 1 is t = 0, dropping α).
    """
    if t >= end:
        return 0.0
    return alpha / 2.0 * (1.0 + math.cos(math.pi * t / end))
