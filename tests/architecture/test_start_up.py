"""What a fedsim process loads: only what its scenario uses.

Every ``fedsim run``, sweep worker and benchmark pays its imports again. Opacus (local and
central DP) costs about a second and a half of them and scikit-learn's PCA and k-NN (k-NN graph
datasets) most of another, so both are imported where a scenario asks for them, never on the way.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from tests.conftest import TINY

ROOT = Path(__file__).resolve().parents[2]
# Only for the scenarios that use them (privacy:, a knn graph dataset).
UNUSED = ("opacus", "sklearn.decomposition", "sklearn.neighbors")
RUN_AND_LIST_MODULES = """
import json, sys
from fedsim.cli import app
code = app(sys.argv[1:], prog_name="fedsim", standalone_mode=False)
print(json.dumps({"code": code, "loaded": [m for m in %r if m in sys.modules]}))
"""


def test_a_run_without_privacy_or_graphs_never_imports_opacus_or_sklearn_graphs(
    tmp_path: Path,
) -> None:
    # Prepare (a fresh interpreter: this one may have imported anything)
    scenario = tmp_path / "tiny.yaml"
    scenario.write_text(yaml.safe_dump({**TINY, "rounds": 1}))
    command = [sys.executable, "-c", RUN_AND_LIST_MODULES % (UNUSED,)]
    command += ["run", str(scenario), "--out", str(tmp_path / "run"), "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # this checkout's fedsim

    # Execute
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path)

    # Assert
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["code"] in (0, None), done.stdout[-4000:]
    assert (tmp_path / "run" / "metrics.csv").is_file()
    assert result["loaded"] == [], f"a plain run imported {result['loaded']}"
