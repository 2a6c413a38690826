"""Run a sweep scenario afresh and build its report: what every suite-style benchmark does first."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from command import FEDSIM


def run_sweep(scenario: Path, out: Path, sets: Sequence[str] = ()) -> float:
    """Run ``scenario`` into ``out`` (replacing an earlier sweep there); the sweep's seconds.

    ``sets`` are ``key=value`` overrides, as ``fedsim run --set`` takes them.
    """
    if out.exists():
        if not (out / "sweep.json").exists() and any(out.iterdir()):
            raise SystemExit(f"{out} holds something other than a sweep; give a new folder")
        shutil.rmtree(out)  # regenerated output, never committed
    command = [*FEDSIM, "run", str(scenario), "--out", str(out)]
    command += [arg for s in sets for arg in ("--set", s)]
    started = time.perf_counter()
    subprocess.run(command, check=True)
    return time.perf_counter() - started


def report(runs: Sequence[Path], out: Path) -> None:
    """``fedsim report`` over ``runs`` (run or sweep directories) into ``out``."""
    subprocess.run([*FEDSIM, "report", *map(str, runs), "--out", str(out)], check=True)


def run_sweep_with_report(scenario: Path, out: Path, sets: Sequence[str] = ()) -> float:
    """Run ``scenario`` into ``out`` (replacing it), report in ``out/report``; the sweep's seconds.

    ``sets`` are ``key=value`` overrides, as ``fedsim run --set`` takes them.
    """
    ran = run_sweep(scenario, out, sets)
    report([out], out / "report")
    return ran
