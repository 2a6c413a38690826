"""The information-plane figures of runs with the ``information_plane`` analysis: I(X;T)
against I(T;Y), one trajectory per layer coloured by round, and I(X;T) by round per layer.
One panel per configuration, every seed overlaid; the server's estimate where it was made,
else the clients' federated one."""

from __future__ import annotations

import re
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from fedsim.reporting.summary import Configuration
from fedsim.results import FEDERATED, SERVER

MAX_PANELS = 16
COLUMNS = 4
LAYER = re.compile(r"^mi_xt\.(\d+)$")  # the first (untagged) analysis's metrics


def _layers(config: Configuration) -> tuple[str, list[int]]:
    """The scope to draw and the layer numbers the runs measured."""
    for scope in (SERVER, FEDERATED):
        numbers = {
            int(m.group(1))
            for run in config.runs
            for metric in run.metrics[run.metrics.scope == scope].metric.unique()
            if (m := LAYER.match(metric))
        }
        if numbers:
            return scope, sorted(numbers)
    return SERVER, []


def _title(i: int, config: Configuration, scope: str) -> str:
    """``C2: activation=tanh, weight_decay=0.015 (server)``: the keys' last parts only."""
    parts = [part.partition("=") for part in config.label.split(", ")]
    short = ", ".join(f"{key.split('.')[-1]}{eq}{value}" for key, eq, value in parts)
    return f"C{i + 1}: {short} ({scope})"


def _panels(configs: list[Configuration]) -> list[tuple[int, Configuration, str, list[int]]]:
    found = [(i, c, *_layers(c)) for i, c in enumerate(configs)]
    return [p for p in found if p[3]][:MAX_PANELS]


def _grid(n: int, title: str) -> tuple[Figure, list[Any]]:
    cols = min(n, COLUMNS)
    rows = -(-n // cols)
    fig = Figure(figsize=(3.2 * cols, 2.8 * rows + 0.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for ax in axes[n:]:
        ax.set_visible(False)
    fig.suptitle(title)
    return fig, list(axes[:n])


def information_plane(configs: list[Configuration]) -> Figure | None:
    """I(X;T) against I(T;Y) per layer, points coloured by round, all seeds overlaid."""
    from fedsim.reporting.figures import style

    panels = _panels(configs)
    if not panels:
        return None
    with style():
        fig, axes = _grid(len(panels), "information plane (colour: round; one line per layer)")
        last = 1
        for ax, (i, config, scope, layers) in zip(axes, panels, strict=True):
            for run in config.runs:
                for layer in layers:
                    xt = run.series(scope, f"mi_xt.{layer}")
                    ty = run.series(scope, f"mi_ty.{layer}")
                    both = xt.to_frame("x").join(ty.rename("y"), how="inner")
                    if both.empty:
                        continue
                    last = max(last, int(both.index.max()))
                    ax.plot(both.x, both.y, color="grey", linewidth=0.5, alpha=0.6)
                    points = ax.scatter(
                        both.x, both.y, c=np.log10(both.index.to_numpy()), cmap="viridis",
                        s=6, vmin=0, vmax=np.log10(max(last, 2)),
                    )  # fmt: skip
                    ax.annotate(str(layer), (both.x.iloc[-1], both.y.iloc[-1]), fontsize=7)
            ax.set_title(_title(i, config, scope), fontsize=8)
            ax.set_xlabel("I(X;T) (bits)")
            ax.set_ylabel("I(T;Y) (bits)")
        bar = fig.colorbar(points, ax=axes, shrink=0.6)
        bar.set_label("log10 round")
    return fig


def compression(configs: list[Configuration]) -> Figure | None:
    """I(X;T) of each layer by round (log scale), all seeds overlaid."""
    from fedsim.reporting.figures import colour, style

    panels = _panels(configs)
    if not panels:
        return None
    with style():
        fig, axes = _grid(len(panels), "I(X;T) by round, one colour per layer")
        for ax, (i, config, scope, layers) in zip(axes, panels, strict=True):
            for k, run in enumerate(config.runs):
                for layer in layers:
                    xt = run.series(scope, f"mi_xt.{layer}").sort_index()
                    label = f"layer {layer}" if k == 0 else None
                    ax.plot(xt.index, xt.to_numpy(), color=colour(layer - 1), linewidth=0.8,
                            alpha=0.7, label=label)  # fmt: skip
            ax.set_xscale("log")
            ax.set_title(_title(i, config, scope), fontsize=8)
            ax.set_xlabel("round")
            ax.set_ylabel("I(X;T) (bits)")
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 7))
    return fig
