"""Run a sweep scenario afresh and build its report: what every suite-style benchmark does first.

Both run in this process through fedsim's Python API: what is timed is the sweep, not the
start-up of a ``fedsim`` process.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from command import checkout_fedsim


def run_sweep(
    scenario: Path, out: Path, sets: Sequence[str] = (), jobs: int | None = None
) -> float:
    """Run ``scenario`` into ``out`` (replacing an earlier sweep there); the sweep's seconds.

    ``sets`` are ``key=value`` overrides, as ``fedsim run --set`` takes them; ``jobs`` is
    ``fedsim run --jobs`` (default: as many points at once as the cores allow).
    """
    fedsim = checkout_fedsim()
    if out.exists():
        if not (out / "sweep.json").exists() and any(out.iterdir()):
            raise SystemExit(f"{out} holds something other than a sweep; give a new folder")
        shutil.rmtree(out)  # regenerated output, never committed
    started = time.perf_counter()
    fedsim.run(scenario, list(sets), out, progress=True, echo=print, jobs=jobs)
    return time.perf_counter() - started


def report(runs: Sequence[Path], out: Path) -> None:
    """``fedsim report`` over ``runs`` (run or sweep directories) into ``out``."""
    result = checkout_fedsim().report(list(runs), out)
    print(f"fedsim: {len(result.runs)} run(s) → {result.html}")


def run_sweep_with_report(
    scenario: Path, out: Path, sets: Sequence[str] = (), jobs: int | None = None
) -> float:
    """Run ``scenario`` into ``out`` (replacing it), report in ``out/report``; the sweep's seconds.

    ``sets`` and ``jobs`` as for ``run_sweep``.
    """
    ran = run_sweep(scenario, out, sets, jobs)
    report([out], out / "report")
    return ran


def final_server_metrics(sweep: Path) -> Iterator[tuple[dict[str, Any], Path, pd.Series]]:
    """Each point of a finished sweep: its swept values, its run directory and the last value
    of every server metric (a Series by metric name)."""
    for point in json.loads((sweep / "sweep.json").read_text())["points"]:
        metrics = pd.read_csv(sweep / point["dir"] / "metrics.csv")
        server = metrics[metrics.scope == "server"]
        last = server.sort_values("round").groupby("metric").value.last()
        yield point["values"], sweep / point["dir"], last


def mean_std(values: pd.Series, digits: int = 3) -> str:
    """``mean ± std`` over seeds (sample std), or the mean alone for a single value."""
    if len(values) > 1:
        return f"{values.mean():.{digits}f} ± {values.std(ddof=1):.{digits}f}"
    return f"{values.mean():.{digits}f}"
