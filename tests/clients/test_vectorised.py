"""clients.vectorised: a cohort's training equals each client's own ``fit`` (torch.optim.SGD)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
import torch
from torch import nn

from clients import vectorised
from clients.classification import ClassificationParams, ClassificationWorkload
from clients.workload import Member, PlainTraining, TrainConfig
from tests.workloads import shape_of

# Batches of 16: 4, 3, 4 and 2 steps a pass; the last batch of a pass is short for three.
SIZES = [50, 37, 64, 20]


def workload(**options: Any) -> ClassificationWorkload:
    defaults = {"lr": 0.05, "batch_size": 16}
    return ClassificationWorkload(ClassificationParams(**{**defaults, **options}))


def cohort(model: nn.Module, shape: tuple[int, ...]) -> list[Member]:
    """Four clients of different sizes, each from a start of its own (as local entries give)."""
    g = torch.Generator().manual_seed(1)
    members = []
    for c, n in enumerate(SIZES):
        data = (torch.randn(n, *shape, generator=g), torch.randint(0, 10, (n,), generator=g))
        start = {
            k: v + 0.01 * torch.randn(v.shape, generator=g) for k, v in model.state_dict().items()
        }
        config = TrainConfig(1, c, torch.Generator().manual_seed(100 + c), torch.device("cpu"))
        members.append(Member(start, data, {}, config))
    return members


def alone(
    w: ClassificationWorkload, model: nn.Module, member: Member
) -> tuple[dict[str, Any], dict[str, float]]:
    """The member trained by ``fit``, from a fresh generator seeded as the cohort's was."""
    model.load_state_dict(member.start)
    seed = 100 + member.config.client
    config = replace(member.config, generator=torch.Generator().manual_seed(seed))
    metrics = w.fit(model, member.data, {}, config)
    return {k: v.clone() for k, v in model.state_dict().items()}, metrics


@pytest.mark.parametrize(
    ("model", "options"),
    [
        ("mlp", {}),
        ("mlp", {"momentum": 0.9, "weight_decay": 1e-3, "mu": 0.1, "epochs": 2}),
        ("cnn", {}),
        ("cnn", {"momentum": 0.9, "weight_decay": 1e-3, "steps": 5}),
    ],
)
def test_a_cohort_trains_each_client_as_its_own_fit_does(
    model: str, options: dict[str, Any]
) -> None:
    # Prepare
    w = workload(model=model, **options)
    shape = (1, 8, 8) if model == "cnn" else (64,)
    net = w.build_model(shape_of(shape, 10), torch.Generator().manual_seed(0))
    members = cohort(net, shape)

    # Execute
    together = w.fit_cohort(net, members)
    one_by_one = [alone(w, net, member) for member in members]

    # Assert
    for fitted, (weights, metrics) in zip(together, one_by_one, strict=True):
        assert fitted is not None  # trained in the cohort, not left to fit
        for k, want in weights.items():
            gap = (fitted.entries[k] - want).norm() / want.norm()
            assert gap < 1e-5, f"{k}: relative gap {gap:.2e}"
        assert fitted.metrics == pytest.approx(metrics, rel=1e-5)


class Reversed(PlainTraining):
    """Another minibatch order than PlainTraining's: a cohort cannot know it."""


# The test CNN's largest layer output for one 1x8x8 image: its first convolution's, 16 channels
# of 8x8 float32, 4096 bytes; a client's batch of 16 makes 64 kB.
CNN_CLIENT_BYTES = 16 * 8 * 8 * 4 * 16


