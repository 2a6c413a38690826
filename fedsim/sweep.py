"""Sweeps: an explicit ``sweep:`` block of dotted keys to lists, run as the grid of its points.

```yaml
sweep:
  strategy.aggregator.name: [mean, median]
  seed: [0, 1, 2]
```

Every point is validated before anything runs. The sweep directory holds ``sweep.yaml`` (the file
as given), ``sweep.json`` (the index: each point's values, run directory and status, rewritten
atomically as points finish) and one run directory per point. Points on the local engine run in
parallel processes where cores allow; an interrupted sweep resumes, skipping finished points.
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import os
import re
import shlex
import sys
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from datetime import datetime
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import yaml

from fedsim import results
from fedsim.errors import ScenarioError, SweepError, UserError
from fedsim.scenario import Scenario, parse

INDEX = "sweep.json"
COMPLETED, PENDING, FAILED = "completed", "pending", "failed"


@dataclass(frozen=True)
class Point:
    id: str
    values: dict[str, Any]  # dotted key -> value, in the sweep's key order
    scenario: Scenario

    @property
    def dirname(self) -> str:
        parts = "_".join(f"{key.split('.')[-1]}={_short(v)}" for key, v in self.values.items())
        return f"{self.id}-{re.sub(r'[^A-Za-z0-9_.=-]+', '-', parts)}"[:120]


def _short(value: Any) -> str:
    """A value as a directory name shows it: a component ``{name: krum, f: 2}`` as krum-f2."""
    if isinstance(value, dict):
        name = str(value.get("name", ""))
        rest = "-".join(f"{k}{_short(v)}" for k, v in value.items() if k != "name")
        return "-".join(part for part in (name, rest) if part)
    return str(value)


def expand(raw: dict[str, Any], source: str = "") -> list[Point]:
    """Every point of the sweep in ``raw``, each validated; all problems reported at once."""
    grid = raw.get("sweep")
    if not isinstance(grid, dict) or not grid:
        raise ScenarioError(["sweep: expected a mapping of dotted keys to lists of values"], source)
    problems = [
        f"sweep.{key}: expected a non-empty list of values, got {value!r}"
        for key, value in grid.items()
        if not isinstance(value, list) or not value
    ]
    if problems:
        raise ScenarioError(problems, source)
    base = {k: v for k, v in raw.items() if k != "sweep"}
    points = []
    keys = list(grid)
    failing: dict[str, list[str]] = {}  # problem -> the points that have it
    for i, combo in enumerate(itertools.product(*grid.values())):
        values = dict(zip(keys, combo, strict=True))
        label = ", ".join(f"{k}={v}" for k, v in values.items())
        point_raw = copy.deepcopy(base)
        try:
            for key, value in values.items():
                _set(point_raw, key, value)
            points.append(Point(f"{i:04d}", values, parse(point_raw, source)))
        except ScenarioError as err:
            for problem in err.problems:
                failing.setdefault(problem, []).append(f"{i} ({label})")
    total = math.prod(len(values) for values in grid.values())
    for problem, where in failing.items():
        at = "every point" if len(where) == total else "point " + "; ".join(where)
        problems.append(f"{problem}  [sweep {at}]")
    if problems:
        raise ScenarioError(problems, source)
    return points


def _set(raw: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = raw
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ScenarioError([f"{dotted}: {part} is not a mapping"])
        node = child
    node[leaf] = copy.deepcopy(value)


def default_sweep_dir(raw: dict[str, Any], root: str | Path = "runs") -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path(root) / f"{raw.get('name', 'sweep')}-sweep-{stamp}"


def prepare(path: Path, raw: dict[str, Any], points: list[Point], command: str) -> None:
    """Create the sweep directory, its index and every point's run directory."""
    if (path / INDEX).exists() or (path / "metrics.csv").exists():
        raise UserError(
            f"{path} already holds a sweep or a run; choose another --out or --resume it"
        )
    path.mkdir(parents=True, exist_ok=True)
    (path / "sweep.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    for point in points:
        results.prepare(path / point.dirname, point.scenario, command=f"{command}  # {point.id}")
    index = {
        "name": raw.get("name", "sweep"),
        "keys": list(points[0].values),
        "command": command,
        "points": [
            {"id": p.id, "dir": p.dirname, "values": p.values, "status": PENDING} for p in points
        ],
    }
    _write_index(path, index)


def run(
    raw: dict[str, Any],
    out: Path | None,
    *,
    show_progress: bool = True,
    echo: Callable[[str], None] = print,
    source: str = "",
    command: str | None = None,
    jobs: int | None = None,
) -> Path:
    """Validate every point, prepare the sweep directory, run the points; returns the directory.

    ``command`` is what the manifests record (default: ``fedsim`` and this process's arguments);
    ``jobs``: as for ``run_points``.
    """
    points = expand(raw, source)
    from fedsim import engine

    for point in points:
        engine.preflight(point.scenario)
    path = (out or default_sweep_dir(raw)).resolve()
    prepare(path, raw, points, command=command or shlex.join(["fedsim", *sys.argv[1:]]))
    echo(f"fedsim: sweep of {len(points)} runs → {path}")
    run_points(path, show_progress=show_progress, echo=echo, jobs=jobs)
    return path


def is_sweep(path: Path) -> bool:
    return (path / INDEX).exists()


def run_points(
    path: Path,
    *,
    show_progress: bool = True,
    echo: Callable[[str], None] = print,
    jobs: int | None = None,
) -> None:
    """Run every point not yet completed (a killed point resumes from its checkpoint).

    Points on the local engine run ``jobs`` at a time, each in a process of its own (default:
    as many as the cores allow, given each point's ``resources.workers``); with one at a time
    they run one after another in this process, as points on the flower engine always do.
    """
    index = _read_index(path)
    todo = [p for p in index["points"] if p["status"] != COMPLETED]
    if len(todo) < len(index["points"]):
        echo(f"fedsim: {len(index['points']) - len(todo)} points already complete, skipped")
    local = [p for p in todo if _scenario(path, p).engine == "local"]
    others = [p for p in todo if p not in local]
    if jobs is None:
        jobs = (os.cpu_count() or 1) // max(1, _workers(path, local))
    parallel = max(1, min(len(local), jobs))
    from rich.progress import Progress

    with Progress(disable=not show_progress) as progress:
        task = progress.add_task("sweep points", total=len(todo))

        def finished(point: dict[str, Any], error: str | None) -> None:
            point["status"] = FAILED if error else COMPLETED
            if error:
                point["error"] = error
                echo(f"fedsim: point {point['id']} failed: {error}")
            else:
                point.pop("error", None)
            _write_index(path, index)
            progress.advance(task)

        if parallel > 1:
            context = get_context("spawn")
            try:
                with ProcessPoolExecutor(max_workers=parallel, mp_context=context) as pool:
                    futures = {pool.submit(_run_point, str(path / p["dir"])): p for p in local}
                    for future in as_completed(futures):
                        finished(futures[future], future.result())
            except BrokenProcessPool:
                raise SweepError(
                    "the sweep's worker processes died (killed, out of memory, or started from a "
                    'Python script whose code is not under `if __name__ == "__main__":`, which '
                    f"each worker imports); continue with: fedsim run --resume {path}",
                    path,
                ) from None
        else:
            others = local + others
        for point in others:  # Ray runs one simulation at a time per process
            finished(point, _run_point(str(path / point["dir"])))
    failed = [p["id"] for p in index["points"] if p["status"] == FAILED]
    if failed:
        raise SweepError(
            f"{len(failed)} sweep points failed ({', '.join(failed)}); see their events.jsonl, "
            f"fix the cause and continue with: fedsim run --resume {path}",
            path,
        )


def _run_point(run_dir: str) -> str | None:
    """Run (or resume) one point's run directory; the error as text, or None."""
    from fedsim import engine
    from fedsim.scenario import load

    try:
        scenario = load(Path(run_dir) / "scenario.yaml")
        engine.run(scenario, Path(run_dir), show_progress=False)
    except Exception as err:  # one failing point must not stop the others
        return f"{type(err).__name__}: {err}"
    return None


def _scenario(path: Path, point: dict[str, Any]) -> Scenario:
    from fedsim.scenario import load

    return load(path / point["dir"] / "scenario.yaml")


def _workers(path: Path, points: list[dict[str, Any]]) -> int:
    return max((_scenario(path, p).resources.workers for p in points), default=1)


def _read_index(path: Path) -> dict[str, Any]:
    index: dict[str, Any] = json.loads((path / INDEX).read_text())
    return index


def _write_index(path: Path, index: dict[str, Any]) -> None:
    tmp = path / (INDEX + ".tmp")
    tmp.write_text(json.dumps(index, indent=2, default=str))
    os.replace(tmp, path / INDEX)
