"""What the information-plane analysis costs on the quickstart, measured every 10 rounds.

    python benchmarks/infoplane/overhead.py            # 20 rounds, 10 runs (~20 s on 2 cores)
    python benchmarks/infoplane/overhead.py --smoke    # seconds: 2 rounds, one repeat

scenarios/quickstart.yaml (digits, 10 label-skewed clients, an MLP, 20 rounds) is run in this
process with ``analysis: [{name: information_plane, every: 10}]`` (adaptive bins, exact federated
edges, central estimate on the test set), ``--repeat`` times. The analysis's cost is its two
exchanges' time (``infoplane_*_time_s``) plus its extra central evaluation time (on the rounds
it measures, over the run's other rounds), per round on average, against the same run's plain
rounds (those it does not measure, round 1 out): both under the same load. The rounds are timed
in CPU time by default (the local engine runs every client in this process, on one thread), which
other work on a shared machine disturbs far less than wall time (``--clock wall``).
"""

from __future__ import annotations

import argparse
import importlib
import shutil
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from command import ROOT, checkout_fedsim

OUT = ROOT / "benchmarks" / "out"
SCENARIO = ROOT / "scenarios" / "quickstart.yaml"
ANALYSIS = "analysis=[{name: information_plane, every: 10}]"


def server(run_dir: Path) -> pd.DataFrame:
    m = pd.read_csv(run_dir / "metrics.csv")
    return m[m.scope == "server"].pivot_table(index="round", columns="metric", values="value")


@dataclass(frozen=True)
class Cost:
    round_s: float  # mean plain round of the run: the rounds it did not analyse, round 1 out
    exchange_s: float  # the analysis's exchanges, per round on average
    central_s: float  # its extra central evaluation, per round on average

    @property
    def share(self) -> float:
        return (self.exchange_s + self.central_s) / self.round_s


def cost(run: pd.DataFrame) -> Cost:
    """The analysis's cost measured within one run, against the same run's other rounds: both
    under the same load, which separate runs on a shared machine are not."""
    exchange = run.filter(regex=r"^infoplane_.*_time_s$").sum(axis=1)
    analysed = run.filter(regex=r"^infoplane_.*_time_s$").notna().any(axis=1)
    plain = run[~analysed & (run.index > 1)]
    if plain.empty:  # the smoke size analyses every round it runs: nothing to compare with
        plain = run
    extra_eval = (run.loc[analysed, "eval_time_s"] - plain["eval_time_s"].mean()).clip(lower=0)
    rounds = len(run)
    return Cost(plain["round_time_s"].mean(), exchange.sum() / rounds, extra_eval.sum() / rounds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="seconds: 2 rounds, one repeat")
    parser.add_argument("--repeat", type=int, default=10)  # the runs vary by a third
    parser.add_argument(
        "--clock",
        choices=("cpu", "wall"),
        default="cpu",
        help="time the rounds in CPU time (default: robust on a shared machine) or wall time",
    )
    parser.add_argument("--out", type=Path, help="output folder (default: OUT/infoplane_overhead)")
    args = parser.parse_args()
    out = args.out or (OUT / "smoke" if args.smoke else OUT) / "infoplane_overhead"
    sets = ["rounds=2"] if args.smoke else []
    repeats = 1 if args.smoke else args.repeat
    fedsim = checkout_fedsim()
    if args.clock == "cpu":  # the run's own timings read CPU time: other load hardly moves it
        cpu = SimpleNamespace(**{**vars(time), "perf_counter": time.process_time})
        for name in ("fedsim.app", "fedsim.exchanges"):
            importlib.import_module(name).time = cpu  # type: ignore[attr-defined]
    analysed = []
    for i in range(repeats):
        run_dir = out / f"run_{i}"
        shutil.rmtree(run_dir, ignore_errors=True)
        fedsim.run(SCENARIO, [*sets, ANALYSIS], run_dir)
        analysed.append(server(run_dir))
    costs = [cost(run) for run in analysed]
    share = statistics.median(c.share for c in costs)
    text = (
        f"quickstart, {len(analysed[0])} rounds × {repeats} runs, analysis every 10 rounds, "
        f"{args.clock} time:\n"
        + "".join(
            f"run {i + 1}: plain round {c.round_s * 1e3:.1f} ms; analysis per round on average: "
            f"exchanges {c.exchange_s * 1e3:.2f} ms, extra central evaluation "
            f"{c.central_s * 1e3:.2f} ms; {c.share:.1%}\n"
            for i, c in enumerate(costs)
        )
        + f"analysis cost: {share:.1%} of a round (median of the runs)"
    )
    out.mkdir(parents=True, exist_ok=True)
    (out / "overhead.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
