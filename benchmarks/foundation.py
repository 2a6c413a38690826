"""Foundation figures: accuracy, wall time and peak memory of the shipped scenarios on Flower.

Runs each scenario with `fedsim run` (Flower's simulation engine) in a subprocess, samples the
resident memory of its whole process tree (driver, Ray daemons, actors), and prints one table.

    python benchmarks/foundation.py            # quickstart + fashion_mnist (several minutes)
    python benchmarks/foundation.py --quick    # quickstart only
"""

from __future__ import annotations

import argparse
import contextlib
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pandas as pd
import psutil

ROOT = Path(__file__).resolve().parents[1]
FEDSIM = str(Path(sys.executable).parent / "fedsim")


def tree_rss(root: psutil.Process) -> int:
    """Resident bytes of a process and all its descendants."""
    total = 0
    for proc in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):  # exited between listing and reading
            total += proc.memory_info().rss
    return total


def run(scenario: str, out: Path) -> dict[str, object]:
    started = time.perf_counter()
    proc = subprocess.Popen(
        [FEDSIM, "run", str(ROOT / scenario), "--out", str(out), "--no-progress"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    peak, done = 0, threading.Event()

    def sample() -> None:
        nonlocal peak
        parent = psutil.Process(proc.pid)
        while not done.is_set():
            peak = max(peak, tree_rss(parent))
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    output, _ = proc.communicate()
    done.set()
    sampler.join()
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{scenario} failed:\n{output}")
    metrics = pd.read_csv(out / "metrics.csv")
    central = metrics[(metrics.scope == "server") & (metrics.metric == "accuracy")]
    rounds = metrics[(metrics.scope == "server") & (metrics.metric == "round_time_s")]
    return {
        "scenario": scenario,
        "final accuracy": round(float(central.value.iloc[-1]), 4),
        "best accuracy": round(float(central.value.max()), 4),
        "wall s": round(wall, 1),
        "rounds s": round(float(rounds.value.sum()), 1),
        "start-up s": round(wall - float(rounds.value.sum()), 1),
        "peak memory GB": round(peak / 1e9, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="quickstart only")
    args = parser.parse_args()
    scenarios = ["scenarios/quickstart.yaml"]
    if not args.quick:
        scenarios.append("scenarios/fashion_mnist.yaml")
    with tempfile.TemporaryDirectory() as tmp:
        rows = [run(s, Path(tmp) / Path(s).stem) for s in scenarios]
    print(pd.DataFrame(rows).to_string(index=False))


if __name__ == "__main__":
    main()
