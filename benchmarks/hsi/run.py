"""Hyperspectral CNN + deep CRF (issue 19): the stage ablation and the tiling grid, OA/AA/κ.

    python benchmarks/hsi/run.py            # both sweeps, the table, the figure (~15 min)
    python benchmarks/hsi/run.py --smoke    # seconds: a 16 x 16 scene, 2 rounds, one seed

On a 48 x 48 x 32-band hsi_synthetic scene (6 classes, 2 spectrally similar pairs, 10 % of each
class labelled as 3 x 3 blocks), 10 rounds of 2 local epochs: ablation.yaml (one client: CNN
only, the full model, the full model without band groups) and tiles.yaml (the full model over 4
and 9 tiles, halo 0 and 2), both on the same 5 scenes. A table of the final whole-scene OA, AA
and κ, mean ± std, the claims checked paired by scene, the time of one round and of mean-field
on the whole scene, and a figure (ground truth beside the CNN, + CRF and + refinement maps,
tile borders) of the centralised and the 4-tile runs' final models on scene 0: written here,
not by ``fedsim report``, whose figures are per-metric curves. Output: benchmarks/out/hsi/.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from claims import paired_claims  # benchmarks/ holds the shared helpers
from sweep_report import final_server_metrics, report, run_sweep

HERE = Path(__file__).resolve().parent
OUT = HERE.parent / "out"
SMALL = [
    "data.height=16",
    "data.width=16",
    "data.bands=8",
    "data.classes=3",
    "data.similar_pairs=1",
    "rounds=2",
    "eval.every=2",
    "checkpoint_every=2",
    "workload.refine_steps=2",
]
SMOKE_ABLATION = (
    "sweep={workload: [{name: hsi, crf: false, refine: false}, {name: hsi}], data.seed: [0]}"
)
SMOKE_TILES = (
    "sweep={data.partition: [{name: tiles, halo: 0}, {name: tiles, halo: 2}], data.seed: [0]}"
)
STAGES = (("cnn", "CNN unary"), ("crf", "+ CRF (mean-field)"), ("refine", "+ refinement"))


def final(sweep: Path) -> pd.DataFrame:
    """One row per (run, stage): its setting, scene seed and final whole-scene OA, AA, κ."""
    rows = []
    for values, run_dir, last in final_server_metrics(sweep):
        raw = yaml.safe_load((run_dir / "scenario.yaml").read_text())
        w = raw["workload"]
        clients = raw["clients"]["num"]
        halo = raw["data"]["partition"].get("halo", 0)
        where = "centralised" if clients == 1 else f"{clients} tiles, halo {halo}"
        grouped = "" if w.get("band_groups", 4) != 1 else ", no band groups"
        for stage, label in STAGES:
            if f"oa_{stage}" not in last:
                continue
            trained = "" if w.get("crf", True) or stage != "cnn" else " (trained alone)"
            rows.append(
                {
                    "setting": f"{where}: {label}{trained}{grouped}",
                    "seed": values["data.seed"],
                    "oa": last[f"oa_{stage}"],
                    "aa": last[f"aa_{stage}"],
                    "kappa": last[f"kappa_{stage}"],
                    **(
                        {
                            "tiles_oa": last["tiles_oa"],
                            "edges_lost": last["crf_edges_lost"],
                            "halo_bytes": last["halo_bytes"],
                        }
                        if stage == "refine"
                        else {}
                    ),
                    "dir": str(run_dir),
                }
            )
    return pd.DataFrame(rows)


def table(runs: pd.DataFrame) -> str:
    lines = ["| setting | seeds | OA | AA | κ |", "|---|---|---|---|---|"]
    for setting, g in runs.groupby("setting", sort=False):
        cells = [f"{g[c].mean():.3f} ± {g[c].std(ddof=1):.3f}" for c in ("oa", "aa", "kappa")]
        lines.append(f"| {setting} | {len(g)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


CLAIMS = (
    (
        "the CRF adds over the CNN unary",
        "centralised: + CRF (mean-field)",
        "centralised: CNN unary",
    ),
    (
        "refinement adds over the CRF",
        "centralised: + refinement",
        "centralised: + CRF (mean-field)",
    ),
    (
        "the full model beats the CNN trained alone",
        "centralised: + refinement",
        "centralised: CNN unary (trained alone)",
    ),
    ("band groups help", "centralised: + refinement", "centralised: + refinement, no band groups"),
    ("a halo helps 4 tiles", "4 tiles, halo 2: + refinement", "4 tiles, halo 0: + refinement"),
    ("a halo helps 9 tiles", "9 tiles, halo 2: + refinement", "9 tiles, halo 0: + refinement"),
    (
        "the CRF adds over the unary on 4 tiles (halo 2)",
        "4 tiles, halo 2: + CRF (mean-field)",
        "4 tiles, halo 2: CNN unary",
    ),
)


def claims(runs: pd.DataFrame) -> str:
    """Each claim's OA difference paired by scene: mean ± standard error, scenes up, and a
    verdict (holds / reversed beyond 2 standard errors, else within noise)."""
    by = runs.pivot_table(index="seed", columns="setting", values="oa")
    return paired_claims(by, CLAIMS, "OA", "scenes")


def timings(run_dir: Path) -> tuple[float, float]:
    """(median round seconds of ``run_dir``, seconds of mean-field on its whole scene)."""
    import torch

    from clients.hsi.crf import grid_edges, mean_field
    from fedsim.scenario import read

    metrics = pd.read_csv(run_dir / "metrics.csv")
    rounds = float(metrics[metrics.metric == "round_time_s"].value.median())
    raw = read(run_dir / "scenario.yaml", [])
    h, w = raw["data"]["height"], raw["data"]["width"]
    c, t = raw["data"]["classes"], raw["workload"].get("iterations", 5)
    edges = grid_edges(h, w)
    g = torch.Generator().manual_seed(0)
    unary, z = torch.randn(h * w, c, generator=g), torch.randn(len(edges), c, c, generator=g)
    started = time.perf_counter()
    for _ in range(5):
        mean_field(unary, edges, z, t)
    return rounds, (time.perf_counter() - started) / 5


def figure(run_dirs: list[Path], out: Path) -> None:
    """Ground truth beside each stage's predicted map for the final global model of each run
    (one row per run), tile borders drawn; grey where the ground truth has no class."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from clients.hsi.workload import HsiWorkload, predict
    from fedsim import checkpoint
    from fedsim.data import load_data
    from fedsim.hsi_data import federate_scene
    from fedsim.registry import WORKLOADS
    from fedsim.scenario import parse, read

    fig, axes = plt.subplots(len(run_dirs), 4, figsize=(12, 3.2 * len(run_dirs)), squeeze=False)
    for row, run_dir in zip(axes, run_dirs, strict=True):
        scenario = parse(read(run_dir / "scenario.yaml", []))
        scene = load_data(scenario.data.dataset)
        fed = federate_scene(scene, scenario.data.partition, scenario.clients.num, 0, 0.0)
        workload: HsiWorkload = WORKLOADS.build(scenario.workload.component)
        model = workload.build_model(scene, torch.Generator().manual_seed(0))
        state = checkpoint.load(run_dir)
        assert state is not None, f"{run_dir} has no checkpoint"
        model.load_state_dict(state.model, strict=False)
        h, w = scene.shape
        maps = {
            k: v.argmax(dim=1).reshape(h, w)
            for k, v in predict(model, scene.whole(), workload.params.iterations).items()
        }
        panels = [("ground truth", scene.labels)] + [
            (label, maps[stage]) for stage, label in STAGES if stage in maps
        ]
        for ax, (title, image) in zip(row, panels, strict=False):
            shown = image.float().numpy()
            shown[scene.labels.numpy() < 0] = float("nan")
            ax.imshow(shown, cmap="tab10", vmin=0, vmax=9, interpolation="nearest")
            if title != "ground truth":
                right = (image == scene.labels)[scene.test].float().mean()
                title = f"{title}: OA {float(right):.3f}"
            for r0, r1, c0, c1 in fed.tiles:
                ax.add_patch(
                    plt.Rectangle(
                        (c0 - 0.5, r0 - 0.5),
                        c1 - c0,
                        r1 - r0,
                        fill=False,
                        edgecolor="white",
                        linewidth=1.5,
                    )
                )
            ax.set_title(title, fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
        halo = scenario.data.partition.options.get("halo", 0)
        row[0].set_ylabel(f"{scenario.clients.num} tile(s), halo {halo}")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny scene, 2 rounds, 1 seed")
    parser.add_argument("--out", type=Path, help="output folder (default: benchmarks/out/hsi)")
    args = parser.parse_args()
    out = args.out or (OUT / "smoke" if args.smoke else OUT) / "hsi"
    small = SMALL if args.smoke else []
    started = time.perf_counter()
    run_sweep(
        HERE / "ablation.yaml", out / "ablation", [*small, SMOKE_ABLATION] if args.smoke else []
    )
    run_sweep(HERE / "tiles.yaml", out / "tiles", [*small, SMOKE_TILES] if args.smoke else [])
    elapsed = time.perf_counter() - started
    report([out / "ablation", out / "tiles"], out / "report")
    runs = pd.concat([final(out / "ablation"), final(out / "tiles")])
    runs.to_csv(out / "runs.csv", index=False)
    text = table(runs) + "\n\n" + claims(runs)
    tiled = runs[runs.setting.str.contains("tiles") & runs.setting.str.endswith("refinement")]
    cut = tiled.groupby("setting")[["tiles_oa", "edges_lost", "halo_bytes"]].mean()
    text += "\n\n| tiling (full model) | tiles' summed OA | CRF edges lost | halo bytes |\n"
    text += "|---|---|---|---|\n"
    text += "\n".join(
        f"| {k.split(':')[0]} | {r.tiles_oa:.3f} | {r.edges_lost:.3f} | {r.halo_bytes:.0f} |"
        for k, r in cut.iterrows()
    )
    first = _first_of(runs, "4 tiles, halo 2: + refinement")
    round_s, mf_s = timings(first)
    text += (
        f"\n\nboth sweeps: {elapsed:.0f} s; a round of 4 tiles (halo 2): median {round_s:.2f} s;"
        f" mean-field on the whole scene: {1000 * mf_s:.1f} ms"
    )
    (out / "table.md").write_text(text + "\n")
    figure(
        [
            _first_of(runs, "centralised: + refinement"),
            _first_of(runs, "4 tiles, halo 0: + refinement"),
            first,
        ],
        out / "maps.png",
    )
    print(f"\n{text}\n\nfigure: {out / 'maps.png'}\nreport: {out / 'report' / 'report.html'}")


def _first_of(runs: pd.DataFrame, setting: str) -> Path:
    chosen: Any = runs[runs.setting == setting].sort_values("seed")
    return Path(chosen.dir.iloc[0])


if __name__ == "__main__":
    main()
