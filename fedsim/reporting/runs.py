"""Finding and reading run directories for a report; what cannot be used is skipped with a reason.

A path given to ``fedsim report`` is a run directory (``scenario.yaml`` or ``metrics.csv``), a
sweep directory (``sweep.json`` naming its points' run directories) or a folder holding either.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from fedsim.results import METRICS_HEADER

# libyaml's loader when present: parsing 100 resolved scenarios is otherwise most of the time.
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@dataclass(frozen=True)
class Skipped:
    """A path left out of the report and why."""

    path: Path
    reason: str


@dataclass(frozen=True)
class Run:
    """One run directory as read: its resolved scenario, tidy metrics and manifest."""

    path: Path
    scenario: dict[str, Any]
    metrics: pd.DataFrame  # columns round, scope, client, metric, value (round int, value float)
    manifest: dict[str, Any]
    rounds_done: int
    notes: tuple[str, ...] = field(default=())

    @property
    def rounds_planned(self) -> int | None:
        rounds = self.scenario.get("rounds")
        return rounds if isinstance(rounds, int) else None

    @property
    def complete(self) -> bool:
        """All planned rounds are in metrics.csv (a run killed after its last round counts)."""
        planned = self.rounds_planned
        return planned is None or self.rounds_done >= planned

    @property
    def status(self) -> str:
        return str(self.manifest.get("status", "unknown"))

    @property
    def seed(self) -> Any:
        return self.scenario.get("seed")

    @property
    def wall_time_s(self) -> float | None:
        wall = self.manifest.get("wall_time_s")
        return float(wall) if isinstance(wall, (int, float)) else None

    @cached_property
    def _series(self) -> dict[tuple[str, str], pd.Series]:
        grouped = self.metrics.groupby(["scope", "metric", "round"]).value.mean()
        return {
            (str(scope), str(metric)): part.droplevel([0, 1])
            for (scope, metric), part in grouped.groupby(level=[0, 1])
        }

    def series(self, scope: str, metric: str) -> pd.Series:
        """One metric of one scope by round (the mean over clients for scope client)."""
        empty = pd.Series(dtype=float, index=pd.Index([], dtype=int, name="round"))
        return self._series.get((scope, metric), empty)

    def has(self, scope: str, metric: str) -> bool:
        return (scope, metric) in self._series

    def events(self, kind: str) -> list[dict[str, Any]]:
        """The run's events of one kind from events.jsonl (read on first use; bad lines skipped)."""
        return [e for e in self._events if e.get("event") == kind]

    @cached_property
    def _events(self) -> list[dict[str, Any]]:
        return read_events(self.path / "events.jsonl")


def read_events(path: Path) -> list[dict[str, Any]]:
    """The events of an events.jsonl, in order; a missing file is none, bad lines are skipped."""
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError):
        return []
    parsed = []
    for line in lines:
        try:
            event = json.loads(line)
        except ValueError:  # a line cut short by a kill
            continue
        if isinstance(event, dict):
            parsed.append(event)
    return parsed


