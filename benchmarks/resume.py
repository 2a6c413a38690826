"""A run killed with ``kill -9`` half-way and resumed, against the same run uninterrupted.

Both run the Fashion-MNIST scenario on the local engine (client evaluation off, central every 10
rounds). The killed run is stopped once half of its rounds are in metrics.csv, then continued with
``fedsim run --resume``. Prints the wall time of each, the time the kill cost (start-up paid
twice, the unfinished round done again), and whether both ended with the same metrics.

    python benchmarks/resume.py              # 50 rounds
    python benchmarks/resume.py --rounds 10
    python benchmarks/resume.py --smoke      # seconds: the quickstart (digits), 20 short rounds
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pandas as pd
from command import FEDSIM, ROOT
from measure import measure

SETS = ["engine=local", "eval.clients=0", "eval.every=10"]
# Rounds of a few hundredths of a second: enough of them that the run is still going when the
# kill comes, half-way.
SMOKE_SCENARIO, SMOKE_ROUNDS = "scenarios/quickstart.yaml", 20


def learned(run_dir: Path) -> pd.DataFrame:
    metrics = pd.read_csv(run_dir / "metrics.csv")
    return metrics[~metrics.metric.str.endswith("_time_s")].reset_index(drop=True)


def rounds_done(run_dir: Path) -> int:
    try:
        return (run_dir / "metrics.csv").read_text().count(",server,,round_time_s,")
    except FileNotFoundError:
        return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument(
        "--smoke",
        action="store_true",
        help=f"seconds: {SMOKE_SCENARIO}, {SMOKE_ROUNDS} rounds (--rounds ignored)",
    )
    args = parser.parse_args()
    scenario = str(ROOT / "scenarios/fashion_mnist.yaml")
    if args.smoke:
        scenario, args.rounds = str(ROOT / SMOKE_SCENARIO), SMOKE_ROUNDS
    sets = [*SETS, f"rounds={args.rounds}"]

    def command(out: Path) -> list[str]:
        return [*FEDSIM, "run", scenario, "--out", str(out), "--no-progress"] + [
            arg for s in sets for arg in ("--set", s)
        ]

    with tempfile.TemporaryDirectory() as tmp:
        whole, killed = Path(tmp) / "whole", Path(tmp) / "killed"
        uninterrupted = measure(command(whole)).check("uninterrupted run")

        started = time.perf_counter()
        proc = subprocess.Popen(command(killed), stdout=subprocess.DEVNULL)
        while rounds_done(killed) < args.rounds // 2 and proc.poll() is None:
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        if proc.wait() != -signal.SIGKILL:
            raise SystemExit(
                f"the run to kill ended by itself (exit code {proc.returncode}) after "
                f"{rounds_done(killed)} of {args.rounds} rounds; give it more --rounds"
            )
        first_part = time.perf_counter() - started
        at_kill = rounds_done(killed)
        resumed = measure([*FEDSIM, "run", "--resume", str(killed), "--no-progress"])
        resumed.check("resumed run")

        same = learned(whole).equals(learned(killed))
        rows = [
            {"run": "uninterrupted", "wall s": round(uninterrupted.wall_s, 1)},
            {
                "run": f"killed after {at_kill} rounds + resumed",
                "wall s": round(first_part + resumed.wall_s, 1),
            },
        ]
    print(pd.DataFrame(rows).to_string(index=False))
    extra = rows[1]["wall s"] - rows[0]["wall s"]  # type: ignore[operator]
    print(f"the kill cost {extra:.1f} s; same final metrics as uninterrupted: {same}")


if __name__ == "__main__":
    main()
