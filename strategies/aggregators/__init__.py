"""Aggregators: ``(n, d)`` stacked updates -> one ``(d,)`` update. One file per rule."""

# One import per line, so that rules added side by side do not collide.
# isort: off
from strategies.aggregators import bulyan
from strategies.aggregators import cagrad
from strategies.aggregators import centered_clipping
from strategies.aggregators import flag
from strategies.aggregators import geometric_median
from strategies.aggregators import krum
from strategies.aggregators import meamed
from strategies.aggregators import mean
from strategies.aggregators import median
from strategies.aggregators import minimum
from strategies.aggregators import mgda
from strategies.aggregators import multi_krum
from strategies.aggregators import trimmed_mean
# isort: on

__all__ = [
    "bulyan",
    "cagrad",
    "centered_clipping",
    "flag",
    "geometric_median",
    "krum",
    "meamed",
    "mean",
    "median",
    "mgda",
    "minimum",
    "multi_krum",
    "trimmed_mean",
]
