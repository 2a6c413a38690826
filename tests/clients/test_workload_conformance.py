"""Conformance suite: the shared checks every registered workload must pass.

Each workload is built with its default parameters and run on a tiny federation of the kind of
data it reads (``TINY_DATA``), so a workload added later is checked without touching this file;
one that reads a kind of data no entry provides fails the suite until an entry is added.
Workloads that tests register are covered as well: the toy of ``tests/fedsim/toy_workload.py``
is a plugin that every scenario here names (so that every process that parses one imports it),
and the worker processes of the 2-worker runs import this module (it holds their ClientApp's
path) and with it every module named in ``MODULES_ENV``, which the parent sets to the modules
that registered the workloads under test (plugin files excepted: the scenario brings them).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import pytest
import torch
from flwr.app import ArrayRecord
from torch import Tensor, nn

import fedsim.engine
import fedsim.grid
from clients import State, TrainConfig
from clients.workload import split_state
from fedsim import checkpoint, plugins, results
from fedsim.app import serve
from fedsim.build import (
    initial_model,
    local_entries,
    pipeline_strategy,
    scenario_federation,
    seeded_generator,
)
from fedsim.client_app import LOCAL
from fedsim.client_app import client_app as client_app
from fedsim.client_states import plain_record, record_of
from fedsim.grid import InProcessGrid
from fedsim.registry import WORKLOADS, load_components
from fedsim.scenario import Scenario, parse

MODULES_ENV = "FEDSIM_CONFORMANCE_MODULES"  # comma-separated modules that register workloads

TOY_PLUGIN = str(Path(__file__).parents[1] / "fedsim" / "toy_workload.py")
load_components()
PLUGIN_MODULES = {p.module for p in plugins.load([TOY_PLUGIN])}  # registers the toy workload
for _module in filter(None, os.environ.get(MODULES_ENV, "").split(",")):
    importlib.import_module(_module)

# A tiny federation of each kind of data a workload may read (its ``reads``).
TINY_DATA: dict[str, dict[str, Any]] = {
    "samples": {"name": "digits", "partition": {"name": "iid"}},
    "graph": {"name": "csbm", "num_nodes": 150, "num_classes": 3, "num_features": 8},
    "mbo_task": {"name": "mbo_continuous", "dim": 4, "pool": 600},
    "domains": {
        "name": "reid_synthetic",
        "sources": 2,
        "identities": 6,
        "test_identities": 4,
        "views": 4,
    },
    "opendg": {"name": "opendg_synthetic", "per_class": 12, "partition": {"name": "domains"}},
    "scene": {
        "name": "hsi_synthetic",
        "height": 12,
        "width": 12,
        "bands": 8,
        "classes": 3,
        "similar_pairs": 1,
        "partition": {"name": "tiles", "halo": 1},
    },
}
CLIENTS = 3
ROUNDS = 3
# fedsim's own workloads and its plugins', not the deliberately broken ones tests register
# (tests/fedsim/test_app.py's, when pytest has imported it first).
NAMES = [
    n for n in WORKLOADS.names() if not WORKLOADS.entry(n).factory.__module__.startswith("tests.")
]
WITH_EXCHANGES = [name for name in NAMES if WORKLOADS.build(name).exchanges]


def tiny(name: str, **changes: Any) -> dict[str, Any]:
    """The scenario of workload ``name`` (default parameters) on its tiny federation."""
    reads = WORKLOADS.build(name).reads
    if reads not in TINY_DATA:
        pytest.fail(
            f"workload {name!r} reads {reads!r} data, for which the conformance suite has no "
            f"tiny dataset: add one to TINY_DATA in {__file__}"
        )
    raw: dict[str, Any] = {
        "name": f"conformance-{name}",
        "seed": 0,
        "rounds": ROUNDS,
        "device": "cpu",
        "data": TINY_DATA[reads],
        "clients": {"num": CLIENTS, "per_round": CLIENTS},
        "workload": {"name": name},
        "strategy": {"name": "fedavg", "aggregator": {"name": "mean"}},
        "eval": {"every": 1},
        "plugins": [TOY_PLUGIN],
    }
    return {**raw, **changes}


class RecordingGrid(InProcessGrid):
    """The local engine's grid, keeping (message type, record, array names) of every reply."""

    replies: ClassVar[list[tuple[str, str, set[str]]]] = []

    def send_and_receive(self, messages: Any, *, timeout: float | None = None) -> Any:
        replies = list(super().send_and_receive(messages, timeout=timeout))
        for reply in replies:
            for key, record in reply.content.array_records.items():
                RecordingGrid.replies.append((reply.metadata.message_type, key, set(record)))
        return replies


