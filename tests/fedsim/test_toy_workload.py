"""A workload written outside fedsim, end to end: local BatchNorm, client state, one exchange.

The workload (``toy_workload.py`` beside this file) reaches fedsim as a plugin named in the
scenario, as a user's own would: the local engine, its worker processes, Flower's Ray actors and a
resumed ``fedsim run`` each import it from there, and this test process loads it the same way.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pandas as pd
import pytest
import torch
from torch import nn

import fedsim.client_app
import fedsim.engine
import fedsim.grid
from clients.workload import (
    is_local,
    split_state,
)
from fedsim import checkpoint, results
from fedsim.client_app import LOCAL, STATE
from fedsim.client_states import STATE_TYPE
from fedsim.data import load_data
from fedsim.registry import WORKLOADS
from fedsim.scenario import parse
from tests.engines import assert_same_client_states, invoke, learned, loaded, rounds_done

ROOT = Path(__file__).parents[2]
TOY_FILE = Path(__file__).with_name("toy_workload.py")
TOY = "toy_bn"
CENTROID = "centroid"  # the exchange's name, and the key of its broadcast


# ---- helpers -------------------------------------------------------------------------------


def toy_scenario(**changes: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "name": "toy",
        "plugins": [str(TOY_FILE)],
        "seed": 0,
        "rounds": 3,
        "data": {"name": "digits", "partition": {"name": "iid"}},
        "clients": {"num": 4, "per_round": 3},
        "workload": {"name": TOY},
        "strategy": {"name": "fedavg", "aggregator": {"name": "mean"}},
        "eval": {"every": 1},
    }
    return {**raw, **changes}


class RecordingGrid(fedsim.grid.InProcessGrid):
    """The local engine's grid, keeping the names of the arrays in every reply."""

    replies: ClassVar[list[tuple[str, str, set[str]]]] = []  # (message type, record, names)

    def send_and_receive(self, messages: Any, *, timeout: float | None = None) -> Any:
        replies = list(super().send_and_receive(messages, timeout=timeout))
        for reply in replies:
            for key, record in reply.content.array_records.items():
                kind = reply.metadata.message_type
                RecordingGrid.replies.append((kind, key, set(record.keys())))
        return replies


def run_toy(run_dir: Path, raw: dict[str, Any]) -> list[tuple[str, str, set[str]]]:
    """Run on the scenario's engine from this process; the arrays' names of every reply on the
    local engine."""
    scenario = parse(raw)
    results.prepare(run_dir, scenario, command="test")
    RecordingGrid.replies = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(fedsim.grid, "InProcessGrid", RecordingGrid)
        fedsim.engine.run(scenario, run_dir, show_progress=False)
    return RecordingGrid.replies


def rows(metrics: pd.DataFrame, scope: str, metric: str) -> pd.DataFrame:
    return metrics[(metrics.scope == scope) & (metrics.metric == metric)]


@dataclass
class Run:
    path: Path
    replies: list[tuple[str, str, set[str]]]


@pytest.fixture(scope="module")
def local_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    path = tmp_path_factory.mktemp("toy") / "local"
    return Run(path, run_toy(path, toy_scenario()))


@pytest.fixture(scope="module")
def shared_keys() -> set[str]:
    workload = WORKLOADS.build(parse(toy_scenario()).workload)
    dataset = load_data(parse(toy_scenario()).data.dataset)
    model = workload.build_model(dataset, torch.Generator().manual_seed(0))
    shared, local = split_state(model.state_dict(), workload.local)
    assert local and all(name.startswith("bn.") for name in local)
    return set(shared)


# ---- engines --------------------------------------------------------------------------------


def test_two_workers_give_the_in_process_metrics(local_run: Run, tmp_path: Path) -> None:
    # Execute: the workers import the plugin as they parse the scenario
    workers = tmp_path / "workers"
    replies = run_toy(workers, toy_scenario(resources={"workers": 2}))

    # Assert: the same metrics, and replies carrying the same arrays (no BN entry among them)
    pd.testing.assert_frame_equal(learned(workers), learned(local_run.path))
    assert replies == local_run.replies


