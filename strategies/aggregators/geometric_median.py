"""Geometric median by the smoothed Weiszfeld algorithm (RFA)."""

from __future__ import annotations

from pydantic import Field, NonNegativeFloat, PositiveInt
from torch import Tensor

from fedsim.registry import AGGREGATORS, Params
from strategies.gram import gram
from strategies.pipeline import RoundInfo, Stage, stateless


class GeometricMedianParams(Params):
    nu: float = Field(1e-6, gt=0)  # smoothing: distances below nu count as nu (no division by 0)
    iterations: PositiveInt = 1000  # at most this many Weiszfeld steps (each O(n²), no pass over d)
    # stop when a step moves the estimate by less than this times the mean distance to the updates
    tolerance: NonNegativeFloat = 1e-7
    weighted: bool = False  # weight each client by its number of training samples


@AGGREGATORS.register("geometric_median", GeometricMedianParams)
def geometric_median(p: GeometricMedianParams) -> Stage:
    """Point minimising the (weighted) sum of distances to the updates, by smoothed Weiszfeld.

    Pillutla, Kakade and Harchaoui, 2022, "Robust aggregation for federated learning" (RFA).
    The estimate stays a convex combination z = wᵀU, so each step needs only the shared Gram
    matrix: ‖z − u_i‖² = wᵀGw − 2(Gw)_i + G_ii, O(n²) per step instead of O(nd).
    """

    def aggregate(updates: Tensor, info: RoundInfo) -> Tensor:
        g = gram(updates)
        n = g.shape[0]
        if p.weighted and len(info.num_examples) != n:
            raise ValueError(
                "geometric_median with weighted=True needs one sample count per update, got "
                f"n={n} updates and {len(info.num_examples)} counts (a pre-aggregator changed n)"
            )
        alpha = info.num_examples.to(g) if p.weighted else g.new_ones(n)
        alpha = alpha / alpha.sum()

        def distances(w: Tensor) -> Tensor:
            gw = g @ w
            return (w @ gw - 2 * gw + g.diagonal()).clamp_min(0).sqrt()

        w = alpha  # start from the (weighted) mean
        distance = distances(w)
        for _ in range(p.iterations):
            beta = alpha / distance.clamp_min(p.nu)
            step = beta / beta.sum() - w
            w = w + step
            distance = distances(w)
            moved = max(float(step @ g @ step), 0.0) ** 0.5
            if moved <= p.tolerance * float(alpha @ distance):
                break
        return w.to(updates.dtype) @ updates

    return stateless(aggregate)
