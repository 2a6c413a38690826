"""Your own model and data, from Python (a notebook runs the same cells):

python examples/own_model_and_data/run.py
"""

import time
from pathlib import Path

from make_data import make_data

import fedsim

HERE = Path(__file__).parent
OUT = HERE / "runs" / time.strftime("%Y%m%d-%H%M%S")  # a fresh folder for every run of the script

if __name__ == "__main__":  # worker processes re-import this script
    # %% the data, in the lab's own layout
    make_data(HERE / "scans.npz")

    # %% one run, and the same run with robust aggregation
    runs = [
        fedsim.run(HERE / "scenario.yaml", out=OUT / "mean"),
        fedsim.run(
            HERE / "scenario.yaml",
            overrides={"strategy.aggregator": {"name": "median"}},
            out=OUT / "median",
        ),
    ]

    # %% the final accuracy of each, and a report comparing them round by round
    for run in runs:
        m = run.metrics
        accuracy = m[(m.scope == "server") & (m.metric == "accuracy")].value
        print(f"{run.dir.name}: final accuracy {accuracy.iloc[-1]:.3f}")
    fedsim.report(runs, out=OUT / "report")  # report.html and figures
