"""Vectorised cohorts: a round's clients trained one by one, or as one batched model, side by side.

``resources.vectorize: true`` trains the clients of a round as one model whose weights are
stacked (``torch.func``: ``vmap`` of ``grad`` of ``functional_call``), each client with its own
minibatches and momentum, so that the results equal the loop's to float rounding. Each case runs
twice on the local engine (1 worker, the same seed): the loop, then vectorised. Times are
fedsim's ``round_time_s`` rows (the rounds only, as benchmarks/overhead.py counts them):

  rounds s      all rounds; steady: from round 2 on (round 1 also builds the client runtime,
                and the loop's first torch.optim step imports much of torch);
  train s       the rounds' train phases only (``train_time_s``: Messages out, clients'
                training, replies in), from round 2 on: what vectorising changes;
  speed-up      loop / vectorised, of rounds s, steady rounds s and train s;
  Δ accuracy    final central accuracy, vectorised − loop (float rounding only: ~0);
  peak memory   of the whole process (benchmarks/measure.py);
  GPU           on a GPU, its mean utilisation over the run and its peak memory (nvidia-smi).

Cases (the first two are the shipped scenarios, central evaluation only):
  quickstart      digits, MLP, 10 clients, all 10 a round, 20 rounds
  fashion_mnist   Fashion-MNIST, small CNN, 100 clients, 10 a round, 5 rounds
  fmnist_100      Fashion-MNIST, small CNN, 1,000 clients, 100 a round, 3 rounds
  fmnist_100_mlp  the same federation with the MLP (hidden 128), 5 rounds

On a busy machine one run's times are noisy: ``--repeat K`` runs each pair K times, loop and
vectorised alternating, and keeps each one's fastest (by rounds s).

    python benchmarks/vectorise.py                          # every case (minutes)
    python benchmarks/vectorise.py --cases quickstart --rounds 5 --repeat 3
    python benchmarks/vectorise.py --smoke                  # seconds: quickstart, 2 rounds

Each run is a subprocess (``fedsim run``); with ``--smoke`` both run in this process.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from command import FEDSIM, ROOT, checkout_fedsim
from measure import GpuUse, measure

CENTRAL_ONLY = ["eval.clients=0"]
FMNIST_1000 = [
    "clients.num=1000",
    "clients.per_round=100",
    "data.partition={name: dirichlet, alpha: 0.3}",
]


@dataclass(frozen=True)
class Case:
    scenario: str  # under scenarios/
    rounds: int
    overrides: tuple[str, ...]
    what: str


CASES = {
    "quickstart": Case("quickstart.yaml", 20, (), "digits MLP, 10 clients a round"),
    "fashion_mnist": Case(
        "fashion_mnist.yaml", 5, ("eval.every=5",), "Fashion-MNIST CNN, 10 a round"
    ),
    "fmnist_100": Case(
        "fashion_mnist.yaml",
        3,
        ("eval.every=3", *FMNIST_1000),
        "Fashion-MNIST CNN, 100 a round",
    ),
    "fmnist_100_mlp": Case(
        "fashion_mnist.yaml",
        5,
        ("eval.every=5", "workload.model=mlp", *FMNIST_1000),
        "Fashion-MNIST MLP, 100 a round",
    ),
}


@dataclass(frozen=True)
class Timed:
    round_times: list[float]
    train_times: list[float]  # each round's train phase
    accuracy: float  # final central accuracy
    peak_gb: float | None  # None in this process (--smoke)
    gpu: GpuUse | None = None  # where nvidia-smi tells it (not in this process)

    @property
    def rounds_s(self) -> float:
        return sum(self.round_times)

    @property
    def steady_s(self) -> float:
        return sum(self.round_times[1:])

    @property
    def train_s(self) -> float:
        return sum(self.train_times[1:])


def read(run_dir: Path, peak_gb: float | None, gpu: GpuUse | None = None) -> Timed:
    metrics = pd.read_csv(run_dir / "metrics.csv")
    server = metrics[metrics.scope == "server"]
    rounds = server[server.metric == "round_time_s"].sort_values("round")
    train = server[server.metric == "train_time_s"].sort_values("round")
    accuracy = server[server.metric == "accuracy"].sort_values("round")
    final = float(accuracy.value.iloc[-1])
    return Timed(list(rounds.value), list(train.value), final, peak_gb, gpu)


def run(case: Case, overrides: list[str], out: Path, in_process: bool) -> Timed:
    scenario = ROOT / "scenarios" / case.scenario
    if in_process:
        checkout_fedsim().run(scenario, overrides, out)
        return read(out, None)
    command = [*FEDSIM, "run", str(scenario), "--out", str(out), "--no-progress"]
    command += [arg for o in overrides for arg in ("--set", o)]
    measured = measure(command, cwd=ROOT).check(f"fedsim run {case.scenario}")
    return read(out, measured.peak_gb, measured.gpu)


def row(name: str, case: Case, loop: Timed, vec: Timed) -> dict[str, str]:
    def gb(t: Timed) -> str:
        return "-" if t.peak_gb is None else f"{t.peak_gb:.2f}"

    def ratio(a: float, b: float) -> str:
        return f"{a / b:.2f}" if b else "-"

    shown = {
        "case": name,
        "what": case.what,
        "rounds": str(len(loop.round_times)),
        "rounds s loop / vec": f"{loop.rounds_s:.1f} / {vec.rounds_s:.1f}",
        "speed-up": ratio(loop.rounds_s, vec.rounds_s),
        "steady": ratio(loop.steady_s, vec.steady_s),
        "train s loop / vec": f"{loop.train_s:.1f} / {vec.train_s:.1f}",
        "speed-up (train)": ratio(loop.train_s, vec.train_s),
        "loop accuracy": f"{loop.accuracy:.4f}",
        "Δ accuracy": f"{vec.accuracy - loop.accuracy:+.4f}",
        "peak GB loop / vec": f"{gb(loop)} / {gb(vec)}",
    }
    if loop.gpu is not None and vec.gpu is not None:  # the mean over the run, start-up included
        util = f"{loop.gpu.mean_util_pct:.0f} / {vec.gpu.mean_util_pct:.0f}"
        shown["GPU util % loop / vec"] = util
        shown["peak GPU GB loop / vec"] = f"{loop.gpu.peak_gb:.2f} / {vec.gpu.peak_gb:.2f}"
    return shown


def markdown(rows: list[dict[str, str]]) -> str:
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    return "\n".join(lines + ["| " + " | ".join(r.values()) + " |" for r in rows])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--cases", default=",".join(CASES), help=f"comma-separated, from {', '.join(CASES)}"
    )
    parser.add_argument("--rounds", type=int, help="rounds of every case (default: its own)")
    parser.add_argument(
        "--device", choices=["auto", "cpu", "cuda"], help="override the scenarios' device (auto)"
    )
    parser.add_argument(
        "--repeat", type=int, default=1, metavar="K", help="K runs of each, the fastest kept"
    )
    parser.add_argument(
        "--smoke", action="store_true", help="seconds: the quickstart, 2 rounds, in this process"
    )
    args = parser.parse_args()
    names = ["quickstart"] if args.smoke else [c.strip() for c in args.cases.split(",")]
    unknown = [name for name in names if name not in CASES]
    if unknown or not names:
        parser.error(f"--cases: unknown {unknown}; choose from {', '.join(CASES)}")
    rounds = 2 if args.smoke else args.rounds
    device = args.device or ("cpu" if args.smoke else None)
    if device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA GPU is visible here (the CUDA figures stay pending)")

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            case = CASES[name]
            overrides = [*CENTRAL_ONLY, *case.overrides, "engine=local", "resources.workers=1"]
            overrides.append(f"rounds={rounds or case.rounds}")
            if device is not None:
                overrides.append(f"device={device}")
            timed: dict[bool, list[Timed]] = {False: [], True: []}
            for i in range(args.repeat):
                for vectorize in (False, True):
                    label = "vectorised" if vectorize else "loop"
                    print(f"{name}: {label} {i + 1}/{args.repeat} …", flush=True)
                    out = Path(tmp) / f"{name}-{label}-{i}"
                    sets = [*overrides, f"resources.vectorize={str(vectorize).lower()}"]
                    timed[vectorize].append(run(case, sets, out, in_process=args.smoke))
            loop, vec = (min(timed[v], key=lambda t: t.rounds_s) for v in (False, True))
            rows.append(row(name, case, loop, vec))
    print()
    print(markdown(rows))
    cuda = torch.cuda.is_available() and device != "cpu"
    print()
    print(f"device: {'cuda' if cuda else 'cpu'} (one thread per process); {sys.platform}")
    if not cuda and not torch.cuda.is_available():
        print("CUDA figures: pending (no GPU on this machine; --device cuda on one)")


if __name__ == "__main__":
    main()
