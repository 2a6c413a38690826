"""Offline MBO: single proxy, mean, min, MGDA and CAGrad ensembles on both tasks, 3 seeds.

    python benchmarks/mbo/run.py                 # both tasks (~15 min on 2 cores)
    python benchmarks/mbo/run.py tfbind8         # one task
    python benchmarks/mbo/run.py --rounds 10     # a quick look
    python benchmarks/mbo/run.py --smoke         # seconds: continuous, 2 steps, 1 run each

For each task: the sweep in <task>.yaml (IID and score-band splits x 4 combiners x 3 seeds),
then the single-proxy baseline (one client holding all the offline data, so one proxy trained on
everything, as design-baselines' single model), one report over all of them, and a table of the
final designs' normalised oracle scores: p100 (best design) and p50 (median design), mean ± std
over seeds, against the best design of the offline data. p100 measures optimality, p50 how
conservative the ascent stayed (Kolli et al. report both).
Output: benchmarks/out/mbo_<task>/ (ensembles/, single/, report/, scores.md), or --out/<task>.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sweep_report import (  # benchmarks/ holds the shared helper
    final_server_metrics,
    report,
    run_sweep,
)

HERE = Path(__file__).resolve().parent
OUT = HERE.parent / "out"
TASKS = ("tfbind8", "continuous")
SINGLE = ["clients={num: 1, per_round: 1}", "strategy.aggregator={name: mean}"]
SEEDS = [0, 1, 2]
# --smoke: one run of each sweep, 2 ascent steps, proxies of 2 epochs on a pool of 2,000.
SMOKE_TASK = "continuous"
SMOKE = [
    "rounds=2",
    "workload.epochs=2",
    "data.pool=2000",
    "sweep={data.partition.name: [iid], strategy.aggregator: [{name: mean}], seed: [0]}",
]


def final_scores(sweep: Path, method: str | None = None) -> pd.DataFrame:
    """One row per run: split, method, seed and its last p100 / p50 and the offline best."""
    rows = []
    for values, _, last in final_server_metrics(sweep):
        rows.append(
            {
                "split": values.get("data.partition.name", "all data"),
                "method": method or values["strategy.aggregator"]["name"],
                "seed": values["seed"],
                "p100": last["p100"],
                "p50": last["p50"],
                "best offline": last["best_offline"],
            }
        )
    return pd.DataFrame(rows)


def table(runs: pd.DataFrame) -> str:
    best = runs["best offline"].iloc[0]
    lines = [
        f"best design of the offline data: {best:.3f} (normalised)",
        "",
        "| split | method | p100 (best design) | p50 (median design) |",
        "|---|---|---|---|",
    ]
    for (split, method), group in runs.groupby(["split", "method"], sort=False):
        cells = [f"{group[c].mean():.3f} ± {group[c].std():.3f}" for c in ("p100", "p50")]
        lines.append(f"| {split} | {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("tasks", nargs="*", metavar="TASK", help=f"any of {', '.join(TASKS)}")
    parser.add_argument("--rounds", type=int, help="override the tasks' ascent steps")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help=f"seconds: {SMOKE_TASK} only (unless TASKs are given), 2 ascent steps, "
        "one IID mean-ensemble run and one single-proxy run",
    )
    parser.add_argument("--out", type=Path, help="output folder (default: OUT/mbo_<task>)")
    args = parser.parse_args()
    sets = (SMOKE if args.smoke else []) + ([f"rounds={args.rounds}"] if args.rounds else [])
    seeds = [0] if args.smoke else SEEDS
    unknown = set(args.tasks) - set(TASKS)
    if unknown:
        parser.error(
            f"unknown task(s) {', '.join(sorted(unknown))}; choose from {', '.join(TASKS)}"
        )
    for task in args.tasks or ([SMOKE_TASK] if args.smoke else TASKS):
        if args.out is not None:
            out = args.out / task
        else:
            out = (OUT / "smoke" if args.smoke else OUT) / f"mbo_{task}"
        scenario = HERE / f"{task}.yaml"
        run_sweep(scenario, out / "ensembles", sets)
        run_sweep(scenario, out / "single", [*sets, *SINGLE, f"sweep={{seed: {seeds}}}"])
        report([out / "single", out / "ensembles"], out / "report")
        runs = pd.concat(
            [final_scores(out / "single", "single proxy"), final_scores(out / "ensembles")]
        )
        text = table(runs)
        (out / "scores.md").write_text(text + "\n")
        print(f"\n## {task}\n{text}\nreport: {out / 'report' / 'report.html'}")


if __name__ == "__main__":
    main()