@pytest.fixture
def groups(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The clients of each group trained together, with room for two CNN clients a step."""
    monkeypatch.setattr(vectorised, "CPU_ACTIVATION_BYTES", 2 * CNN_CLIENT_BYTES)
    sizes: list[int] = []
    train = vectorised._train_longest_first

    def counted(model: nn.Module, members: list[Member], *rest: Any) -> Any:
        sizes.append(len(members))
        return train(model, members, *rest)

    monkeypatch.setattr(vectorised, "_train_longest_first", counted)
    return sizes


@pytest.mark.parametrize(
    ("room", "expected"),
    [(2, [2, 2]), (3, [2, 2])],  # at most 2 clients a group; at most 3, shared out evenly
)
def test_a_cnn_on_a_cpu_trains_in_groups_each_client_as_its_own_fit(
    groups: list[int], monkeypatch: pytest.MonkeyPatch, room: int, expected: list[int]
) -> None:
    # Prepare
    monkeypatch.setattr(vectorised, "CPU_ACTIVATION_BYTES", room * CNN_CLIENT_BYTES)
    w = workload(model="cnn", momentum=0.9)
    net = w.build_model(shape_of((1, 8, 8), 10), torch.Generator().manual_seed(0))
    members = cohort(net, (1, 8, 8))

    # Execute
    together = w.fit_cohort(net, members)
    one_by_one = [alone(w, net, member) for member in members]

    # Assert: the groups, and every client as its own fit trains it
    assert groups == expected
    for fitted, (weights, metrics) in zip(together, one_by_one, strict=True):
        assert fitted is not None
        for k, want in weights.items():
            assert (fitted.entries[k] - want).norm() / want.norm() < 1e-5, k
        assert fitted.metrics == pytest.approx(metrics, rel=1e-5)


def test_a_dense_model_with_small_layers_trains_as_one_cohort(groups: list[int]) -> None:
    w = workload(model="mlp")  # 128 hidden units: 512 bytes a sample, 8 kB a client
    net = w.build_model(shape_of((64,), 10), torch.Generator().manual_seed(0))
    assert all(fitted is not None for fitted in w.fit_cohort(net, cohort(net, (64,))))
    assert groups == [4]


def test_members_the_cohort_cannot_batch_are_left_to_fit() -> None:
    # Prepare
    w = workload()
    net = w.build_model(shape_of((64,), 10), torch.Generator().manual_seed(0))
    members = cohort(net, (64,))
    members[1] = replace(members[1], config=replace(members[1].config, training=Reversed()))
    empty = (torch.zeros(0, 64), torch.zeros(0, dtype=torch.long))
    members[3] = replace(members[3], data=empty)
    with_bn = nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.BatchNorm1d(8), nn.Linear(8, 10))

    # Execute
    mixed = w.fit_cohort(net, members)
    running_stats = w.fit_cohort(with_bn, cohort(with_bn, (64,)))
    single = w.fit_cohort(net, members[:1])

    # Assert
    assert [fitted is not None for fitted in mixed] == [True, False, True, False]
    assert running_stats == [None] * len(SIZES)
    assert single == [None]


def test_a_model_with_dropout_trains_in_the_cohort_each_client_with_its_own_masks() -> None:
    # Prepare: two clients alike in everything (start, data, minibatch order), on a model with
    # dropout and on the same model without
    w = workload()
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.Dropout(0.5), nn.Linear(32, 10))
    without = nn.Sequential(*(m for m in net if not isinstance(m, nn.Dropout)))

    def alike(model: nn.Module) -> list[Member]:
        one = cohort(model, (64,))[0]
        seeded = [torch.Generator().manual_seed(7) for _ in range(2)]
        return [replace(one, config=replace(one.config, generator=g)) for g in seeded]

    # Execute
    torch.manual_seed(0)  # the global generator, which dropout draws from alone or in a cohort
    a, b = w.fit_cohort(net, alike(net))
    c, d = w.fit_cohort(without, alike(without))

    # Assert: trained together, not left to fit; only their dropout masks tell them apart
    assert a is not None and b is not None and c is not None and d is not None
    assert not torch.equal(a.entries["1.weight"], b.entries["1.weight"])
    assert torch.equal(c.entries["1.weight"], d.entries["1.weight"])
