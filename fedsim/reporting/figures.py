"""The report's figures: one function per figure, returning None when the runs lack its data.

Figures are made without pyplot (``Figure`` renders PNG through Agg), so building a report
neither needs a display nor changes the caller's matplotlib backend.

To add a figure (availability timelines, byzantine heat maps, …): write
``def name(configs) -> Figure | None`` and append ``(file stem, caption, name)`` to ``FIGURES``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pandas as pd
from cycler import cycler
from matplotlib.axes import Axes
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from fedsim.reporting import plane
from fedsim.reporting.runs import Run
from fedsim.reporting.summary import Configuration
from fedsim.results import CLIENT, SERVER

DPI = 150
# Okabe & Ito (2008), distinguishable with the common colour-vision deficiencies.
OKABE_ITO = (
    "#0072B2",  # blue
    "#E69F00",  # orange
    "#009E73",  # bluish green
    "#D55E00",  # vermillion
    "#CC79A7",  # reddish purple
    "#56B4E9",  # sky blue
    "#F0E442",  # yellow
    "#000000",  # black
)
STYLE = {
    "axes.prop_cycle": cycler(color=OKABE_ITO),
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "font.size": 9,
    "legend.fontsize": 8,
    "legend.frameon": False,
    "savefig.dpi": DPI,
    "savefig.bbox": "tight",
}

FigureFn = Callable[[list[Configuration]], Figure | None]


def colour(i: int) -> str:
    return OKABE_ITO[i % len(OKABE_ITO)]


@contextmanager
def style() -> Iterator[None]:
    with matplotlib.rc_context(STYLE):  # type: ignore[arg-type]
        yield


def by_round(config: Configuration, scope: str, metric: str) -> pd.DataFrame:
    """Rounds × runs of one metric (NaN where a run has no value, e.g. a killed run)."""
    columns = {
        str(i): run.series(scope, metric)
        for i, run in enumerate(config.runs)
        if run.has(scope, metric)
    }
    return pd.DataFrame(columns).sort_index()


def _band_plot(ax: Axes, configs: list[Configuration], metric: str, ylabel: str) -> bool:
    drawn = False
    for i, config in enumerate(configs):
        values = by_round(config, SERVER, metric)
        if values.empty:
            continue
        mean, std, n = values.mean(axis=1), values.std(axis=1, ddof=1), values.count(axis=1)
        seeds = values.shape[1]
        label = f"C{i + 1}: {config.label} (n={seeds})"
        # past the palette's 8 colours, a dashed line keeps configurations apart
        dashes = "-" if i < len(OKABE_ITO) else "--"
        ax.plot(mean.index, mean.to_numpy(), dashes, color=colour(i), label=label, linewidth=1.5)
        band = n >= 2  # a spread needs two seeds
        if band.any():
            ax.fill_between(
                mean.index[band],
                (mean - std)[band].to_numpy(),
                (mean + std)[band].to_numpy(),
                color=colour(i),
                alpha=0.2,
                linewidth=0,
            )
        drawn = True
    ax.set_xlabel("round")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # rounds are whole numbers
    ax.set_ylabel(ylabel)
    return drawn


def accuracy_loss(configs: list[Configuration]) -> Figure | None:
    """Central test accuracy and loss by round: mean over seeds, ±1 std band (≥2 seeds)."""
    with style():
        fig = Figure(figsize=(9, 3.6), layout="constrained")
        acc, loss = fig.subplots(1, 2)
        drew_acc = _band_plot(acc, configs, "accuracy", "test accuracy")
        drew_loss = _band_plot(loss, configs, "loss", "test loss (cross-entropy)")
        if not (drew_acc or drew_loss):
            return None
        acc.set_title("central test accuracy")
        loss.set_title("central test loss")
        handles, labels = (acc if drew_acc else loss).get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside lower center")
    return fig


def final_client_accuracy(config: Configuration) -> np.ndarray:
    """Each run's per-client eval accuracy at its last evaluated round, pooled over seeds."""
    pooled: list[np.ndarray] = []
    for run in config.runs:
        rows = run.metrics[(run.metrics.scope == CLIENT) & (run.metrics.metric == "eval_accuracy")]
        if len(rows):
            pooled.append(rows[rows["round"] == rows["round"].max()].value.to_numpy())
    return np.concatenate(pooled) if pooled else np.array([])


