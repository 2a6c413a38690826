"""Robustness benchmark: final accuracy of every aggregator under every attack, f ∈ {0, 1, 3}.

    python benchmarks/byzantine/robustness.py            # the full grid (hours on 2 cores)
    python benchmarks/byzantine/robustness.py --quick    # 1 seed, Dirichlet only, 15 rounds
    python benchmarks/byzantine/robustness.py --smoke --out /tmp/byz   # seconds (see --help)

Fashion-MNIST, 15 clients all training every round, Dirichlet α=1 and IID splits, 2 seeds.
Each rule is told the true f (rules with an ``f`` parameter); "none" runs f = 0 attackers with
the rule still set for f, which prices robustness when nobody attacks. One sweep per (split, f,
attack), so every point is an ordinary fedsim run (resumable, reportable). Output in
benchmarks/out/byzantine/: the runs (a folder per split), ``robustness.csv`` (mean and std over
seeds), a heat map per split (``heatmap_<split>.png``) and ``claim.md``: where Flag is at least
as robust as the best of Krum, Multi-Krum, Bulyan and median at equal f, and where it is not.
--out puts all of it elsewhere; an existing folder's sweeps are resumed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pandas as pd
import yaml
from matplotlib.figure import Figure

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # this checkout's fedsim
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the shared helpers
from command import ROOT, checkout_fedsim

from fedsim.registry import AGGREGATORS, load_components

OUT = ROOT / "benchmarks" / "out" / "byzantine"
ATTACKS = ["none", "sign_flip", "alie", "ipm", "gaussian", "label_flip"]
BASELINES = ["krum", "multi_krum", "bulyan", "median"]
SPLITS = {"dirichlet": {"name": "dirichlet", "alpha": 1.0}, "iid": {"name": "iid"}}
CLIENTS = 15
DATASET, SMOKE_DATASET = "fashion_mnist", "digits"


def base(rounds: int, dataset: str) -> dict[str, Any]:
    return {
        "rounds": rounds,
        "data": {"name": dataset, "val_fraction": 0.0},
        "clients": {"num": CLIENTS, "per_round": CLIENTS},
        "workload": {
            "name": "classification",
            "model": "mlp",
            "hidden": 128,
            "steps": 10,
            "batch_size": 32,
            "lr": 0.05,
        },
        "eval": {"every": rounds, "clients": 0.0},
        "checkpoint_every": 0,
    }


def aggregator(name: str, f: int) -> dict[str, Any]:
    """The rule, told the true f when it takes one."""
    fields = AGGREGATORS.entry(name).params.model_fields
    return {"name": name, "f": f} if "f" in fields else {"name": name}


def sweep(split: str, f: int, attack: str, args: argparse.Namespace) -> dict[str, Any]:
    scenario = base(args.rounds, args.dataset)
    scenario["data"]["partition"] = SPLITS[split]
    scenario["name"] = f"byz_f{f}_{attack}"
    scenario["byzantine"] = {
        "num": 0 if attack == "none" else f,
        "attack": {"name": "sign_flip" if attack == "none" else attack},
    }
    scenario["strategy"] = {"name": "fedavg", "aggregator": {"name": "mean"}}
    scenario["sweep"] = {
        "strategy.aggregator": [aggregator(a, f) for a in args.aggregators],
        "seed": list(range(args.seeds)),
    }
    return scenario


def collect(directory: Path) -> pd.DataFrame:
    """One row per finished run: f, attack, split, aggregator, seed, final accuracy."""
    rows = []
    for index in sorted(directory.glob("*/f*_*/sweep.json")):
        f_part, attack = index.parent.name.split("_", 1)
        split = index.parent.parent.name
        for point in json.loads(index.read_text())["points"]:
            metrics_file = index.parent / point["dir"] / "metrics.csv"
            if point["status"] != "completed" or not metrics_file.exists():
                continue
            metrics = pd.read_csv(metrics_file)
            acc = metrics[(metrics.scope == "server") & (metrics.metric == "accuracy")]
            values = point["values"]
            rows.append(
                {
                    "f": int(f_part[1:]),
                    "attack": attack,
                    "split": split,
                    "aggregator": values["strategy.aggregator"]["name"],
                    "seed": values["seed"],
                    "accuracy": float(acc.value.iloc[-1]),
                }
            )
    return pd.DataFrame(rows)


def heatmap(table: pd.DataFrame, split: str, path: Path, dataset: str) -> None:
    """Rows: aggregators; columns: (f, attack); colour and text: mean final accuracy."""
    part = table[table.split == split].pivot_table(
        index="aggregator", columns=["f", "attack"], values="mean"
    )
    order = sorted(part.columns, key=lambda c: (c[0], ATTACKS.index(c[1])))
    part = part[order]
    # Colours span the observed range (to the tenth), for contrast where the rules differ.
    low = np.floor(np.nanmin(part.to_numpy()) * 10) / 10
    high = np.ceil(np.nanmax(part.to_numpy()) * 10) / 10
    with matplotlib.rc_context({"font.size": 8}):
        fig = Figure(figsize=(1.0 + 0.55 * part.shape[1], 0.8 + 0.4 * part.shape[0]))
        ax = fig.subplots()
        image = ax.imshow(part.to_numpy(), vmin=low, vmax=high, cmap="viridis", aspect="auto")
        for (i, j), value in np.ndenumerate(part.to_numpy()):
            if np.isfinite(value):
                colour = "black" if value > (low + high) / 2 else "white"
                ax.text(j, i, f"{value:.2f}", ha="center", va="center", color=colour)
        ax.set_xticks(
            range(part.shape[1]),
            [f"f={f} {a}" for f, a in part.columns],
            rotation=45,
            ha="right",
        )
        ax.set_yticks(range(part.shape[0]), part.index)
        ax.set_title(f"final test accuracy, {dataset}, {CLIENTS} clients, {split} split")
        fig.colorbar(image, ax=ax, shrink=0.8)
        fig.savefig(path, dpi=150, bbox_inches="tight")


def claim(table: pd.DataFrame) -> str:
    """Flag vs the best of the baselines, cell by cell (f > 0 attacks)."""
    lines = [
        "| split | f | attack | flag | best baseline | flag − best | holds |",
        "|---|---|---|---|---|---|---|",
    ]
    held = total = 0
    for (split, f, attack), cell in table[table.f > 0].groupby(["split", "f", "attack"]):
        means = cell.set_index("aggregator")["mean"]
        if "flag" not in means or not means.index.isin(BASELINES).any():
            continue
        best = means[means.index.isin(BASELINES)]
        gap = means["flag"] - best.max()
        holds = gap >= -0.01  # within one point counts as "at least as robust"
        held, total = held + holds, total + 1
        lines.append(
            f"| {split} | {f} | {attack} | {means['flag']:.3f} | {best.idxmax()} "
            f"{best.max():.3f} | {gap:+.3f} | {'yes' if holds else 'no'} |"
        )
    return f"Flag ≥ best baseline − 0.01 in {held} of {total} cells.\n\n" + "\n".join(lines)


def run_sweep(out: Path, split: str, f: int, attack: str, args: argparse.Namespace) -> None:
    """One (split, f, attack) sweep over aggregators and seeds; an existing one is resumed."""
    out.mkdir(parents=True, exist_ok=True)
    directory, file = out / f"f{f}_{attack}", out / f"f{f}_{attack}.yaml"
    file.write_text(yaml.safe_dump(sweep(split, f, attack, args), sort_keys=False))
    fedsim = checkout_fedsim()  # in this process: one start-up for every sweep
    jobs = 1 if args.smoke else None  # two tiny points: a process each would cost more
    print(f"{split} f={f} {attack}", flush=True)
    if directory.exists():
        fedsim.resume(directory, echo=print, jobs=jobs)
    else:
        fedsim.run(file, out=directory, echo=print, jobs=jobs)


def main() -> None:
    load_components()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 seed, Dirichlet, 15 rounds")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="seconds: digits, 2 rounds, 1 seed, Dirichlet, f=1, sign_flip, krum and flag "
        "(into benchmarks/out/smoke/byzantine unless --out)",
    )
    parser.add_argument("--out", type=Path, help=f"output folder (default: {OUT})")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--f", type=int, nargs="+", default=[0, 1, 3])
    parser.add_argument("--attacks", nargs="+", default=ATTACKS, choices=ATTACKS)
    parser.add_argument("--splits", nargs="+", default=list(SPLITS), choices=list(SPLITS))
    parser.add_argument("--aggregators", nargs="+", default=AGGREGATORS.names())
    args = parser.parse_args()
    # delete a folder to start it over
    out = args.out or (
        OUT.parent / "smoke" / OUT.name if args.smoke else OUT / "quick" if args.quick else OUT
    )
    args.dataset = DATASET
    if args.quick:
        args.rounds, args.seeds, args.splits = 15, 1, ["dirichlet"]
    if args.smoke:
        args.rounds, args.seeds, args.splits, args.dataset = 2, 1, ["dirichlet"], SMOKE_DATASET
        args.f, args.attacks, args.aggregators = [1], ["sign_flip"], ["krum", "flag"]
    out.mkdir(parents=True, exist_ok=True)
    for split in args.splits:
        for f in args.f:
            for attack in ["none"] if f == 0 else args.attacks:
                run_sweep(out / split, split, f, attack, args)
    runs = collect(out)
    table = (
        runs.groupby(["split", "f", "attack", "aggregator"])
        .accuracy.agg(["mean", "std", "count"])
        .reset_index()
    )
    table.to_csv(out / "robustness.csv", index=False)
    for split in table.split.unique():
        heatmap(table, split, out / f"heatmap_{split}.png", args.dataset)
    (out / "claim.md").write_text(claim(table) + "\n")
    print(claim(table))
    print(f"table: {out / 'robustness.csv'}; heat maps: {out}/heatmap_*.png")


if __name__ == "__main__":
    main()
