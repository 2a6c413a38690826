"""fedsim side by side with pfl-research, Flower's simulation and the plain loop, in one run.

The work is pfl-research's CIFAR-10 benchmark shape: 1,000 users × 50 CIFAR-shaped 32×32×3
images (seeded synthetic data with learnable structure, data.py; no CIFAR offline), 50 users a
round, 1 local epoch at batch 10, client lr 0.1, FedAvg with server lr 1, pfl's 1.6M-parameter
CNN (cnn.py), central evaluation on 5,000 test images every 10 rounds (pfl: CIFAR's 10,000;
halved here to leave the 2-core budget to training). Every implementation
starts from the same weights, trains the same users (each user's 50 rows, the same split) and
evaluates at the same rounds:

  plain loop      one plain PyTorch process (benchmarks/overhead.py's definition: the limit)
  fedsim          `fedsim run scenario.yaml`: the model from a plugin (components.py), the data
                  from the built-in `arrays` file dataset, partition `natural`; 1 and 2 workers
  pfl             pfl-research 0.6.0 in its own environment (created once, then reused), as its
                  benchmark script sets it up (pfl_train.py); 2 workers by torchrun
  Flower          Flower's quickstart-pytorch app on Flower's simulation engine (Ray, one actor
                  per core), the baseline most users would pick (flower_app.py)

Each runs as a process of its own, measured by benchmarks/measure.py: wall time, CPU time of the
process tree, peak resident memory of the tree. The fedsim, pfl and plain-loop runs use the same
users each round (fedsim's sampling; pfl replays the list); Flower samples its own (Python's
random, seeded). Dropout masks differ between implementations (fedsim seeds torch's generator
for each client and round; the others draw from each process's own), so final accuracies agree
within training noise, not bit for bit.

    python benchmarks/peers/run.py                       # everything, full size
    python benchmarks/peers/run.py --only plain,fedsim2,pfl2 --rounds 10
    python benchmarks/peers/run.py --with-vectorised     # + fedsim with resources.vectorize
    python benchmarks/peers/run.py --smoke               # seconds: tiny, plain loop + fedsim
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
import venv
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(p) for p in (HERE, HERE.parent) if str(p) not in sys.path]

import data  # noqa: E402  (this folder's, as run.py's neighbours)
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from cnn import simple_cnn  # noqa: E402
from command import FEDSIM, ROOT, checkout_fedsim  # noqa: E402
from measure import measure  # noqa: E402
from overhead import plain_loop, sampled_clients, seeded_generator  # noqa: E402

SCENARIO = HERE / "scenario.yaml"
OVERHEAD = HERE.parent / "overhead.py"
CACHE = Path(tempfile.gettempdir()) / "fedsim-peers"  # the data and pfl's environment, reused
PFL_REQUIREMENTS = [  # notes/environment.md: pfl's own pins would pull a CUDA torch
    ["torch==2.13.0"],
    ["--no-deps", "pfl==0.6.0", "dp-accounting==0.5.1"],
    [
        *("absl-py==1.4.0", "attrs", "dill", "multiprocess", "prv-accountant==0.2.0"),
        *("wheel<0.46", "scipy", "numpy", "packaging>=24,<26"),
    ],
]


@dataclass(frozen=True)
class Work:
    """The sizes of the comparison; the rest (model, learning rates, batch) is fixed."""

    users: int = 1000
    per_user: int = 50
    test: int = 5_000
    per_round: int = 50
    rounds: int = 10
    eval_every: int = 10
    seed: int = 0

    @property
    def overrides(self) -> list[str]:
        """scenario.yaml's keys that this size sets (data.path comes from ``Files``)."""
        return [
            f"clients.num={self.users}",
            f"clients.per_round={self.per_round}",
            f"rounds={self.rounds}",
            f"eval.every={self.eval_every}",
            f"seed={self.seed}",
        ]


SMOKE = Work(users=12, per_user=10, test=100, per_round=3, rounds=2, eval_every=1)


@dataclass(frozen=True)
class Files:
    """What every implementation reads, written once by the parent, and where runs write."""

    data: Path  # data.py's folder
    init: Path  # the initial weights (a state_dict)
    users: Path  # the users of round 1, 2, … in order, one flat array
    runs: Path  # a folder for each run's outputs
    pfl_python: Path | None  # pfl's environment's interpreter, when a pfl row runs

    def overrides(self, work: Work) -> list[str]:
        return [f"data.path={self.data}", *work.overrides]


@dataclass(frozen=True)
class Result:
    """What a run reports of itself: central accuracy by round, seconds spent in the rounds."""

    accuracy: dict[int, float]
    rounds_s: float  # training rounds and evaluations, start-up (imports, data, workers) not