@pytest.mark.flower
def test_flowers_engine_gives_the_local_engines_metrics(local_run: Run, tmp_path: Path) -> None:
    # Execute: the Ray actors import the plugin as they parse the scenario
    flower = tmp_path / "flower"
    run_toy(flower, toy_scenario(engine="flower"))

    # Assert: same metrics, counters included; the model saved is the shared entries only;
    # the clients' states reached the checkpoint through Messages, bit for bit those of the
    # local engine
    assert json.loads((flower / "manifest.json").read_text())["status"] == "completed"
    pd.testing.assert_frame_equal(learned(flower), learned(local_run.path))
    state = loaded(flower)
    torch.testing.assert_close(state.model, loaded(local_run.path).model, rtol=0, atol=0)
    assert sorted(state.clients) == [0, 1, 2, 3]
    assert_same_client_states(state, loaded(local_run.path))


@pytest.mark.flower
def test_a_flower_run_resumes_with_its_clients_states(local_run: Run, tmp_path: Path) -> None:
    # Prepare: a Flower run stopped after round 2 of 3, as if killed after its checkpoint
    flower = tmp_path / "flower"
    run_toy(flower, toy_scenario(engine="flower", rounds=2))
    scenario = parse(toy_scenario(engine="flower"))
    (flower / "scenario.yaml").write_text(scenario.to_yaml())  # the run wanted 3 rounds

    # Execute: resume it on Flower's engine, whose new nodes start with empty states
    fedsim.engine.run(scenario, flower, show_progress=False)

    # Assert: the metrics and client states of the uninterrupted local run (a client that had
    # redrawn its BatchNorm entries or restarted its counter would differ in round 3)
    events = [json.loads(line) for line in (flower / "events.jsonl").read_text().splitlines()]
    assert [e["after_round"] for e in events if e["event"] == "run_resumed"] == [2]
    assert not [e for e in events if e["event"] == "client_failed"]
    assert results.run_status(flower) == "completed"
    pd.testing.assert_frame_equal(learned(flower), learned(local_run.path))
    assert_same_client_states(loaded(flower), loaded(local_run.path))


# ---- local entries, client state, the exchange ----------------------------------------------


def test_batchnorm_entries_never_leave_their_client(local_run: Run, shared_keys: set[str]) -> None:
    # Assert: every train reply carries exactly the shared entries, no reply a BN entry but
    # those to the checkpoint's state queries
    train = [names for kind, key, names in local_run.replies if kind == "train"]
    assert len(train) == 3 * 3  # 3 rounds of 3 clients
    assert all(names == shared_keys for names in train)
    every_name = {n for kind, _, names in local_run.replies if kind != STATE_TYPE for n in names}
    assert not [n for n in every_name if n.startswith("bn.")]
    to_checkpoint = {key for kind, key, _ in local_run.replies if kind == STATE_TYPE}
    assert to_checkpoint == {LOCAL, STATE}
    state = loaded(local_run.path)
    assert set(state.model) == shared_keys
    # Whatever BN entries the saved model holds are the server's as built: none came back.
    model = torch.load(local_run.path / "model.pt", weights_only=True)
    built = nn.BatchNorm1d(16).state_dict()
    for name in [n for n in model if n.startswith("bn.")]:
        assert torch.equal(model[name], built[name.removeprefix("bn.")]), name


def test_each_client_keeps_its_own_batchnorm_statistics(local_run: Run) -> None:
    # Prepare
    clients = loaded(local_run.path).clients

    # Assert: every client was reached (the exchange asks everyone), each with its own BN
    assert sorted(clients) == [0, 1, 2, 3]
    local = {c: clients[c]["arrays"][LOCAL] for c in clients}
    assert all(set(entries) == set(local[0]) for entries in local.values())
    assert all(all(is_local(k, t, ("bn.*",)) for k, t in e.items()) for e in local.values())
    means = torch.stack([local[c]["bn.running_mean"] for c in sorted(local)])
    trained = [c for c in sorted(local) if int(local[c]["bn.num_batches_tracked"]) > 0]
    assert len(trained) >= 2
    for i, a in enumerate(trained):
        for b in trained[i + 1 :]:
            assert not torch.allclose(means[a], means[b]), f"clients {a} and {b} share BN stats"
    assert not means.eq(0).all(dim=1)[trained].any()  # trained statistics, not the initial ones


