"""fedsim report: configurations, known-answer statistics, skipped paths, escaping, the command."""

from __future__ import annotations

import copy
import json
import math
import re
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from fedsim import results
from fedsim.cli import app
from fedsim.engine import run_local
from fedsim.reporting import build_report
from fedsim.reporting.runs import Run, load_run
from fedsim.reporting.summary import configurations
from fedsim.scenario import parse

SCENARIO: dict[str, Any] = {
    "name": "synthetic",
    "seed": 0,
    "rounds": 3,
    "data": {"name": "digits", "root": "/data", "partition": {"name": "iid"}},
    "clients": {"num": 2, "per_round": 2},
    "workload": {"name": "classification", "lr": 0.1},
    "strategy": {"name": "fedavg", "aggregator": {"name": "mean", "weighted": True}},
}


def write_run(
    path: Path,
    accuracies: list[float],
    seed: int = 0,
    status: str = "completed",
    wall_time_s: float = 10.0,
    rounds: int | None = None,
    set_: dict[str, Any] | None = None,
    extra_rows: list[tuple[Any, ...]] = (),  # type: ignore[assignment]
) -> Path:
    """A run directory by hand: central accuracy per round as given, loss = 1 - accuracy."""
    scenario = copy.deepcopy(SCENARIO)
    scenario["seed"] = seed
    scenario["rounds"] = rounds if rounds is not None else len(accuracies)
    for dotted, value in (set_ or {}).items():
        *parents, last = dotted.split(".")
        node = scenario
        for key in parents:
            node = node[key]
        node[last] = value
    path.mkdir(parents=True)
    (path / "scenario.yaml").write_text(yaml.safe_dump(scenario))
    lines = ["round,scope,client,metric,value"]
    for r, accuracy in enumerate(accuracies, start=1):
        lines += [
            f"{r},client,0,eval_accuracy,{accuracy - 0.1}",
            f"{r},client,1,eval_accuracy,{accuracy + 0.1}",
            f"{r},server,,accuracy,{accuracy}",
            f"{r},server,,loss,{1 - accuracy}",
            f"{r},server,,train_time_s,0.3",
            f"{r},server,,round_time_s,0.5",
        ]
    lines += [",".join(str(v) for v in row) for row in extra_rows]
    (path / "metrics.csv").write_text("\n".join(lines) + "\n")
    manifest = {"status": status, "seed": seed, "wall_time_s": wall_time_s}
    (path / "manifest.json").write_text(json.dumps(manifest))
    return path


def summary(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / "summary.csv", keep_default_na=False, na_values=[""])


def test_configurations_are_labelled_by_the_keys_that_differ(tmp_path: Path) -> None:
    # Prepare: two seeds of weighted mean, one of unweighted
    runs = tmp_path / "runs"
    write_run(runs / "w0", [0.5, 0.6, 0.7], seed=0)
    write_run(runs / "w1", [0.5, 0.6, 0.7], seed=1)
    write_run(runs / "u0", [0.5, 0.6, 0.7], set_={"strategy.aggregator.weighted": False})

    # Execute
    result = build_report([runs], tmp_path / "out")

    # Assert: folder order is sorted, so the unweighted run comes first
    labels = {c.label: len(c.runs) for c in result.configurations}
    assert labels == {
        "strategy.aggregator.weighted=false": 1,
        "strategy.aggregator.weighted=true": 2,
    }
    assert list(summary(result.out).seeds) == [1, 2]


def test_parameters_of_differently_named_components_stay_out_of_labels(tmp_path: Path) -> None:
    # Prepare: mean (no f), krum f=1 and krum f=3: f is absent for mean, yet tells the krums apart
    for i, aggregator in enumerate(
        [{"name": "mean"}, {"name": "krum", "f": 1}, {"name": "krum", "f": 3}]
    ):
        write_run(tmp_path / f"r{i}", [0.5], set_={"strategy.aggregator": aggregator})
    write_run(tmp_path / "m", [0.5], set_={"strategy.aggregator": {"name": "median"}})

    configs, _ = configurations([load_run(p) for p in sorted(tmp_path.iterdir())])
    labels = sorted(c.label for c in configs)
    assert len(set(labels)) == 4 and any("strategy.aggregator.f=3" in label for label in labels)

    # Execute: without the second krum, the name alone is enough
    configs, _ = configurations([load_run(tmp_path / p) for p in ("r0", "r1", "m")])

    # Assert
    assert sorted(c.label for c in configs) == [
        "strategy.aggregator.name=krum",
        "strategy.aggregator.name=mean",
        "strategy.aggregator.name=median",
    ]


