"""Average-K: the two-head loss against CE + softmax thresholding, centralised and federated.

    python benchmarks/avgk/run.py             # the whole grid (~15 min on 2 cores)
    python benchmarks/avgk/run.py --seeds 2   # a quicker look
    python benchmarks/avgk/run.py --smoke     # seconds: tiny data, 1 round, 1 seed

Sweeps (every one a fedsim sweep; all points seeds 0..4):
- ``central`` / ``federated``: fmnist.yaml at K = 2, CE + softmax vs two-head, ambiguity p in
  {0, 0.3} x {balanced, long tail x10}; centralised (one client holding all the data) and 8
  clients (IID and Dirichlet 0.5);
- ``k``: K in {1.5, 3} (K = 2 is in ``federated``), p = 0.3 balanced, Dirichlet;
- ``gaussian``: gaussian.yaml (exact posterior) at K in {1.5, 2, 3}, Dirichlet, with the Bayes
  ceiling computed from the true posterior of the test set.
Dropped from the issue's full grid to fit 15 minutes: K in {1.5, 3} on the other 11 data/split
cells (K's effect is read on the most ambiguous federated cell), and the IID split of the
synthetic data (its ceiling does not depend on the split).

The comparison is at equal set size: ``avgk_accuracy_exact`` (λ calibrated on the test set
itself, every set size exactly K on average); beside it the accuracy and realised mean size at the
federated λ calibrated on the clients' held-out rows. Output: benchmarks/out/avgk/ (the sweeps,
report/, tables.md), or --out.
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import sys
from functools import partial
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from command import checkout_fedsim  # benchmarks/ holds the shared helpers
from sweep_report import mean_std, report

HERE = Path(__file__).resolve().parent
OUT = HERE.parent / "out"
SEEDS = [0, 1, 2, 3, 4]
SPLITS = [{"name": "iid"}, {"name": "dirichlet", "alpha": 0.5, "min_size": 50}]
SMOKE_DATA = {
    "fashion_mnist_avgk": {"train_per_class": 150, "test_size": 200},
    "avgk_gaussian": {"num_samples": 1000},
}
TAIL_CLASSES, HEAD_CLASSES = (7, 8, 9), (0, 1, 2)  # fashion_mnist_avgk's rarest / commonest

ms = partial(mean_std, digits=4)  # accuracies to 4 places


def methods(base: dict[str, Any], k: float) -> list[dict[str, Any]]:
    """The CE + softmax-threshold baseline and the two-head model, both at ``k``."""
    ce = {**base, "k": k, "lambda_ml": 0.0, "inference_head": "softmax"}
    return [ce, {**base, "k": k, "lambda_ml": 1.0, "inference_head": "multilabel"}]


def method_name(workload: dict[str, Any]) -> str:
    return "two-head" if workload["lambda_ml"] > 0 else "CE+softmax"


def sweep(raw: dict[str, Any], grid: dict[str, Any], out: Path, smoke: bool) -> Path:
    """Run ``raw`` over ``grid`` into ``out`` (replacing an earlier sweep there)."""
    raw = copy.deepcopy(raw)
    if smoke:
        raw["rounds"] = 1
        raw["eval"] = {"every": 1}
        if raw["clients"]["num"] > 1:
            raw["clients"] = {"num": 2, "per_round": 2}
        raw["data"] = {**raw["data"], **SMOKE_DATA[raw["data"]["name"]]}
    raw["sweep"] = grid
    if out.exists():
        if not (out / "sweep.json").exists() and any(out.iterdir()):
            raise SystemExit(f"{out} holds something other than a sweep; give a new folder")
        shutil.rmtree(out)
    # --smoke: one point after another in this process (no worker start-up, data loaded once)
    checkout_fedsim().run(raw, [], out, progress=True, echo=print, jobs=1 if smoke else None)
    return out


def last_rows(sweep_dir: Path) -> pd.DataFrame:
    """One row per point: its sweep values, and every server / federated metric of its last
    round (federated ones prefixed ``fed_``)."""
    rows = []
    for point in json.loads((sweep_dir / "sweep.json").read_text())["points"]:
        metrics = pd.read_csv(sweep_dir / point["dir"] / "metrics.csv")
        last = metrics[metrics["round"] == metrics["round"].max()]
        row: dict[str, Any] = {}
        for scope, prefix in (("server", ""), ("federated", "fed_")):
            chosen = last[last.scope == scope]
            row |= {prefix + m: v for m, v in zip(chosen.metric, chosen.value, strict=True)}
        values = point["values"]
        workload = values.get("workload", {})
        row |= {
            "method": method_name(workload),
            "k": workload.get("k"),
            "seed": values["seed"],
            "ambiguity": values.get("data.ambiguity"),
            "long_tail": values.get("data.long_tail"),
            "split": values.get("data.partition", {}).get("name", "central"),
        }
        rows.append(row)
    return pd.DataFrame(rows)


def paired(frame: pd.DataFrame, column: str) -> pd.Series:
    """two-head − CE of ``column``, seed by seed."""
    wide = frame.pivot_table(index="seed", columns="method", values=column)
    return wide["two-head"] - wide["CE+softmax"]


def headline(runs: pd.DataFrame) -> str:
    lines = [
        "| split | p | tail | CE+softmax | two-head (ML head) | Δ (paired) "
        "| two-head, softmax head | at federated λ: CE (size) | two-head (size) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for (split, p, tail), cell in runs.groupby(["split", "ambiguity", "long_tail"], sort=False):
        ce, th = cell[cell.method == "CE+softmax"], cell[cell.method == "two-head"]
        lines.append(
            f"| {split} | {p} | ×{tail:g} | {ms(ce.avgk_accuracy_exact)} | "
            f"{ms(th.avgk_accuracy_exact)} | {ms(paired(cell, 'avgk_accuracy_exact'))} | "
            f"{ms(th.avgk_accuracy_exact_softmax)} | {ce.avgk_accuracy.mean():.4f} "
            f"({ce.avg_set_size.mean():.3f}) | {th.avgk_accuracy.mean():.4f} "
            f"({th.avg_set_size.mean():.3f}) |"
        )
    return "\n".join(lines)


def rare_classes(runs: pd.DataFrame) -> str:
    """Average-K accuracy at the federated λ on the rarest and commonest training classes."""
    runs = runs[runs.long_tail > 1].copy()
    for name, classes in (("tail", TAIL_CLASSES), ("head", HEAD_CLASSES)):
        runs[name] = runs[[f"avgk_accuracy_c{j}" for j in classes]].mean(axis=1)
    lines = [
        "| split | p | classes | CE+softmax | two-head | Δ (paired) |",
        "|---|---|---|---|---|---|",
    ]
    for (split, p), cell in runs.groupby(["split", "ambiguity"], sort=False):
        for name, classes in (("tail", TAIL_CLASSES), ("head", HEAD_CLASSES)):
            ce, th = cell[cell.method == "CE+softmax"], cell[cell.method == "two-head"]
            lines.append(
                f"| {split} | {p} | {name} {classes} | {ms(ce[name])} | {ms(th[name])} | "
                f"{ms(paired(cell, name))} |"
            )
    return "\n".join(lines)


def by_k(runs: pd.DataFrame, ceiling: dict[float, float] | None = None) -> str:
    head = "| K | CE+softmax | two-head | Δ (paired) |" + (" Bayes ceiling |" if ceiling else "")
    lines = [head, "|---" * (head.count("|") - 1) + "|"]
    for k, cell in runs.groupby("k"):
        ce, th = cell[cell.method == "CE+softmax"], cell[cell.method == "two-head"]
        line = (
            f"| {k:g} | {ms(ce.avgk_accuracy_exact)} | {ms(th.avgk_accuracy_exact)} | "
            f"{ms(paired(cell, 'avgk_accuracy_exact'))} |"
        )
        lines.append(line + (f" {ceiling[float(k)]:.4f} |" if ceiling else ""))
    return "\n".join(lines)


def thresholds(runs: pd.DataFrame) -> str:
    """Global vs per-client λ, on the clients' held-out data and at the server."""
    lines = [
        "| split | p | tail | method | clients, global λ: acc (size) | clients, own λ: acc (size) "
        "| server, mean of clients' λ: acc (size) |",
        "|---|---|---|---|---|---|---|",
    ]
    fed = runs[runs.split != "central"]
    for (split, p, tail, method), c in fed.groupby(
        ["split", "ambiguity", "long_tail", "method"], sort=False
    ):
        lines.append(
            f"| {split} | {p} | ×{tail:g} | {method} | {c.fed_eval_avgk_accuracy.mean():.4f} "
            f"({c.fed_eval_avg_set_size.mean():.3f}) | {c.fed_eval_avgk_accuracy_own.mean():.4f} "
            f"({c.fed_eval_avg_set_size_own.mean():.3f}) | "
            f"{c.avgk_accuracy_mean_threshold.mean():.4f} "
            f"({c.avg_set_size_mean_threshold.mean():.3f}) |"
        )
    return "\n".join(lines)


