"""Every benchmark script runs end to end at its smoke size, so that none silently stops working.

A script is a file under benchmarks/ with a ``__main__`` block (helpers have none). Each one runs
with ``--smoke`` (tiny data, rounds and grids, the local engine) as ``python SCRIPT --smoke``
would run it, but in this test's process (``runpy``): torch and fedsim are already imported here,
and a fresh interpreter would spend more seconds importing them than the smoke spends working.
It must finish without error and produce what it exists to produce: a table it prints, the files
it writes. A new script fails here until it takes ``--smoke`` and has its entry in SMOKES.
"""

from __future__ import annotations

import runpy
import signal
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import pytest
import torch

pytestmark = pytest.mark.benchmarks

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
TIMEOUT_S = 300  # a smoke takes seconds of CPU; this only stops a hang on a loaded machine


@dataclass(frozen=True)
class Smoke:
    """What a script's smoke run is given besides ``--smoke``, and what it must produce."""

    args: tuple[str, ...] = ()  # "{out}" stands for an empty folder of the test's
    printed: tuple[str, ...] = ()  # lines of its table or report, as printed
    files: tuple[str, ...] = ()  # under the folder


SMOKES = {
    "overhead.py": Smoke(
        ("--exact",),
        printed=("R(rounds)", "local: identical to the plain loop"),
    ),
    "foundation.py": Smoke(printed=("final accuracy", "scenarios/quickstart.yaml")),
    "scale.py": Smoke(printed=("median round s",)),
    "eval_batch.py": Smoke(printed=("evaluation batch on the CPU", "1024 / fedsim's")),
    "vectorise.py": Smoke(
        printed=("| quickstart | digits MLP, 10 clients a round | 2 |", "speed-up (train)")
    ),
    "resume.py": Smoke(printed=("same final metrics as uninterrupted: True",)),
    "avgk/run.py": Smoke(
        ("--out", "{out}"),
        printed=("| central | 0.3 | ×10 |", "| iid | 0.3 | ×10 | two-head |"),
        files=("tables.md", "report/report.html"),
    ),
    "byzantine/cost.py": Smoke(
        ("--csv", "{out}/cost.csv"),
        printed=("seconds per call, cpu", "flag / krum at n=8"),
        files=("cost.csv",),
    ),
    "byzantine/robustness.py": Smoke(
        ("--out", "{out}"),
        printed=("| dirichlet | 1 | sign_flip |",),
        files=("robustness.csv", "heatmap_dirichlet.png", "claim.md"),
    ),
    "byzantine/paper.py": Smoke(
        ("--out", "{out}"),
        printed=("| flag r=8 |", "| mean, no attack |", "| digits, random, f=1: flag vs mean |"),
        files=("paper.csv", "paper.md", "heatmap.png"),
    ),
    "daml/run.py": Smoke(
        ("--out", "{out}"),
        printed=("| daml (1 client / domain) |", "- DAML − erm, H (fair τ):"),
        files=("daml.md", "opendg_digits/runs.csv", "opendg_digits/report/report.html"),
    ),
    "fedlaavg/memory.py": Smoke(printed=("client memory on disk GB", "fedlaavg")),
    "fedlaavg/run.py": Smoke(
        ("--out", "{out}"),
        printed=("| max accuracy |",),
        files=("gap.md", "report/report.html"),
    ),
    "gnn/partitioned.py": Smoke(
        ("--out", "{out}"),
        printed=("| centralised |", "| metis / halo 1-hop |"),
        files=("gnn.md", "runs.csv", "accuracy.png", "federated/report/report.html"),
    ),
    "infoplane/run.py": Smoke(
        ("--out", "{out}"),
        printed=("| relu | 0.0 |", "| relu | dirichlet | 0 |"),
        files=("plane.md", "runs.csv", "report/figures/information_plane.png"),
    ),
    "infoplane/overhead.py": Smoke(
        ("--out", "{out}"),
        printed=("analysis every 10 rounds, cpu time:", "of a round (median of the runs)"),
        files=("overhead.md",),
    ),
    "hsi/run.py": Smoke(
        ("--out", "{out}"),
        printed=("| centralised: + CRF (mean-field) |", "| 4 tiles, halo 2 | "),
        files=("table.md", "maps.png", "runs.csv", "report/report.html"),
    ),
    "mbo/run.py": Smoke(
        ("--out", "{out}"),
        printed=(
            "| all data | single proxy |",
            "| iid | mean |",
            "| bootstrap | mgda |",
            "| bootstrap: mgda > single proxy |",
        ),
        files=(
            "continuous/scores.md",
            "continuous/report/report.html",
            "ensemble_continuous/claims.md",
            "ensemble_continuous/report/report.html",
        ),
    ),
    "peers/run.py": Smoke(
        ("--out", "{out}"),
        printed=("| plain loop |", "| fedsim, 1 worker |", "final accuracy:"),
        files=("table.md", "results.json"),
    ),
    "reid/run.py": Smoke(
        ("--out", "{out}"),
        printed=("| RDSBN + MDIF |", "| single source [0] |", "| centralised (RDSBN"),
        files=("table.md", "centralised.csv", "report/report.html"),
    ),
    "mgda/fairness.py": Smoke(
        ("--out", "{out}"),
        printed=("| mgda ε=0.1 |",),
        files=("fairness.md", "report/report.html"),
    ),
    "privacy/run.py": Smoke(
        ("--out", "{out}"),
        printed=("| local: local DP-SGD z=1.0 |", "| central: central DP fixed z=1.0 |"),
        files=("privacy.md", "accuracy_vs_epsilon.png", "central/report/report.html"),
    ),
    "sparse/run.py": Smoke(
        ("--out", "{out}"),
        printed=("| 0.2 | 0.1 |", "Dense FedAvg:"),
        files=("sparse.md", "report/report.html"),
    ),
    "suites/run.py": Smoke(
        ("--out", "{out}"),
        printed=("quickstart_aggregators: sweep",),
        files=("quickstart_aggregators/report/report.html",),
    ),
}