def learned(run_dir: Path) -> pd.DataFrame:
    """Everything a run learned and measured, except wall-clock timings."""
    metrics = pd.read_csv(run_dir / "metrics.csv")
    return metrics[~metrics.metric.str.endswith("_time_s")].reset_index(drop=True)


def series(metrics: pd.DataFrame, scope: str, metric: str) -> list[float]:
    chosen = metrics[(metrics.scope == scope) & (metrics.metric == metric)]
    return chosen.sort_values("round")["value"].tolist()


def loaded(run_dir: Path) -> checkpoint.Checkpoint:
    state = checkpoint.load(run_dir)
    assert state is not None, f"{run_dir} has no checkpoint"
    return state


def equal(a: Any, b: Any) -> bool:
    """Exactly equal nested containers of tensors (dtype included) and plain values."""
    if isinstance(a, Tensor):
        return isinstance(b, Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b)
    return bool(a == b)


class Runs:
    """Each workload's runs, made once for the whole module."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.replies: dict[str, list[tuple[str, str, set[str]]]] = {}
        self._pool: InProcessGrid | None = None
        self._patch = pytest.MonkeyPatch()

    def reference(self, name: str) -> Path:
        """ROUNDS rounds on the local engine, in this process, its replies recorded."""
        out = self.root / name / "reference"
        if not out.exists():
            RecordingGrid.replies = []
            with pytest.MonkeyPatch.context() as patch:
                patch.setattr(fedsim.grid, "InProcessGrid", RecordingGrid)
                self._run(parse(tiny(name)), out)
            self.replies[name] = RecordingGrid.replies
        return out

    def resumed(self, name: str) -> Path:
        """A run stopped after ROUNDS - 1 rounds, then resumed from its checkpoint."""
        out = self.root / name / "resumed"
        if not out.exists():
            self._run(parse(tiny(name, rounds=ROUNDS - 1)), out)
            scenario = parse(tiny(name))
            (out / "scenario.yaml").write_text(scenario.to_yaml())
            fedsim.engine.run_local(scenario, out, show_progress=False)
        return out

    def on_two_workers(self, name: str) -> Path:
        """ROUNDS rounds on a pool of two worker processes (one pool for every workload)."""
        out = self.root / name / "workers"
        if not out.exists():
            scenario = parse(tiny(name, resources={"workers": 2}))
            results.prepare(out, scenario, command="test")
            pool = self.pool()
            pool.forget_clients()  # a new run
            serve(pool, scenario, out, show_progress=False)
        return out

    def pool(self) -> InProcessGrid:
        if self._pool is None:
            # The workers import this module for their ClientApp, and it imports these.
            modules = {WORKLOADS.entry(n).factory.__module__ for n in NAMES}
            modules = sorted(modules - PLUGIN_MODULES)
            self._patch.setenv(MODULES_ENV, ",".join(modules))
            self._pool = InProcessGrid(f"{__name__}:client_app", CLIENTS, workers=2)
        return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
        self._patch.undo()

    @staticmethod
    def _run(scenario: Scenario, out: Path) -> None:
        results.prepare(out, scenario, command="test")
        fedsim.engine.run_local(scenario, out, show_progress=False)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runs]:
    made = Runs(tmp_path_factory.mktemp("conformance"))
    yield made
    made.close()


# ---- the registry --------------------------------------------------------------------------


def test_every_workload_has_tiny_data_of_the_kind_it_reads() -> None:
    missing = {n: WORKLOADS.build(n).reads for n in NAMES}
    missing = {n: reads for n, reads in missing.items() if reads not in TINY_DATA}
    assert not missing, (
        f"workloads {missing} read data for which the conformance suite has no tiny dataset: "
        f"add one to TINY_DATA in {__file__}"
    )
    assert {"classification", "toy_bn"} <= set(NAMES)  # fedsim's own, and a test's
    assert all(WORKLOADS.entry(name).doc for name in NAMES)


# ---- the model ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_build_model_draws_from_its_generator_only(name: str) -> None:
    # Prepare
    scenario = parse(tiny(name))
    workload = WORKLOADS.build(scenario.workload.component)
    dataset = scenario_federation(scenario).dataset
    global_rng = torch.get_rng_state()

    # Execute
    first, again, other = (
        workload.build_model(dataset, torch.Generator().manual_seed(seed)).state_dict()
        for seed in (0, 0, 1)
    )

    # Assert
    assert torch.equal(torch.get_rng_state(), global_rng), "build_model drew from the global RNG"
    assert equal(first, again)
    assert first.keys() == other.keys()
    assert any(not torch.equal(first[k], other[k]) for k in first), "the seed changed nothing"
    assert all(t.device.type == "cpu" for t in first.values())


# ---- a run ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_training_lowers_the_loss_or_improves_the_headline(name: str, runs: Runs) -> None:
    # Prepare
    metrics = learned(runs.reference(name))
    headline = WORKLOADS.build(name).headline

    # Execute
    losses = series(metrics, "federated", "train_loss")
    scores = series(metrics, "server", headline)

    # Assert
    lower = len(losses) >= 2 and losses[-1] < losses[0]
    better = len(scores) >= 2 and scores[-1] > scores[0]
    assert lower or better, f"train_loss by round {losses}, {headline} by round {scores}"


@pytest.mark.parametrize("name", NAMES)
def test_local_entries_never_leave_a_client(name: str, runs: Runs) -> None:
    # Prepare
    scenario = parse(tiny(name))
    workload = WORKLOADS.build(scenario.workload.component)
    model = initial_model(workload, scenario, scenario_federation(scenario).dataset)
    shared, local = split_state(model.state_dict(), workload.local)
    run_dir = runs.reference(name)

    # Assert: train replies carry the shared entries exactly, no model reply a local entry
    replies = runs.replies[name]
    train = [names for kind, key, names in replies if kind == "train"]
    assert all(names == set(shared) for names in train)
    assert len(train) == (ROUNDS * CLIENTS if shared else 0)  # nothing shared: no training
    evaluated = {n for kind, _, names in replies if kind == "evaluate" for n in names}
    assert not evaluated & set(local)
    assert set(loaded(run_dir).model) == set(shared)


@pytest.mark.parametrize("name", NAMES)
def test_client_state_survives_a_checkpoint(name: str, runs: Runs, tmp_path: Path) -> None:
    # Prepare
    scenario = parse(tiny(name))
    workload = WORKLOADS.build(scenario.workload.component)
    dataset = scenario_federation(scenario).dataset
    local = set(local_entries(workload, scenario, dataset, 0))
    saved = loaded(runs.reference(name))

    # Execute: the clients' states through a RecordDict and a checkpoint file, and a run
    # stopped after ROUNDS - 1 rounds that resumed from its checkpoint
    as_records = {c: plain_record(record_of(s)) for c, s in saved.clients.items()}
    (tmp_path / "copy").mkdir()
    checkpoint.save(tmp_path / "copy", saved)
    reloaded = loaded(tmp_path / "copy")
    resumed = runs.resumed(name)

    # Assert
    if local:  # every client was reached, and keeps its local entries
        assert sorted(saved.clients) == list(range(CLIENTS))
        assert all(set(s["arrays"][LOCAL]) == local for s in saved.clients.values())
    assert equal(as_records, saved.clients)
    assert equal(reloaded.clients, saved.clients)
    assert equal(reloaded.exchanges, saved.exchanges)
    pd.testing.assert_frame_equal(learned(resumed), learned(runs.reference(name)))
    assert equal(loaded(resumed).clients, saved.clients)


def test_one_and_two_workers_give_the_same_metrics(runs: Runs) -> None:
    """One test for every workload, so that one pool of workers serves them all (also when
    pytest-xdist spreads this module's tests over its processes)."""
    # Execute
    differences = {}
    for name in NAMES:
        try:
            two = learned(runs.on_two_workers(name))
            pd.testing.assert_frame_equal(two, learned(runs.reference(name)))
        except AssertionError as err:
            differences[name] = str(err)

    # Assert
    assert not differences, "\n".join(f"{name}: {why}" for name, why in differences.items())


# ---- exchanges ------------------------------------------------------------------------------


def wired(arrays: dict[str, Tensor]) -> dict[str, Tensor]:
    """``arrays`` as they arrive after a Message (what the core does to reports)."""
    record = ArrayRecord({k: v.detach().contiguous() for k, v in arrays.items()})
    return dict(record.to_torch_state_dict())


@pytest.mark.parametrize("name", WITH_EXCHANGES)
def test_each_exchange_reduces_the_reports_it_builds(name: str) -> None:
    # Prepare: each client's model (the global one with its own local entries) and state
    scenario = parse(tiny(name))
    workload = WORKLOADS.build(scenario.workload.component)
    federation = scenario_federation(scenario)
    strategy = pipeline_strategy(scenario)
    models: dict[int, nn.Module] = {}
    states: dict[int, State] = {}
    for c in range(CLIENTS):
        models[c] = initial_model(workload, scenario, federation.dataset)
        models[c].load_state_dict(
            local_entries(workload, scenario, federation.dataset, c), strict=False
        )
        states[c] = {}
    counts = torch.tensor(federation.client_sizes(), dtype=torch.float32)
    memories: dict[str, Any] = {}
    received: dict[str, dict[str, Tensor]] = {}

    for rnd in (1, 2):

        def aggregate(
            rows: Tensor, clients: Any, state: Any, objectives: Tensor | None, rnd: int = rnd
        ) -> tuple[Tensor, Any]:
            weights = counts[list(clients)]
            return strategy.aggregate_rows(rnd, rows, clients, state, weights, objectives)

        for exchange in workload.exchanges:
            # Execute: every client reports, the server reduces
            reports = {}
            for c in range(CLIENTS):
                config = TrainConfig(
                    rnd,
                    c,
                    seeded_generator(scenario.seed, c, rnd),
                    torch.device("cpu"),
                    received=received,
                )
                arrays, metrics = exchange.report(
                    models[c], federation.train_data(c), states[c], config
                )
                assert all(isinstance(v, (int, float)) for v in metrics.values()), metrics
                reports[c] = wired(arrays)
            broadcast, memory, metrics = exchange.reduce(
                reports, memories.get(exchange.name), aggregate, rnd
            )

            # Assert: a broadcast of finite tensors, numeric metrics, a checkpointable memory
            assert broadcast, f"round {rnd}: {exchange.name} broadcast nothing"
            assert all(bool(torch.isfinite(t).all()) for t in broadcast.values())
            assert all(isinstance(v, (int, float)) for v in metrics.values()), metrics
            assert equal(checkpoint.from_plain(checkpoint.to_plain(memory)), memory)
            memories[exchange.name] = memory
            received = {**received, exchange.name: wired(broadcast)}
