"""Open DG data: DAML's open split by hand, domains as rotations, the partitioners, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedsim.data import dataset_kind
from fedsim.errors import UserError
from fedsim.opendg_data import UNKNOWN, federate_opendg, open_split
from fedsim.registry import DATASETS, Component
from fedsim.scenario import ScenarioError, parse


def test_the_notes_ten_class_split_by_hand() -> None:
    # Execute
    split = open_split((1, 1, 1, 1, 1, 1, 3), 10)

    # Assert: S123={0}, S12={1}, S13={2}, S23={3}, S1={4}, S2={5}, S3={6}, unknown {7,8,9}
    assert split.sources == ((0, 1, 2, 4), (0, 1, 3, 5), (0, 2, 3, 6))
    assert split.target_known == (0, 1, 2, 3, 4, 5, 6)
    assert split.unknown == (7, 8, 9)
    assert split.known == (0, 1, 2, 3, 4, 5, 6) and split.num_known == 7
    assert split.domain_classes(3) == tuple(range(10))


def test_a_split_whose_target_knows_only_part_of_the_groups() -> None:
    # (n1..n7) = (2, 1, 1, 1, 0, 1, 1): S123={0,1}, S12={2}, S13={3}, S23={4}, S1={5}, S2={6},
    # S3={7}, unknown {8}; the target knows S123[:1] = {0} and the single sets {5, 6, 7}
    split = open_split((2, 1, 1, 1, 0, 1, 1), 10)

    assert split.sources == ((0, 1, 2, 3, 5), (0, 1, 2, 4, 6), (0, 1, 3, 4, 7))
    assert split.target_known == (0, 5, 6, 7)
    assert split.unknown == (8,)
    assert split.known == (0, 1, 2, 3, 4, 5, 6, 7)


@pytest.mark.parametrize(
    ("sizes", "words"),
    [
        ((0, 0, 0, 0, 0, 0, 3), "leaves every source with no class"),
        ((3, 3, 3, 0, 0, 0, 3), "<= 10 classes"),
        ((1, 1, 1, 2, 1, 1, 3), "n4 <= n1"),
        ((1, 1, 1, 1, 1, 1, 0), "no unknown class"),
    ],
)
def test_bad_splits_are_refused(sizes: tuple[int, ...], words: str) -> None:
    with pytest.raises(UserError, match=words):
        open_split(sizes, 10)  # type: ignore[arg-type]


def test_digits_domains_hold_their_classes_and_no_image_twice() -> None:
    # Execute
    data = DATASETS.build(Component(name="opendg_digits"))

    # Assert
    assert dataset_kind("opendg_digits") == "opendg"
    for d in range(3):
        classes = set(data.classes[data.domains == d].tolist())
        assert classes == set(data.split.sources[d])
        assert bool((data.labels[data.domains == d] != UNKNOWN).all())
    target = data.domains == 3
    assert set(data.classes[target].tolist()) == set(range(10))
    assert set(data.classes[target & (data.labels == UNKNOWN)].tolist()) == {7, 8, 9}
    assert len(data.images) == 1797  # every digit dealt out exactly once


def test_rotation_moves_a_pixel_where_the_angle_says() -> None:
    from fedsim.opendg_data import _rotate

    image = torch.zeros(1, 1, 9, 9)
    image[0, 0, 4, 8] = 1.0  # right edge, middle row
    turned = _rotate(image, 90.0)
    assert turned[0, 0].argmax().item() in {0 * 9 + 4, 8 * 9 + 4}  # onto the vertical axis
    assert torch.equal(_rotate(image, 0.0), image)


def test_partitions_one_domain_per_client_or_sites() -> None:
    data = DATASETS.build(Component(name="opendg_synthetic", per_class=20))
    by_domain = federate_opendg(data, Component(name="domains"), 3, 0, 0.2)
    sites = federate_opendg(data, Component(name="sites"), 2, 0, 0.2)

    assert [by_domain.train_data(c).domains for c in range(3)] == [(0,), (1,), (2,)]
    assert all(sites.train_data(c).domains == (0, 1, 2) for c in range(2))
    rows = torch.cat(by_domain.train + by_domain.val)
    assert len(rows) == len(torch.unique(rows)) == int((data.domains < 3).sum())
    test = by_domain.test_data()
    assert len(test.source_x) == sum(len(v) for v in by_domain.val)
    assert len(test.x) == int((data.domains == 3).sum())


def test_bad_federations_and_scenarios_are_refused() -> None:
    data = DATASETS.build(Component(name="opendg_synthetic", per_class=20))
    with pytest.raises(UserError, match=r"clients\.num = 3"):
        federate_opendg(data, Component(name="domains"), 4, 0, 0.2)
    with pytest.raises(UserError, match="val_fraction"):
        federate_opendg(data, Component(name="domains"), 3, 0, 0.0)
    raw = {
        "name": "x",
        "rounds": 1,
        "data": {"name": "opendg_digits", "angles": [0, 30, 60, 30]},
        "clients": {"num": 3, "per_round": 3},
        "workload": {"name": "daml"},
    }
    with pytest.raises(ScenarioError, match="overlaps a source"):
        parse(raw)
    with pytest.raises(ScenarioError, match="leaves every source with no class"):
        parse({**raw, "data": {"name": "opendg_fmnist", "open_split": [0, 0, 0, 0, 0, 0, 3]}})
    with pytest.raises(ScenarioError, match="tau_quantile"):
        parse(
            {
                **raw,
                "data": {"name": "opendg_digits"},
                "workload": {"name": "daml", "tau_quantile": 1.0},
            }
        )


def test_same_seed_same_data() -> None:
    a = DATASETS.build(Component(name="opendg_synthetic", seed=1, per_class=10))
    b = DATASETS.build(Component(name="opendg_synthetic", seed=1, per_class=10))
    c = DATASETS.build(Component(name="opendg_synthetic", seed=2, per_class=10))
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.images, c.images)
    assert np.isclose(float(a.images.mean()), 0.0, atol=1e-5)
