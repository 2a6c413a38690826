"""Offline MBO: single proxy, mean, min, MGDA and CAGrad ensembles on both tasks, 3 seeds.

    python benchmarks/mbo/run.py                 # both tasks (~15 min on 2 cores)
    python benchmarks/mbo/run.py tfbind8         # one task
    python benchmarks/mbo/run.py --rounds 10     # a quick look
    python benchmarks/mbo/run.py --ensemble      # the paper's ensemble, 5 seeds (~1 h, below)
    python benchmarks/mbo/run.py --smoke         # seconds: continuous, 2 steps, both settings

For each task: the sweep in <task>.yaml (IID and score-band splits x 4 combiners x 3 seeds),
then the single-proxy baseline (one client holding all the offline data, so one proxy trained on
everything, as design-baselines' single model), one report over all of them, and a table of the
final designs' normalised oracle scores: p100 (best design) and p50 (median design), mean ± std
over seeds, against the best design of the offline data. p100 measures optimality, p50 how
conservative the ascent stayed (Kolli et al. report both).

``--ensemble``: the ensemble as Kolli et al. build it, proxies trained on the same data that
differ only in their seeds: ENSEMBLE_SIZE clients that all hold the offline data (split
``ensemble``), or each its own seeded bootstrap of it, x 4 combiners x 5 seeds, beside a single
proxy of the same training; the table, and the paper's claims (MGDA and CAGrad above mean, min
and the single proxy) paired by seed with a 2-standard-error verdict, for p100 and p50.
Output: benchmarks/out/mbo_<task>/ (ensembles/, single/, report/, scores.md), or --out/<task>;
with --ensemble, mbo_ensemble_<task>/ (the same, and claims.md), or --out/ensemble_<task>.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from claims import paired_claims  # benchmarks/ holds the shared helpers
from sweep_report import final_server_metrics, mean_std, report, run_sweep

HERE = Path(__file__).resolve().parent
OUT = HERE.parent / "out"
TASKS = ("tfbind8", "continuous")
SINGLE = ["clients={num: 1, per_round: 1}", "strategy.aggregator={name: mean}"]
SEEDS = [0, 1, 2]
# --smoke: one run of each sweep, 2 ascent steps, proxies of 2 epochs on a pool of 2,000.
SMOKE_TASK = "continuous"
SMOKE = [
    "rounds=2",
    "workload.epochs=2",
    "data.pool=2000",
    "sweep={data.partition.name: [iid], strategy.aggregator: [{name: mean}], seed: [0]}",
]

# --ensemble. Round 1 trains every member on all the data, ENSEMBLE_SIZE times an IID round's
# work: 4 members, and epochs for about 1,800 Adam steps per proxy on either task (8 epochs of
# ~29,500 TFBind8-like rows, 32 of 7,200 continuous ones, batches of 128), sized for ~20 minutes
# on 2 free cores; the README's 90 runs took 55 with the cores shared. The single proxy is
# trained the same way.
ENSEMBLE_SIZE = 4
ENSEMBLE_EPOCHS = {"tfbind8": 8, "continuous": 32}
ENSEMBLE_SEEDS = [0, 1, 2, 3, 4]
COMBINERS = ("mean", "min", "mgda", "cagrad")
ENSEMBLE_SPLITS = "[{name: ensemble}, {name: ensemble, bootstrap: true}]"
SAME, BOOTSTRAP = "same rows", "bootstrap"
# The paper's claim: MGDA and CAGrad combine the members better than its three baselines.
BASELINES = ("mean", "min", "single proxy")
# --smoke's ensemble: one run (in this process, as a sweep of one point runs), MGDA of 2 members
# on bootstraps.
ENSEMBLE_SMOKE = [
    "clients={num: 2, per_round: 2}",
    "sweep={data.partition: [{name: ensemble, bootstrap: true}], "
    "strategy.aggregator: [{name: mgda}], seed: [0]}",
]


def final_scores(sweep: Path, method: str | None = None) -> pd.DataFrame:
    """One row per run: split, method, seed, its last p100 / p50, the offline best and the
    share of client pairs whose gradients conflicted at the last step (none for one proxy)."""
    rows = []
    for values, _, last in final_server_metrics(sweep):
        rows.append(
            {
                "split": split_name(values),
                "method": method or values["strategy.aggregator"]["name"],
                "seed": values["seed"],
                "p100": last["p100"],
                "p50": last["p50"],
                "best offline": last["best_offline"],
                "conflict": last.get("gradient_conflict", float("nan")),
            }
        )
    return pd.DataFrame(rows)


def split_name(values: dict[str, Any]) -> str:
    """The split a sweep point ran: its partitioner's name, or which ensemble."""
    partition = values.get("data.partition")
    if isinstance(partition, dict):  # the ensemble sweep names the whole partitioner
        return BOOTSTRAP if partition.get("bootstrap") else SAME
    return str(values.get("data.partition.name", "all data"))


