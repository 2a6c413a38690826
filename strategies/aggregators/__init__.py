"""Aggregators: ``(n, d)`` stacked updates -> one ``(d,)`` update. One file per rule."""

from strategies.aggregators import mean

__all__ = ["mean"]
