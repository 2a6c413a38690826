"""Partitioned GNN training: centralised GCN against 10 clients under each partitioner x edge rule.

    nice python benchmarks/gnn/partitioned.py              # 72 + 9 runs, 30 rounds each
    nice python benchmarks/gnn/partitioned.py --rounds 10  # a quicker look
    python benchmarks/gnn/partitioned.py --smoke           # seconds: one small cSBM, 2 runs

Graphs: a contextual SBM (1,500 nodes, 5 classes, mean degree 10, feature SNR 1) at homophily
0.8 and 0.3, and a 10-NN graph over 2,000 Fashion-MNIST test images (32 principal components).
Sizes are chosen for about 15 minutes on a shared 2-core machine: a 2-hop halo on these graphs
gives every client nearly the whole graph, so those runs cost about 10 centralised ones.
Runs the sweeps in federated.yaml and centralised.yaml (each with its own report), then writes
gnn.md (final test accuracy, mean ± std over 3 seeds; edge cut, balance, replication factor and
halo bytes of each partition) and accuracy.png. Output: benchmarks/out/gnn/, or --out.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sweep_report import run_sweep_with_report  # benchmarks/ holds the shared helper

HERE = Path(__file__).resolve().parent
OUT = HERE.parent / "out" / "gnn"
CENTRAL = "centralised"
PARTITION_STATS = ("edge_cut", "balance", "replication_factor", "halo_bytes")
# --smoke: one small graph, one seed, 2 rounds; the federated sweep under one partitioner.
SMOKE_GRAPH = (
    "{name: csbm, num_nodes: 300, num_classes: 3, avg_degree: 6, homophily: 0.8, feature_snr: 1.0}"
)
SMOKE = {
    "centralised": ["rounds=2", f"sweep={{data: [{SMOKE_GRAPH}], seed: [0]}}"],
    "federated": [
        "rounds=2",
        f"sweep={{data: [{SMOKE_GRAPH}], data.partition: [{{name: metis, edges: halo, hops: 1}}], "
        "seed: [0]}",
    ],
}


def graph_label(data: dict[str, Any]) -> str:
    if data["name"] == "csbm":
        return f"cSBM h={data['homophily']}"
    return f"{data['source']} {data['k']}-NN"


def setting_label(values: dict[str, Any]) -> str:
    partition = values.get("data.partition")
    if partition is None:
        return CENTRAL
    if partition["edges"] == "drop":
        return f"{partition['name']} / drop"
    return f"{partition['name']} / halo {partition['hops']}-hop"


def collect(sweep: Path) -> pd.DataFrame:
    """One row per run: graph, setting, seed, final central accuracy and the partition's costs."""
    rows = []
    for point in json.loads((sweep / "sweep.json").read_text())["points"]:
        metrics = pd.read_csv(sweep / point["dir"] / "metrics.csv")
        server = metrics[metrics.scope == "server"]
        accuracy = server[server.metric == "accuracy"]
        row = {
            "graph": graph_label(point["values"]["data"]),
            "setting": setting_label(point["values"]),
            "seed": point["values"]["seed"],
            "accuracy": float(accuracy[accuracy["round"] == accuracy["round"].max()].value.iloc[0]),
        }
        for stat in PARTITION_STATS:
            row[stat] = float(server[server.metric == stat].value.iloc[0])
        rows.append(row)
    return pd.DataFrame(rows)


def accuracy_table(runs: pd.DataFrame) -> str:
    graphs = list(dict.fromkeys(runs.graph))
    lines = ["| setting | " + " | ".join(graphs) + " |", "|---" * (len(graphs) + 1) + "|"]
    for setting, group in runs.groupby("setting", sort=False):
        cells = []
        for graph in graphs:
            acc = group[group.graph == graph].accuracy
            cells.append(f"{100 * acc.mean():.1f} ± {100 * acc.std():.1f}")
        lines.append(f"| {setting} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def cost_table(runs: pd.DataFrame) -> str:
    lines = [
        "| graph | setting | edge cut | balance | replication factor | halo MB |",
        "|---|---|---|---|---|---|",
    ]
    federated = runs[runs.setting != CENTRAL]
    for (graph, setting), group in federated.groupby(["graph", "setting"], sort=False):
        lines.append(
            f"| {graph} | {setting} | {group.edge_cut.mean():.3f} | {group.balance.mean():.2f} "
            f"| {group.replication_factor.mean():.2f} | {group.halo_bytes.mean() / 1e6:.2f} |"
        )
    return "\n".join(lines)


def figure(runs: pd.DataFrame, path: Path) -> None:
    graphs = list(dict.fromkeys(runs.graph))
    settings = [s for s in dict.fromkeys(runs.setting) if s != CENTRAL]
    fig, ax = plt.subplots(figsize=(10, 5))
    width = 0.8 / len(settings)
    x = np.arange(len(graphs))
    for i, setting in enumerate(settings):
        group = runs[runs.setting == setting].groupby("graph").accuracy
        means = [100 * group.mean()[g] for g in graphs]
        stds = [100 * group.std()[g] for g in graphs]
        hatch = "//" if "halo" in setting else None
        ax.bar(x + (i - (len(settings) - 1) / 2) * width, means, width, yerr=stds,
               label=setting, hatch=hatch, capsize=2)  # fmt: skip
    central = runs[runs.setting == CENTRAL].groupby("graph").accuracy.mean()
    for j, graph in enumerate(graphs):
        ax.hlines(100 * central[graph], j - 0.45, j + 0.45, colors="black", linestyles="--",
                  label=CENTRAL if j == 0 else None)  # fmt: skip
    ax.set_xticks(x, graphs)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("GCN, 10 clients: partitioner / cross-client edges (mean ± std, 3 seeds)")
    ax.legend(ncol=5, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.08))
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, help="override the sweeps' rounds")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="seconds: a 300-node cSBM, 1 seed, 2 rounds, metis with 1-hop halos only",
    )
    parser.add_argument("--out", type=Path, help=f"output folder (default: {OUT})")
    args = parser.parse_args()
    out = args.out or (OUT.parent / "smoke" / OUT.name if args.smoke else OUT)
    sets = [f"rounds={args.rounds}"] if args.rounds else []
    seconds = 0.0
    for name in ("centralised", "federated"):
        smoke = SMOKE[name] if args.smoke else []
        seconds += run_sweep_with_report(HERE / f"{name}.yaml", out / name, smoke + sets)
    runs = pd.concat([collect(out / "centralised"), collect(out / "federated")])
    runs.to_csv(out / "runs.csv", index=False)
    figure(runs, out / "accuracy.png")
    text = (
        "## Final test accuracy (%)\n\n" + accuracy_table(runs)
        + "\n\n## Partition costs (mean over seeds)\n\n" + cost_table(runs)
        + f"\n\nSweeps ran in {seconds:.0f} s.\n"
    )  # fmt: skip
    (out / "gnn.md").write_text(text)
    print(f"{text}\nfigure: {out / 'accuracy.png'}")


if __name__ == "__main__":
    main()