def table(runs: pd.DataFrame) -> str:
    best = runs["best offline"].iloc[0]
    lines = [
        f"best design of the offline data: {best:.3f} (normalised)",
        "",
        "| split | method | p100 (best design) | p50 (median design) | conflict (last step) |",
        "|---|---|---|---|---|",
    ]
    for (split, method), group in runs.groupby(["split", "method"], sort=False):
        cells = [mean_std(group[c]) for c in ("p100", "p50")]
        cells.append("–" if group.conflict.isna().all() else mean_std(group.conflict, 2))
        lines.append(f"| {split} | {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def claims(runs: pd.DataFrame) -> str:
    """The paper's claims on the ensemble runs, paired by seed, for p100 and for p50."""
    settings = runs.assign(setting=runs.split + " · " + runs.method)
    single = f"all data · {BASELINES[-1]}"
    tables = []
    for metric in ("p100", "p50"):
        by = settings.pivot(index="seed", columns="setting", values=metric)
        rows = [
            (f"{split}: {better} > {worse}", f"{split} · {better}", f"{split} · {worse}")
            for split in (SAME, BOOTSTRAP)
            for better in ("mgda", "cagrad")
            for worse in BASELINES[:-1]
        ]
        rows += [
            (f"{split}: {better} > single proxy", f"{split} · {better}", single)
            for split in (SAME, BOOTSTRAP)
            for better in ("mgda", "cagrad")
        ]
        tables.append(paired_claims(by, rows, metric))
    return "\n\n".join(tables)


def run_task(task: str, out: Path, sets: list[str], seeds: list[int]) -> str:
    """Today's setting on one task (IID and score-band clients, 3 seeds): its table."""
    scenario = HERE / f"{task}.yaml"
    run_sweep(scenario, out / "ensembles", sets)
    run_sweep(scenario, out / "single", [*sets, *SINGLE, f"sweep={{seed: {seeds}}}"])
    report([out / "single", out / "ensembles"], out / "report")
    runs = pd.concat(
        [final_scores(out / "single", "single proxy"), final_scores(out / "ensembles")]
    )
    return table(runs)


def run_ensemble(task: str, out: Path, sets: list[str], smoke: bool) -> str:
    """The paper's ensemble on one task: its table, claims and wall time."""
    scenario = HERE / f"{task}.yaml"
    seeds = [0] if smoke else ENSEMBLE_SEEDS
    trained = [f"workload.epochs={ENSEMBLE_EPOCHS[task]}"]
    members = [
        f"clients={{num: {ENSEMBLE_SIZE}, per_round: {ENSEMBLE_SIZE}}}",
        f"sweep={{data.partition: {ENSEMBLE_SPLITS}, strategy.aggregator: "
        f"[{', '.join(f'{{name: {c}}}' for c in COMBINERS)}], seed: {seeds}}}",
    ]
    # the smoke's own epochs and sweep come last, so that they win
    wall = run_sweep(scenario, out / "ensembles", [*trained, *members, *sets])
    wall += run_sweep(
        scenario, out / "single", [*trained, *sets, *SINGLE, f"sweep={{seed: {seeds}}}"]
    )
    report([out / "single", out / "ensembles"], out / "report")
    return ensemble_summary(out, "2 (smoke)" if smoke else str(ENSEMBLE_SIZE), wall)


def ensemble_summary(out: Path, members: str, wall: float) -> str:
    """The ensemble runs under ``out``: their table and claims (also in claims.md)."""
    runs = pd.concat(
        [final_scores(out / "single", "single proxy"), final_scores(out / "ensembles")]
    )
    checked = claims(runs)
    (out / "claims.md").write_text(checked + "\n")
    return (
        f"{table(runs)}\n\n{checked}\n\n"
        f"{members} members, {len(runs)} runs, sweeps' wall time {wall / 60:.1f} min"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("tasks", nargs="*", metavar="TASK", help=f"any of {', '.join(TASKS)}")
    parser.add_argument("--rounds", type=int, help="override the tasks' ascent steps")
    parser.add_argument(
        "--ensemble",
        action="store_true",
        help=f"the paper's ensemble: {ENSEMBLE_SIZE} members on the same data or on bootstraps "
        "of it, differing in their seeds, 4 combiners and a single proxy, 5 seeds",
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help=f"seconds: {SMOKE_TASK} only (unless TASKs are given), 2 ascent steps, "
        "one IID mean-ensemble run and one single-proxy run, then the ensemble setting with "
        "2 members (MGDA on bootstraps) and one single-proxy run",
    )
    parser.add_argument("--out", type=Path, help="output folder (default: OUT/mbo_<task>)")
    args = parser.parse_args()
    sets = (SMOKE if args.smoke else []) + ([f"rounds={args.rounds}"] if args.rounds else [])
    seeds = [0] if args.smoke else SEEDS
    unknown = set(args.tasks) - set(TASKS)
    if unknown:
        parser.error(
            f"unknown task(s) {', '.join(sorted(unknown))}; choose from {', '.join(TASKS)}"
        )
    settings = ["today", "ensemble"] if args.smoke else ["ensemble" if args.ensemble else "today"]
    for task in args.tasks or ([SMOKE_TASK] if args.smoke else TASKS):
        for setting in settings:
            name = task if setting == "today" else f"ensemble_{task}"
            if args.out is not None:
                out = args.out / name
            else:
                out = (OUT / "smoke" if args.smoke else OUT) / f"mbo_{name}"
            if setting == "today":
                text = run_task(task, out, sets, seeds)
            else:
                smoke = ENSEMBLE_SMOKE if args.smoke else []
                text = run_ensemble(task, out, [*sets, *smoke], args.smoke)
            (out / "scores.md").write_text(text + "\n")
            print(f"\n## {task} ({setting})\n{text}\nreport: {out / 'report' / 'report.html'}")


if __name__ == "__main__":
    main()
