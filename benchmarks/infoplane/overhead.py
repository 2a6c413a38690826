"""What the information-plane analysis costs on the quickstart, measured every 10 rounds.

    python benchmarks/infoplane/overhead.py            # 20 rounds, 3 repeats (~2 min on 2 cores)
    python benchmarks/infoplane/overhead.py --smoke    # seconds: 2 rounds, one repeat

scenarios/quickstart.yaml (digits, 10 label-skewed clients, an MLP, 20 rounds) is
run in this process without and with ``analysis: [{name: information_plane, every: 10}]``
(adaptive bins, exact federated edges, central estimate on the test set), alternately. The
analysis's own cost is its two exchanges' time (``infoplane_*_time_s``) plus the extra central
evaluation time; it is reported against the mean round time of the runs without it. The ratio
of whole round times is printed too, but on a shared machine it carries more noise than the
analysis costs.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from command import ROOT, checkout_fedsim

OUT = ROOT / "benchmarks" / "out"
SCENARIO = ROOT / "scenarios" / "quickstart.yaml"
ANALYSIS = "analysis=[{name: information_plane, every: 10}]"


def server(run_dir: Path) -> pd.DataFrame:
    m = pd.read_csv(run_dir / "metrics.csv")
    return m[m.scope == "server"].pivot_table(index="round", columns="metric", values="value")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="seconds: 2 rounds, one repeat")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", type=Path, help="output folder (default: OUT/infoplane_overhead)")
    args = parser.parse_args()
    out = args.out or (OUT / "smoke" if args.smoke else OUT) / "infoplane_overhead"
    sets = ["rounds=2"] if args.smoke else []
    repeats = 1 if args.smoke else args.repeat
    fedsim = checkout_fedsim()
    plain, analysed = [], []
    for i in range(repeats):
        for with_analysis, runs in ((False, plain), (True, analysed)):
            run_dir = out / f"{'with' if with_analysis else 'without'}_{i}"
            shutil.rmtree(run_dir, ignore_errors=True)
            fedsim.run(SCENARIO, [*sets, *([ANALYSIS] if with_analysis else [])], run_dir)
            runs.append(server(run_dir))
    base = pd.concat(plain)
    withs = pd.concat(analysed)
    round_s = base["round_time_s"].mean()
    exchange_s = withs.filter(regex=r"^infoplane_.*_time_s$").sum(axis=1).sum() / len(withs)
    central_s = max(withs["eval_time_s"].mean() - base["eval_time_s"].mean(), 0.0)
    added = exchange_s + central_s
    ratio = withs["round_time_s"].mean() / round_s
    text = (
        f"quickstart, {len(base) // repeats} rounds × {repeats} repeats; "
        "analysis every 10 rounds:\n"
        f"mean round without the analysis: {round_s * 1e3:.1f} ms\n"
        f"analysis exchanges, per round on average: {exchange_s * 1e3:.2f} ms\n"
        f"extra central evaluation, per round on average: {central_s * 1e3:.2f} ms\n"
        f"analysis cost: {added / round_s:.1%} of a round "
        f"(whole rounds with/without: {ratio:.3f})"
    )
    out.mkdir(parents=True, exist_ok=True)
    (out / "overhead.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
