"""Federation size against memory: 1,000 and 10,000 clients (100 per round) on the local engine.

Memory should not grow with the number of clients beyond their data indices: a client that is
not sampled costs nothing but its index array (and a Context once it has been addressed).

    python benchmarks/scale.py                  # 1,000 and 10,000 clients, 5 rounds
    python benchmarks/scale.py --clients 100 1000 10000 --rounds 10
    python benchmarks/scale.py --smoke          # seconds: 100 clients (10 a round), 2 rounds
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import pandas as pd
from command import FEDSIM, ROOT  # benchmarks/ is on sys.path when this script runs
from measure import measure

# 100,000 synthetic samples (32 features, 10 classes), split evenly; an MLP; no client evaluation
# (it would address every client each round).
SAMPLES, PER_ROUND = 100_000, 100
SMOKE_SAMPLES, SMOKE_PER_ROUND, SMOKE_CLIENTS = 2_000, 10, 100
OVERRIDES = ["eval.clients=0", "engine=local"]


def run(clients: int, rounds: int, out: Path, samples: int, per_round: int) -> dict[str, object]:
    sets = [
        f"data={{name: synthetic, num_samples: {samples}, partition: {{name: iid}}}}",
        f"clients.per_round={per_round}",
        *OVERRIDES,
        f"clients.num={clients}",
        f"rounds={rounds}",
    ]
    command = [*FEDSIM, "run", str(ROOT / "scenarios/quickstart.yaml"), "--out", str(out)]
    command += ["--no-progress", *[arg for s in sets for arg in ("--set", s)]]
    measured = measure(command).check(f"{clients} clients")
    metrics = pd.read_csv(out / "metrics.csv")
    round_s = metrics[(metrics.scope == "server") & (metrics.metric == "round_time_s")].value
    return {
        "clients": clients,
        "per round": per_round,
        "rounds": rounds,
        "wall s": round(measured.wall_s, 1),
        "median round s": round(float(round_s.median()), 3),
        "peak memory GB": round(measured.peak_gb, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--smoke",
        action="store_true",
        help=f"seconds: {SMOKE_CLIENTS} clients, {SMOKE_PER_ROUND} a round, "
        f"{SMOKE_SAMPLES} samples, 2 rounds",
    )
    args = parser.parse_args()
    samples, per_round = SAMPLES, PER_ROUND
    if args.smoke:
        args.clients, args.rounds = [SMOKE_CLIENTS], 2
        samples, per_round = SMOKE_SAMPLES, SMOKE_PER_ROUND
    with tempfile.TemporaryDirectory() as tmp:
        rows = [run(n, args.rounds, Path(tmp) / str(n), samples, per_round) for n in args.clients]
    print(pd.DataFrame(rows).to_string(index=False))


if __name__ == "__main__":
    main()
