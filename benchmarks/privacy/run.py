"""Differential privacy on Fashion-MNIST: accuracy against ε, local DP-SGD and central DP.

    python benchmarks/privacy/run.py               # both sweeps, 2 seeds, 30 rounds (~10-15 min)
    python benchmarks/privacy/run.py --rounds 10   # a quick look
    python benchmarks/privacy/run.py --smoke       # seconds: digits, 2 rounds, 1 run per sweep

Runs local.yaml (plain SGD and DP-SGD at noise multipliers 0.6 / 1.0 / 2.0; 20 clients, 3 a
round) and central.yaml (FedAvg, and Flower's central-DP wrapper with fixed and adaptive
clipping; 200 clients, 40 a round), builds each sweep's report and writes privacy.md: the final
accuracy and ε of every configuration, the accuracy reached by the time ε passes 1, 3 and 8,
the accuracy-against-ε figure, and the DP-SGD slowdown against plain SGD, measured side by side
on one client's data (interleaved, same process) and over the whole runs.

ε differs in kind between the two modes: local DP's is per *sample* (a client's record), the
largest over all clients so far; central DP's is per *client* (its whole data set).
Output: benchmarks/out/privacy/ (local/, central/, privacy.md, accuracy_vs_epsilon.png), or --out.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # this checkout's fedsim
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: the shared helpers
from sweep_report import run_sweep_with_report

from clients.privacy import DPSGD
from clients.workload import Labelled, TrainConfig
from fedsim.build import initial_model_and_changes, scenario_federation
from fedsim.registry import WORKLOADS
from fedsim.scenario import parse, read

HERE = Path(__file__).resolve().parent
OUT = HERE.parent / "out" / "privacy"
TARGETS = (1.0, 3.0, 8.0)
REPEATS = 5  # side-by-side timing: interleaved plain / DP-SGD fits of one client
# --smoke: digits, 2 rounds, one DP configuration per sweep, one timed pair of fits.
SMOKE_DATA = ["rounds=2", "data={name: digits, partition: {name: iid}}"]
SMOKE = {
    "local": [
        *SMOKE_DATA,
        "sweep={privacy: [{mode: local, noise_multiplier: 1.0, max_grad_norm: 1.0}], seed: [0]}",
    ],
    "central": [
        *SMOKE_DATA,
        "clients={num: 20, per_round: 10}",
        "sweep={privacy: [{mode: central, noise_multiplier: 1.0, clipping_norm: 1.0}], seed: [0]}",
    ],
}


def label(spec: dict[str, Any]) -> str:
    mode = spec.get("mode", "none")
    if mode == "local":
        return f"local DP-SGD z={spec['noise_multiplier']}"
    if mode == "central":
        clip = spec.get("clipping", "fixed")
        return f"central DP {clip} z={spec['noise_multiplier']}"
    return "no DP"


def curves(sweep: Path, suite: str) -> pd.DataFrame:
    """One row per (run, evaluated round): accuracy and the ε spent by then."""
    rows = []
    for point in json.loads((sweep / "sweep.json").read_text())["points"]:
        metrics = pd.read_csv(sweep / point["dir"] / "metrics.csv")
        spec = point["values"]["privacy"]
        server = metrics[metrics.scope == "server"]
        accuracy = server[server.metric == "accuracy"].set_index("round")["value"]
        if spec.get("mode") == "local":  # the largest ε of any client so far
            per_round = metrics[(metrics.scope == "federated") & (metrics.metric == "epsilon")]
            eps = per_round.set_index("round")["value"].cummax()
        else:
            eps = server[server.metric == "epsilon"].set_index("round")["value"]
        train_time = server[server.metric == "train_time_s"]["value"].sum()
        for rnd, acc in accuracy.items():
            rows.append(
                {
                    "suite": suite,
                    "config": f"{suite}: {label(spec)}",
                    "seed": point["values"]["seed"],
                    "round": rnd,
                    "accuracy": acc,
                    "epsilon": float(eps.loc[:rnd].iloc[-1]) if len(eps.loc[:rnd]) else np.nan,
                    "train_time_s": train_time,
                }
            )
    return pd.DataFrame(rows)


def at_epsilon(runs: pd.DataFrame, target: float) -> pd.Series:
    """Per config, mean over seeds of the last accuracy measured while ε <= target."""
    values: dict[str, list[float]] = {}
    for (config, _seed), run in runs.dropna(subset=["epsilon"]).groupby(["config", "seed"]):
        within = run[run.epsilon <= target]
        if len(within):
            values.setdefault(config, []).append(within.sort_values("round").accuracy.iloc[-1])
    return pd.Series({c: statistics.mean(v) for c, v in values.items()})


def summary_table(runs: pd.DataFrame) -> str:
    head = "| configuration | final accuracy | final ε | " + " | ".join(
        f"accuracy at ε ≤ {t:g}" for t in TARGETS
    )
    lines = [head + " | training time (s) |", "|---" * (4 + len(TARGETS)) + "|"]
    at = {t: at_epsilon(runs, t) for t in TARGETS}
    for config, group in runs.groupby("config", sort=False):
        last = group[group["round"] == group["round"].max()]
        acc = f"{100 * last.accuracy.mean():.1f} ± {100 * last.accuracy.std():.1f}"
        eps = f"{last.epsilon.mean():.2f}" if last.epsilon.notna().all() else "∞ (no DP)"
        cells = [f"{100 * at[t][config]:.1f}" if config in at[t] else "—" for t in TARGETS]
        seconds = f"{group.groupby('seed').train_time_s.first().mean():.0f}"
        lines.append(f"| {config} | {acc} | {eps} | " + " | ".join(cells) + f" | {seconds} |")
    return "\n".join(lines)


def figure(runs: pd.DataFrame, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for config, group in runs.dropna(subset=["epsilon"]).groupby("config", sort=False):
        mean = group.groupby("round")[["epsilon", "accuracy"]].mean()
        ax.plot(mean.epsilon, mean.accuracy, marker=".", label=config)
    for suite, style in (("local", ":"), ("central", "--")):
        plain = runs[(runs.suite == suite) & runs.epsilon.isna()]
        if len(plain):
            best = plain.groupby("round").accuracy.mean().iloc[-1]
            ax.axhline(best, color="grey", linestyle=style, label=f"{suite}: no DP (final)")
    for t in TARGETS:
        ax.axvline(t, color="lightgrey", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("ε spent (δ = 1e-5; local: per sample, central: per client)")
    ax.set_ylabel("central test accuracy")
    ax.set_title("Fashion-MNIST: accuracy against ε (mean of 2 seeds)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def timed_fit(workload: Any, scenario: Any, federation: Any, seed: int, dp: bool) -> float:
    """Seconds of one local epoch on client 0's data, plain SGD or DP-SGD.

    Every call into the workload contract is here, so that a change of contract is one edit.
    """
    model, _ = initial_model_and_changes(workload, scenario, federation.dataset)
    x = federation.dataset.x_train[federation.train[0]]
    y = federation.dataset.y_train[federation.train[0]]
    generator = torch.Generator().manual_seed(seed)
    training = DPSGD(1.0, 1.0, noise_seed=seed) if dp else None
    config = TrainConfig(1, 0, generator, torch.device("cpu"))
    if training is not None:
        config = TrainConfig(1, 0, generator, torch.device("cpu"), training)
    started = time.perf_counter()
    workload.fit(model, Labelled(x, y), {}, config)
    seconds = time.perf_counter() - started
    if training is not None:
        training.close()
    return seconds


def side_by_side(scenario_path: Path, sets: list[str], repeats: int = REPEATS) -> dict[str, float]:
    """Seconds of one client's local epoch, plain SGD and DP-SGD, interleaved in one process."""
    raw = read(scenario_path, sets)
    raw.pop("sweep")
    raw["privacy"] = {"mode": "local", "noise_multiplier": 1.0, "max_grad_norm": 1.0}
    scenario = parse(raw)
    torch.set_num_threads(1)
    federation = scenario_federation(scenario)
    workload = WORKLOADS.build(scenario.workload)
    times: dict[str, list[float]] = {"plain": [], "dp": []}
    for repeat in range(repeats + 1):  # the first pair warms up
        for kind in ("plain", "dp"):
            seconds = timed_fit(workload, scenario, federation, repeat, dp=kind == "dp")
            if repeat:
                times[kind].append(seconds)
    plain, dp = statistics.median(times["plain"]), statistics.median(times["dp"])
    samples = len(federation.train[0])
    return {"samples": samples, "plain_s": plain, "dp_s": dp, "slowdown": dp / plain}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, help="override both sweeps' rounds")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="seconds: digits, 2 rounds, local DP-SGD z=1 and central DP z=1 with 1 seed each, "
        "one timed pair of fits",
    )
    parser.add_argument("--out", type=Path, help=f"output folder (default: {OUT})")
    args = parser.parse_args()
    out = args.out or (OUT.parent / "smoke" / OUT.name if args.smoke else OUT)
    repeats = 1 if args.smoke else REPEATS
    rounds = [f"rounds={args.rounds}"] if args.rounds else []
    sets = {s: (SMOKE[s] if args.smoke else []) + rounds for s in ("local", "central")}
    out.mkdir(parents=True, exist_ok=True)
    timing = side_by_side(HERE / "local.yaml", sets["local"], repeats)
    seconds = {
        suite: run_sweep_with_report(HERE / f"{suite}.yaml", out / suite, sets[suite])
        for suite in ("local", "central")
    }
    runs = pd.concat([curves(out / suite, suite) for suite in ("local", "central")])
    figure(runs, out / "accuracy_vs_epsilon.png")

    local = runs[runs.suite == "local"]
    plain_time = local[local.epsilon.isna()].groupby("seed").train_time_s.first().mean()
    dp_time = local[local.epsilon.notna()].groupby(["config", "seed"]).train_time_s.first().mean()
    text = "\n".join(
        [
            "# Differential privacy on Fashion-MNIST",
            "",
            summary_table(runs),
            "",
            "Accuracy at ε ≤ t: the last central test accuracy measured while the ε spent was "
            "at most t (mean of 2 seeds); — when the first evaluation already exceeded t.",
            "Local ε: per sample, the largest over all clients so far (δ = 1e-5, Opacus RDP). "
            "Central ε: per client (δ = 1e-5, RDP of the sampled Gaussian mechanism, q = 0.2).",
            "",
            "DP-SGD slowdown against plain SGD:",
            f"- side by side (one client's epoch, {timing['samples']} samples, batch 64, "
            f"interleaved, median of {repeats}): plain {timing['plain_s']:.3f} s, DP-SGD "
            f"{timing['dp_s']:.3f} s, **{timing['slowdown']:.1f}x**",
            f"- whole runs (clients' training time, same clients sampled, 2 runs in parallel): "
            f"plain {plain_time:.0f} s, DP-SGD {dp_time:.0f} s, {dp_time / plain_time:.1f}x",
            "",
            f"Sweep wall time: local {seconds['local']:.0f} s, central {seconds['central']:.0f} s.",
            "Figure: accuracy_vs_epsilon.png; per-sweep reports: local/report, central/report.",
        ]
    )
    (out / "privacy.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
