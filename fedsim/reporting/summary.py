"""Configurations (runs grouped by their scenario without the seed) and the summary table."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from fedsim.reporting.runs import Run, flatten
from fedsim.results import SERVER

# Keys that tell seeds of one configuration apart rather than configurations.
IGNORED_KEYS = ("seed", "name")
# Sections that change where results go, not what they are (and that older runs lack).
IGNORED_SECTIONS = ("tracking.",)
# Metrics (scope, name) that, when present, add "per round" columns to the table.
BYTES_SENT = (SERVER, "bytes_sent")
# The mbo workload's normalised oracle scores of its designs (best and median design).
DESIGN_SCORES = ("p100", "p50")


@dataclass(frozen=True)
class Configuration:
    """Runs that share a resolved scenario up to the seed; labelled by the keys that differ."""

    label: str
    settings: dict[str, Any]  # flattened scenario without the ignored keys
    runs: tuple[Run, ...]

    @property
    def complete_runs(self) -> tuple[Run, ...]:
        """The runs the table's statistics use: the complete ones, or all when none is."""
        complete = tuple(r for r in self.runs if r.complete)
        return complete or self.runs


def format_value(value: Any) -> str:
    """A scenario value as YAML would write it: true, null, 0.1, [1, 2]."""
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, (int, float, str)):
        return str(value)
    return json.dumps(value, default=str)


def configurations(runs: list[Run]) -> tuple[list[Configuration], dict[str, Any]]:
    """Group runs by scenario minus seed and name; also the settings all configurations share.

    A configuration's label lists the keys whose values differ between configurations
    (``strategy.aggregator.weighted=false``); a key absent from one scenario counts as differing,
    unless a differing component name above it explains its absence.
    """
    groups: dict[str, tuple[dict[str, Any], list[Run]]] = {}
    for run in runs:
        settings = {
            k: v
            for k, v in flatten(run.scenario).items()
            if k not in IGNORED_KEYS and not k.startswith(IGNORED_SECTIONS)
        }
        key = json.dumps(settings, sort_keys=True, default=str)
        groups.setdefault(key, (settings, []))[1].append(run)

    all_keys = sorted({k for settings, _ in groups.values() for k in settings})
    missing = object()
    differing = [
        k
        for k in all_keys
        if len({json.dumps(s.get(k, missing), default=str) for s, _ in groups.values()}) > 1
    ]
    shared = {k: v for k, v in next(iter(groups.values()))[0].items() if k not in differing}
    settings_list = [settings for settings, _ in groups.values()]
    labelled = [k for k in differing if not _explained_by_name(k, differing, settings_list)]
    if len({json.dumps([s.get(k) for k in labelled], default=str) for s in settings_list}) < len(
        settings_list
    ):  # the names alone do not tell every configuration apart: label with every key
        labelled = differing
    configs = []
    for settings, members in groups.values():
        if labelled:
            label = ", ".join(
                f"{k}={format_value(settings[k]) if k in settings else '(absent)'}"
                for k in labelled
            )
        else:
            names = sorted({str(r.scenario.get("name", "")) for r in members})
            label = ", ".join(n for n in names if n) or "all runs"
        configs.append(Configuration(label, settings, tuple(members)))
    return configs, shared


def _explained_by_name(key: str, differing: list[str], settings: list[dict[str, Any]]) -> bool:
    """A parameter some configurations lack because an enclosing component's name differs
    (fedavg's ``strategy.aggregator.name`` against fedlaavg's ``strategy.beta``), or a component
    left out (``workload.sparsity: null``) where others name one: the name already tells the
    configurations apart, so the label leaves the parameter out, unless its value varies among
    the configurations that have it (``workload.sparsity.density`` 0.1 against 0.2)."""
    present = [s for s in settings if key in s]
    if len(present) == len(settings):
        return False
    if len({json.dumps(s[key], default=str) for s in present}) > 1:
        return False
    parts = key.split(".")
    enclosing = [".".join([*parts[:i], "name"]) for i in range(len(parts) + 1)]
    return any(name in differing and name != key for name in enclosing)


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof 1; NaN for one value)."""
    array = np.asarray(values, dtype=float)
    if array.size == 0:
        return math.nan, math.nan
    std = float(array.std(ddof=1)) if array.size > 1 else math.nan
    return float(array.mean()), std


def _pm(mean: float, std: float, digits: int = 4) -> str:
    if math.isnan(mean):
        return "—"
    if math.isnan(std):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def final_accuracy(run: Run) -> float | None:
    accuracy = run.series(SERVER, "accuracy")
    return float(accuracy.iloc[-1]) if len(accuracy) else None


def best_accuracy(run: Run) -> float | None:
    accuracy = run.series(SERVER, "accuracy")
    return float(accuracy.max()) if len(accuracy) else None


def rounds_to(run: Run, target: float) -> int | None:
    """The first round whose central accuracy reaches ``target``, or None."""
    accuracy = run.series(SERVER, "accuracy")
    reached = accuracy[accuracy >= target]
    return int(reached.index[0]) if len(reached) else None


def default_target(configs: list[Configuration]) -> float | None:
    """0.9 × the best configuration's mean final accuracy."""
    means = []
    for config in configs:
        finals = [a for r in config.complete_runs if (a := final_accuracy(r)) is not None]
        if finals:
            means.append(float(np.mean(finals)))
    return 0.9 * max(means) if means else None


