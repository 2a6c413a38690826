"""Re-ID data with domains: determinism, disjoint people, the unlabelled target, Market-1501 splits,
domain styles, the domains partitioner and its federation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from fedsim.cli import app
from fedsim.data import dataset_kind, federation_for, load_data
from fedsim.errors import ScenarioError, UserError
from fedsim.registry import DATASETS, Component
from fedsim.reid_data import (
    GALLERY,
    QUERY,
    TRAIN,
    UNLABELLED,
    DomainClientData,
    DomainDataset,
    DomainFederation,
    RetrievalSet,
    TargetLabelsError,
    federate_domains,
)
from fedsim.scenario import parse

SMALL: dict[str, Any] = {"sources": 2, "identities": 8, "test_identities": 6, "views": 4}


def build(name: str = "reid_synthetic", **options: Any) -> DomainDataset:
    data: DomainDataset = DATASETS.build(Component(name=name, **{**SMALL, **options}))
    return data


def federate(
    data: DomainDataset, clients: int = 3, seed: int = 0, val_fraction: float = 0.25
) -> DomainFederation:
    return federate_domains(data, Component(name="domains"), clients, seed, val_fraction)


def test_datasets_are_registered_with_kind_and_default_partition() -> None:
    for name in ("reid_synthetic", "reid_fmnist"):
        assert dataset_kind(name) == "domains"
        entry = DATASETS.entry(name)
        assert entry.declared("partitioners") == "domain_partitioner"
        assert entry.declared("default_partition") == "domains"
    output = CliRunner().invoke(app, ["list", "dataset"]).output
    assert "reid_synthetic" in output and "reid_fmnist" in output


def test_same_seed_same_tensors_other_seed_other_images() -> None:
    a, b, c = build(seed=3), build(seed=3), build(seed=4)
    for field in ("images", "identities", "cameras", "domains", "split"):
        assert torch.equal(getattr(a, field), getattr(b, field))
    assert not torch.equal(a.images, c.images)
    fa, fb = federate(a, 5, seed=1), federate(b, 5, seed=1)
    for client in range(5):
        assert torch.equal(fa.train[client], fb.train[client])
        assert torch.equal(fa.train_data(client).images, fb.train_data(client).images)


def test_shapes_sizes_and_splits() -> None:
    data = build(image_size=(24, 12), cameras=3)
    n_train = 3 * 8 * 4  # 2 sources + target, 8 people x 4 views each
    assert data.images.shape == (n_train + 6 * 4, 3, 24, 12)
    assert data.images.dtype == torch.float32 and torch.isfinite(data.images).all()
    assert data.num_domains == 3 and data.target == 2 and data.input_shape == (3, 24, 12)
    assert int((data.split == TRAIN).sum()) == n_train
    assert int((data.split == QUERY).sum()) == 6 and int((data.split == GALLERY).sum()) == 18
    assert set(data.cameras.tolist()) == {0, 1, 2}
    assert (data.domains[data.split != TRAIN] == data.target).all()


@pytest.mark.parametrize("clients", [3, 7])
def test_people_are_disjoint_across_domains_and_clients(clients: int) -> None:
    data = build()
    known = data.identities[data.identities != UNLABELLED]
    truth = torch.cat([known, data.target_train_identities])
    by_domain = [set(data.identities[data.domains == d].tolist()) for d in range(2)]
    target = set(data.target_train_identities.tolist()) | set(
        data.identities[data.split != TRAIN].tolist()
    )
    assert len(set(truth.tolist())) == 3 * 8 + 6
    assert not (by_domain[0] & by_domain[1]) and not ((by_domain[0] | by_domain[1]) & target)
    fed = federate(data, clients)
    hidden = dict(
        zip(
            torch.nonzero((data.domains == 2) & (data.split == TRAIN)).flatten().tolist(),
            data.target_train_identities.tolist(),
            strict=True,
        )
    )

    def people(rows: torch.Tensor) -> set[int]:
        return {hidden.get(r, int(data.identities[r])) for r in rows.tolist()}

    seen: set[int] = set()
    for client in range(clients):
        mine = people(fed.train[client]) | people(fed.val[client])
        assert not mine & seen
        seen |= mine
    assert seen == set(truth.tolist()) - set(data.identities[data.split != TRAIN].tolist())
    assert fed.client_domains == sorted(fed.client_domains) and fed.client_domains[-1] == 2


def test_target_labels_never_reach_a_client() -> None:
    data = build()
    assert (data.identities[(data.domains == data.target) & (data.split == TRAIN)] == -1).all()
    fed = federate(data, 6)  # two clients of the target: split by its hidden people
    for client in (4, 5):
        target = fed.train_data(client)
        assert target.is_target and target.num_identities == 0 and target.retrieval is None
        assert target._identities is None
        with pytest.raises(TargetLabelsError, match="unlabelled"):
            _ = target.identities
        with pytest.raises(TargetLabelsError):
            _ = target.labels
        assert fed.val_data(client).is_target
    source = fed.train_data(0)
    assert not source.is_target and source.domain == 0
    assert source.identities.min() == 0 and source.identities.max() == source.num_identities - 1
    assert len(source.identities) == len(source.images) == len(source.cameras) == len(source)


def assert_market1501(split: RetrievalSet) -> None:
    """Every query has a gallery entry of its identity on another camera."""
    same_id = split.query_identities[:, None] == split.gallery_identities[None, :]
    other_cam = split.query_cameras[:, None] != split.gallery_cameras[None, :]
    assert (same_id & other_cam).any(dim=1).all()
    assert len(split.query_images) == len(split.query_identities) == len(split.query_cameras)
    assert len(split.gallery_images) == len(split.gallery_identities)
    assert len(split.gallery_identities) == len(split.gallery_cameras)


def test_target_query_gallery_follow_market1501() -> None:
    data = build(views=2, cameras=5)
    test = federate(data).test_data()
    assert_market1501(test)
    assert len(set(test.query_identities.tolist())) == len(test.query_identities) == 6
    assert set(test.gallery_identities.tolist()) == set(test.query_identities.tolist())
    assert not set(test.query_identities.tolist()) & set(data.target_train_identities.tolist())


def test_source_clients_hold_out_people_as_a_query_gallery_split() -> None:
    fed = federate(build(), 3, val_fraction=0.25)
    for client in (0, 1):
        data = fed.train_data(client)
        assert data.retrieval is not None and len(data.retrieval.query_images) == 2
        assert_market1501(data.retrieval)
        assert not set(fed.val[client].tolist()) & set(fed.train[client].tolist())
    assert federate(build(), 3, val_fraction=0.0).train_data(0).retrieval is None


def test_domain_styles_differ() -> None:
    for data in (build(sources=3), build(sources=3, seed=1)):
        means = torch.stack(
            [data.images[data.domains == d].mean(dim=(0, 2, 3)) for d in range(4)]
        )  # (domains, channels)
        gaps = torch.cdist(means, means) + torch.eye(4)
        assert gaps.min() > 0.05, gaps
        assert len(set(data.styles)) == 4


@pytest.mark.parametrize(
    ("clients", "options", "message"),
    [
        (2, {}, "clients.num >= the 3 domains"),
        (30, {}, "needs at least 10 people there, got 8"),
    ],
)
def test_partition_errors_are_user_errors(clients: int, options: dict, message: str) -> None:
    with pytest.raises(UserError, match=message):
        federate(build(**options), clients)


def test_partition_sources_leaves_the_other_sources_without_a_client() -> None:
    # Prepare: three sources (domains 0-2) and the target (3); only source 1 takes part
    data = build(sources=3)
    partition = Component(name="domains", sources=[1])

    # Execute
    fed = federate_domains(data, partition, 2, 0, 0.0)

    # Assert: the same target, the same people of domain 1 as when every source takes part
    assert fed.client_domains == [1, 3]
    every = federate_domains(data, Component(name="domains"), 4, 0, 0.0)
    assert torch.equal(fed.train[0], every.train[1])
    assert torch.equal(fed.train[1], every.train[3])
    with pytest.raises(UserError, match=r"not a source; the data has sources 0\.\.2"):
        federate_domains(data, Component(name="domains", sources=[3]), 2, 0, 0.0)


def test_mdif_with_one_source_taking_part_is_refused_before_running() -> None:
    raw = {
        "name": "x",
        "rounds": 1,
        "data": {
            "name": "reid_synthetic",
            **SMALL,
            "partition": {"name": "domains", "sources": [0]},
        },
        "clients": {"num": 2, "per_round": 2},
        "workload": {"name": "reid"},
    }
    with pytest.raises(ScenarioError, match="mdif fuses several source domains"):
        parse(raw)
    raw["workload"] = {"name": "reid", "mdif": False}
    assert parse(raw).data.partition.options == {"sources": [0]}


def test_client_data_move_to_a_device_and_sizes_add_up() -> None:
    fed = federate(build(), 3)
    assert sum(fed.client_sizes()) + sum(len(v) for v in fed.val) == 3 * 8 * 4
    assert fed.class_counts().shape == (3, 1) and fed.stats == {}
    moved = fed.to(torch.device("cpu"))
    assert isinstance(moved.train_data(0), DomainClientData)
    assert isinstance(moved.test_data().to(torch.device("cpu")), RetrievalSet)


def test_federation_for_builds_the_domains_federation() -> None:
    spec = Component(name="reid_synthetic", **SMALL)
    fed = federation_for(spec, Component(name="domains"), 3, 0, 0.1)
    assert isinstance(fed, DomainFederation) and fed.num_clients == 3
    assert fed.dataset is load_data(spec)


FMNIST = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(not FMNIST.is_dir(), reason="dataset-fashion-mnist is not installed")
def test_reid_fmnist_loads_items_as_people() -> None:
    data = build("reid_fmnist")
    again = build("reid_fmnist")
    assert torch.equal(data.images, again.images)
    assert data.images.shape == (3 * 8 * 4 + 6 * 4, 3, 32, 16)
    assert_market1501(federate(data).test_data())


def test_reid_fmnist_without_the_package_names_it(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"apt-get install dataset-fashion-mnist.*reid_synthetic"):
        build("reid_fmnist", root=str(tmp_path))


def test_views_of_a_person_differ_but_resemble_each_other() -> None:
    data = build(sources=1, identities=6, test_identities=2)
    x = data.images[data.domains == 0].reshape(6, 4, -1)  # people x views
    within = torch.cdist(x, x).sum() / (6 * 4 * 3)
    flat = x.reshape(24, -1)
    between = torch.cdist(flat, flat).sum() / (24 * 23)
    assert float(within) > 0
    assert float(within) < float(between)
    assert np.isfinite(float(between))


def test_a_scenario_resolves_the_domains_partition_and_names_the_kind_mismatch() -> None:
    raw = {
        "name": "t",
        "rounds": 1,
        "data": {"name": "reid_synthetic", **SMALL},
        "clients": {"num": 3, "per_round": 3},
        "workload": {"name": "classification"},
        "strategy": {"name": "fedavg", "aggregator": {"name": "mean"}},
    }
    with pytest.raises(UserError) as err:
        parse(raw)
    assert "'reid_synthetic' is domains data" in str(err.value)
    assert "data.partition" not in str(err.value)
