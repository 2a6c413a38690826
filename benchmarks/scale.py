"""Federation size against memory: 1,000 and 10,000 clients (100 per round) on the local engine.

Memory should not grow with the number of clients beyond their data indices: a client that is
not sampled costs nothing but its index array (and a Context once it has been addressed).

    python benchmarks/scale.py                  # 1,000 and 10,000 clients, 5 rounds
    python benchmarks/scale.py --clients 100 1000 10000 --rounds 10
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import pandas as pd
from measure import measure  # benchmarks/ is on sys.path when this script runs

ROOT = Path(__file__).resolve().parents[1]
FEDSIM = str(Path(sys.executable).parent / "fedsim")
# 100,000 synthetic samples (32 features, 10 classes), split evenly; an MLP; no client evaluation
# (it would address every client each round).
OVERRIDES = [
    "data={name: synthetic, num_samples: 100000, partition: {name: iid}}",
    "clients.per_round=100",
    "eval.clients=0",
    "engine=local",
]


def run(clients: int, rounds: int, out: Path) -> dict[str, object]:
    sets = [*OVERRIDES, f"clients.num={clients}", f"rounds={rounds}"]
    command = [FEDSIM, "run", str(ROOT / "scenarios/quickstart.yaml"), "--out", str(out)]
    command += ["--no-progress", *[arg for s in sets for arg in ("--set", s)]]
    measured = measure(command).check(f"{clients} clients")
    metrics = pd.read_csv(out / "metrics.csv")
    round_s = metrics[(metrics.scope == "server") & (metrics.metric == "round_time_s")].value
    return {
        "clients": clients,
        "per round": 100,
        "rounds": rounds,
        "wall s": round(measured.wall_s, 1),
        "median round s": round(float(round_s.median()), 3),
        "peak memory GB": round(measured.peak_gb, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [run(n, args.rounds, Path(tmp) / str(n)) for n in args.clients]
    print(pd.DataFrame(rows).to_string(index=False))


if __name__ == "__main__":
    main()
