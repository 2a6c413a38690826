"""The re-ID ablation ladder (issue 16): target mAP and rank-1 of each rung, 5 seeds.

    python benchmarks/reid/run.py            # the ladder, single-source and centralised (~15 min)
    python benchmarks/reid/run.py --smoke    # seconds: tiny data, 2 rounds, one point of each

On reid_fmnist (3 labelled source domains + 1 unlabelled target, one client per domain, 10
rounds of 2 local epochs): the six federated rungs of ladder.yaml, the three single-source runs
of single_source.yaml (RDSBN, one source taking part), and the centralised reference
(centralised.py: every domain in one process, RDSBN, no MDIF). One report over the federated
runs, and a table of the final target mAP and rank-1, mean ± std over seeds, with the paper's
claims checked on it. Output: benchmarks/out/reid/ (ladder/, single_source/, centralised.csv,
report/, table.md), or --out.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from claims import paired_claims  # benchmarks/ holds the shared helpers
from sweep_report import final_server_metrics, report, run_sweep

HERE = Path(__file__).resolve().parent
OUT = HERE.parent / "out"
SEEDS = [0, 1, 2, 3, 4]
RUNGS = {  # the ladder's points by their workload switches, in ladder.yaml's order
    (False, True, False, False): "source-only FedAvg (shared BN)",
    (False, True, True, False): "FedAvg + target pseudo-labels",
    (True, False, True, False): "FedBN (local BN)",
    (True, True, True, False): "+ RDSBN gate",
    (True, False, True, True): "+ MDIF (no gate)",
    (True, True, True, True): "RDSBN + MDIF",
}
SMALL = ["data.identities=8", "data.test_identities=8", "data.views=4", "rounds=2"]
SMOKE_LADDER = "sweep={workload: [{name: reid, mdif: true}], seed: [0]}"
SMOKE_SINGLE = "sweep={data.partition.sources: [[0]], seed: [0]}"


def final(sweep: Path, name: str | None = None) -> pd.DataFrame:
    """One row per run: its rung, seed and final target mAP / rank-1."""
    rows = []
    for values, _, last in final_server_metrics(sweep):
        if name is None:
            w = values["workload"]
            switches = (
                w.get("rdsbn", True),
                w.get("gate", True),
                w.get("pseudo_labels", True),
                w.get("mdif", True),
            )
            rung = RUNGS[switches]
        else:
            rung = f"{name} {values['data.partition.sources']}"
        rows.append(
            {"rung": rung, "seed": values["seed"], "mAP": last["mAP"], "rank1": last["rank1"]}
        )
    return pd.DataFrame(rows)


def table(runs: pd.DataFrame) -> str:
    lines = ["| rung | target mAP | target rank-1 |", "|---|---|---|"]
    for rung, group in runs.groupby("rung", sort=False):
        cells = [f"{group[c].mean():.3f} ± {group[c].std(ddof=1):.3f}" for c in ("mAP", "rank1")]
        lines.append(f"| {rung} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# The paper's claims as comparisons of two rungs' final target mAP (paired by seed).
CLAIMS = (
    (
        "pseudo-labels help over source-only",
        "FedAvg + target pseudo-labels",
        "source-only FedAvg (shared BN)",
    ),
    (
        "domain-specific BN helps (FedBN over FedAvg)",
        "FedBN (local BN)",
        "FedAvg + target pseudo-labels",
    ),
    ("the RDSBN gate helps", "+ RDSBN gate", "FedBN (local BN)"),
    ("MDIF helps", "+ MDIF (no gate)", "FedBN (local BN)"),
    ("RDSBN and MDIF are compatible (both over the gate alone)", "RDSBN + MDIF", "+ RDSBN gate"),
    ("multi-source beats the best single source", "+ RDSBN gate", "best single source"),
)


def claims(runs: pd.DataFrame) -> str:
    """Each claim's mAP difference paired by seed: its mean ± standard error, the seeds that
    agree in sign, and a verdict: holds (or is reversed) when the mean is beyond 2 standard
    errors of 0, else within noise."""
    singles = runs[runs.rung.str.startswith("single source")]
    if not singles.empty:  # the source whose mean is best, per seed
        best = singles.groupby("rung").mAP.mean().idxmax()
        chosen = singles[singles.rung == best].assign(rung="best single source")
        runs = pd.concat([runs, chosen])
    by = runs.pivot_table(index="seed", columns="rung", values="mAP")
    return paired_claims(by, CLAIMS, "target mAP")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny data, 2 rounds, 1 seed")
    parser.add_argument("--out", type=Path, help="output folder (default: benchmarks/out/reid)")
    args = parser.parse_args()
    out = args.out or (OUT / "smoke" if args.smoke else OUT) / "reid"
    small = SMALL if args.smoke else []
    started = time.perf_counter()
    run_sweep(HERE / "ladder.yaml", out / "ladder", [*small, SMOKE_LADDER] if args.smoke else [])
    run_sweep(
        HERE / "single_source.yaml",
        out / "single_source",
        [*small, SMOKE_SINGLE] if args.smoke else [],
    )
    federated = time.perf_counter() - started
    centralised = _centralised(out, small, [0] if args.smoke else SEEDS)
    report([out / "ladder", out / "single_source"], out / "report")
    runs = pd.concat(
        [final(out / "ladder"), final(out / "single_source", "single source"), centralised]
    )
    text = table(runs) + "\n\n" + claims(runs)
    (out / "table.md").write_text(text + "\n")
    rounds = _round_times(out / "ladder")
    print(
        f"\n{text}\n\nfederated runs: {federated:.0f} s; a round of the ladder's 4 clients: "
        f"median {rounds:.2f} s\nreport: {out / 'report' / 'report.html'}"
    )


def _centralised(out: Path, sets: list[str], seeds: list[int]) -> pd.DataFrame:
    """The centralised reference, per seed, on the ladder's data (RDSBN, no MDIF)."""
    from centralised import train

    from fedsim.scenario import parse, read

    rows = []
    for seed in seeds:
        raw = read(HERE / "ladder.yaml", [*sets, f"seed={seed}"])
        del raw["sweep"]
        raw["workload"] = {"name": "reid", "rdsbn": True, "gate": True, "mdif": False}
        scenario = parse(raw, "centralised")
        history = train(scenario)
        rows.append(
            {
                "rung": "centralised (RDSBN, all domains in one process)",
                "seed": seed,
                "mAP": history[-1]["mAP"],
                "rank1": history[-1]["rank1"],
            }
        )
    frame = pd.DataFrame(rows)
    frame.to_csv(out / "centralised.csv", index=False)
    return frame


def _round_times(sweep: Path) -> float:
    times = []
    for point in json.loads((sweep / "sweep.json").read_text())["points"]:
        metrics = pd.read_csv(sweep / point["dir"] / "metrics.csv")
        times += metrics[metrics.metric == "round_time_s"].value.tolist()
    return float(pd.Series(times).median())


if __name__ == "__main__":
    main()
