"""The information plane on SZT: activations, L2, initialisations, federated, adaptive vs fixed.

    python benchmarks/infoplane/run.py            # 48 runs of 200 rounds (~8 min CPU)
    python benchmarks/infoplane/run.py --smoke    # seconds: 3 rounds, one run per sweep

Three sweeps of szt.yaml (the paper's 12-10-7-5-4-3-2 network, 200 one-epoch rounds, the plane
on all 4,096 inputs at 20 log-spaced rounds, adaptive and fixed binning):
  central/      tanh, ReLU × L2 0, 0.015 × 5 seeds (one client holding the training set)
  activations/  ELU, softplus × L2 0, 0.015 × 5 seeds
  federated/    tanh, ReLU × IID, label-skewed (Dirichlet 0.3) × 2 seeds, 4 clients (the grid's
                cut: not every activation and L2, 2 seeds, to stay within 15 minutes); the plane
                also from the clients' histograms under global edges, exact and sketched
then one report over all of them and plane.md: the tables behind the paper's claims.
Compression of a layer = its peak I(X;T) over the analysed rounds minus its last (bits).
Output: benchmarks/out/infoplane/ (or --out).
"""

from __future__ import annotations

import argparse
import json
import sys
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sweep_report import mean_std, report, run_sweep  # benchmarks/ holds the shared helper

HERE = Path(__file__).resolve().parent
OUT = HERE.parent / "out"
SCENARIO = HERE / "szt.yaml"
LAST_HIDDEN, OUTPUT = 5, 6
ACTIVATIONS = (
    "sweep={workload.model.activation: [elu, softplus], workload.weight_decay: [0.0, 0.015], "
    "seed: [0, 1, 2, 3, 4]}"
)
ANALYSES = (
    "analysis=["
    "{name: information_plane, schedule: log, points: 20, federated: exact, central_probe: all,"
    " client_planes: true},"
    "{name: information_plane, estimator: fixed_binning, tag: fixed, schedule: log, points: 20,"
    " federated: none, central_probe: all},"
    "{name: information_plane, tag: sketch, schedule: log, points: 20, federated: sketch,"
    " central: false}]"
)
FEDERATED = [
    "clients={num: 4, per_round: 4}",
    ANALYSES,
    "sweep={workload.model.activation: [tanh, relu], "
    "data.partition: [{name: iid}, {name: dirichlet, alpha: 0.3}], seed: [0, 1]}",
]
SMOKE = ["rounds=3"]
SMOKE_SWEEP = "sweep={workload.model.activation: [relu], seed: [0]}"
SMOKE_FEDERATED = (
    "sweep={workload.model.activation: [relu], data.partition: [{name: dirichlet, alpha: 0.3}], "
    "seed: [0]}"
)

pm = partial(mean_std, digits=2)  # bits and accuracies to 2 places


def runs(sweep: Path) -> pd.DataFrame:
    """One row per run: its sweep values, test accuracy, and per layer the peak and last
    I(X;T) (server: all 4,096 inputs) under adaptive and fixed bins."""
    rows = []
    for point in json.loads((sweep / "sweep.json").read_text())["points"]:
        metrics = pd.read_csv(sweep / point["dir"] / "metrics.csv")
        values = point["values"]
        server = metrics[metrics.scope == "server"].pivot_table(
            index="round", columns="metric", values="value"
        )
        row = {
            "activation": values.get("workload.model.activation", "?"),
            "l2": values.get("workload.weight_decay", 0.0),
            "partition": (values.get("data.partition") or {}).get("name", "central"),
            "seed": values["seed"],
            "accuracy": server["accuracy"].dropna().iloc[-1],
            # A ReLU network can die (every unit of a layer 0 on every input): its plane is
            # all zeros and its accuracy the majority class's; kept apart from the correlations.
            "collapsed": bool(server[f"mi_xt.{LAST_HIDDEN}"].dropna().iloc[-1] == 0.0),
            "dir": sweep / point["dir"],
        }
        for prefix, tag in (("mi_xt", ""), ("mi_xt_fixed", "fixed ")):
            for layer in range(1, OUTPUT + 1):
                xt = server[f"{prefix}.{layer}"].dropna()
                row[f"{tag}peak {layer}"] = xt.max()
                row[f"{tag}last {layer}"] = xt.iloc[-1]
                row[f"{tag}compression {layer}"] = xt.max() - xt.iloc[-1]
        rows.append(row)
    return pd.DataFrame(rows)


def claims_table(central: pd.DataFrame) -> str:
    columns = [
        "activation", "L2", "seeds", "collapsed", "test acc", "compression, last hidden (EBAB)",
        "seeds compressing > 0.1 bit", "compression, last hidden (fixed bins)",
        "I(X;T) last hidden, end", "compression, output (EBAB)",
    ]  # fmt: skip
    lines = ["| " + " | ".join(columns) + " |", "|---" * len(columns) + "|"]
    for (act, l2), g in central.groupby(["activation", "l2"], sort=False):
        c = g[f"compression {LAST_HIDDEN}"]
        lines.append(
            f"| {act} | {l2} | {len(g)} | {int(g.collapsed.sum())} | {pm(g.accuracy)} | {pm(c)} "
            f"| {int((c > 0.1).sum())}/{len(g)} "
            f"| {pm(g[f'fixed compression {LAST_HIDDEN}'])} | {pm(g[f'last {LAST_HIDDEN}'])} "
            f"| {pm(g[f'compression {OUTPUT}'])} |"
        )
    return "\n".join(lines)


