"""fedsim from Python: run a scenario, read what it left, resume it, report on runs.

```python
import fedsim

run = fedsim.run("scenarios/quickstart.yaml", overrides={"rounds": 5}, out="runs/q5")
run.metrics                      # tidy DataFrame: round, scope, client, metric, value
```

The ``fedsim`` command is a thin layer over these functions: the same checks, the same run
directories, the same messages (``echo``). Mistakes in the input raise ``fedsim.errors.UserError``
(``ScenarioError`` for a scenario that does not validate, ``SweepError`` when sweep points
fail), whose message is what the command prints before it exits with code 2.
"""

from __future__ import annotations

import copy
import json
import os
import shlex
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, overload

import yaml

from fedsim.errors import ScenarioError, UserError

if TYPE_CHECKING:
    import pandas as pd
    import torch

    from fedsim.reporting import ReportResult
    from fedsim.scenario import Scenario

__all__ = ["Run", "Sweep", "load_run", "load_sweep", "report", "resume", "run"]

# A scenario: a YAML file's path, the scenario as plain data, or YAML text.
ScenarioSource = str | os.PathLike[str] | Mapping[str, Any]
# Overrides: {"rounds": 5, "workload.lr": 0.1} (values as they are) or ["rounds=5", …] (YAML).
Overrides = Mapping[str, Any] | Sequence[str]
Echo = Callable[[str], None]


def run(
    scenario: ScenarioSource,
    overrides: Overrides | None = None,
    out: str | os.PathLike[str] | None = None,
    *,
    progress: bool = False,
    echo: Echo | None = None,
    command: str | None = None,
    jobs: int | None = None,
) -> Run | Sweep:
    """Validate and run a scenario into ``out`` (default ``runs/<name>-<time>``); its results.

    ``scenario``: a YAML file (a ``Path``, or a ``str`` that is not YAML text), a dict, or YAML
    text. ``overrides`` change keys first, as ``fedsim run --set`` does. A scenario with a
    ``sweep:`` block runs every point and returns a ``Sweep``, otherwise a ``Run``.
    ``progress`` shows a progress bar; ``echo`` receives the command's messages (default:
    none); ``command`` is what manifest.json records (default: this process's command line).
    ``jobs``: a sweep's points run at once on the local engine, each in a process of its own
    (default: as many as the cores allow; 1: one after another in this process).
    """
    from fedsim import engine, results, sweep
    from fedsim.scenario import parse

    raw, source = _raw(scenario)
    _override(raw, overrides, source)
    say = echo or _silent
    command = command or f"fedsim.run() in {shlex.join(sys.argv) or 'python'}"
    path = Path(out) if out is not None else None
    if "sweep" in raw:
        sweep_dir = sweep.run(
            raw, path, show_progress=progress, echo=say, source=source, command=command, jobs=jobs
        )
        say(f"fedsim: sweep done; results in {sweep_dir}")
        return Sweep(sweep_dir)
    _no_jobs(jobs, "this scenario has no sweep: block")
    resolved = parse(raw, source)
    run_dir = (path or results.default_run_dir(resolved)).resolve()
    engine.preflight(resolved)  # fail before the engine starts, not inside every client
    results.prepare(run_dir, resolved, command=command)
    say(f"fedsim: running {resolved.name} on engine {resolved.engine} → {run_dir}")
    engine.run(resolved, run_dir, show_progress=progress)
    say(f"fedsim: done; results in {run_dir}")
    return Run(run_dir)


def resume(
    path: str | os.PathLike[str],
    *,
    progress: bool = False,
    echo: Echo | None = None,
    jobs: int | None = None,
) -> Run | Sweep:
    """Continue a killed run after its last completed round, or a sweep's unfinished points.

    ``jobs``: as for ``run``.
    """
    from fedsim import engine, results, sweep
    from fedsim.scenario import load

    run_dir = Path(path).resolve()
    say = echo or _silent
    if sweep.is_sweep(run_dir):
        sweep.run_points(run_dir, show_progress=progress, echo=say, jobs=jobs)
        say(f"fedsim: sweep done; results in {run_dir}")
        return Sweep(run_dir)
    _no_jobs(jobs, f"{run_dir} is a single run")
    scenario = load(run_dir / "scenario.yaml")
    if results.run_status(run_dir) == "completed":
        raise UserError(f"{run_dir} is already complete; nothing to resume")
    engine.preflight(scenario)
    say(f"fedsim: resuming {scenario.name} on engine {scenario.engine} → {run_dir}")
    engine.run(scenario, run_dir, show_progress=progress)
    say(f"fedsim: done; results in {run_dir}")
    return Run(run_dir)