@dataclass(frozen=True)
class Summary:
    numbers: pd.DataFrame  # one row per configuration, mean and std in separate columns
    table: pd.DataFrame  # the same as text for reading: "0.9120 ± 0.0031"
    target: float | None


def summarise(configs: list[Configuration], target: float | None = None) -> Summary:
    """The per-configuration table; a column appears only when some run has its metric."""
    runs = [r for c in configs for r in c.runs]
    has_accuracy = any(r.has(SERVER, "accuracy") for r in runs)
    has_wall = any(r.wall_time_s is not None for r in runs)
    has_bytes = any(r.has(*BYTES_SENT) for r in runs)
    has_designs = any(r.has(SERVER, DESIGN_SCORES[0]) for r in runs)
    any_incomplete = any(not r.complete for r in runs)
    if target is None and has_accuracy:
        target = default_target(configs)

    numbers: list[dict[str, Any]] = []
    table: list[dict[str, str]] = []
    for config in configs:
        used = config.complete_runs
        row: dict[str, Any] = {"configuration": config.label, "seeds": len(used)}
        text: dict[str, str] = {"configuration": config.label, "seeds (n)": str(len(used))}
        if any_incomplete:
            row["incomplete"] = sum(not r.complete for r in config.runs)
            text["incomplete runs"] = str(row["incomplete"])
        if has_accuracy:
            for name, of in (("final_accuracy", final_accuracy), ("best_accuracy", best_accuracy)):
                mean, std = mean_std([a for r in used if (a := of(r)) is not None])
                row[f"{name}_mean"], row[f"{name}_std"] = mean, std
                text[name.replace("_", " ")] = _pm(mean, std)
            if target is not None:
                reached = [n for r in used if (n := rounds_to(r, target)) is not None]
                mean, std = mean_std([float(n) for n in reached])
                row["rounds_to_target_mean"], row["rounds_to_target_std"] = mean, std
                row["rounds_to_target_reached"] = len(reached)
                cell = _pm(mean, std, 1) if reached else "not reached"
                if reached and len(reached) < len(used):
                    cell += f" ({len(reached)} of {len(used)} reached)"
                text[f"rounds to {target:.3f}"] = cell
        if has_designs:
            for metric in DESIGN_SCORES:
                finals = [
                    float(r.series(SERVER, metric).iloc[-1]) for r in used if r.has(SERVER, metric)
                ]
                mean, std = mean_std(finals)
                row[f"final_{metric}_mean"], row[f"final_{metric}_std"] = mean, std
                text[f"final design {metric}"] = _pm(mean, std)
        if has_wall:
            mean, std = mean_std([w for r in used if (w := r.wall_time_s) is not None])
            row["wall_time_s_mean"], row["wall_time_s_std"] = mean, std
            text["wall time (s)"] = _pm(mean, std, 1)
        if has_bytes:
            per_run = [float(r.series(*BYTES_SENT).mean()) for r in used if r.has(*BYTES_SENT)]
            mean, std = mean_std(per_run)
            row["bytes_sent_per_round_mean"], row["bytes_sent_per_round_std"] = mean, std
            text["bytes sent per round"] = _pm(mean, std, 0)
        numbers.append(row)
        table.append(text)
    return Summary(pd.DataFrame(numbers), pd.DataFrame(table), target)