def correlation_table(central: pd.DataFrame) -> str:
    """Across the runs that did not collapse: Pearson r of each layer's compression with test
    accuracy, within each activation and L2 (which move both, confounding a pooled r), and
    pooled."""
    header = (
        "| activation | runs | " + " | ".join(f"layer {i}" for i in range(1, OUTPUT + 1)) + " |"
    )
    lines = [header, "|---|---|" + "---|" * OUTPUT]
    alive = central[~central.collapsed]
    groups = [(f"{a} L2={l2}", g) for (a, l2), g in alive.groupby(["activation", "l2"], sort=False)]
    pooled = [(f"all L2={l2}", g) for l2, g in alive.groupby("l2", sort=False)]
    for act, g in [*groups, *pooled, ("all", alive)]:
        cells = []
        for layer in range(1, OUTPUT + 1):
            c = g[f"compression {layer}"]
            r = np.corrcoef(c, g.accuracy)[0, 1] if c.std() > 0 and g.accuracy.std() > 0 else np.nan
            cells.append("–" if np.isnan(r) else f"{r:+.2f}")
        lines.append(f"| {act} | {len(g)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def federated_table(sweep: Path) -> str:
    """Per federated run, over the analysed rounds and layers: the union's estimate with exact
    global edges against sketched edges; each client's own data under edges of its own against
    the global edges; the union (the training set) against the server's estimate on all 4,096
    inputs; and the traffic of each protocol."""
    columns = [
        "activation", "partition", "seed", "mean abs(exact − sketch) I(X;T)",
        "a client's data, mean (own − global edges) I(X;T)", "mean (global − server) I(X;T)",
        "exact bytes up / round", "sketch bytes up / round",
    ]  # fmt: skip
    lines = ["| " + " | ".join(columns) + " |", "|---" * len(columns) + "|"]
    for point in json.loads((sweep / "sweep.json").read_text())["points"]:
        m = pd.read_csv(sweep / point["dir"] / "metrics.csv")
        values = point["values"]

        def table(scope: str, prefix: str, m: pd.DataFrame = m) -> pd.DataFrame:
            rows = m[(m.scope == scope) & m.metric.str.match(rf"^{prefix}\.\d+$")]
            return rows.pivot_table(index="round", columns="metric", values="value")

        exact = table("federated", "mi_xt")
        sketch = table("federated", "mi_xt_sketch").rename(
            columns=lambda c: c.replace("_sketch", "")
        )
        server = table("server", "mi_xt")
        clients = m[m.scope == "client"]
        own, mine = (
            clients[clients.metric.str.match(rf"^infoplane_counts_mi_xt_{kind}\.\d+$")]
            .pivot_table(index=["round", "client"], columns="metric", values="value")
            .rename(columns=lambda c: c.split(".")[-1])
            for kind in ("own", "global")
        )
        traffic = m[m.scope == "server"].pivot_table(
            index="round", columns="metric", values="value"
        )
        lines.append(
            f"| {values['workload.model.activation']} | {values['data.partition']['name']} "
            f"| {values['seed']} | {(exact - sketch).abs().stack().mean():.3f} "
            f"| {(own - mine).stack().mean():+.3f} | {(exact - server).stack().mean():+.2f} "
            f"| {traffic['infoplane_levels_bytes_up'].dropna().mean():,.0f} "
            f"| {traffic['infoplane_sketch_levels_bytes_up'].dropna().mean():,.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="seconds: 3 rounds, one run each")
    parser.add_argument("--out", type=Path, help="output folder (default: OUT/infoplane)")
    parser.add_argument(
        "--tables", action="store_true", help="only the report and tables, from the runs in --out"
    )
    args = parser.parse_args()
    out = args.out or (OUT / "smoke" if args.smoke else OUT) / "infoplane"
    smoke = SMOKE if args.smoke else []
    one = [SMOKE_SWEEP] if args.smoke else []
    times = (
        {}
        if args.tables
        else {
            "central": run_sweep(SCENARIO, out / "central", [*smoke, *one]),
            "activations": run_sweep(
                SCENARIO, out / "activations", [*smoke, one[0] if one else ACTIVATIONS]
            ),
            "federated": run_sweep(
                SCENARIO,
                out / "federated",
                [*smoke, *FEDERATED[:2], SMOKE_FEDERATED if args.smoke else FEDERATED[2]],
            ),
        }
    )
    report([out / "central", out / "activations", out / "federated"], out / "report")
    central = pd.concat([runs(out / "central"), runs(out / "activations")], ignore_index=True)
    text = "\n\n".join(
        [
            "Centralised, per activation and L2 (mean ± std over seeds; bits):",
            claims_table(central),
            "Pearson r between a layer's compression (EBAB) and test accuracy, across seeds:",
            correlation_table(central),
            "Federated (4 clients): global edges, exact vs sketched, vs per-client edges:",
            federated_table(out / "federated"),
            "Sweep seconds: " + (", ".join(f"{k} {v:.0f}" for k, v in times.items()) or "–"),
        ]
    )
    (out / "plane.md").write_text(text + "\n")
    central.drop(columns="dir").to_csv(out / "runs.csv", index=False)
    print(text)
    print(f"report: {out / 'report' / 'report.html'}")


if __name__ == "__main__":
    main()