@dataclass(frozen=True)
class Launch:
    """A process to measure, and how to read its result afterwards."""

    command: list[str]
    result: Callable[[], Result]
    cwd: Path = ROOT
    env: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Outcome:
    wall_s: float
    cpu_s: float
    peak_gb: float | None  # RSS summed over the tree; None: measured in this process (--smoke)
    peak_pss_gb: float | None  # PSS summed: pages the tree's processes share count once
    result: Result

    @property
    def final(self) -> float:
        return self.result.accuracy[max(self.result.accuracy)]

    @property
    def startup_s(self) -> float:
        return self.wall_s - self.result.rounds_s


@dataclass(frozen=True)
class Implementation:
    label: str
    launch: Callable[[Work, Files], Launch]
    # The same work in this process, for --smoke: a fresh interpreter costs seconds of imports.
    in_process: Callable[[Work, Files], Result] | None = None
    needs_pfl: bool = False


# ---------------------------------------------------------------------------------------------
# The implementations
# ---------------------------------------------------------------------------------------------


def _json_result(path: Path) -> Callable[[], Result]:
    """The result a run wrote as JSON: ``accuracy`` by round, and ``rounds_s`` or the
    ``round_times`` (the plain loop's)."""

    def read() -> Result:
        got = json.loads(path.read_text())
        accuracy = {int(r): float(a) for r, a in got["accuracy"].items()}
        return Result(accuracy, got.get("rounds_s") or sum(got["round_times"]))

    return read


def _fedsim_result(out: Path) -> Result:
    metrics = pd.read_csv(out / "metrics.csv")
    server = metrics[metrics.scope == "server"]
    central = server[server.metric == "accuracy"]
    accuracy = {int(r): float(v) for r, v in zip(central["round"], central.value, strict=True)}
    return Result(accuracy, float(server[server.metric == "round_time_s"].value.sum()))


def plain(work: Work, files: Files) -> Launch:
    result = files.runs / "plain.json"
    command = [sys.executable, str(OVERHEAD), "--plain-loop", str(result)]
    command += ["--scenario", str(SCENARIO), *(f"--set={o}" for o in files.overrides(work))]
    return Launch(command, _json_result(result))


def plain_in_process(work: Work, files: Files) -> Result:
    result = files.runs / "plain.json"
    plain_loop(SCENARIO, files.overrides(work), result, exact=False)
    return _json_result(result)()


def fedsim(folder: str, what: str, *sets: str) -> Implementation:
    """`fedsim run scenario.yaml` into runs/``folder`` with ``sets`` (``--set`` overrides)."""

    def launch(work: Work, files: Files) -> Launch:
        out = files.runs / folder
        command = [*FEDSIM, "run", str(SCENARIO), "--out", str(out), "--no-progress"]
        for override in [*files.overrides(work), *sets]:
            command += ["--set", override]
        return Launch(command, lambda: _fedsim_result(out))

    def in_process(work: Work, files: Files) -> Result:
        out = files.runs / folder
        checkout_fedsim().run(SCENARIO, [*files.overrides(work), *sets], out)
        return _fedsim_result(out)

    return Implementation(f"fedsim, {what}", launch, in_process)


def pfl(workers: int) -> Implementation:
    """pfl_train.py in pfl's environment; more than one worker through torchrun, as pfl does."""

    def launch(work: Work, files: Files) -> Launch:
        assert files.pfl_python is not None
        result = files.runs / f"pfl{workers}.json"
        python = [str(files.pfl_python), "-c", "import pfl_train; pfl_train.main()"]
        if workers > 1:
            torchrun = files.pfl_python.parent / "torchrun"
            python = [str(torchrun), "--standalone", f"--nproc-per-node={workers}", "--no-python"]
            python += [str(files.pfl_python), "-c", "import pfl_train; pfl_train.main()"]
        args = ["--data", files.data, "--init", files.init, "--users", files.users]
        args += ["--rounds", work.rounds, "--cohort", work.per_round]
        args += ["--eval-every", work.eval_every, "--result", result]
        return Launch([*python, *map(str, args)], _json_result(result), cwd=HERE)

    label = f"pfl 0.6.0, {workers} worker{'s' if workers > 1 else ''}"
    return Implementation(label + (" (torchrun)" if workers > 1 else ""), launch, needs_pfl=True)


def flower(work: Work, files: Files) -> Launch:
    result = files.runs / "flower.json"
    settings = {
        "data": files.data,
        "init": files.init,
        "nodes": work.users,
        "per_round": work.per_round,
        "rounds": work.rounds,
        "eval_every": work.eval_every,
        "seed": work.seed,
        "result": result,
    }
    env = {f"PEERS_{k.upper()}": str(v) for k, v in settings.items()}
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])
    env["RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO"] = "0"  # silences a FutureWarning
    command = [sys.executable, "-c", "import flower_app; flower_app.simulate()"]
    return Launch(command, _json_result(result), cwd=HERE, env=env)


