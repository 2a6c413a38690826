"""Pre-aggregators: ``(n, d)`` updates -> ``(n', d)`` updates, applied in order before the
aggregator (``strategy.preagg: [...]``). One file per rule."""

# One import per line, so that rules added side by side do not collide.
# isort: off
from strategies.preaggregators import bucketing
from strategies.preaggregators import clip
from strategies.preaggregators import nnm
# isort: on

__all__ = [
    "bucketing",
    "clip",
    "nnm",
]
