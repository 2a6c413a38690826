"""FedLaAvg's memory at scale: N = 1000 clients of a 1M-parameter model, beside FedAvg.

    python benchmarks/fedlaavg/memory.py            # 1000 clients, 12 rounds, K = 100
    python benchmarks/fedlaavg/memory.py --rounds 3 --clients 200   # a quick look
    python benchmarks/fedlaavg/memory.py --smoke    # seconds: FedLaAvg only, 20 clients, 2 rounds

Every client's latest update held in memory would take N·d·4 bytes (4 GB here). FedLaAvg keeps
the server at O(d) and the clients' updates in a memory-mapped file, so the peak resident memory
of the run should stay near FedAvg's. Prints peak memory of the process tree, wall time, and the
disk the client memory takes (sparse: only slots that were written). 12 rounds of K = 100
oldest-first picks reach every client once and 200 of them twice.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: the shared helpers
from command import FEDSIM, ROOT
from measure import measure

FEATURES, CLASSES = 32, 10
HIDDEN = 23_256  # an MLP 32 -> 23,256 -> 10: 1,000,018 parameters
SMOKE_HIDDEN, SMOKE_CLIENTS, SMOKE_ROUNDS = 200, 20, 2  # 8,610 parameters


def parameters(hidden: int) -> int:
    return FEATURES * hidden + hidden + hidden * CLASSES + CLASSES


def run(strategy: str, clients: int, rounds: int, out: Path, hidden: int) -> dict[str, object]:
    sets = [
        f"data={{name: synthetic, num_samples: {100 * clients}, partition: {{name: iid}}}}",
        f"clients={{num: {clients}, per_round: {clients // 10}}}",
        f"workload={{name: classification, model: mlp, hidden: {hidden}, batch_size: 32}}",
        f"strategy={{name: {strategy}}}",
        f"rounds={rounds}",
        f"eval={{every: {rounds}, clients: 0}}",
        "checkpoint_every=0",
        "engine=local",
    ]
    command = [*FEDSIM, "run", str(ROOT / "scenarios/quickstart.yaml"), "--out", str(out)]
    command += ["--no-progress", *[arg for s in sets for arg in ("--set", s)]]
    measured = measure(command).check(strategy)
    memory = out / "client_memory"
    disk = sum(p.stat().st_blocks * 512 for p in memory.iterdir()) if memory.exists() else 0
    return {
        "strategy": strategy,
        "clients": clients,
        "parameters": parameters(hidden),
        "rounds": rounds,
        "wall s": round(measured.wall_s, 1),
        "peak memory GB": round(measured.peak_gb, 2),
        "client memory on disk GB": round(disk / 1e9, 2),
        "N·d·4 GB (all in RAM)": round(clients * parameters(hidden) * 4 / 1e9, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument(
        "--smoke",
        action="store_true",
        help=f"seconds: FedLaAvg only, {SMOKE_CLIENTS} clients, {parameters(SMOKE_HIDDEN):,} "
        f"parameters, {SMOKE_ROUNDS} rounds (--clients and --rounds ignored)",
    )
    args = parser.parse_args()
    hidden = HIDDEN
    if args.smoke:
        args.clients, args.rounds, hidden = SMOKE_CLIENTS, SMOKE_ROUNDS, SMOKE_HIDDEN
    (ROOT / "benchmarks" / "out").mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(dir=ROOT / "benchmarks" / "out") as tmp:
        rows = [
            run(strategy, args.clients, args.rounds, Path(tmp) / strategy, hidden)
            for strategy in (["fedlaavg"] if args.smoke else ["fedavg", "fedlaavg"])
        ]
    print(pd.DataFrame(rows).to_string(index=False))


if __name__ == "__main__":
    main()