IMPLEMENTATIONS = {
    "plain": Implementation("plain loop", plain, plain_in_process),
    "fedsim1": fedsim("fedsim1", "1 worker", "resources.workers=1"),
    "fedsim2": fedsim("fedsim2", "2 workers", "resources.workers=2"),
    "pfl1": pfl(1),
    "pfl2": pfl(2),
    "flower": Implementation("Flower 1.42 simulation (Ray, 2 actors)", flower),
}
VECTORISED = {"vectorised": fedsim("vectorised", "vectorised", "resources.vectorize=true")}
SMOKE_ROWS = ("plain", "fedsim1")


# ---------------------------------------------------------------------------------------------
# Setting up, measuring, reporting
# ---------------------------------------------------------------------------------------------


def pfl_environment(folder: Path) -> Path:
    """pfl-research's own virtual environment in ``folder`` (made once); its interpreter."""
    python = folder / "bin" / "python"
    ready = folder / "ready"
    if ready.is_file():
        return python
    print(f"installing pfl 0.6.0 into {folder} (once) …", flush=True)
    venv.EnvBuilder(with_pip=True, clear=True).create(folder)
    for requirement in PFL_REQUIREMENTS:
        command = [str(python), "-m", "pip", "install", "-q", *requirement]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"installing pfl failed: {' '.join(command)}\n{done.stderr[-3000:]}")
    check = subprocess.run([str(python), "-c", "import pfl.model.pytorch"], capture_output=True)
    if check.returncode != 0:
        raise SystemExit(f"pfl does not import in {folder}:\n{check.stderr.decode()[-3000:]}")
    ready.touch()
    return python


def prepare(work: Work, runs: Path, pfl_python: Path | None) -> Files:
    """The data, the initial weights and the users of every round, as every run reads them."""
    sizes = f"{work.users}x{work.per_user}-{work.test}-seed{work.seed}"
    folder = data.make(CACHE / f"data-{sizes}", work.users, work.per_user, work.test, work.seed)
    init, users = runs / "init.pt", runs / "users.npy"
    # The weights fedsim draws for the scenario's seed: its init_parameters with its generator.
    checkout_fedsim()  # this checkout on the path, for its clients package too
    from clients.workload import init_parameters

    torch.save(init_parameters(simple_cnn(), seeded_generator(work.seed)).state_dict(), init)
    rounds = range(1, work.rounds + 1)
    order = [c for r in rounds for c in sampled_clients(work.seed, r, work.users, work.per_round)]
    np.save(users, np.array(order, dtype=np.int64))
    return Files(folder, init, users, runs, pfl_python)


def run_measured(impl: Implementation, work: Work, files: Files) -> Outcome:
    launch = impl.launch(work, files)
    env = {**os.environ, "OMP_NUM_THREADS": "1", **launch.env}
    measured = measure(launch.command, env=env, cwd=launch.cwd).check(impl.label)
    return Outcome(
        measured.wall_s, measured.cpu_s, measured.peak_gb, measured.peak_pss_gb, launch.result()
    )


def run_here(impl: Implementation, work: Work, files: Files) -> Outcome:
    """--smoke: the run in this process; wall and CPU time, no memory figure."""
    assert impl.in_process is not None
    cpu = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    result = impl.in_process(work, files)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu_s = after.ru_utime + after.ru_stime - cpu.ru_utime - cpu.ru_stime
    return Outcome(wall, cpu_s, None, None, result)


