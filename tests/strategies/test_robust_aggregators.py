"""Known-answer tests of the byzantine-robust aggregators and pre-aggregators.

Each rule gets a small case worked out by hand (in the comments) or an independent reference: a
brute-force double loop for the Krum family, scipy's minimiser for the geometric median.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from scipy.optimize import minimize
from torch import Tensor

from fedsim.registry import AGGREGATORS, PREAGGREGATORS
from strategies import aggregate, gram, preaggregate
from strategies.pipeline import RoundInfo, chain


def column(*values: float) -> Tensor:
    """1-D points as an (n, 1) float32 update matrix."""
    return torch.tensor(values, dtype=torch.float32)[:, None]


def info_for(n: int, client_ids: list[int] | None = None, round: int = 1) -> RoundInfo:
    ids = tuple(range(n)) if client_ids is None else tuple(client_ids)
    return RoundInfo(round=round, client_ids=ids, num_examples=torch.ones(n))


def random_updates(seed: int, n: int, d: int) -> Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


# ---- median, trimmed mean, meamed ----


def test_median_takes_the_middle_value_per_coordinate() -> None:
    # Prepare: odd n picks the middle; even n averages the two middle values
    odd = torch.tensor([[1.0, 5.0], [3.0, -1.0], [2.0, 0.0]])
    even = column(1, 2, 3, 100)

    # Execute / Assert
    assert torch.equal(aggregate("median", odd), torch.tensor([2.0, 0.0]))
    assert torch.equal(aggregate("median", even), torch.tensor([2.5]))


def test_trimmed_mean_drops_f_values_at_each_end_per_coordinate() -> None:
    # Prepare: column 0 sorted 1 2 3 100 -> mean(2, 3); column 1 sorted -5 0 4 10 -> mean(0, 4)
    updates = torch.tensor([[1.0, 10.0], [2.0, 0.0], [3.0, -5.0], [100.0, 4.0]])

    # Execute
    out = aggregate("trimmed_mean", updates, f=1)

    # Assert
    assert torch.equal(out, torch.tensor([2.5, 2.0]))
    assert torch.equal(aggregate("trimmed_mean", updates, f=0), updates.mean(dim=0))


def test_meamed_averages_the_n_minus_f_values_nearest_the_median() -> None:
    # Prepare
    # 0 1 2 3 100, f=2: median 2, the 3 nearest are 1 2 3 -> 2
    # 1 2 4 10, f=1: median 3, distances 2 1 1 7 -> 1 2 4 -> 7/3
    # 0 1 2 3 4, f=1: median 2, 0 and 4 tie at distance 2: the smaller value wins -> 1.5

    # Execute / Assert
    assert torch.allclose(aggregate("meamed", column(0, 1, 2, 3, 100), f=2), torch.tensor([2.0]))
    assert torch.allclose(aggregate("meamed", column(1, 2, 4, 10), f=1), torch.tensor([7 / 3]))
    assert torch.allclose(aggregate("meamed", column(4, 3, 2, 1, 0), f=1), torch.tensor([1.5]))


@pytest.mark.parametrize("seed", range(4))
def test_meamed_matches_a_sort_by_distance_reference_with_ties(seed: int) -> None:
    # Prepare: small integers make many equal distances on both sides of the median
    gen = torch.Generator().manual_seed(seed)
    n = 5 + seed
    updates = torch.randint(-3, 4, (n, 40), generator=gen).float()
    f = seed % 3 + 1
    expected = []
    for values in updates.T.tolist():
        median = float(np.median(values))
        nearest = sorted(values, key=lambda v: (abs(v - median), v))[: n - f]
        expected.append(sum(nearest) / len(nearest))

    # Execute
    out = aggregate("meamed", updates, f=f)

    # Assert
    assert torch.allclose(out, torch.tensor(expected), atol=1e-6)


def test_meamed_with_f_zero_is_the_mean() -> None:
    # Prepare
    updates = random_updates(0, 6, 4)

    # Execute / Assert
    assert torch.allclose(aggregate("meamed", updates, f=0), updates.mean(dim=0), atol=1e-6)


# ---- Krum and Multi-Krum ----

# 1-D points 0 1 3 10 20, f=1: each scores its n - f - 2 = 2 nearest squared distances:
#   0: 1 + 9 = 10   1: 1 + 4 = 5   3: 4 + 9 = 13   10: 49 + 81 = 130   20: 100 + 289 = 389
KRUM_POINTS = (0.0, 1.0, 3.0, 10.0, 20.0)


def test_krum_picks_the_point_with_the_lowest_score() -> None:
    # Prepare: a second coordinate 2x scales every distance by 5 and changes no choice
    updates = torch.tensor([[x, 2 * x] for x in KRUM_POINTS])

    # Execute
    out = aggregate("krum", updates, f=1)

    # Assert
    assert torch.equal(out, torch.tensor([1.0, 2.0]))


def test_multi_krum_averages_the_m_lowest_scores() -> None:
    # Prepare: scores order the points 1 (5), 0 (10), 3 (13), 10 (130), 20 (389)
    updates = column(*KRUM_POINTS)

    # Execute / Assert
    assert torch.equal(aggregate("multi_krum", updates, f=1, m=1), torch.tensor([1.0]))
    assert torch.equal(aggregate("multi_krum", updates, f=1, m=2), torch.tensor([0.5]))
    # m defaults to n - f = 4: mean of 1 0 3 10
    assert torch.equal(aggregate("multi_krum", updates, f=1), torch.tensor([3.5]))


def test_krum_breaks_a_tie_by_the_lower_client_id_whatever_the_order() -> None:
    # Prepare: -1 and 1 both score 4 + 16 + 36 = 56 (n=6, f=1, 3 neighbours)
    points = [-1.0, 1.0, -5.0, 5.0, -20.0, 20.0]
    ids = [7, 3, 10, 11, 12, 13]  # client 3 holds the point 1
    perm = [5, 0, 3, 1, 4, 2]

    # Execute
    out = aggregate("krum", column(*points), info_for(6, ids), f=1)
    out_permuted = aggregate(
        "krum", column(*points)[perm], info_for(6, [ids[i] for i in perm]), f=1
    )

    # Assert
    assert torch.equal(out, torch.tensor([1.0]))
    assert torch.equal(out_permuted, torch.tensor([1.0]))


def brute_force_krum_scores(updates: Tensor, f: int) -> list[float]:
    """Krum scores by a double loop over pairs, in float64 (the independent reference)."""
    u = updates.double()
    n = len(u)
    scores = []
    for i in range(n):
        distances = sorted(float(((u[i] - u[j]) ** 2).sum()) for j in range(n) if j != i)
        scores.append(sum(distances[: n - f - 2]))
    return scores


@pytest.mark.parametrize(
    ("seed", "n", "f"), [(0, 5, 0), (1, 5, 1), (2, 7, 2), (3, 10, 3), (4, 12, 1)]
)
def test_krum_and_multi_krum_match_a_brute_force_reference(seed: int, n: int, f: int) -> None:
    # Prepare
    updates = random_updates(seed, n, 6)
    updates[: f // 2 + 1] += 5.0  # some far-off clients
    order = np.argsort(brute_force_krum_scores(updates, f), kind="stable")
    m = max(1, n - f - 1)

    # Execute
    krum_out = aggregate("krum", updates, f=f)
    multi_out = aggregate("multi_krum", updates, f=f, m=m)

    # Assert
    assert torch.equal(krum_out, updates[int(order[0])])
    assert torch.allclose(multi_out, updates[order[:m].tolist()].mean(dim=0), atol=1e-6)


def test_krum_needs_more_than_2f_plus_2_clients() -> None:
    # Execute / Assert
    with pytest.raises(ValueError, match=r"^krum needs n > 2f \+ 2, got n=5, f=2$"):
        aggregate("krum", random_updates(0, 5, 3), f=2)
    with pytest.raises(ValueError, match=r"^krum needs n > 2f \+ 2, got n=2, f=0$"):
        aggregate("krum", random_updates(0, 2, 3), f=0)
    # f = 0 with 3 clients: each scores its single nearest neighbour; 0 and 1 tie, client 0 wins
    assert torch.equal(aggregate("krum", column(0, 1, 5), f=0), torch.tensor([0.0]))


def test_multi_krum_refuses_m_above_n() -> None:
    # Execute / Assert
    with pytest.raises(ValueError, match=r"^multi_krum needs m <= n, got n=5, m=6$"):
        aggregate("multi_krum", random_updates(0, 5, 3), f=1, m=6)


# ---- Bulyan ----


def test_bulyan_selects_by_repeated_krum_then_averages_around_the_median() -> None:
    # Prepare: 0 2 3 4 10 11 30 (client ids 0..6), f=1: theta = 5 picks, beta = 3 kept.
    #  r=7, 4 neighbours: 0:129  2:73  3:60  4:57  10:150  11:195  30:big   -> 4
    #  r=6, 3 neighbours: 0:113  2:69  3:59  10:114  11:146  30:big         -> 3
    #  r=5, 2 neighbours: 0:104  2:68  10:65  11:82  30:761                 -> 10
    #  r=4, 1 neighbour:  0:4  2:4  11:81  30:361     (tie: lower id)        -> 0
    #  r=3, 1 neighbour:  2:81  11:81  30:361         (tie: lower id)        -> 2
    # chosen 0 2 3 4 10: median 3, the 3 nearest are 2 3 4 -> 3
    points = (0.0, 2.0, 3.0, 4.0, 10.0, 11.0, 30.0)

    # Execute
    out = aggregate("bulyan", column(*points), f=1)
    # clients 1 and 5 swap ids: the last tie goes to 11, chosen 0 3 4 10 11, median 4,
    # the 3 nearest are 4 3 0 -> 7/3
    swapped = aggregate("bulyan", column(*points), info_for(7, [0, 5, 2, 3, 4, 1, 6]), f=1)

    # Assert
    assert torch.equal(out, torch.tensor([3.0]))
    assert torch.allclose(swapped, torch.tensor([7 / 3]))


def brute_force_bulyan(updates: Tensor, f: int) -> Tensor:
    """Bulyan by explicit loops in float64 (the independent reference)."""
    u = updates.double()
    left = list(range(len(u)))
    chosen = []
    for _ in range(len(u) - 2 * f):
        k = min(max(len(left) - f - 2, 1), len(left) - 1)
        scores = []
        for i in left:
            distances = sorted(float(((u[i] - u[j]) ** 2).sum()) for j in left if j != i)
            scores.append(sum(distances[:k]))
        best = left[int(np.argmin(scores))]
        chosen.append(best)
        left.remove(best)
    selected = u[chosen].numpy()
    beta = len(chosen) - 2 * f
    out = []
    for column_values in selected.T:
        median = np.median(column_values)
        nearest = sorted(column_values, key=lambda v: (abs(v - median), v))[:beta]
        out.append(np.mean(nearest))
    return torch.tensor(out)


@pytest.mark.parametrize(("seed", "n", "f"), [(0, 7, 1), (1, 11, 2), (2, 9, 1), (3, 3, 0)])
def test_bulyan_matches_a_brute_force_reference(seed: int, n: int, f: int) -> None:
    # Prepare
    updates = random_updates(seed, n, 5)
    updates[:f] *= 10.0

    # Execute
    out = aggregate("bulyan", updates, f=f)

    # Assert
    assert torch.allclose(out.double(), brute_force_bulyan(updates, f), atol=1e-5)


def test_bulyan_needs_4f_plus_3_clients() -> None:
    # Execute / Assert
    with pytest.raises(ValueError, match=r"^bulyan needs n >= 4f \+ 3, got n=10, f=2$"):
        aggregate("bulyan", random_updates(0, 10, 3), f=2)


# ---- geometric median ----


def scipy_geometric_median(points: np.ndarray, weights: np.ndarray) -> np.ndarray:
    def objective(x: np.ndarray) -> float:
        return float(weights @ np.linalg.norm(points - x, axis=1))

    start = weights @ points / weights.sum()
    result = minimize(
        objective,
        start,
        method="Nelder-Mead",
        options={"xatol": 1e-9, "fatol": 1e-12, "maxiter": 20000},
    )
    return np.asarray(result.x)


@pytest.mark.parametrize(("seed", "n", "d"), [(0, 5, 2), (1, 7, 3), (2, 9, 2), (3, 6, 4)])
@pytest.mark.parametrize("weighted", [False, True])
def test_geometric_median_matches_scipy(seed: int, n: int, d: int, weighted: bool) -> None:
    # Prepare
    updates = random_updates(seed, n, d)
    updates[0] += 20.0  # one outlier the median should ignore
    counts = torch.arange(1.0, n + 1)
    info = RoundInfo(round=1, client_ids=tuple(range(n)), num_examples=counts)
    weights = counts.double().numpy() if weighted else np.ones(n)
    expected = scipy_geometric_median(updates.double().numpy(), weights)

    # Execute
    out = aggregate("geometric_median", updates, info, weighted=weighted)

    # Assert
    assert out.dtype == torch.float32
    assert np.allclose(out.numpy(), expected, atol=1e-4)


def test_geometric_median_survives_an_update_at_the_current_estimate() -> None:
    # Prepare: the first estimate (the mean, 0) is one of the updates; then a majority at v
    symmetric = column(-1, 0, 1)
    v = torch.tensor([1.0, -2.0, 0.5])
    majority = torch.cat([v.repeat(4, 1), random_updates(0, 3, 3) * 10])

    # Execute
    at_mean = aggregate("geometric_median", symmetric)
    at_majority = aggregate("geometric_median", majority)

    # Assert
    assert torch.isfinite(at_mean).all() and torch.allclose(at_mean, torch.zeros(1), atol=1e-6)
    assert torch.isfinite(at_majority).all() and torch.allclose(at_majority, v, atol=1e-4)


def test_weighted_geometric_median_refuses_counts_that_do_not_match_the_rows() -> None:
    # Execute / Assert
    with pytest.raises(ValueError, match=r"got n=3 updates and 5 counts"):
        aggregate("geometric_median", random_updates(0, 3, 2), info_for(5), weighted=True)


# ---- centered clipping ----


def test_centered_clipping_steps_from_the_last_output_by_hand() -> None:
    # Prepare: tau = 1, centre starts at 0:
    #   u - v = (3, 4) has norm 5 -> (0.6, 0.8); (0, 0.5) and (-0.6, 0.8) are within tau
    #   v = mean = (0, 0.7)
    stage = AGGREGATORS.build("centered_clipping", tau=1.0)
    first = torch.tensor([[3.0, 4.0], [0.0, 0.5], [-0.6, 0.8]])
    # round 2 starts from (0, 0.7): differences (0, 0) (0, 0) (0, 10) -> (0, 0) (0, 0) (0, 1)
    second = torch.tensor([[0.0, 0.7], [0.0, 0.7], [0.0, 10.7]])

    # Execute
    out1, state = stage.update(first, stage.init(2), info_for(3))
    out2, state = stage.update(second, state, info_for(3, round=2))

    # Assert
    assert torch.allclose(out1, torch.tensor([0.0, 0.7]), atol=1e-6)
    assert torch.allclose(out2, torch.tensor([0.0, 0.7 + 1 / 3]), atol=1e-6)
    assert torch.equal(state, out2)


def test_centered_clipping_iterations_repeat_the_step() -> None:
    # Prepare
    updates = random_updates(0, 5, 3) * 4
    stage = AGGREGATORS.build("centered_clipping", tau=0.5, iterations=3)
    v = torch.zeros(3)
    for _ in range(3):
        diff = updates - v
        scale = (0.5 / diff.norm(dim=1)).clamp(max=1)
        v = v + (diff * scale[:, None]).mean(dim=0)

    # Execute
    out, _ = stage.update(updates, stage.init(3), info_for(5))

    # Assert
    assert torch.allclose(out, v, atol=1e-6)


def test_centered_clipping_keeps_the_dtype_and_makes_no_nan_at_the_centre() -> None:
    # Prepare: every update equals the centre (zero differences)
    stage = AGGREGATORS.build("centered_clipping", tau=1.0)
    updates = torch.zeros(4, 3, dtype=torch.float64)

    # Execute
    out, state = stage.update(updates, stage.init(3), info_for(4))

    # Assert
    assert out.dtype == torch.float64 and torch.equal(out, torch.zeros(3, dtype=torch.float64))
    assert state.dtype == torch.float64


# ---- pre-aggregators ----


def test_clip_scales_long_rows_to_tau_and_keeps_short_ones() -> None:
    # Prepare
    updates = torch.tensor([[3.0, 4.0], [0.3, 0.4], [0.0, 0.0]])

    # Execute
    out = preaggregate("clip", updates, tau=1.0)

    # Assert
    assert torch.allclose(out, torch.tensor([[0.6, 0.8], [0.3, 0.4], [0.0, 0.0]]))


def test_nnm_mixes_each_row_with_its_nearest_by_hand() -> None:
    # Prepare: 0 1 3 10, f=1, each row mixes its 3 nearest (itself included):
    #   0: {0 1 3} -> 4/3   1: {1 0 3} -> 4/3   3: {3 1 0} -> 4/3   10: {10 3 1} -> 14/3
    updates = column(0, 1, 3, 10)

    # Execute
    out = preaggregate("nnm", updates, f=1)

    # Assert
    assert torch.allclose(out, column(4 / 3, 4 / 3, 4 / 3, 14 / 3))


def test_nnm_hands_on_the_gram_matrix_of_its_output() -> None:
    # Prepare
    updates = random_updates(0, 7, 4).double()

    # Execute
    out = preaggregate("nnm", updates, f=2)

    # Assert: the Gram the next stage gets is the output's own
    assert torch.allclose(gram.gram(out), out @ out.T, atol=1e-10)


def test_nnm_then_krum_computes_the_gram_matrix_once(monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: count the O(n²d) products U Uᵀ (gram() on a cache miss)
    passes: list[Tensor] = []
    real_matmul = Tensor.__matmul__

    def counting_matmul(a: Tensor, b: Any) -> Tensor:
        if isinstance(b, Tensor) and b.ndim == 2 and b.data_ptr() == a.data_ptr():
            passes.append(a)  # a @ a.T
        return real_matmul(a, b)

    monkeypatch.setattr(Tensor, "__matmul__", counting_matmul)
    pipeline = chain(PREAGGREGATORS.build("nnm", f=2), AGGREGATORS.build("krum", f=2))
    updates = random_updates(0, 9, 6)

    # Execute
    out, _ = pipeline.update(updates, pipeline.init(6), info_for(9))

    # Assert
    assert len(passes) == 1 and passes[0] is updates
    assert out.shape == (6,)


def test_bucketing_with_one_per_bucket_only_reorders() -> None:
    # Prepare
    updates = random_updates(0, 7, 3)

    # Execute
    out = preaggregate("bucketing", updates, info_for(7, round=5), s=1)

    # Assert
    order = out[:, 0].argsort()
    assert torch.equal(out[order], updates[updates[:, 0].argsort()])


def test_bucketing_with_one_bucket_gives_the_mean() -> None:
    # Prepare
    updates = random_updates(0, 7, 3)

    # Execute
    out = preaggregate("bucketing", updates, info_for(7), s=7)

    # Assert
    assert out.shape == (1, 3)
    assert torch.allclose(out[0], updates.mean(dim=0), atol=1e-6)


def test_bucketing_makes_ceil_n_over_s_buckets_of_the_clients_by_hand() -> None:
    # Prepare: one-hot rows tell which clients share a bucket
    updates = torch.eye(7)

    # Execute
    out = preaggregate("bucketing", updates, info_for(7, round=3), s=3)

    # Assert: buckets of 3, 3 and 1 clients, each client in exactly one, averaged
    assert out.shape == (3, 7)
    members = out > 0
    assert sorted(members.sum(dim=1).tolist()) == [1, 3, 3]
    assert torch.equal(members.sum(dim=0), torch.ones(7, dtype=torch.long))
    assert torch.allclose(out.sum(dim=1), torch.ones(3))


def test_bucketing_is_seeded_by_the_round() -> None:
    # Prepare
    updates = torch.eye(8)

    def buckets(round: int) -> Tensor:
        return preaggregate("bucketing", updates, info_for(8, round=round), s=2)

    # Execute / Assert: the same round gives the same buckets, rounds differ
    assert torch.equal(buckets(4), buckets(4))
    assert any(not torch.equal(buckets(4), buckets(r)) for r in range(5, 10))


def test_bucketing_follows_client_ids_not_the_order_of_arrival() -> None:
    # Prepare
    updates = random_updates(1, 7, 3)
    ids = [14, 3, 9, 20, 1, 7, 11]
    perm = [6, 2, 4, 0, 1, 5, 3]

    # Execute
    out = preaggregate("bucketing", updates, info_for(7, ids, round=2), s=2)
    out_permuted = preaggregate(
        "bucketing", updates[perm], info_for(7, [ids[i] for i in perm], round=2), s=2
    )

    # Assert: the very same rows in the same order
    assert torch.equal(out, out_permuted)