def _no_jobs(jobs: int | None, why: str) -> None:
    if jobs is not None:
        raise UserError(f"jobs (sweep points at once) is for sweeps, and {why}")


def load_run(path: str | os.PathLike[str]) -> Run:
    """Open a run directory, finished or not (``fedsim.load_sweep`` opens a sweep)."""
    run_dir = Path(path)
    if (run_dir / "sweep.json").exists():
        raise UserError(f"{run_dir} is a sweep directory; open it with fedsim.load_sweep")
    if not (run_dir / "scenario.yaml").exists():
        raise UserError(f"{run_dir} is not a run directory (it has no scenario.yaml)")
    return Run(run_dir.resolve())


def load_sweep(path: str | os.PathLike[str]) -> Sweep:
    """Open a sweep directory (one with sweep.json)."""
    sweep_dir = Path(path)
    if not (sweep_dir / "sweep.json").exists():
        raise UserError(f"{sweep_dir} is not a sweep directory (it has no sweep.json)")
    return Sweep(sweep_dir.resolve())


def report(
    runs: Run | Sweep | str | os.PathLike[str] | Iterable[Run | Sweep | str | os.PathLike[str]],
    out: str | os.PathLike[str],
    *,
    target: float | None = None,
) -> ReportResult:
    """Build a report (report.html, report.md, summary.csv/.tex, figures) on runs into ``out``.

    ``runs``: runs, sweeps or their directories (or folders holding them), one or several.
    ``target``: the accuracy for "rounds to target" (default 0.9 × the best mean final one).
    """
    from fedsim.reporting import build_report

    items: list[Any] = [runs] if isinstance(runs, (Run, Sweep, str, os.PathLike)) else list(runs)
    paths = [item.dir if isinstance(item, (Run, Sweep)) else Path(item) for item in items]
    return build_report(paths, Path(out), target=target)


@dataclass(frozen=True)
class Run:
    """One run directory: what the run wrote, read when asked for (a live run reads as far
    as it got)."""

    dir: Path

    @cached_property
    def scenario(self) -> Scenario:
        """The resolved scenario the run ran (its scenario.yaml, validated again)."""
        from fedsim.scenario import load

        return load(self.dir / "scenario.yaml")

    @property
    def manifest(self) -> dict[str, Any]:
        from fedsim.results import read_manifest

        return read_manifest(self.dir)

    @property
    def status(self) -> str | None:
        """prepared, running, completed, failed or interrupted (None without a manifest)."""
        status = self.manifest.get("status")
        return None if status is None else str(status)

    @property
    def metrics(self) -> pd.DataFrame:
        """metrics.csv, tidy: round, scope (server | federated | client), client (the client's
        id, <NA> otherwise), metric, value; a line cut short by a kill is left out."""
        import pandas as pd

        from fedsim.reporting.runs import read_metrics
        from fedsim.results import METRICS_HEADER

        if not (self.dir / "metrics.csv").exists():
            return pd.DataFrame({c: [] for c in METRICS_HEADER}).astype(
                {"round": int, "client": "Int64", "value": float}
            )
        try:
            metrics, _ = read_metrics(self.dir / "metrics.csv")
        except ValueError as err:
            raise UserError(f"{self.dir}: {err}") from None
        client = pd.to_numeric(metrics["client"].where(metrics["client"] != ""))
        return metrics.assign(client=client.astype("Int64"))

    @property
    def events(self) -> list[dict[str, Any]]:
        """events.jsonl: one dict per event (``event`` names its kind), in order."""
        from fedsim.reporting.runs import read_events

        return read_events(self.dir / "events.jsonl")

    def model(self) -> dict[str, torch.Tensor]:
        """The final global model's state dict (model.pt; a workload's exchanges leave their
        last broadcasts in broadcasts.pt beside it)."""
        import torch

        path = self.dir / "model.pt"
        if not path.exists():
            raise UserError(
                f"{self.dir} has no model.pt: the run has not finished (status "
                f"{self.status}); resume it with fedsim.resume"
            )
        state: dict[str, torch.Tensor] = torch.load(path, map_location="cpu", weights_only=True)
        return state

    def summary(self) -> dict[str, Any]:
        """Status, rounds done, wall time, and each server and federated metric's last value."""
        metrics = self.metrics
        manifest = self.manifest
        shared = metrics[metrics.scope != "client"]
        last = shared.sort_values("round", kind="stable").groupby(["scope", "metric"]).last()
        return {
            "status": manifest.get("status"),
            "rounds": int(metrics["round"].max()) if len(metrics) else 0,
            "wall_time_s": manifest.get("wall_time_s"),
            **{f"{scope}/{metric}": float(v) for (scope, metric), v in last["value"].items()},
        }

    def __repr__(self) -> str:
        return f"fedsim.Run({str(self.dir)!r})"