def test_each_clients_counter_counts_the_rounds_it_trained(local_run: Run) -> None:
    # Prepare
    metrics = pd.read_csv(local_run.path / "metrics.csv")
    counters = rows(metrics, "client", "train_calls")
    clients = loaded(local_run.path).clients

    # Assert: the reported counter runs 1, 2, … per client, and the saved state holds the last
    for client in range(4):
        reported = counters[counters.client == client].sort_values("round")["value"].tolist()
        assert reported == [float(i) for i in range(1, len(reported) + 1)]
        saved = clients[client]["arrays"].get(STATE, {}).get("calls")
        assert (0 if saved is None else int(saved)) == len(reported)
        assert saved is None or saved.dtype == torch.int64
    assert len(counters) == 3 * 3


def test_the_central_metric_reads_the_broadcast(local_run: Run) -> None:
    # Prepare
    metrics = pd.read_csv(local_run.path / "metrics.csv")
    state = loaded(local_run.path)

    # Assert: the exchange ran every round, its memory and broadcast are in the checkpoint
    assert rows(metrics, "server", "exchange_reductions")["value"].tolist() == [1.0, 2.0, 3.0]
    assert rows(metrics, "server", "centroid_distance")["value"].gt(0).all()
    assert len(rows(metrics, "client", f"{CENTROID}_feature_norm")) == 3 * 4
    saved = state.exchanges[CENTROID]
    assert saved["memory"]["reduced"] == 3
    centroid = saved["broadcast"][CENTROID]
    assert centroid.shape == (16,)
    final = torch.load(local_run.path / "broadcasts.pt", weights_only=True)[CENTROID][CENTROID]
    torch.testing.assert_close(final, centroid, rtol=0, atol=0)
    norm = rows(metrics, "server", "centroid_norm")
    assert norm["value"].iloc[-1] == pytest.approx(float(centroid.norm()), rel=1e-6)


# ---- resuming -------------------------------------------------------------------------------


def test_a_run_killed_with_sigkill_resumes_to_the_uninterrupted_result(
    write_scenario: Any, tmp_path: Path
) -> None:
    # Prepare: a `fedsim run` of the toy long enough to be killed with rounds to go
    raw = toy_scenario(rounds=16)
    killed, reference = tmp_path / "killed", tmp_path / "reference"
    command = [sys.executable, "-m", "fedsim", "run", str(write_scenario(raw))]
    command += ["--out", str(killed), "--no-progress"]
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while rounds_done(killed) < 4 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)

    # Execute: kill -9 mid-run, then resume
    os.kill(proc.pid, signal.SIGKILL)
    _, stderr = proc.communicate()
    assert proc.returncode == -signal.SIGKILL, f"the run ended before it was killed: {stderr!r}"
    at_kill = loaded(killed).round
    assert 3 <= at_kill < 16
    resumed = invoke("run", "--resume", killed, "--no-progress")
    run_toy(reference, raw)

    # Assert: the same metrics, counters and client states as a run never interrupted
    assert resumed.exit_code == 0, resumed.output
    pd.testing.assert_frame_equal(learned(killed), learned(reference))
    events = [json.loads(line) for line in (killed / "events.jsonl").read_text().splitlines()]
    assert [e["after_round"] for e in events if e["event"] == "run_resumed"] == [at_kill]
    assert results.run_status(killed) == "completed"
    assert_same_client_states(loaded(killed), loaded(reference))


class CodeOnLoad:
    """Unpickling this runs a shell command."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


def prepared(run_dir: Path) -> Path:
    """A run directory as `fedsim run` leaves it before its first round; its checkpoint path."""
    results.prepare(run_dir, parse(toy_scenario()), command="test")
    return run_dir / checkpoint.FILE


def test_resume_refuses_a_checkpoint_that_would_run_code(tmp_path: Path) -> None:
    # Prepare
    file, marker = prepared(tmp_path / "run"), tmp_path / "marker"
    torch.save({"x": CodeOnLoad(marker)}, file)

    # Execute
    result = invoke("run", "--resume", tmp_path / "run", "--no-progress")

    # Assert
    assert result.exit_code == 2, result.output
    assert str(file) in result.output and "refuses to load" in result.output
    assert "Traceback" not in result.output
    assert not marker.exists()


def test_resume_reports_a_truncated_checkpoint_in_one_line(local_run: Run, tmp_path: Path) -> None:
    # Prepare: half of a real checkpoint
    file = prepared(tmp_path / "run")
    whole = (local_run.path / checkpoint.FILE).read_bytes()
    file.write_bytes(whole[: len(whole) // 2])

    # Execute
    result = invoke("run", "--resume", tmp_path / "run", "--no-progress")

    # Assert
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(file) in errors[0] and "damaged" in errors[0]
    assert "Traceback" not in result.output
