"""fedsim's overhead: each engine timed side by side with the plain loop, in one run.

The plain loop is the same training written as one plain PyTorch script: the same model and
initial weights, the same data already in memory (a client's data is an index slice of it), the
same device, the same clients sampled each round and the same (client, batch) SGD steps in the
same order, one model reset in place for each client, a running sum of the weighted updates for
FedAvg, and central evaluation at the same rounds. It is the limit fedsim is measured against:
it does only the work every simulator has to do. Its final accuracy must equal fedsim's (up to
float rounding), which also checks that fedsim trains what the scenario says.

R = fedsim / plain loop, same machine, same invocation:
  R(rounds)   time spent in rounds: fedsim's ``round_time_s`` rows summed, the plain loop's
              round loop timed the same way; engine start-up is left out;
  R(steady)   the same from round 2 on (round 1 also pays for workers loading the data);
  R(wall)     the whole process, start-up included (python, imports, data, Ray);
  R(CPU)      CPU time (user + system) of the whole process tree, start-up included: the work
              done, less disturbed than wall time by other load on a shared machine.
The plain loop is one process on one thread; local2 and flower train clients in several
processes at once (flower: one actor per core), so their R can fall below 1. The 2-core limit is
the plain loop's rounds split evenly over two processes. Targets (printed met or MISSED):
local R(rounds) <= 1.05; local2 rounds <= 1.1 x the 2-core limit, start-up <= the plain loop's
+ 3 s, peak PSS <= 1.5 x the plain loop's; flower rounds <= 1.5 x the 2-core limit (Ray's
start-up is reported, outside the rounds). Two processes rarely do twice one's work on two
cores, so with local2 or flower the plain loop also runs twice at once, and what two processes
can reach on this machine is printed beside the ideal limit.
On a GPU (``--device cuda``, or the scenario's ``auto`` where there is one) every run also gets
its GPU's mean utilisation and peak memory, read from nvidia-smi (benchmarks/measure.py); on a
machine without one the script runs on the CPU and says that the CUDA figures are pending.
Start-up = wall - rounds. Peak memory of the whole process tree (driver, worker processes, Ray
daemons and actors), sampled every 0.2 s: PSS (a page shared by the tree's processes, such as
a forked worker's copy of the data, counts once) and RSS (it counts once per process).

The scenario is scenarios/fashion_mnist.yaml with central evaluation every 10 rounds and the last
and no client-side evaluation (``--set eval.clients=0 --set eval.every=10``). Every run is a
subprocess, the plain loop included, measured the same way (benchmarks/measure.py).

    python benchmarks/overhead.py                       # 50 rounds, engines local, local2, flower
    python benchmarks/overhead.py --quick               # 10 rounds
    python benchmarks/overhead.py --engines local,flower --rounds 20 --repeat 3
    python benchmarks/overhead.py --quick --exact       # correctness: weights equal bit for bit
    python benchmarks/overhead.py --smoke --exact       # seconds: quickstart, 2 rounds, local

The plain loop's running sum rounds differently from fedsim's aggregate (a weighted matrix
product of the stacked updates), and training amplifies those last-bit differences: after 50
rounds the accuracies differ in the third decimal. With --exact the plain loop reduces as fedsim
does, and every engine's final weights must equal the plain loop's exactly.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from command import FEDSIM, ROOT
from measure import GpuUse, measure
from torch import Tensor, nn

SCENARIO = ROOT / "scenarios" / "fashion_mnist.yaml"
SMOKE_SCENARIO = ROOT / "scenarios" / "quickstart.yaml"
BASE_OVERRIDES = ["eval.clients=0", "eval.every=10"]
ENGINES = {
    "local": ["engine=local"],
    "local2": ["engine=local", "resources.workers=2"],
    "flower": ["engine=flower"],
}
ACCURACY_TOLERANCE = 1e-4
# All the plain loop implements; the scenario's strategy must resolve to the same (every other
# key at its default, which is the plain one: no pre-aggregators, no clipping, ...).
PLAIN_FEDAVG = (
    "strategy={name: fedavg, aggregator: {name: mean, weighted: true}, "
    "server_opt: {name: sgd, lr: 1.0, momentum: 0.0}}"
)


# ---------------------------------------------------------------------------------------------
# The plain loop (runs in its own process: ``overhead.py --plain-loop RESULT.json``)
# ---------------------------------------------------------------------------------------------


def seeded_generator(*seed: int) -> torch.Generator:
    """A torch generator seeded from integers, derived exactly as fedsim derives its own."""
    entropy = np.random.SeedSequence(list(seed)).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(entropy))


def sampled_clients(seed: int, rnd: int, num_clients: int, per_round: int) -> list[int]:
    """The clients that train in round ``rnd``, in client-id order (fedsim's sampling)."""
    rng = np.random.default_rng([seed, rnd, 0])
    return sorted(int(c) for c in rng.choice(num_clients, size=per_round, replace=False))


def accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    from clients.workload import eval_batch_size  # the plain loop batches as fedsim does

    model.eval()
    correct = 0
    batch = eval_batch_size(model, x.device)
    with torch.inference_mode():
        for start in range(0, len(x), batch):
            logits = model(x[start : start + batch])
            correct += int((logits.argmax(dim=1) == y[start : start + batch]).sum())
    return correct / len(x)


def initial_model(workload: Any, dataset: Any, seed: int) -> nn.Module:
    """The initial global model, as fedsim builds it (the one call into the workload contract)."""
    return workload.build_model(dataset, seeded_generator(seed))


def plain_loop(scenario_path: Path, overrides: list[str], result: Path, exact: bool) -> None:
    """Train the scenario as one plain PyTorch loop; write round times and accuracies as JSON.

    The aggregate is a running sum of ``n_i * (w_i - w)``; with ``exact`` it is fedsim's
    reduction instead (the updates stacked, one weighted matrix product), which rounds the same
    way, so that the final weights equal fedsim's bit for bit.
    """
    torch.set_num_threads(1)  # as each of fedsim's clients does
    sys.path.insert(0, str(ROOT))  # this checkout's fedsim, as the fedsim runs use
    from fedsim.data import federation_for
    from fedsim.registry import WORKLOADS
    from fedsim.scenario import load

    scenario = load(scenario_path, overrides)
    hp = WORKLOADS.params(scenario.workload).model_dump()
    unsupported = {k: hp[k] for k in ("steps", "momentum", "weight_decay", "mu") if hp.get(k)}
    if scenario.workload.name != "classification" or unsupported:
        raise SystemExit(f"the plain loop does plain SGD only; the scenario has {unsupported}")
    # Compared resolved, so that a key added later with a plain default (as preagg: []) passes.
    strategy = scenario.strategy.model_dump()
    if strategy != load(scenario_path, [*overrides, PLAIN_FEDAVG]).strategy.model_dump():
        raise SystemExit(f"the plain loop does plain FedAvg only; the scenario has {strategy}")
    use_cuda = scenario.device in ("auto", "cuda") and torch.cuda.is_available()
    device = torch.device("cuda" if use_cuda else "cpu")
    seed, rounds = scenario.seed, scenario.rounds
    num_clients, per_round = scenario.clients.num, scenario.clients.per_round
    lr, batch_size, epochs = hp["lr"], hp["batch_size"], hp["epochs"]

    # Data: one in-memory copy; each client's training data is an index array into it.
    federation = federation_for(
        scenario.data.dataset,
        scenario.data.partition,
        num_clients,
        seed,
        scenario.data.val_fraction,
    )
    data = federation.dataset
    x, y = data.x_train.to(device), data.y_train.to(device)
    x_test, y_test = data.x_test.to(device), data.y_test.to(device)
    client_index = [idx.to(device) for idx in federation.train]

    # One model, reset in place for every client; the global weights as one flat vector.
    workload = WORKLOADS.build(scenario.workload)
    model = initial_model(workload, data, seed).to(device)
    if any(True for _ in model.buffers()):
        raise SystemExit("the plain loop handles models without buffers only")
    params = list(model.parameters())
    spans, offset = [], 0
    for p in params:
        spans.append(slice(offset, offset + p.numel()))
        offset += p.numel()
    weights = torch.cat([p.detach().reshape(-1) for p in params])  # the global model
    update_sum = torch.zeros_like(weights)  # running sum of n_i * (w_i - w)
    updates = torch.zeros(per_round, len(weights), device=device) if exact else None
    sizes = torch.zeros(per_round, device=device)  # n_i
    optimizer = torch.optim.SGD(params, lr=lr)  # no state: one optimizer serves every client

    def load_global() -> None:
        with torch.no_grad():
            for p, span in zip(params, spans, strict=True):
                p.copy_(weights[span].view_as(p))

    round_times: list[float] = []
    accuracies: dict[int, float] = {}
    for rnd in range(1, rounds + 1):
        started = time.perf_counter()
        update_sum.zero_()
        for i, client in enumerate(sampled_clients(seed, rnd, num_clients, per_round)):
            index = client_index[client]
            n = len(index)
            load_global()
            model.train()
            generator = seeded_generator(seed, client, rnd)
            for _ in range(epochs):
                order = index[torch.randperm(n, generator=generator).to(device)]
                for start in range(0, n, batch_size):
                    batch = order[start : start + batch_size]
                    loss = F.cross_entropy(model(x[batch]), y[batch])
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
            with torch.no_grad():
                for p, span in zip(params, spans, strict=True):
                    if updates is None:
                        update_sum[span].add_(p.reshape(-1) - weights[span], alpha=n)
                    else:
                        torch.sub(p.reshape(-1), weights[span], out=updates[i, span])
            sizes[i] = n
        if updates is not None:
            update_sum = sizes @ updates
        weights += update_sum / sizes.sum()  # FedAvg, server learning rate 1
        if rnd % scenario.eval.every == 0 or rnd == rounds:
            load_global()
            accuracies[rnd] = accuracy(model, x_test, y_test)
        if device.type == "cuda":
            torch.cuda.synchronize()
        round_times.append(time.perf_counter() - started)
    load_global()
    torch.save(model.state_dict(), result.with_suffix(".pt"))
    on = torch.cuda.get_device_name() if use_cuda else "cpu"
    result.write_text(json.dumps({"round_times": round_times, "accuracy": accuracies, "on": on}))


# ---------------------------------------------------------------------------------------------
# The comparison
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    name: str
    wall_s: float
    round_times: list[float]
    accuracy: dict[int, float]  # central test accuracy by round
    peak_gb: float  # resident set sizes summed over the process tree (shared pages per process)
    peak_pss_gb: float  # proportional set sizes summed (pages shared in the tree count once)
    cpu_s: float  # user + system, whole process tree
    weights: dict[str, Tensor]  # the final global model
    gpu: GpuUse | None  # the GPU it used (nvidia-smi), where there is one
    on: str = ""  # the plain loop's device: "cpu" or the GPU's name

    @property
    def rounds_s(self) -> float:
        return sum(self.round_times)

    @property
    def steady_s(self) -> float:
        return sum(self.round_times[1:])


def run_plain(scenario: Path, overrides: list[str], work: Path, exact: bool) -> Run:
    work.mkdir(parents=True, exist_ok=True)
    result = work / "plain.json"
    command = [sys.executable, __file__, "--plain-loop", str(result), "--scenario", str(scenario)]
    command += [f"--set={o}" for o in overrides] + (["--exact"] if exact else [])
    measured = measure(command, cwd=ROOT).check("the plain loop")
    out = json.loads(result.read_text())
    accuracies = {int(r): float(a) for r, a in out["accuracy"].items()}
    weights = torch.load(result.with_suffix(".pt"), map_location="cpu")
    name = "plain loop" + (" (exact)" if exact else "")
    return Run(
        name,
        measured.wall_s,
        out["round_times"],
        accuracies,
        measured.peak_gb,
        measured.peak_pss_gb,
        measured.cpu_s,
        weights,
        measured.gpu,
        out["on"],
    )


def two_at_once(scenario: Path, overrides: list[str], work: Path) -> float:
    """This machine's two-process throughput: how many plain loops' work two plain loops
    running at once get done in the time one takes alone, measured now. Two processes on two
    cores rarely do twice the work (shared caches and memory bandwidth, or virtual cores)."""
    work.mkdir(parents=True, exist_ok=True)
    results = [work / f"pair{i}.json" for i in range(3)]
    base = [sys.executable, __file__, "--scenario", str(scenario)]
    base += [f"--set={o}" for o in overrides]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    alone = subprocess.run([*base, "--plain-loop", str(results[0])], env=env, check=True)
    pair = [subprocess.Popen([*base, "--plain-loop", str(r)], env=env) for r in results[1:]]
    if alone.returncode or any(p.wait() for p in pair):
        raise SystemExit("the plain loops run two at a time failed")
    rounds = [sum(json.loads(r.read_text())["round_times"]) for r in results]
    return 2 * rounds[0] / max(rounds[1:])


def run_fedsim(engine: str, scenario: Path, overrides: list[str], work: Path) -> Run:
    out = work / engine  # fedsim creates it
    command = [*FEDSIM, "run", str(scenario), "--out", str(out), "--no-progress"]
    for override in [*overrides, *ENGINES[engine]]:
        command += ["--set", override]
    measured = measure(command, cwd=ROOT).check(f"fedsim ({engine})")
    metrics = pd.read_csv(out / "metrics.csv")
    server = metrics[metrics.scope == "server"]
    rounds = server[server.metric == "round_time_s"].sort_values("round")
    central = server[server.metric == "accuracy"]
    accuracies = {int(r): float(v) for r, v in zip(central["round"], central.value, strict=True)}
    weights = torch.load(out / "model.pt", map_location="cpu")
    return Run(
        engine,
        measured.wall_s,
        list(rounds.value),
        accuracies,
        measured.peak_gb,
        measured.peak_pss_gb,
        measured.cpu_s,
        weights,
        measured.gpu,
    )


def table(plain: Run, runs: list[Run]) -> pd.DataFrame:
    rows = []
    for run in [plain, *runs]:
        final = run.accuracy[max(run.accuracy)]
        rows.append(
            {
                "engine": run.name,
                "final accuracy": f"{final:.4f}",
                "wall s": f"{run.wall_s:.1f}",
                "rounds s": f"{run.rounds_s:.1f}",
                "start-up s": f"{run.wall_s - run.rounds_s:.1f}",
                "round 1 s": f"{run.round_times[0]:.2f}",
                "median round s": f"{statistics.median(run.round_times):.2f}",
                "R(rounds)": f"{run.rounds_s / plain.rounds_s:.2f}",
                "R(steady)": f"{run.steady_s / plain.steady_s:.2f}" if plain.steady_s else "-",
                "R(wall)": f"{run.wall_s / plain.wall_s:.2f}",
                "CPU s": f"{run.cpu_s:.1f}",
                "R(CPU)": f"{run.cpu_s / plain.cpu_s:.2f}",
                "peak PSS GB": f"{run.peak_pss_gb:.2f}",
                "peak RSS GB": f"{run.peak_gb:.2f}",
            }
        )
        if run.gpu is not None:  # nvidia-smi's: the mean over the whole run, start-up included
            rows[-1]["GPU util %"] = f"{run.gpu.mean_util_pct:.0f}"
            rows[-1]["peak GPU GB"] = f"{run.gpu.peak_gb:.2f}"
    return pd.DataFrame(rows)


def targets(plain: Run, runs: list[Run], throughput: float | None) -> list[str]:
    """Each engine's targets against the plain loop, measured and met or not. The 2-core limit
    is the plain loop's rounds split evenly over two processes; ``throughput`` (two plain loops
    at once, in plain loops' work) gives what two processes can reach on this machine."""
    limit = plain.rounds_s / 2
    start = plain.wall_s - plain.rounds_s
    checks: list[tuple[str, float, float]] = []  # (what, measured, target): met when <=
    for run in runs:
        startup = run.wall_s - run.rounds_s
        if run.name == "local":
            checks.append(("local: R(rounds)", run.rounds_s / plain.rounds_s, 1.05))
        elif run.name == "local2":
            checks += [
                ("local2: rounds / 2-core limit", run.rounds_s / limit, 1.10),
                ("local2: start-up - plain loop's, s", startup - start, 3.0),
                ("local2: peak PSS / plain loop's", run.peak_pss_gb / plain.peak_pss_gb, 1.5),
            ]
        elif run.name == "flower":
            checks.append(("flower: rounds / 2-core limit", run.rounds_s / limit, 1.5))
    lines = [
        f"{what}: {value:.2f} (target <= {bound:.2f}) {'met' if value <= bound else 'MISSED'}"
        for what, value, bound in checks
    ]
    for run in runs:
        if run.name == "flower":
            lines.append(f"flower: start-up {run.wall_s - run.rounds_s:.1f} s (Ray's included)")
    if throughput is not None:
        reachable = plain.rounds_s / throughput
        lines.append(
            f"two plain loops at once do {throughput:.2f}x the work of one: two processes can "
            f"reach {reachable:.1f} s of rounds here, {reachable / limit:.2f}x the 2-core limit"
        )
        for run in runs:
            if run.name in ("local2", "flower"):
                lines.append(f"{run.name}: rounds / reachable: {run.rounds_s / reachable:.2f}")
    return lines


def weight_gap(a: Run, b: Run) -> float:
    """Largest absolute difference between two runs' final weights (inf if shaped differently)."""
    if list(a.weights) != list(b.weights):
        return float("inf")
    gaps = [(a.weights[k].float() - b.weights[k].float()).abs().max().item() for k in a.weights]
    return max(gaps, default=0.0)


def agreement(plain: Run, runs: list[Run], exact: bool) -> list[str]:
    """Does each run train what the plain loop trains? One line per run, then a verdict."""
    lines = []
    for run in runs:
        if sorted(run.accuracy) != sorted(plain.accuracy):
            lines.append(
                f"{run.name}: evaluated at rounds {sorted(run.accuracy)}, the plain loop at "
                f"{sorted(plain.accuracy)}"
            )
            continue
        gap = max(abs(run.accuracy[r] - plain.accuracy[r]) for r in plain.accuracy)
        dw = weight_gap(run, plain)
        if exact:
            verdict = "identical to" if dw == 0 else "DIFFERS FROM"
        else:
            verdict = "matches" if gap <= ACCURACY_TOLERANCE else "differs from"
        lines.append(
            f"{run.name}: {verdict} the plain loop: largest accuracy gap {gap:.4f} over rounds "
            f"{sorted(plain.accuracy)}, largest weight gap {dw:.2e}"
        )
    engines_agree = all(weight_gap(run, runs[0]) == 0 for run in runs[1:])
    if len(runs) > 1:
        lines.append(f"the engines' final weights are {'' if engines_agree else 'NOT '}identical")
    if not exact:
        lines.append(
            "(the plain loop's running sum rounds differently from fedsim's aggregate, a weighted "
            "matrix product of the stacked updates; training amplifies the last-bit differences "
            "round after round. --exact makes the plain loop reduce as fedsim does: the weights "
            "must then be identical.)"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="10 rounds instead of 50")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="seconds, to check that the benchmark works: the quickstart scenario (digits), "
        "2 rounds, the local engine only, on the CPU",
    )
    parser.add_argument(
        "--rounds", type=int, help="rounds to run (default 50; 10 with --quick, 2 with --smoke)"
    )
    parser.add_argument(
        "--engines",
        default=",".join(ENGINES),
        help=f"comma-separated, from {', '.join(ENGINES)} (local2: local with 2 worker "
        f"processes); default: all",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        metavar="K",
        help="run everything K times, interleaved; the table shows each engine's fastest run "
        "(by time in rounds)",
    )
    parser.add_argument(
        "--device",
        choices=["auto", "cpu", "cuda"],
        help="override the scenario's device (it is auto: cuda when there is one)",
    )
    parser.add_argument(
        "--scenario",
        type=Path,
        help=f"scenario file (default: {SCENARIO.relative_to(ROOT)}; "
        f"{SMOKE_SCENARIO.relative_to(ROOT)} with --smoke)",
    )
    parser.add_argument(
        "--keep", type=Path, metavar="DIR", help="keep the run directories in DIR (must not exist)"
    )
    parser.add_argument(
        "--exact",
        action="store_true",
        help="correctness check: the plain loop aggregates as fedsim does (stacked updates, one "
        "weighted matrix product) rather than by a running sum, so its final weights must equal "
        "fedsim's bit for bit",
    )
    parser.add_argument("--plain-loop", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--set", action="append", default=[], help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.scenario is None:
        args.scenario = SMOKE_SCENARIO if args.smoke else SCENARIO
    if args.plain_loop is not None:  # the child process that runs the plain loop
        plain_loop(args.scenario, args.set, args.plain_loop, args.exact)
        return

    if args.smoke and args.engines == parser.get_default("engines"):
        args.engines = "local"
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    unknown = [e for e in engines if e not in ENGINES]
    if unknown or not engines:
        parser.error(f"--engines: unknown {unknown}; choose from {', '.join(ENGINES)}")
    if args.rounds is not None:
        rounds = args.rounds
    else:
        rounds = 2 if args.smoke else 10 if args.quick else 50
    if rounds < 1 or args.repeat < 1:
        parser.error("--rounds and --repeat need to be at least 1")
    overrides = [*BASE_OVERRIDES, f"rounds={rounds}"]
    if args.smoke and args.device is None:
        args.device = "cpu"  # no CUDA start-up, and bit-for-bit reproducible for --exact
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA GPU is visible here (the CUDA figures stay pending)")
    if args.device is not None:
        overrides.append(f"device={args.device}")
    scenario = args.scenario.resolve()

    plains: list[Run] = []
    runs: dict[str, list[Run]] = {engine: [] for engine in engines}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp) if args.keep is None else args.keep
        work.mkdir(parents=True, exist_ok=args.keep is None)
        print(f"{scenario.name}, {rounds} rounds, --set {' --set '.join(overrides)}", flush=True)
        for i in range(args.repeat):
            here = work / str(i) if args.repeat > 1 else work
            print(f"{i + 1}/{args.repeat}: plain loop …", flush=True)
            plains.append(run_plain(scenario, overrides, here, args.exact))
            for engine in engines:
                print(f"{i + 1}/{args.repeat}: fedsim {engine} …", flush=True)
                runs[engine].append(run_fedsim(engine, scenario, overrides, here))

    throughput = None
    if {"local2", "flower"} & set(engines) and not args.smoke:
        print("two plain loops at once …", flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            throughput = two_at_once(scenario, overrides, Path(tmp))

    def fastest(candidates: list[Run]) -> Run:
        return min(candidates, key=lambda run: run.rounds_s)

    plain, best = fastest(plains), [fastest(runs[engine]) for engine in engines]
    print()
    print(table(plain, best).to_string(index=False))
    if args.repeat > 1:
        spread = [
            f"{run.name} {min(r.rounds_s for r in rs):.1f}-{max(r.rounds_s for r in rs):.1f}"
            for run, rs in zip([plain, *best], [plains, *runs.values()], strict=True)
        ]
        print(f"rounds s over {args.repeat} runs: {', '.join(spread)}")
    print()
    print("\n".join(targets(plain, best, throughput)))
    print()
    print("\n".join(agreement(plain, best, args.exact)))
    print()
    if plain.on != "cpu":
        print(f"device: cuda ({plain.on})")
    elif torch.cuda.is_available():
        print("device: cpu, one thread per process (as asked; this machine has a GPU)")
    else:
        print(
            "device: cpu, one thread per process. CUDA figures: pending (no GPU on this "
            "machine; python benchmarks/overhead.py --device cuda on one)"
        )


if __name__ == "__main__":
    main()