@dataclass(frozen=True)
class Sweep(Sequence[Run]):
    """A sweep directory: a list of its points' runs, in the grid's order."""

    dir: Path

    @property
    def points(self) -> list[dict[str, Any]]:
        """sweep.json's points: id, dir, the swept keys' ``values`` and status."""
        points: list[dict[str, Any]] = json.loads((self.dir / "sweep.json").read_text())["points"]
        return points

    @property
    def keys(self) -> list[str]:
        """The swept keys (dotted), in the sweep's order."""
        return list(json.loads((self.dir / "sweep.json").read_text())["keys"])

    @overload
    def __getitem__(self, index: int) -> Run: ...
    @overload
    def __getitem__(self, index: slice) -> list[Run]: ...
    def __getitem__(self, index: int | slice) -> Run | list[Run]:
        runs = [Run(self.dir / point["dir"]) for point in self.points]
        return runs[index]

    def __iter__(self) -> Iterator[Run]:
        return iter(self[:])

    def __len__(self) -> int:
        return len(self.points)

    @property
    def metrics(self) -> pd.DataFrame:
        """Every point's metrics, one tidy table: ``point`` (its id), one column per swept key
        (a value that is a list or mapping as JSON), then round, scope, client, metric, value."""
        import pandas as pd

        keys = self.keys
        frames = []
        for point in self.points:
            values = {key: _cell(point["values"][key]) for key in keys}
            frame = Run(self.dir / point["dir"]).metrics
            frames.append(frame.assign(point=point["id"], **values))
        columns = ["point", *keys, *frames[0].columns[:5]] if frames else ["point", *keys]
        if not frames:
            return pd.DataFrame(columns=columns)
        return pd.concat(frames, ignore_index=True)[columns]

    def __repr__(self) -> str:
        return f"fedsim.Sweep({str(self.dir)!r}, {len(self)} points)"


def _cell(value: Any) -> Any:
    return json.dumps(value) if isinstance(value, (list, dict)) else value


def _silent(_: str) -> None:
    pass


def _raw(scenario: ScenarioSource) -> tuple[dict[str, Any], str]:
    """The scenario as plain data (a copy: the caller's is never changed) and its source."""
    from fedsim.scenario import read

    if isinstance(scenario, Mapping):
        return copy.deepcopy(dict(scenario)), ""
    if isinstance(scenario, str):
        text = _yaml_text(scenario)
        if text is not None:
            return text, ""
    return read(Path(scenario)), str(Path(scenario))


def _yaml_text(text: str) -> dict[str, Any] | None:
    """A string holding a YAML mapping as data; None for a string that names a file."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        if "\n" not in text.strip():
            return None  # a file name YAML cannot read, e.g. "a: b: c.yaml"
        from fedsim.scenario import yaml_problem

        raise ScenarioError([yaml_problem(err)]) from None
    if isinstance(data, dict):
        return data
    if "\n" in text.strip():
        got = type(data).__name__
        raise ScenarioError([f"(top level): expected a mapping of keys, got {got}"])
    return None


def _override(raw: dict[str, Any], overrides: Overrides | None, source: str) -> None:
    from fedsim.scenario import apply_override, set_key

    if overrides is None:
        return
    if isinstance(overrides, Mapping):
        for key, value in overrides.items():
            set_key(raw, key, copy.deepcopy(value), f"overrides {key}", source)
        return
    for item in [overrides] if isinstance(overrides, str) else overrides:
        apply_override(raw, item, source)
