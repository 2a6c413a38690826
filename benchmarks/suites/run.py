"""Run a benchmark suite (a sweep scenario) and build its report.

    python benchmarks/suites/run.py quickstart_aggregators          # the full suite
    python benchmarks/suites/run.py quickstart_aggregators --quick  # 5 rounds, for `make bench`
    python benchmarks/suites/run.py --smoke      # seconds: every suite, 2 rounds, its first run

Results go to benchmarks/out/<suite>/ (runs) and benchmarks/out/<suite>/report/ (the report),
or to --out/<suite>/.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sweep_report import run_sweep_with_report  # benchmarks/ holds the shared helper

HERE = Path(__file__).resolve().parent
OUT = HERE.parent / "out"


def first_point(suite: Path) -> str:
    """An override that shrinks the suite's sweep to its first point."""
    grid = yaml.safe_load(suite.read_text())["sweep"]
    first = {key: values[:1] for key, values in grid.items()}
    flow = yaml.safe_dump(first, default_flow_style=True, sort_keys=False, width=1_000)
    return f"sweep={flow.strip()}"


def main() -> None:
    suites = sorted(p.stem for p in HERE.glob("*.yaml"))
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("suite", nargs="?", choices=suites, help="required unless --smoke")
    parser.add_argument("--quick", action="store_true", help="5 rounds per run")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="seconds: 2 rounds, the first point of the sweep only; every suite unless one "
        "is given (into benchmarks/out/smoke/ unless --out)",
    )
    parser.add_argument("--out", type=Path, help=f"output folder (default: {OUT})")
    args = parser.parse_args()
    if args.suite is None and not args.smoke:
        parser.error("give the suite to run")
    for suite in [args.suite] if args.suite else suites:
        out = (args.out or (OUT / "smoke" if args.smoke else OUT)) / suite
        scenario = HERE / f"{suite}.yaml"
        sets = ["rounds=5"] if args.quick else []
        sets = ["rounds=2", first_point(scenario)] if args.smoke else sets
        started = time.perf_counter()
        ran = run_sweep_with_report(scenario, out, sets)
        built = time.perf_counter() - started - ran
        print(
            f"{suite}: sweep {ran:.1f} s, report {built:.1f} s → {out / 'report' / 'report.html'}"
        )


if __name__ == "__main__":
    main()
