"""Sparse training: masks, schedules, ERK, drop-and-grow and masked local training."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from clients.sparsity.densities import erk_densities
from clients.sparsity.masks import (
    density,
    global_top_masks,
    keep_count,
    magnitude_masks,
    prunable,
)
from clients.sparsity.rewire import drop_and_grow
from clients.sparsity.schedules import cosine_drop_fraction, cubic_density, iterative_density
from clients.sparsity.training import Rewiring, masked_training
from fedsim.registry import SPARSITY, load_components

load_components()


def weights(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"a": torch.randn(10, 10, generator=g), "b": torch.randn(7, 3, generator=g)}


def test_layer_wise_magnitude_keeps_exactly_round_density_times_size_per_layer() -> None:
    w = weights()
    masks = magnitude_masks(w, 0.3, "layer")
    assert int(masks["a"].sum()) == 30 and int(masks["b"].sum()) == 6  # round(0.3 * 21) = 6
    for name, mask in masks.items():  # the kept are the largest in magnitude
        assert w[name].abs()[mask].min() >= w[name].abs()[~mask].max()


def test_global_magnitude_keeps_exactly_round_density_times_total_with_one_threshold() -> None:
    w = weights()
    masks = magnitude_masks(w, 0.3, "global")
    assert sum(int(m.sum()) for m in masks.values()) == round(0.3 * 121) == 36
    kept = torch.cat([w[n].abs()[masks[n]] for n in w])
    dropped = torch.cat([w[n].abs()[~masks[n]] for n in w])
    assert kept.min() >= dropped.max()
    assert density(masks) == pytest.approx(36 / 121)


def test_pruning_again_never_revives_a_pruned_weight() -> None:
    w = weights()
    first = magnitude_masks(w, 0.5, "global")
    w = {n: t * 0 + 100 * (~first[n]) + t for n, t in w.items()}  # pruned entries now largest
    second = magnitude_masks(w, 0.25, "global", current=first)
    assert all(bool((second[n] <= first[n]).all()) for n in w)
    assert sum(int(m.sum()) for m in second.values()) == round(0.25 * 121)


def test_keep_count_and_global_top_masks_edge_cases() -> None:
    assert keep_count(10, 0.0) == 0 and keep_count(10, 1.0) == 10
    masks = global_top_masks({"x": torch.tensor([3.0, -1.0, 2.0])}, 2 / 3)
    assert masks["x"].tolist() == [True, False, True]
    with pytest.raises(ValueError, match="density"):
        keep_count(10, 1.5)


def test_prunable_is_the_weight_tensors_only() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    assert list(prunable(model.state_dict())) == ["0.weight", "2.weight"]


def test_cubic_schedule_by_hand() -> None:
    # Zhu & Gupta: s_t = s_f + (s_i - s_f)(1 - (t - t0)/(t_end - t0))^3, s_i = 0, s_f = 0.9
    assert cubic_density(0, 1, 5, 1.0, 0.1) == 1.0  # before the start
    assert cubic_density(1, 1, 5, 1.0, 0.1) == 1.0
    assert cubic_density(2, 1, 5, 1.0, 0.1) == pytest.approx(1 - (0.9 - 0.9 * 0.75**3))  # 0.4796875
    assert cubic_density(3, 1, 5, 1.0, 0.1) == pytest.approx(0.2125)  # 1 - (0.9 - 0.9/8)
    assert cubic_density(5, 1, 5, 1.0, 0.1) == pytest.approx(0.1)
    assert cubic_density(9, 1, 5, 1.0, 0.1) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="end > start"):
        cubic_density(1, 5, 5, 1.0, 0.1)


def test_iterative_schedule_prunes_the_same_fraction_each_time() -> None:
    values = [iterative_density(t, 2, 3, 2, 0.25) for t in (1, 2, 4, 5, 10)]
    assert values == pytest.approx([1.0, 0.5, 0.5, 0.25, 0.25])


def test_cosine_drop_fraction_by_hand() -> None:
    assert cosine_drop_fraction(0, 0.3, 4) == pytest.approx(0.3)
    assert cosine_drop_fraction(1, 0.3, 4) == pytest.approx(0.15 * (1 + math.cos(math.pi / 4)))
    assert cosine_drop_fraction(2, 0.3, 4) == pytest.approx(0.15)
    assert cosine_drop_fraction(4, 0.3, 4) == 0.0


def test_erk_densities_by_hand() -> None:
    shapes = {"a": (4, 6), "b": (2, 4)}  # ERK raw scores: 10/24 and 6/8
    # Target 0.5 keeps 16 of 32: ε = 16 / (10/24·24 + 6/8·8) = 1.
    assert erk_densities(shapes, 0.5) == pytest.approx({"a": 10 / 24, "b": 0.75})
    # Target 0.8 keeps 25.6: ε = 1.6 would give b 1.2 > 1, so b is dense and a keeps 17.6 of 24.
    assert erk_densities(shapes, 0.8) == pytest.approx({"a": 17.6 / 24, "b": 1.0})
    conv = erk_densities({"c": (2, 3, 3, 3), "d": (10, 8)}, 0.5)  # (2+3+3+3)/54, 18/80
    eps = 0.5 * 134 / (11 / 54 * 54 + 18 / 80 * 80)
    assert conv == pytest.approx({"c": eps * 11 / 54, "d": eps * 18 / 80})


def test_drop_and_grow_by_hand() -> None:
    weight = torch.tensor([0.5, -0.1, 0.3, 0.0, 0.0, 0.0])
    mask = torch.tensor([True, True, True, False, False, False])
    grad = torch.tensor([0.0, 0.0, 0.0, 0.9, 0.1, 0.5])
    # floor(0.34 * 3) = 1: drop -0.1 (smallest), grow where |grad| is largest: index 3
    new = drop_and_grow(weight, mask, grad.abs(), 0.34)
    assert new.tolist() == [True, False, True, True, False, False]
    assert drop_and_grow(weight, mask, grad.abs(), 0.3).tolist() == mask.tolist()  # floor(0.9)


def test_masked_training_keeps_pruned_weights_at_zero_through_every_step() -> None:
    torch.manual_seed(0)  # test-local data only; the code under test draws nothing
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 2))
    masks = magnitude_masks(prunable(model.state_dict()), 0.4, "layer")
    x, y = torch.randn(32, 6), torch.randint(0, 2, (32,))
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9, weight_decay=0.01)
    with masked_training(model, masks):
        for _ in range(5):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
            state = model.state_dict()
            assert all(bool((state[n][~m] == 0).all()) for n, m in masks.items())
    # Outside the block nothing is masked any more: a step moves pruned weights again.
    opt.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    assert bool((model.state_dict()["0.weight"][~masks["0.weight"]] != 0).any())


def test_masked_training_leaves_other_optimisers_alone() -> None:
    model, other = nn.Linear(3, 3, bias=False), nn.Linear(3, 3, bias=False)
    masks = {"weight": torch.zeros(3, 3, dtype=torch.bool)}
    opt = torch.optim.SGD(other.parameters(), lr=0.1)
    with masked_training(model, masks):
        other(torch.ones(1, 3)).sum().backward()
        opt.step()
    assert bool((other.weight != 0).all())


def test_rigl_rewiring_keeps_density_and_regrows_where_the_gradient_is_largest() -> None:
    # One output, two inputs; only w0 active. The second input is huge, so |dL/dw1| >> |dL/dw0|.
    model = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[0.7, 0.0]]))
    masks = {"weight": torch.tensor([[True, False]])}
    rewiring = Rewiring(every=1, fraction=1.0, grow_score=lambda w, g: g.abs())
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, target = torch.tensor([[0.001, 10.0]]), torch.tensor([[5.0]])
    with masked_training(model, masks, rewiring) as live:
        opt.zero_grad()
        ((model(x) - target) ** 2).sum().backward()
        opt.step()
    assert live["weight"].tolist() == [[False, True]]  # w0 dropped, w1 grown
    assert model.weight.tolist() == [[0.0, 0.0]]  # the new connection starts at zero


def test_rigl_method_initial_masks_follow_erk_and_server_pruning_restores_them() -> None:
    load_components()
    method = SPARSITY.build("rigl", density=0.5)
    w = {"a": torch.randn(4, 6), "b": torch.randn(2, 4)}
    masks = method.initial_masks(w, 10, torch.Generator().manual_seed(0))
    assert int(masks["a"].sum()) == 10 and int(masks["b"].sum()) == 6  # ERK by hand above
    dense_aggregate = {n: torch.randn(t.shape) for n, t in w.items()}  # union of rewired masks
    pruned = method.server_masks(3, 10, dense_aggregate, masks)
    assert int(pruned["a"].sum()) == 10 and int(pruned["b"].sum()) == 6
    assert method.rewiring(1, 10, torch.Generator()).fraction == pytest.approx(0.3)
    assert method.rewiring(8, 10, torch.Generator()) is not None  # ceil(0.75 · 10) = 8 rounds
    assert method.rewiring(9, 10, torch.Generator()) is None


def test_magnitude_and_gmp_methods_prune_on_their_rounds() -> None:
    w = {"a": torch.randn(10, 10)}
    one_shot = SPARSITY.build("magnitude", density=0.2, start=3)
    full = one_shot.initial_masks(w, 5, torch.Generator())
    assert one_shot.server_masks(2, 5, w, full) is None
    assert int(one_shot.server_masks(3, 5, w, full)["a"].sum()) == 20
    gmp = SPARSITY.build("gmp", density=0.1, start=1, end=5)
    assert int(gmp.server_masks(3, 10, w, full)["a"].sum()) == round(0.2125 * 100)
    with pytest.raises(ValueError, match="after the last round"):
        gmp.initial_masks(w, 4, torch.Generator())
