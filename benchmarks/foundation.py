"""Foundation figures: accuracy, wall time and peak memory of the shipped scenarios.

Runs each scenario with `fedsim run` in a subprocess, on each engine asked for, samples the
resident memory of its whole process tree (driver, workers, Ray daemons and actors), and prints
one table.

    python benchmarks/foundation.py                       # both scenarios, both engines
    python benchmarks/foundation.py --quick --engines local
    python benchmarks/foundation.py --smoke               # seconds: quickstart, 2 rounds, local
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from command import FEDSIM, ROOT
from measure import measure


def run(scenario: str, engine: str, out: Path, sets: Sequence[str] = ()) -> dict[str, object]:
    command = [*FEDSIM, "run", str(ROOT / scenario), "--out", str(out), "--no-progress"]
    command += [arg for s in [f"engine={engine}", *sets] for arg in ("--set", s)]
    measured = measure(command).check(scenario)
    wall = measured.wall_s
    peak = measured.peak_rss
    metrics = pd.read_csv(out / "metrics.csv")
    central = metrics[(metrics.scope == "server") & (metrics.metric == "accuracy")]
    rounds = metrics[(metrics.scope == "server") & (metrics.metric == "round_time_s")]
    return {
        "scenario": scenario,
        "engine": engine,
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
    parser.add_argument(
        "--smoke", action="store_true", help="seconds: quickstart only, 2 rounds, local engine"
    )
    parser.add_argument("--engines", default="local,flower", help="comma-separated engines")
    args = parser.parse_args()
    scenarios = ["scenarios/quickstart.yaml"]
    if not (args.quick or args.smoke):
        scenarios.append("scenarios/fashion_mnist.yaml")
    sets = ["rounds=2"] if args.smoke else []
    if args.smoke and args.engines == parser.get_default("engines"):
        args.engines = "local"
    with tempfile.TemporaryDirectory() as tmp:
        rows = [
            run(s, engine, Path(tmp) / f"{Path(s).stem}-{engine}", sets)
            for s in scenarios
            for engine in args.engines.split(",")
        ]
    print(pd.DataFrame(rows).to_string(index=False))


if __name__ == "__main__":
    main()