def bayes_ceiling(raw: dict[str, Any], ks: list[float]) -> dict[float, float]:
    """The Bayes-optimal average-K accuracy of the synthetic test set, from its true posterior."""
    checkout_fedsim()
    from fedsim.avgk_data import GaussianAvgkParams, bayes_average_k_accuracy, posterior
    from fedsim.data import load_data
    from fedsim.registry import Component

    options = {k: v for k, v in raw["data"].items() if k not in ("name", "partition")}
    dataset = load_data(Component(name=raw["data"]["name"], **options))
    prob = posterior(GaussianAvgkParams(**options), dataset.x_test)
    return {k: bayes_average_k_accuracy(prob, k) for k in ks}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=len(SEEDS), help="seeds per point (5)")
    parser.add_argument("--smoke", action="store_true", help="seconds: tiny data, 1 round, 1 seed")
    parser.add_argument("--out", type=Path, help="output folder (default: OUT/avgk)")
    args = parser.parse_args()
    seeds = [0] if args.smoke else SEEDS[: args.seeds]
    out = args.out or (OUT / "smoke" if args.smoke else OUT) / "avgk"
    fmnist = yaml.safe_load((HERE / "fmnist.yaml").read_text())
    gaussian = yaml.safe_load((HERE / "gaussian.yaml").read_text())
    base = fmnist["workload"]
    data = {"data.ambiguity": [0.0, 0.3], "data.long_tail": [1.0, 10.0]}
    if args.smoke:
        data = {"data.ambiguity": [0.3], "data.long_tail": [10.0]}
    central = {**fmnist, "clients": {"num": 1, "per_round": 1}}
    splits, ks = (SPLITS[:1], [2.0]) if args.smoke else (SPLITS, [1.5, 2.0, 3.0])
    sweeps = {
        "central": (central, {"workload": methods(base, 2.0), **data, "seed": seeds}),
        "federated": (
            fmnist,
            {"workload": methods(base, 2.0), **data, "data.partition": splits, "seed": seeds},
        ),
        "k": (
            {**fmnist, "data": {**fmnist["data"], "ambiguity": 0.3, "partition": SPLITS[1]}},
            {
                "workload": [m for k in ks if k != 2.0 or args.smoke for m in methods(base, k)],
                "seed": seeds,
            },
        ),
        "gaussian": (
            gaussian,
            {"workload": [m for k in ks for m in methods(gaussian["workload"], k)], "seed": seeds},
        ),
    }
    frames = {
        name: last_rows(sweep(raw, grid, out / name, args.smoke))
        for name, (raw, grid) in sweeps.items()
    }
    report([out / name for name in sweeps], out / "report")
    fmnist_runs = pd.concat([frames["central"], frames["federated"]], ignore_index=True)
    k_runs = pd.concat(
        [
            frames["k"],
            frames["federated"][
                (frames["federated"].split == "dirichlet")
                & (frames["federated"].ambiguity == 0.3)
                & (frames["federated"].long_tail == 1.0)
            ],
        ]
    )
    if args.smoke:
        gaussian["data"] = {**gaussian["data"], **SMOKE_DATA["avgk_gaussian"]}
    ceiling = bayes_ceiling(gaussian, ks)
    text = "\n\n".join(
        [
            "### Fashion-MNIST, K = 2: average-K accuracy at exactly K (test-calibrated λ)\n\n"
            + headline(fmnist_runs),
            "### Long-tailed training data: per-class average-K accuracy at the federated λ\n\n"
            + rare_classes(fmnist_runs),
            "### K (Fashion-MNIST, p = 0.3, balanced, Dirichlet 0.5)\n\n" + by_k(k_runs),
            "### Synthetic Gaussian classes with the exact posterior (Dirichlet 0.5)\n\n"
            + by_k(frames["gaussian"], ceiling),
            "### Global vs per-client λ (federated runs)\n\n" + thresholds(fmnist_runs),
        ]
    )
    (out / "tables.md").write_text(text + "\n")
    print(text)
    print(f"report: {out / 'report' / 'report.html'}")


if __name__ == "__main__":
    main()