def fairness(configs: list[Configuration]) -> Figure | None:
    """Distribution of the final round's per-client eval accuracy, a box per configuration."""
    data = [(i, c, final_client_accuracy(c)) for i, c in enumerate(configs)]
    data = [(i, c, values) for i, c, values in data if values.size]
    if not data:
        return None
    with style():
        fig = Figure(figsize=(max(4.5, 1.2 * len(data) + 2), 3.6), layout="constrained")
        ax = fig.subplots()
        boxes = ax.boxplot(
            [values for _, _, values in data],
            patch_artist=True,
            medianprops={"color": "black"},
            widths=0.6,
        )
        for patch, (i, _, _) in zip(boxes["boxes"], data, strict=True):
            patch.set_facecolor(colour(i))
            patch.set_alpha(0.6)
        ax.set_xticks(range(1, len(data) + 1), [f"C{i + 1}" for i, _, _ in data])
        ax.set_xlabel("configuration (see the table)")
        ax.set_ylabel("client eval accuracy, final round")
        ax.set_title("per-client accuracy (clients of all seeds pooled)")
        ax.grid(axis="x", visible=False)
    return fig


# Server-timed phases of a round (scope server), in the order they are stacked.
TIMED_PHASES = [
    ("train_time_s", "client training (incl. transport)"),
    ("aggregate_time_s", "aggregation"),
    ("exchange_time_s", "exchanges"),
    ("eval_time_s", "evaluation (clients + central)"),
]


def timing(configs: list[Configuration]) -> Figure | None:
    """Mean time per round, split into the phases the server timed (stacked bars)."""
    bars = []
    for i, config in enumerate(configs):
        total = by_round(config, SERVER, "round_time_s")
        if total.empty:
            continue
        parts = {}
        for metric, _ in TIMED_PHASES:
            values = by_round(config, SERVER, metric)
            parts[metric] = 0.0 if values.empty else float(np.nanmean(values.to_numpy()))
        parts["other"] = max(0.0, float(np.nanmean(total.to_numpy())) - sum(parts.values()))
        bars.append((i, parts))
    if not bars:
        return None
    with style():
        fig = Figure(figsize=(max(4.5, 1.2 * len(bars) + 2), 3.6), layout="constrained")
        ax = fig.subplots()
        ax.grid(axis="x", visible=False)
        x = np.arange(len(bars))
        bottom = np.zeros(len(bars))
        for j, (metric, label) in enumerate([*TIMED_PHASES, ("other", "other (bookkeeping)")]):
            heights = np.array([parts[metric] for _, parts in bars])
            if not heights.any():
                continue
            ax.bar(x, heights, bottom=bottom, color=OKABE_ITO[j], label=label, width=0.6)
            bottom += heights
        ax.set_xticks(x, [f"C{b[0] + 1}" for b in bars])
        ax.set_xlabel("configuration (see the table)")
        ax.set_ylabel("time per round (s)")
        ax.set_title("mean time per round (over rounds and seeds)")
        fig.legend(loc="outside lower center")
    return fig


def cumulative_bytes(config: Configuration) -> pd.DataFrame:
    """Rounds × runs: bytes sent both ways (training: to clients and back) up to each round."""
    columns = {}
    for i, run in enumerate(config.runs):
        if run.has(SERVER, "bytes_down") and run.has(SERVER, "bytes_up"):
            per_round = run.series(SERVER, "bytes_down").add(
                run.series(SERVER, "bytes_up"), fill_value=0.0
            )
            columns[str(i)] = per_round.sort_index().cumsum()
    return pd.DataFrame(columns).sort_index()


