"""Run a benchmark suite (a sweep scenario) and build its report.

    python benchmarks/suites/run.py quickstart_aggregators          # the full suite
    python benchmarks/suites/run.py quickstart_aggregators --quick  # 5 rounds, for `make bench`

Results go to benchmarks/out/<suite>/ (runs) and benchmarks/out/<suite>/report/ (the report).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE.parent / "out"
BIN = Path(sys.executable).parent


def main() -> None:
    suites = sorted(p.stem for p in HERE.glob("*.yaml"))
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("suite", choices=suites)
    parser.add_argument("--quick", action="store_true", help="5 rounds per run")
    args = parser.parse_args()
    out = OUT / args.suite
    if out.exists():
        shutil.rmtree(out)  # regenerated output, never committed
    command = [str(BIN / "fedsim"), "run", str(HERE / f"{args.suite}.yaml"), "--out", str(out)]
    if args.quick:
        command += ["--set", "rounds=5"]
    started = time.perf_counter()
    subprocess.run(command, check=True)
    ran = time.perf_counter() - started
    subprocess.run(
        [str(BIN / "fedsim"), "report", str(out), "--out", str(out / "report")], check=True
    )
    built = time.perf_counter() - started - ran
    print(
        f"{args.suite}: sweep {ran:.1f} s, report {built:.1f} s → {out / 'report' / 'report.html'}"
    )


if __name__ == "__main__":
    main()
