"""Run a sweep scenario afresh and build its report: what every suite-style benchmark does first."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

BIN = Path(sys.executable).parent


def run_sweep_with_report(scenario: Path, out: Path, sets: Sequence[str] = ()) -> float:
    """Run ``scenario`` into ``out`` (replacing it), report in ``out/report``; the sweep's seconds.

    ``sets`` are ``key=value`` overrides, as ``fedsim run --set`` takes them.
    """
    if out.exists():
        shutil.rmtree(out)  # regenerated output, never committed
    command = [str(BIN / "fedsim"), "run", str(scenario), "--out", str(out)]
    command += [arg for s in sets for arg in ("--set", s)]
    started = time.perf_counter()
    subprocess.run(command, check=True)
    ran = time.perf_counter() - started
    subprocess.run(
        [str(BIN / "fedsim"), "report", str(out), "--out", str(out / "report")], check=True
    )
    return ran
