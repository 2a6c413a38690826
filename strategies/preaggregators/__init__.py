"""Pre-aggregators: ``(n, d)`` updates -> ``(n', d)`` updates, applied in order before the
aggregator (``strategy.preagg: [...]``). One file per rule."""

__all__: list[str] = []
