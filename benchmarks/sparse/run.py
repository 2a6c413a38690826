"""Sparse training and compressed updates: final accuracy against bytes sent.

    nice python benchmarks/sparse/run.py              # 4 densities x 3 top-k ratios, 40 rounds
    nice python benchmarks/sparse/run.py --rounds 10  # a quicker look
    python benchmarks/sparse/run.py --smoke           # seconds: digits, 2 rounds, 2 x 2 runs

LeNet-300-100 on Fashion-MNIST, 50 clients, 10 a round (sparse.yaml). Runs the sweep, builds its
report (with accuracy against bytes) and writes sparse.md: per configuration the final test
accuracy, the bytes sent to clients and back over the whole run, the saving against dense
FedAvg, the bytes spent until the accuracy first reached --target, and the configuration that
sends least while losing at most one accuracy point.
Output: benchmarks/out/sparse/ (runs, report/, sparse.md), or --out.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sweep_report import run_sweep_with_report  # benchmarks/ holds the shared helper

HERE = Path(__file__).resolve().parent
OUT = HERE.parent / "out" / "sparse"
TOLERANCE = 0.01  # one accuracy point
SMOKE = [
    "rounds=2",
    "data.name=digits",
    "clients={num: 10, per_round: 5}",
    "sweep={workload.sparsity: [null, {name: rigl, density: 0.2}], "
    "compression: [{name: none}, {name: topk, ratio: 0.1}]}",
]


def runs(sweep: Path, target: float) -> pd.DataFrame:
    """One row per run: density, ρ, final accuracy, total bytes each way and the bytes (both
    ways) spent until the test accuracy first reached ``target``."""
    rows = []
    for point in json.loads((sweep / "sweep.json").read_text())["points"]:
        metrics = pd.read_csv(sweep / point["dir"] / "metrics.csv")
        server = metrics[metrics.scope == "server"]

        def total(name: str, rows: pd.DataFrame = server) -> float:
            return float(rows[rows.metric == name].value.sum())

        accuracy = server[server.metric == "accuracy"].sort_values("round")
        per_round = server[server.metric.isin(["bytes_down", "bytes_up"])]
        spent = per_round.groupby("round").value.sum().sort_index().cumsum()
        reached = accuracy[accuracy.value >= target]["round"]
        sparsity = point["values"]["workload.sparsity"]
        compression = point["values"]["compression"]
        rows.append(
            {
                "density": sparsity["density"] if sparsity else 1.0,
                "rho": compression.get("ratio", 1.0),
                "accuracy": float(accuracy.value.iloc[-1]),
                "down_MB": total("bytes_down") / 1e6,
                "up_MB": total("bytes_up") / 1e6,
                "to_target_MB": spent[reached.iloc[0]] / 1e6 if len(reached) else float("nan"),
            }
        )
    table = pd.DataFrame(rows)
    table["total_MB"] = table.down_MB + table.up_MB
    return table.sort_values(["density", "rho"], ascending=False, ignore_index=True)


def report(table: pd.DataFrame, target: float) -> str:
    base = table[(table.density == 1.0) & (table.rho == 1.0)].iloc[0]
    lines = [
        f"| density | top-k ρ | final accuracy | down (MB) | up (MB) | total (MB) | saved "
        f"| MB to {100 * target:.0f}% |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in table.itertuples():
        saved = base.total_MB / row.total_MB
        to_target = "never" if math.isnan(row.to_target_MB) else f"{row.to_target_MB:.1f}"
        lines.append(
            f"| {row.density:g} | {row.rho:g} | {100 * row.accuracy:.2f} | {row.down_MB:.1f} "
            f"| {row.up_MB:.1f} | {row.total_MB:.1f} | {saved:.1f}× | {to_target} |"
        )
    within = table[table.accuracy >= base.accuracy - TOLERANCE]
    best = within.loc[within.total_MB.idxmin()]
    best_up = within.loc[within.up_MB.idxmin()]
    lines += [
        "",
        f"Dense FedAvg: {100 * base.accuracy:.2f}% with {base.total_MB:.1f} MB sent.",
        f"Within one point of it ({100 * (base.accuracy - TOLERANCE):.2f}% or more), the least "
        f"traffic is density {best.density:g}, ρ {best.rho:g}: {100 * best.accuracy:.2f}% with "
        f"{best.total_MB:.1f} MB, {base.total_MB / best.total_MB:.1f}× less "
        f"({100 * (1 - best.total_MB / base.total_MB):.0f}% saved).",
        f"Uploads alone: density {best_up.density:g}, ρ {best_up.rho:g} sends "
        f"{best_up.up_MB:.1f} MB instead of {base.up_MB:.1f} MB "
        f"({base.up_MB / best_up.up_MB:.1f}× less).",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, help="override the suite's rounds")
    parser.add_argument("--target", type=float, default=0.8, help="accuracy for 'MB to target'")
    parser.add_argument(
        "--tables-only", action="store_true", help="rebuild sparse.md from the runs in OUT"
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="seconds: digits, 10 clients, 2 rounds, dense and RigL 0.2 x no and top-k 0.1",
    )
    parser.add_argument("--out", type=Path, help=f"output folder (default: {OUT})")
    args = parser.parse_args()
    out = args.out or (OUT.parent / "smoke" / OUT.name if args.smoke else OUT)
    timing = ""
    if not args.tables_only:
        sets = (SMOKE if args.smoke else []) + ([f"rounds={args.rounds}"] if args.rounds else [])
        jobs = 1 if args.smoke else None  # four tiny points: a process each would cost more
        seconds = run_sweep_with_report(HERE / "sparse.yaml", out, sets, jobs)
        timing = f"\n\nSweep wall time: {seconds:.0f} s.\n"
    text = report(runs(out, args.target), args.target) + timing
    (out / "sparse.md").write_text(text)
    print(f"{text}\nreport: {out / 'report' / 'report.html'}")


if __name__ == "__main__":
    main()
