"""Every benchmark script runs end to end at its smoke size, so that none silently stops working.

A script is a file under benchmarks/ with a ``__main__`` block (helpers have none). Each one runs
as a subprocess with ``--smoke`` (tiny data, rounds and grids, the local engine) and must exit 0
and produce what it exists to produce: a table it prints, the files it writes. A new script
fails here until it takes ``--smoke`` and has its entry in SMOKES.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

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
    "resume.py": Smoke(printed=("same final metrics as uninterrupted: True",)),
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
    "mbo/run.py": Smoke(
        ("--out", "{out}"),
        printed=("| all data | single proxy |", "| iid | mean |"),
        files=("continuous/scores.md", "continuous/report/report.html"),
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


def run(command: list[str], cwd: Path) -> tuple[str, str, int]:
    """Stdout, stdout and stderr together, and the exit code of ``command``.

    On timeout the whole process group goes (the script and the fedsim runs it started).
    """
    proc = subprocess.Popen(
        command,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        pytest.fail(f"{' '.join(command)} took over {TIMEOUT_S} s:\n{(stdout + stderr)[-4000:]}")
    return stdout, stdout + stderr, proc.returncode


def test_every_smoke_listed_is_a_script() -> None:
    # Prepare / Execute
    stale = set(SMOKES) - set(scripts())

    # Assert
    assert not stale, f"SMOKES lists scripts that are gone: {sorted(stale)}"


@pytest.mark.parametrize("script", scripts())
def test_a_benchmark_runs_at_its_smoke_size(script: str, tmp_path: Path) -> None:
    # Prepare
    smoke = SMOKES.get(script)
    if smoke is None:
        pytest.fail(f"benchmarks/{script} has no entry in SMOKES: give it --smoke and list it")
    out = tmp_path / "out"
    out.mkdir()
    args = [arg.format(out=out) for arg in smoke.args]
    command = [sys.executable, str(BENCHMARKS / script), "--smoke", *args]

    # Execute (from elsewhere than the repository: nothing may depend on the working folder)
    stdout, output, returncode = run(command, cwd=tmp_path)

    # Assert
    assert returncode == 0, f"{' '.join(command)} failed:\n{output[-4000:]}"
    missing = [line for line in smoke.printed if line not in stdout]
    assert not missing, f"{script} did not print {missing}:\n{stdout[-4000:]}"
    absent = [name for name in smoke.files if not (out / name).is_file()]
    assert not absent, f"{script} did not write {absent} into {out}"