def accuracy_bytes(configs: list[Configuration]) -> Figure | None:
    """Central test accuracy against the training traffic (down + up) spent to reach it."""
    curves = []
    for i, config in enumerate(configs):
        sent, accuracy = cumulative_bytes(config), by_round(config, SERVER, "accuracy")
        if sent.empty or accuracy.empty:
            continue
        both = pd.concat({"x": sent.mean(axis=1), "y": accuracy.mean(axis=1)}, axis=1).dropna()
        if len(both):
            curves.append((i, config, both))
    if not curves:
        return None
    with style():
        # One legend column below the axes: labels name every differing key and run long.
        fig = Figure(figsize=(8, 4 + 0.17 * len(curves)), layout="constrained")
        ax = fig.subplots()
        for i, config, both in curves:
            label = f"C{i + 1}: {config.label}"
            dash = ("-", "--", ":")[(i // len(OKABE_ITO)) % 3]  # colours repeat after eight
            ax.plot(both.x / 1e6, both.y, dash, color=colour(i), label=label, linewidth=1.5)
            ax.plot(both.x.iloc[-1:] / 1e6, both.y.iloc[-1:], "o", color=colour(i), markersize=4)
        ax.set_xscale("log")
        ax.set_xlabel("bytes sent, both ways, cumulative (MB, log scale)")
        ax.set_ylabel("test accuracy")
        ax.set_title("accuracy against communication (mean over seeds; dot: last round)")
        fig.legend(loc="outside lower center", ncols=1)
    return fig


TIMELINE_ROUNDS = 120  # the availability timeline shows at most this many rounds, legibly


def availability(configs: list[Configuration]) -> Figure | None:
    """Who was online and who trained, round by round, in the first run with an availability
    schedule (the schedule depends on the seed only, so every configuration of a seed shares it).
    """
    for i, config in enumerate(configs):
        for run in config.runs:
            online = [e for e in run.events("online") if e.get("clients") is not None]
            if online:
                return _timeline(f"C{i + 1}, seed {run.seed}", run, online)
    return None


def _timeline(label: str, run: Run, online: list[dict[str, Any]]) -> Figure:
    clients = run.scenario.get("clients", {}).get("num") or 1 + max(
        max(e["clients"], default=0) for e in online
    )
    last = min(max(e["round"] for e in online), TIMELINE_ROUNDS)
    grid = np.zeros((clients, last), dtype=float)
    for event in online:
        if event["round"] <= last:
            grid[event["clients"], event["round"] - 1] = 1
    # Rows ordered by availability pattern, so that groups that come and go together show as bands.
    order = np.lexsort(grid.T[::-1])
    row_of = np.empty(clients, dtype=int)
    row_of[order] = np.arange(clients)
    trained = run.metrics[
        (run.metrics.scope == CLIENT)
        & (run.metrics.metric == "train_examples")
        & (run.metrics["round"] <= last)
    ]
    with style():
        fig = Figure(figsize=(9, 3.8), layout="constrained")
        ax = fig.subplots()
        ax.grid(False)
        ax.imshow(
            grid[order],
            aspect="auto",
            interpolation="nearest",
            cmap=ListedColormap(["white", "#CFE3F2"]),
            extent=(0.5, last + 0.5, clients - 0.5, -0.5),
        )
        ax.scatter(
            trained["round"],
            row_of[trained.client.astype(int).to_numpy()],
            s=4,
            marker="s",
            color=OKABE_ITO[3],
            label="trained",
        )
        ax.scatter([], [], s=12, marker="s", color="#CFE3F2", label="online")
        ax.set_xlabel("round")
        ax.set_ylabel("client (ordered by availability)")
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        shown = f"first {last} rounds" if last < run.rounds_done else f"{last} rounds"
        ax.set_title(f"availability and participation ({label}, {shown})")
        fig.legend(loc="outside lower center", ncols=2)
    return fig


def design_scores(configs: list[Configuration]) -> Figure | None:
    """The mbo workload's designs: normalised oracle score of the best and the median design by
    ascent step, against the best design of the offline data (dashed)."""
    with style():
        fig = Figure(figsize=(9, 3.6), layout="constrained")
        best, median = fig.subplots(1, 2)
        if not _band_plot(best, configs, "p100", "normalised score, best design"):
            return None
        _band_plot(median, configs, "p50", "normalised score, median design")
        offline = [r for c in configs for r in c.runs if r.has(SERVER, "best_offline")]
        if offline:
            level = float(offline[0].series(SERVER, "best_offline").iloc[0])
            for ax in (best, median):
                ax.axhline(level, color="grey", linestyle="--", linewidth=1, label="best offline")
        best.set_title("best design (p100)")
        median.set_title("median design (p50)")
        handles, labels = best.get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside lower center")
    return fig


FIGURES: list[tuple[str, str, FigureFn]] = [
    (
        "accuracy_loss",
        "Central test accuracy and loss by round (mean over seeds, band ±1 std)",
        accuracy_loss,
    ),
    ("fairness", "Per-client eval accuracy in the final round", fairness),
    ("timing", "Mean time per round: training vs the rest", timing),
    (
        "design_scores",
        "Offline MBO: oracle scores of the designs by ascent step (mean over seeds, ±1 std)",
        design_scores,
    ),
    (
        "accuracy_bytes",
        "Central test accuracy against the bytes sent to and from clients for training",
        accuracy_bytes,
    ),
    (
        "availability",
        "Which clients were online (shaded) and which trained, by round",
        availability,
    ),
    (
        "information_plane",
        "Information plane: I(X;T) against I(T;Y) per layer (1 = first hidden, last = output)",
        plane.information_plane,
    ),
    ("compression", "I(X;T) of each layer by round (seeds overlaid)", plane.compression),
]


def save(fig: Figure, path: Path) -> Path:
    with matplotlib.rc_context(STYLE):  # type: ignore[arg-type]
        fig.savefig(path, format="png", dpi=DPI)
    return path
