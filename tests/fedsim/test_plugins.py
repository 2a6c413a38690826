"""Plugins: a user's module registers components that scenarios name like built-in ones."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from fedsim.cli import app
from fedsim.registry import AGGREGATORS, registrations

runner = CliRunner()

# A rule no built-in has: the mean scaled by `scale`, so that a run shows it was used.
SCALED_MEAN = """
from fedsim.registry import AGGREGATORS, Params
from strategies.pipeline import stateless


class ScaledParams(Params):
    scale: float = 0.5


@AGGREGATORS.register("{name}", ScaledParams)
def scaled_mean(p):
    \"\"\"The mean, scaled.\"\"\"
    return stateless(lambda updates, info: p.scale * updates.mean(dim=0))
"""


pytestmark = pytest.mark.usefixtures("forget_plugins")


def write_plugin(folder: Path, text: str, name: str = "rules.py") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


def invoke(*args: object):  # type: ignore[no-untyped-def]
    return runner.invoke(app, [str(a) for a in args])


def server_metrics(run_dir: Path) -> pd.DataFrame:
    """What the server measured, without wall-clock timings."""
    frame = pd.read_csv(run_dir / "metrics.csv")
    keep = (frame.scope == "server") & ~frame.metric.str.endswith("_time_s")
    return frame[keep].reset_index(drop=True)


def test_a_plugin_rule_runs_with_one_and_two_workers_and_the_manifest_names_it(
    tiny, write_scenario, tmp_path
) -> None:
    plugin = write_plugin(tmp_path / "lab", SCALED_MEAN.format(name="scaled_mean"))
    tiny["plugins"] = ["lab/rules.py"]  # relative to the scenario file, not the cwd
    tiny["strategy"]["aggregator"] = {"name": "scaled_mean", "scale": 0.0}
    scenario = write_scenario(tiny)
    frozen, two = tmp_path / "one", tmp_path / "two"

    assert invoke("run", scenario, "--out", frozen, "--no-progress").exit_code == 0
    result = invoke("run", scenario, "--out", two, "--no-progress", "--set", "resources.workers=2")
    assert result.exit_code == 0, result.output

    # scale 0 keeps the initial model: every round evaluates the same accuracy
    accuracy = server_metrics(frozen).query("metric == 'accuracy'").value
    assert accuracy.nunique() == 1
    pd.testing.assert_frame_equal(server_metrics(frozen), server_metrics(two))
    manifest = json.loads((frozen / "manifest.json").read_text())
    assert manifest["plugins"] == [
        {
            "spec": str(plugin),
            "module": manifest["plugins"][0]["module"],
            "file": str(plugin),
            "sha256": hashlib.sha256(plugin.read_bytes()).hexdigest(),
        }
    ]
    assert "plugins:\n- " + str(plugin) in (frozen / "scenario.yaml").read_text()


def test_a_plugin_rule_changes_the_result(tiny, write_scenario, tmp_path) -> None:
    write_plugin(tmp_path, SCALED_MEAN.format(name="scaled_mean"))
    tiny["plugins"] = ["./rules.py"]
    runs = {}
    for scale in (1.0, 0.5):
        tiny["strategy"]["aggregator"] = {"name": "scaled_mean", "scale": scale}
        runs[scale] = tmp_path / f"scale{scale}"
        result = invoke("run", write_scenario(tiny), "--out", runs[scale], "--no-progress")
        assert result.exit_code == 0, result.output
    tiny.pop("plugins")
    tiny["strategy"]["aggregator"] = {"name": "mean", "weighted": False}
    assert (
        invoke("run", write_scenario(tiny), "--out", tmp_path / "mean", "--no-progress").exit_code
        == 0
    )

    # scale 1 is the unweighted mean exactly; scale 0.5 is not
    pd.testing.assert_frame_equal(server_metrics(runs[1.0]), server_metrics(tmp_path / "mean"))
    assert not server_metrics(runs[0.5]).equals(server_metrics(runs[1.0]))


@pytest.mark.parametrize(
    ("files", "plugin_list", "message"),
    [
        ({"bad.py": "x = 1 / 0\n"}, ["bad.py"], "failed to import: ZeroDivisionError"),
        ({}, ["missing.py"], "no such file"),
        ({}, ["no_such_lab.components"], "no module of that name"),
        (
            {"a.py": SCALED_MEAN.format(name="twin"), "b.py": SCALED_MEAN.format(name="twin")},
            ["a.py", "b.py"],
            "aggregator 'twin' is registered twice",
        ),
        ({"c.py": SCALED_MEAN.format(name="krum")}, ["c.py"], "'krum' is registered twice"),
    ],
    ids=["raises", "missing-file", "missing-module", "same-name", "shadows-built-in"],
)
def test_a_bad_plugin_is_one_clear_error_before_anything_runs(
    tiny, write_scenario, tmp_path, files, plugin_list, message
) -> None:
    for name, text in files.items():
        write_plugin(tmp_path, text, name)
    tiny["plugins"] = plugin_list
    scenario = write_scenario(tiny)
    before = registrations()

    for command in (("validate", scenario), ("run", scenario, "--out", tmp_path / "run")):
        result = invoke(*command)
        assert result.exit_code == 2, result.output
        assert message in result.output and "Traceback" not in result.output
        assert plugin_list[-1] in result.output  # names the plugin at fault
    assert not (tmp_path / "run").exists()
    assert registrations() == before  # a failed plugin leaves nothing registered


def test_fedsim_list_shows_a_plugins_components(tmp_path) -> None:
    plugin = write_plugin(tmp_path, SCALED_MEAN.format(name="scaled_mean"))
    assert "scaled_mean" not in invoke("list", "aggregator").output
    result = invoke("list", "aggregator", "--plugin", plugin)
    assert result.exit_code == 0
    assert "scaled_mean" in result.output and "scale: float = 0.5" in result.output


def test_an_installed_package_registers_through_the_entry_point_group(tmp_path) -> None:
    site = tmp_path / "site"
    write_plugin(site / "labrules", SCALED_MEAN.format(name="lab_mean"), "__init__.py")
    dist = site / "labrules-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: labrules\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[fedsim.plugins]\nlab = labrules\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), *sys.path])}
    script = "from fedsim.cli import app; app(['list', 'aggregator'])"

    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "lab_mean" in done.stdout
    assert "lab_mean" not in AGGREGATORS  # this process never saw the package
