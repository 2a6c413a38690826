"""Run a benchmark suite (a sweep scenario) and build its report.

    python benchmarks/suites/run.py quickstart_aggregators          # the full suite
    python benchmarks/suites/run.py quickstart_aggregators --quick  # 5 rounds, for `make bench`

Results go to benchmarks/out/<suite>/ (runs) and benchmarks/out/<suite>/report/ (the report).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sweep_report import run_sweep_with_report  # benchmarks/ holds the shared helper

HERE = Path(__file__).resolve().parent
OUT = HERE.parent / "out"


def main() -> None:
    suites = sorted(p.stem for p in HERE.glob("*.yaml"))
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("suite", choices=suites)
    parser.add_argument("--quick", action="store_true", help="5 rounds per run")
    args = parser.parse_args()
    out = OUT / args.suite
    started = time.perf_counter()
    ran = run_sweep_with_report(
        HERE / f"{args.suite}.yaml", out, ["rounds=5"] if args.quick else []
    )
    built = time.perf_counter() - started - ran
    print(
        f"{args.suite}: sweep {ran:.1f} s, report {built:.1f} s → {out / 'report' / 'report.html'}"
    )


if __name__ == "__main__":
    main()