def table(outcomes: dict[str, Outcome]) -> str:
    plain = outcomes.get("plain")
    lines = [
        "| implementation | wall s | × plain loop | rounds s | start-up s | CPU s "
        "| peak PSS GB | peak RSS GB | final accuracy |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for key, got in outcomes.items():
        ratio = f"{got.wall_s / plain.wall_s:.2f}" if plain else "-"
        rss = "-" if got.peak_gb is None else f"{got.peak_gb:.2f}"
        pss = "-" if got.peak_pss_gb is None else f"{got.peak_pss_gb:.2f}"
        lines.append(
            f"| {ALL[key].label} | {got.wall_s:.1f} | {ratio} | {got.result.rounds_s:.1f} | "
            f"{got.startup_s:.1f} | {got.cpu_s:.1f} | {pss} | {rss} | {got.final:.4f} |"
        )
    return "\n".join(lines)


def targets(outcomes: dict[str, Outcome], work: Work) -> list[str]:
    """The issue's targets, each with its measured figure and whether it was met."""
    lines = []
    for workers in (1, 2):
        ours, theirs = outcomes.get(f"fedsim{workers}"), outcomes.get(f"pfl{workers}")
        if ours and theirs:
            ratio = ours.wall_s / theirs.wall_s
            lines.append(
                f"fedsim / pfl wall, {workers} worker{'s' if workers > 1 else ''}: {ratio:.2f} "
                f"(target < 1: {'met' if ratio < 1 else 'NOT met'})"
            )
    fedsims = [o for k, o in outcomes.items() if k.startswith("fedsim") or k == "vectorised"]
    if "flower" in outcomes and fedsims:
        speedup = outcomes["flower"].wall_s / min(o.wall_s for o in fedsims)
        lines.append(
            f"Flower / fastest fedsim wall: {speedup:.1f}× "
            f"(target ≥ 5: {'met' if speedup >= 5 else 'NOT met'})"
        )
    finals = {ALL[k].label: o.final for k, o in outcomes.items()}
    low, high = min(finals.values()), max(finals.values())
    # A binomial standard error on the test set; training noise (dropout, batch order, Flower's
    # own users) comes on top of it.
    p = sum(finals.values()) / len(finals)
    stderr = math.sqrt(p * (1 - p) / work.test)
    lines.append(
        f"final accuracy: {low:.4f} to {high:.4f} (spread {high - low:.4f}; the test set's "
        f"standard error at {p:.2f} is {stderr:.4f}, training noise comes on top)"
    )
    return lines


ALL = {**IMPLEMENTATIONS, **VECTORISED}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help=f"seconds, to check that the benchmark works: {SMOKE.users} users, "
        f"{SMOKE.rounds} rounds, the plain loop and fedsim (1 worker) only, in this process",
    )
    parser.add_argument("--rounds", type=int, help=f"rounds (default {Work().rounds})")
    parser.add_argument("--users", type=int, help=f"users (default {Work().users})")
    parser.add_argument("--per-round", type=int, help=f"users a round (default {Work().per_round})")
    parser.add_argument("--test", type=int, help=f"test images (default {Work().test})")
    parser.add_argument(
        "--only",
        help=f"comma-separated, from {', '.join(ALL)} (default: all but vectorised; "
        f"with --smoke: {', '.join(SMOKE_ROWS)})",
    )
    parser.add_argument(
        "--with-vectorised",
        action="store_true",
        help="add fedsim with resources.vectorize=true (clients of a round trained as one model)",
    )
    parser.add_argument(
        "--pfl-env",
        type=Path,
        default=CACHE / "pfl-venv",
        help="pfl-research's virtual environment (created there once if absent; default "
        "%(default)s)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        help="also write table.md and results.json here, and keep each run's outputs in runs/",
    )
    args = parser.parse_args()

    work = SMOKE if args.smoke else Work()
    sizes = {"rounds": args.rounds, "users": args.users, "per_round": args.per_round}
    sizes = {k: v for k, v in {**sizes, "test": args.test}.items() if v is not None}
    if any(v < 1 for v in sizes.values()):
        parser.error("--rounds, --users, --per-round and --test need to be at least 1")
    work = replace(work, **sizes)
    if work.per_round > work.users:
        parser.error(f"--per-round {work.per_round} exceeds the {work.users} users")
    if args.only:
        keys = [k.strip() for k in args.only.split(",") if k.strip()]
    else:
        keys = list(SMOKE_ROWS if args.smoke else IMPLEMENTATIONS)
    if args.with_vectorised and "vectorised" not in keys:
        keys.append("vectorised")
    unknown = [k for k in keys if k not in ALL]
    if unknown or not keys:
        parser.error(f"--only: unknown {unknown}; choose from {', '.join(ALL)}")
    if args.smoke and any(ALL[k].in_process is None for k in keys):
        parser.error("--smoke runs in this process: the plain loop and fedsim rows only")

    needs_pfl = any(ALL[k].needs_pfl for k in keys)
    pfl_python = pfl_environment(args.pfl_env) if needs_pfl else None
    with tempfile.TemporaryDirectory() as tmp:
        runs = Path(tmp) if args.out is None else args.out / "runs"
        runs.mkdir(parents=True, exist_ok=True)
        files = prepare(work, runs, pfl_python)
        print(
            f"{work.users} users × {work.per_user} images, {work.per_round} a round, "
            f"{work.rounds} rounds, central evaluation on {work.test} images every "
            f"{work.eval_every} rounds; data {files.data}",
            flush=True,
        )
        outcomes: dict[str, Outcome] = {}
        for key in keys:
            print(f"{ALL[key].label} …", flush=True)
            run = run_here if args.smoke else run_measured
            outcomes[key] = run(ALL[key], work, files)
    print()
    print(table(outcomes))
    print()
    print("\n".join(targets(outcomes, work)))
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "table.md").write_text(table(outcomes) + "\n")
        results = {k: {"label": ALL[k].label, **asdict(o)} for k, o in outcomes.items()}
        (args.out / "results.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