def test_a_left_out_component_explains_its_parameters_unless_they_vary(tmp_path: Path) -> None:
    # dense (sparsity null) against two densities: density varies where present, so it stays
    write_run(tmp_path / "a", [0.5], set_={"workload.sparsity": None})
    for i, density in enumerate((0.1, 0.2)):
        sparsity = {"name": "rigl", "density": density, "every": 25}
        write_run(tmp_path / f"r{i}", [0.5], set_={"workload.sparsity": sparsity})

    configs, _ = configurations(load_runs_for_test(*sorted(tmp_path.iterdir())))

    assert [c.label for c in configs] == [
        "workload.sparsity.density=(absent), workload.sparsity.name=(absent)",
        "workload.sparsity.density=0.1, workload.sparsity.name=rigl",
        "workload.sparsity.density=0.2, workload.sparsity.name=rigl",
    ]


def test_runs_differing_only_in_seed_form_one_configuration(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    for seed in range(3):
        write_run(runs / f"s{seed}", [0.5, 0.6, 0.7], seed=seed)

    result = build_report([runs], tmp_path / "out")

    assert [(c.label, len(c.runs)) for c in result.configurations] == [("synthetic", 3)]


def test_mean_std_and_rounds_to_target_by_hand(tmp_path: Path) -> None:
    # Prepare: finals 0.8 and 0.6 (mean 0.7, sample std √0.02); bests 0.8 and 0.6
    runs = tmp_path / "runs"
    write_run(runs / "a", [0.2, 0.5, 0.8], seed=0, wall_time_s=10.0)
    write_run(runs / "b", [0.4, 0.6, 0.6], seed=1, wall_time_s=14.0)

    # Execute: the default target 0.9 × 0.7 = 0.63, and an explicit 0.5
    default = build_report([runs], tmp_path / "default")
    explicit = build_report([runs], tmp_path / "explicit", target=0.5)

    # Assert
    row = summary(default.out).iloc[0]
    assert row.final_accuracy_mean == pytest.approx(0.7)
    assert row.final_accuracy_std == pytest.approx(math.sqrt(0.02))
    assert row.best_accuracy_mean == pytest.approx(0.7)
    assert row.wall_time_s_mean == pytest.approx(12.0)
    assert row.wall_time_s_std == pytest.approx(math.sqrt(8.0))
    assert default.target == pytest.approx(0.63)
    # a reaches 0.63 in round 3, b never does
    assert (row.rounds_to_target_mean, row.rounds_to_target_reached) == (3.0, 1)
    assert "3.0 (1 of 2 reached)" in default.markdown.read_text()
    # both reach 0.5 in round 2
    row = summary(explicit.out).iloc[0]
    assert (row.rounds_to_target_mean, row.rounds_to_target_std) == (2.0, 0.0)
    assert "\\pm" in (explicit.out / "summary.tex").read_text()


def test_target_never_reached_says_so(tmp_path: Path) -> None:
    write_run(tmp_path / "runs" / "a", [0.2, 0.3, 0.4])

    result = build_report([tmp_path / "runs"], tmp_path / "out", target=0.9)

    assert "not reached" in result.markdown.read_text()
    assert summary(result.out).rounds_to_target_reached.tolist() == [0]


def test_optional_columns_appear_only_with_their_metrics(tmp_path: Path) -> None:
    write_run(tmp_path / "plain" / "a", [0.5, 0.6])
    extra = [(1, "server", "", "bytes_sent", 100.0), (2, "server", "", "bytes_sent", 300.0)]
    write_run(tmp_path / "bytes" / "a", [0.5, 0.6], extra_rows=extra)

    plain = build_report([tmp_path / "plain"], tmp_path / "out-plain")
    with_bytes = build_report([tmp_path / "bytes"], tmp_path / "out-bytes")

    assert "bytes_sent_per_round_mean" not in summary(plain.out).columns
    assert summary(with_bytes.out).bytes_sent_per_round_mean.tolist() == [200.0]


def test_a_killed_run_is_included_and_marked_incomplete(tmp_path: Path) -> None:
    # Prepare: two complete seeds and one killed after 2 of 3 rounds (still "running")
    runs = tmp_path / "runs"
    write_run(runs / "a", [0.2, 0.5, 0.8], seed=0)
    write_run(runs / "b", [0.4, 0.6, 0.6], seed=1)
    write_run(runs / "killed", [0.1, 0.1], seed=2, status="running", rounds=3)

    # Execute
    result = build_report([runs], tmp_path / "out")

    # Assert: one configuration (rounds is the planned 3 everywhere); the table uses a and b
    (config,) = result.configurations
    killed = next(r for r in config.runs if r.path.name == "killed")
    assert not killed.complete and killed.rounds_done == 2
    assert "incomplete: 2 of 3 rounds (status running)" in killed.notes
    row = summary(result.out).iloc[0]
    assert (row.seeds, row.incomplete) == (2, 1)
    assert row.final_accuracy_mean == pytest.approx(0.7)
    assert "incomplete: 2 of 3 rounds" in result.markdown.read_text()


def test_unusable_paths_are_skipped_with_reasons_and_the_report_still_builds(
    tmp_path: Path,
) -> None:
    # Prepare: a good run, a stray folder, an empty metrics.csv, a run killed before round 1,
    # and a run whose last line a kill cut in half
    runs = tmp_path / "runs"
    write_run(runs / "good", [0.5, 0.6])
    (runs / "notes").mkdir()
    write_run(runs / "empty", [0.5]).joinpath("metrics.csv").write_text("")
    write_run(runs / "no-rounds", []).joinpath("metrics.csv").write_text(
        ",".join(results.METRICS_HEADER) + "\n"
    )
    cut = write_run(runs / "cut", [0.5, 0.6], seed=1)
    with open(cut / "metrics.csv", "a") as f:
        f.write("3,server,,accur")

    # Execute
    result = build_report([runs, tmp_path / "missing"], tmp_path / "out")

    # Assert
    reasons = {s.path.name: s.reason for s in result.skipped}
    assert reasons["notes"].startswith("not a run directory")
    assert reasons["empty"] == "metrics.csv is empty (status completed)"
    assert reasons["no-rounds"] == "metrics.csv holds no rounds (status completed)"
    assert reasons["missing"] == "does not exist"
    assert sorted(r.path.name for r in result.runs) == ["cut", "good"]
    cut_run = next(r for r in result.runs if r.path.name == "cut")
    assert cut_run.rounds_done == 2 and cut_run.notes[0].startswith("1 malformed")
    markdown = result.markdown.read_text()
    assert "## Skipped" in markdown and "metrics.csv is empty" in markdown


def test_nothing_usable_is_a_user_error_with_reasons(tmp_path: Path) -> None:
    (tmp_path / "notes").mkdir()

    result = CliRunner().invoke(
        app, ["report", str(tmp_path / "notes"), "--out", str(tmp_path / "out")]
    )

    assert result.exit_code == 2
    assert "no usable run" in result.output and "not a run directory" in result.output
    assert "Traceback" not in result.output


def test_a_sweep_directory_reads_its_points_and_lists_pending_ones(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    write_run(sweep / "0000", [0.5, 0.6], seed=0)
    points = [
        {"id": "0000", "dir": "0000", "values": {"seed": 0}, "status": "completed"},
        {"id": "0001", "dir": "0001", "values": {"seed": 1}, "status": "pending"},
    ]
    (sweep / "sweep.json").write_text(json.dumps({"name": "s", "keys": ["seed"], "points": points}))

    result = build_report([sweep], tmp_path / "out")

    assert [r.path.name for r in result.runs] == ["0000"]
    assert [s.reason for s in result.skipped] == ["sweep point 0001 not run yet (status pending)"]


def test_scenario_strings_are_escaped_and_the_html_is_self_contained(tmp_path: Path) -> None:
    # Prepare: the nasty string differs between configurations, so it is in a label
    runs = tmp_path / "runs"
    nasty = "<script>alert(1)</script>"
    write_run(runs / "a", [0.5, 0.6], set_={"data.root": nasty})
    write_run(runs / "b", [0.5, 0.7])

    # Execute
    result = build_report([runs], tmp_path / "out")

    # Assert
    page = result.html.read_text()
    assert "<script" not in page
    assert "data.root=&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&lt;script&gt;" in result.markdown.read_text()
    sources = re.findall(r'(?:src|href)="([^"]*)"', page)
    assert len(sources) == len(result.figures) == 3
    assert all(s.startswith("data:image/png;base64,") for s in sources)
    assert "http://" not in page and "https://" not in page
    assert "](figures/accuracy_loss.png)" in result.markdown.read_text()


def test_figure_hooks_return_none_without_their_data(tmp_path: Path) -> None:
    # Prepare: a run with central accuracy only (no client eval, no timings)
    run = write_run(tmp_path / "a", [0.5, 0.6])
    metrics = pd.read_csv(run / "metrics.csv")
    metrics[metrics.metric == "accuracy"].to_csv(run / "metrics.csv", index=False)

    result = build_report([run], tmp_path / "out")

    assert [p.name for p in result.figures] == ["accuracy_loss.png"]
    assert "## Figures" in result.markdown.read_text()


def test_the_availability_timeline_draws_online_events_and_skips_cut_lines(tmp_path: Path) -> None:
    # Prepare: two clients taking turns, each training when online; the last line cut by a kill
    rows = [(r, "client", (r + 1) % 2, "train_examples", 10) for r in (1, 2)]
    run = write_run(tmp_path / "a", [0.5, 0.6], extra_rows=rows)
    lines = [json.dumps({"event": "online", "round": r, "clients": [(r + 1) % 2]}) for r in (1, 2)]
    (run / "events.jsonl").write_text("\n".join(lines) + '\n{"event": "onl')

    # Execute
    result = build_report([run], tmp_path / "out")
    loaded = load_run(run)

    # Assert
    assert "availability.png" in [p.name for p in result.figures]
    assert isinstance(loaded, Run)
    assert [e["clients"] for e in loaded.events("online")] == [[0], [1]]


def test_accuracy_against_bytes_sums_both_directions_round_by_round(tmp_path: Path) -> None:
    from fedsim.reporting.figures import cumulative_bytes

    rows = [
        (r, "server", "", name, value)
        for r in (1, 2)
        for name, value in (("bytes_down", 100 * r), ("bytes_up", 10))
    ]
    run = write_run(tmp_path / "a", [0.5, 0.6], extra_rows=rows)

    result = build_report([run], tmp_path / "out")
    (config,), _ = configurations(load_runs_for_test(run))

    assert "accuracy_bytes.png" in [p.name for p in result.figures]
    assert cumulative_bytes(config)["0"].tolist() == [110.0, 320.0]  # 100+10, then +200+10


def load_runs_for_test(*paths: Path) -> list[Run]:
    loaded = [load_run(p) for p in paths]
    return [r for r in loaded if isinstance(r, Run)]


def test_load_run_rejects_a_foreign_header(tmp_path: Path) -> None:
    run = write_run(tmp_path / "a", [0.5])
    (run / "metrics.csv").write_text("epoch,acc\n1,0.5\n")

    skipped = load_run(run)

    assert "header" in getattr(skipped, "reason", "")


def test_fedsim_report_on_two_real_runs(tiny: dict[str, Any], tmp_path: Path) -> None:
    # Prepare: two seeds of the tiny scenario, three rounds each
    for seed in (0, 1):
        scenario = parse({**tiny, "seed": seed})
        run_dir = tmp_path / "runs" / f"seed{seed}"
        results.prepare(run_dir, scenario, command="test")
        run_local(scenario, run_dir, show_progress=False)

    # Execute
    result = CliRunner().invoke(
        app, ["report", str(tmp_path / "runs"), "--out", str(tmp_path / "out")]
    )

    # Assert
    assert result.exit_code == 0, result.output
    assert "2 run(s) in 1 configuration(s)" in result.output
    table = summary(tmp_path / "out")
    assert table.seeds.tolist() == [2]
    assert 0.0 < table.final_accuracy_mean[0] <= 1.0
    names = {p.name for p in (tmp_path / "out" / "figures").iterdir()}
    assert names == {"accuracy_loss.png", "fairness.png", "timing.png", "accuracy_bytes.png"}
    assert "data:image/png;base64," in (tmp_path / "out" / "report.html").read_text()
