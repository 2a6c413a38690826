"""The ``reid`` workload: the target's labels never reach training, shapes, bad input."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch

import fedsim.data
import fedsim.engine
import fedsim.reid_data
from clients import TrainConfig
from clients.reid.workload import ReidNet, ReidWorkload, ReidWorkloadParams
from clients.workload import TRAINED
from fedsim import results
from fedsim.build import scenario_federation
from fedsim.errors import UserError
from fedsim.registry import WORKLOADS, Component
from fedsim.reid_data import DomainDataset
from fedsim.scenario import parse

DATA = {"name": "reid_synthetic", "sources": 2, "identities": 6, "test_identities": 4, "views": 4}


def scenario(**workload: Any) -> Any:
    return parse(
        {
            "name": "reid-test",
            "seed": 0,
            "rounds": 2,
            "device": "cpu",
            "data": DATA,
            "clients": {"num": 3, "per_round": 3},
            "workload": {"name": "reid", "epochs": 1, **workload},
            "strategy": {"name": "fedavg", "aggregator": {"name": "mean"}},
            "eval": {"every": 1},
        }
    )


def clear_data_caches() -> None:
    fedsim.data._load_data.cache_clear()
    fedsim.data._federation_for.cache_clear()


def run(out: Path, **workload: Any) -> pd.DataFrame:
    s = scenario(**workload)
    results.prepare(out, s, command="test")
    fedsim.engine.run_local(s, out, show_progress=False)
    metrics = pd.read_csv(out / "metrics.csv")
    return metrics[~metrics.metric.str.endswith("_time_s")].reset_index(drop=True)


def test_target_labels_never_reach_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: the same data, except that the target's hidden true ids are shuffled (a poison
    # that any read of them by training would turn into different metrics)
    build = fedsim.reid_data._build

    def poisoned(*args: Any) -> DomainDataset:
        data = build(*args)
        ids = data.target_train_identities
        perm = torch.randperm(len(ids), generator=torch.Generator().manual_seed(1))
        return dataclasses.replace(data, target_train_identities=ids[perm])

    # Execute
    clear_data_caches()
    clean = run(tmp_path / "clean")
    clean_ids = scenario_federation(scenario()).dataset.target_train_identities.clone()
    monkeypatch.setattr(fedsim.reid_data, "_build", poisoned)
    clear_data_caches()
    try:
        dirty = run(tmp_path / "poisoned")
        federation = scenario_federation(scenario())
        poisoned_ids = federation.dataset.target_train_identities
        assert not torch.equal(poisoned_ids, clean_ids), "the poison changed nothing"
    finally:
        monkeypatch.undo()
        clear_data_caches()

    # Assert: the target clustered and trained, and nothing differs
    target = clean[(clean.scope == "client") & (clean.client == 2)]
    assert target[target.metric == "train_clusters"].value.max() > 0
    assert set(clean[clean.scope == "server"].metric) >= {"rank1", "rank5", "rank10", "mAP"}
    pd.testing.assert_frame_equal(clean, dirty)


def test_clients_share_shapes_and_keep_their_branches_local() -> None:
    s = scenario()
    dataset = scenario_federation(s).dataset
    workload = ReidWorkload(ReidWorkloadParams())
    model = workload.build_model(dataset, torch.Generator().manual_seed(0))
    assert isinstance(model, ReidNet)
    assert model.classifier.out_features == ReidWorkloadParams().max_identities
    heads = ("classifier.*", "gcn_classifier.*")
    assert workload.local == ("norms.*", "neck.*", "gcn_neck.*", *heads)
    assert ReidWorkload(ReidWorkloadParams(rdsbn=False)).local == heads
    shared = [k for k in model.state_dict() if not any(k.startswith(h[:-1]) for h in heads)]
    # Without rdsbn every norm layer is shared (FedAvg); the classifiers never are.
    assert {k.split(".")[0] for k in shared} == {
        "convs",
        "norms",
        "embed",
        "neck",
        "gcn_neck",
        "mdif",
    }


def test_mdif_agents_reach_every_client_and_the_server(tmp_path: Path) -> None:
    # Execute: two rounds with MDIF (the default), the agents exchange before target_branch
    metrics = run(tmp_path / "mdif")

    # Assert: every domain's agent known after round 1, retrieval measured with them
    server = metrics[metrics.scope == "server"]
    assert server[server.metric == "agents_known"].value.tolist() == [3.0, 3.0]
    assert server[server.metric == "mAP"].value.between(0, 1).tolist() == [True, True]
    assert [e.name for e in ReidWorkload(ReidWorkloadParams()).exchanges] == [
        "agents",
        "target_branch",
    ]
    assert [e.name for e in ReidWorkload(ReidWorkloadParams(mdif=False)).exchanges] == [
        "target_branch"
    ]
    # Shared norms: the server's model is the target's own, nothing to pass on.
    no_branch = ReidWorkload(ReidWorkloadParams(mdif=False, rdsbn=False)).exchanges
    assert no_branch == ()


def test_mdif_with_one_source_is_a_clear_error() -> None:
    dataset = fedsim.data.load_data(Component(**{**DATA, "sources": 1}))
    with pytest.raises(UserError, match="sources >= 2"):
        ReidWorkload(ReidWorkloadParams()).build_model(dataset, torch.Generator().manual_seed(0))


def test_too_small_a_classifier_is_a_clear_error() -> None:
    dataset = scenario_federation(scenario()).dataset
    workload = ReidWorkload(ReidWorkloadParams(max_identities=2))
    with pytest.raises(UserError, match="max_identities"):
        workload.build_model(dataset, torch.Generator().manual_seed(0))


def test_source_only_the_target_abstains_and_the_sources_make_the_model(tmp_path: Path) -> None:
    # Execute: FedAvg with shared BN and no pseudo-labels: the target has nothing to train on
    metrics = run(tmp_path / "source_only", rdsbn=False, pseudo_labels=False, mdif=False)

    # Assert: each round aggregates the two sources only; the target is not a failure
    rounds = metrics[metrics.scope == "federated"]
    assert rounds[rounds.metric == "train_abstained"].value.tolist() == [1.0, 1.0]
    assert rounds[rounds.metric == "train_clients"].value.tolist() == [2.0, 2.0]
    assert rounds[rounds.metric == "train_failures"].value.tolist() == [0.0, 0.0]
    # The server evaluates its own model: with shared norms it is the target's
    server = metrics[metrics.scope == "server"]
    assert server[server.metric == "mAP"].value.between(0, 1).tolist() == [True, True]


def test_the_mean_teacher_lives_in_the_targets_state_and_follows_the_student() -> None:
    # Prepare: k-reciprocal distances (the code's) and a fixed eps that finds clusters here
    s = scenario(mean_teacher=True, distance="jaccard", eps=0.5, min_samples=2, mdif=False)
    federation = scenario_federation(s)
    workload = WORKLOADS.build(s.workload.component)
    model = workload.build_model(federation.dataset, torch.Generator().manual_seed(0))
    target = federation.train_data(2)
    assert target.is_target
    state: dict[str, torch.Tensor] = {}

    # Execute: two rounds of the target's local training
    fitted = []
    for rnd in (1, 2):
        config = TrainConfig(rnd, 2, torch.Generator().manual_seed(rnd), torch.device("cpu"))
        fitted.append(workload.fit(model, target, state, config))

    # Assert: the teacher is a whole copy of the model, in the client's state, one EMA step per
    # optimiser step (batches of 32 over the clustered images, one epoch a round)
    assert all(m["clusters"] > 0 for m in fitted), fitted
    teacher = {k[len("teacher.") :]: v for k, v in state.items() if k.startswith("teacher.")}
    assert teacher.keys() == model.state_dict().keys()
    steps = sum(-(-int(m[TRAINED]) // 32) for m in fitted)
    assert int(state["teacher_step"]) == steps
    # An EMA lags the student: close to it, not equal
    w = model.state_dict()["convs.0.weight"]
    assert not torch.equal(teacher["convs.0.weight"], w)
    assert torch.allclose(teacher["convs.0.weight"], w, atol=0.05)