def scripts() -> list[str]:
    """Every script under benchmarks/, as a path relative to it."""
    return sorted(
        path.relative_to(BENCHMARKS).as_posix()
        for path in BENCHMARKS.rglob("*.py")
        if 'if __name__ == "__main__":' in path.read_text()
    )


@contextmanager
def time_limit(seconds: int) -> Iterator[None]:
    """TimeoutError in this (the main) thread once ``seconds`` have passed."""

    def expire(signum: int, frame: FrameType | None) -> None:
        raise TimeoutError(f"took over {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def run_script(path: Path, args: list[str]) -> str | None:
    """Run ``path`` as ``python PATH ARGS`` would, in this process; what went wrong, or None.

    What a script may change for the rest of the process (its arguments, the import path, torch's
    thread count, open figures) is put back afterwards.
    """
    saved_argv, saved_path, threads = sys.argv, list(sys.path), torch.get_num_threads()
    sys.argv = [str(path), *args]
    sys.path.insert(0, str(path.parent))  # as ``python PATH`` puts the script's folder first
    try:
        with time_limit(TIMEOUT_S):
            runpy.run_path(str(path), run_name="__main__")
    except SystemExit as exit:  # argparse errors, the scripts' own checks, fedsim failures
        if exit.code not in (None, 0):
            return f"SystemExit: {exit.code}"
    except Exception:
        return traceback.format_exc()
    finally:
        sys.argv, sys.path[:] = saved_argv, saved_path
        torch.set_num_threads(threads)
        if "matplotlib.pyplot" in sys.modules:
            sys.modules["matplotlib.pyplot"].close("all")
    return None


def test_every_smoke_listed_is_a_script() -> None:
    # Prepare / Execute
    stale = set(SMOKES) - set(scripts())

    # Assert
    assert not stale, f"SMOKES lists scripts that are gone: {sorted(stale)}"


@pytest.mark.parametrize("script", scripts())
def test_a_benchmark_runs_at_its_smoke_size(
    script: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    # Prepare
    smoke = SMOKES.get(script)
    if smoke is None:
        pytest.fail(f"benchmarks/{script} has no entry in SMOKES: give it --smoke and list it")
    out = tmp_path / "out"
    out.mkdir()
    args = ["--smoke", *(arg.format(out=out) for arg in smoke.args)]
    monkeypatch.chdir(tmp_path)  # elsewhere than the repository: nothing may depend on it

    # Execute
    error = run_script(BENCHMARKS / script, args)
    stdout, stderr = capfd.readouterr()  # the script's, and its subprocesses'

    # Assert
    command = f"python benchmarks/{script} {' '.join(args)}"
    assert error is None, f"{command} failed:\n{(stdout + stderr)[-4000:]}\n{error}"
    missing = [line for line in smoke.printed if line not in stdout]
    assert not missing, f"{script} did not print {missing}:\n{stdout[-4000:]}"
    absent = [name for name in smoke.files if not (out / name).is_file()]
    assert not absent, f"{script} did not write {absent} into {out}"