def flatten(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as dotted keys: ``{"a": {"b": 1}}`` → ``{"a.b": 1}``."""
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


def load_runs(
    paths: Iterable[Path], exclude: Iterable[Path] = ()
) -> tuple[list[Run], list[Skipped]]:
    """Every usable run under ``paths`` (in the order found) and every skipped path with why."""
    candidates, skipped = discover(paths, exclude)
    runs: list[Run] = []
    for path in candidates:
        loaded = load_run(path)
        (runs if isinstance(loaded, Run) else skipped).append(loaded)  # type: ignore[arg-type]
    return runs, skipped


def discover(
    paths: Iterable[Path], exclude: Iterable[Path] = ()
) -> tuple[list[Path], list[Skipped]]:
    """Run directories under the given paths (each once), and the paths that hold none."""
    seen = {p.resolve() for p in exclude}
    found: list[Path] = []
    skipped: list[Skipped] = []

    def add(path: Path) -> None:
        if path.resolve() not in seen:
            seen.add(path.resolve())
            found.append(path)

    for path in paths:
        if not path.exists():
            skipped.append(Skipped(path, "does not exist"))
        elif not path.is_dir():
            skipped.append(Skipped(path, "not a directory (give a run, sweep or folder of runs)"))
        elif _is_run(path):
            add(path)
        elif (path / "sweep.json").exists():
            _sweep_points(path, add, skipped)
        else:
            children = sorted(c for c in path.iterdir() if c.is_dir() and c.resolve() not in seen)
            usable = [c for c in children if _is_run(c) or (c / "sweep.json").exists()]
            if not usable:
                skipped.append(
                    Skipped(
                        path,
                        "not a run directory (no scenario.yaml or metrics.csv), "
                        "a sweep (no sweep.json) or a folder holding either",
                    )
                )
                continue
            for child in children:
                if _is_run(child):
                    add(child)
                elif (child / "sweep.json").exists():
                    _sweep_points(child, add, skipped)
                else:
                    skipped.append(
                        Skipped(child, "not a run directory (no scenario.yaml or metrics.csv)")
                    )
    return found, skipped


def _is_run(path: Path) -> bool:
    return (path / "scenario.yaml").exists() or (path / "metrics.csv").exists()


def _sweep_points(path: Path, add: Any, skipped: list[Skipped]) -> None:
    try:
        sweep = json.loads((path / "sweep.json").read_text())
        points = sweep["points"]
        if not isinstance(points, list):
            raise TypeError("points is not a list")
    except (OSError, ValueError, KeyError, TypeError) as err:
        skipped.append(Skipped(path / "sweep.json", f"unreadable sweep.json ({err})"))
        return
    for point in points:
        if not isinstance(point, Mapping) or not isinstance(point.get("dir"), str):
            skipped.append(Skipped(path / "sweep.json", f"sweep point without a dir: {point!r}"))
            continue
        run_dir = path / point["dir"]
        if _is_run(run_dir):
            add(run_dir)
        else:
            status = point.get("status", "unknown")
            skipped.append(
                Skipped(
                    run_dir, f"sweep point {point.get('id', '?')} not run yet (status {status})"
                )
            )


def load_run(path: Path) -> Run | Skipped:
    """Read one run directory, or say why it cannot be used."""
    scenario_file, metrics_file = path / "scenario.yaml", path / "metrics.csv"
    if not scenario_file.exists():
        return Skipped(path, "no scenario.yaml")
    try:
        scenario = yaml.load(scenario_file.read_text(), Loader=_YAML_LOADER)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        return Skipped(path, f"unreadable scenario.yaml ({type(err).__name__})")
    if not isinstance(scenario, dict):
        return Skipped(path, "scenario.yaml does not hold a mapping")

    notes: list[str] = []
    manifest: dict[str, Any] = {}
    if (path / "manifest.json").exists():
        try:
            loaded = json.loads((path / "manifest.json").read_text())
            manifest = loaded if isinstance(loaded, dict) else {}
        except (OSError, UnicodeDecodeError, ValueError):
            notes.append("manifest.json unreadable (no status or wall time)")
    status = manifest.get("status", "unknown")

    if not metrics_file.exists():
        return Skipped(path, f"no metrics.csv (status {status})")
    try:
        metrics, dropped = read_metrics(metrics_file)
    except ValueError as err:
        return Skipped(path, f"{err} (status {status})")
    if dropped:
        notes.append(f"{dropped} malformed or half-written metrics.csv line(s) ignored")
    if metrics.empty:
        return Skipped(path, f"metrics.csv holds no rounds (status {status})")

    rounds_done = int(metrics["round"].max())
    run = Run(path, scenario, metrics, manifest, rounds_done, tuple(notes))
    if not run.complete:
        notes.append(f"incomplete: {rounds_done} of {run.rounds_planned} rounds (status {status})")
        run = Run(path, scenario, metrics, manifest, rounds_done, tuple(notes))
    return run


def read_metrics(path: Path) -> tuple[pd.DataFrame, int]:
    """A tidy metrics.csv and the number of lines dropped as malformed (e.g. cut by a kill).

    Raises ValueError with the reason when the file cannot be used at all.
    """
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"unreadable metrics.csv ({type(err).__name__})") from err
    if not text.strip():
        raise ValueError("metrics.csv is empty")
    header = text.split("\n", 1)[0].strip().split(",")
    if tuple(header) != METRICS_HEADER:
        raise ValueError(
            f"metrics.csv header is {','.join(header)[:80]!r}, expected {','.join(METRICS_HEADER)}"
        )
    dropped = 0
    if not text.endswith("\n"):  # the writer ends every line; a kill can cut the last one
        text = text[: text.rfind("\n") + 1]
        dropped += 1
    try:
        raw = pd.read_csv(
            io.StringIO(text),
            dtype={"scope": str, "metric": str},
            keep_default_na=False,
            on_bad_lines="skip",
        )
    except (ValueError, pd.errors.ParserError) as err:
        raise ValueError(f"unreadable metrics.csv ({err})") from err
    rounds = pd.to_numeric(raw["round"], errors="coerce")
    values = pd.to_numeric(raw["value"], errors="coerce")
    good = rounds.notna() & values.notna() & (raw["metric"] != "")
    dropped += int((~good).sum()) + max(0, text.count("\n") - 1 - len(raw))
    metrics = pd.DataFrame(
        {
            "round": rounds[good].astype(int),
            "scope": raw["scope"][good],
            "client": raw["client"][good].astype(str),
            "metric": raw["metric"][good],
            "value": values[good].astype(float),
        }
    ).reset_index(drop=True)
    return metrics, dropped
