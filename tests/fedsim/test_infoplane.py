"""The information-plane estimators against closed forms, SZT against the published labels,
and the federated protocol against the pooled estimate."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch

from clients.workload import TrainConfig
from fedsim.build import build_workload
from fedsim.data import load_data
from fedsim.errors import ScenarioError, UserError
from fedsim.infoplane import estimators as est
from fedsim.infoplane import szt
from fedsim.infoplane.analysis import InformationPlane, InformationPlaneParams, rounds_due
from fedsim.infoplane.probe import activity
from fedsim.scenario import parse

# ---- estimators -----------------------------------------------------------------------------


@pytest.mark.parametrize(  # both ways codes are computed (one block and several), both types
    ("bins", "units"),
    [(2, 100), (30, 100), (est.FEW_EDGES + 5, 100), (30, 7), (200, 100), (30, 1400)],
)
def test_codes_are_numpys_digitize(bins: int, units: int) -> None:
    rng = np.random.default_rng(bins)
    t = rng.normal(size=(50, units)).astype(np.float32)
    edges = np.sort(rng.choice(t.ravel(), size=bins))  # values exactly at edges, duplicates
    edges = np.append(edges, edges[len(edges) // 2])  # a repeated edge
    edges.sort()
    t[0, :3] = [np.nan, -np.inf, np.inf]
    assert (t.size > est.FEW_VALUES) == (units >= 100)
    assert (t.size > est.CODES_BLOCK) == (units == 1400)
    assert np.array_equal(est.codes(t, edges), np.digitize(t, edges))
    assert est.codes(t, edges).dtype == (np.int8 if len(edges) <= 127 else np.int16)


def test_distinct_is_numpys_unique() -> None:
    rng = np.random.default_rng(5)
    values = rng.integers(-3, 4, 500).astype(np.float32) / 2
    values[:6] = [np.nan, np.nan, -0.0, np.inf, -np.inf, np.nan]
    for case in (values, values[:0], values[:2], rng.normal(size=1000).astype(np.float32)):
        np.testing.assert_array_equal(est.distinct(case), np.unique(case))


def test_merged_counts_are_the_counts_of_the_union() -> None:
    # Prepare: three clients' (code, label) histograms, rows repeated within and across them
    rng = np.random.default_rng(6)
    clients = [rng.integers(0, 3, size=(n, 4)) for n in (40, 1, 25)]
    parts = [est.code_counts(rows[:, :-1], rows[:, -1]) for rows in clients]

    # Execute
    rows, counts = est.merge_counts([*parts, (np.zeros((0, 4)), np.zeros(0))])

    # Assert: each distinct row once, in byte order, with its count over all clients
    union = np.concatenate(clients).astype(np.int16)
    expected = {}
    for row in map(tuple, union):
        expected[row] = expected.get(row, 0) + 1
    assert dict(zip(map(tuple, rows), counts.tolist(), strict=True)) == expected
    assert [r.tobytes() for r in rows] == sorted(r.tobytes() for r in rows)
    assert sum(len(c) for c in (p[1] for p in parts)) < len(union)  # repeats were counted


def test_rows_are_bytes_while_codes_and_labels_fit_and_merge_to_the_pooled_type() -> None:
    rng = np.random.default_rng(7)
    codes = rng.integers(0, 31, size=(30, 5)).astype(np.int8)
    small, large = rng.integers(0, 10, 30), rng.integers(0, 300, 30)
    assert est.code_counts(codes, small)[0].dtype == np.int8
    assert est.code_counts(codes, large)[0].dtype == np.int16
    assert est.code_counts(codes.astype(np.int64), small)[0].dtype == np.int8  # by value
    # clients of both kinds merge to what counting all their rows in one place gives
    parts = [est.code_counts(codes[:15], small[:15]), est.code_counts(codes[15:], large[15:])]
    pooled = est.code_counts(codes, np.concatenate([small[:15], large[15:]]))
    merged = est.merge_counts(parts)
    assert merged[0].dtype == pooled[0].dtype == np.int16
    np.testing.assert_array_equal(merged[0], pooled[0])
    np.testing.assert_array_equal(merged[1], pooled[1])


@pytest.mark.parametrize("m", [1, 2, 7, 30])
def test_adaptive_binning_of_m_equiprobable_values_is_log2_m(m: int) -> None:
    # Prepare: m distinct levels, each 3 times, on one unit; labels the level's parity
    values = np.repeat(np.linspace(0.1, 5.0, m), 3).astype(np.float32)[:, None]
    labels = (np.arange(len(values)) // 3) % 2
    edges = est.adaptive_edges(est.levels(values, 0.0), 0.0, bins=30)

    # Execute
    xt, ty = est.binned_mi(*est.code_counts(est.codes(values, edges), labels))

    # Assert: every level its own bin; the parity is a function of T, so I(T;Y) = H(Y)
    assert xt == pytest.approx(math.log2(m), abs=1e-12)
    assert ty == pytest.approx(est.entropy_bits(np.bincount(labels)), abs=1e-12)


def test_adaptive_bins_hold_equal_numbers_of_distinct_levels() -> None:
    # 300 distinct levels 1..300 in 30 bins: edges 1, 11, …, 291 and the top level 300, which
    # (as in the reference) has a bin of its own: 29 bins of 10 levels, one of 9, one of 1.
    values = np.arange(1, 301, dtype=np.float32)[:, None]
    edges = est.adaptive_edges(est.levels(values, 0.0), 0.0, bins=30)
    assert list(edges) == [0, *range(1, 300, 10), 300]
    xt, _ = est.binned_mi(*est.code_counts(est.codes(values, edges), np.zeros(300, int)))
    p = np.array([10] * 29 + [9, 1]) / 300
    assert xt == pytest.approx(float(-(p * np.log2(p)).sum()), abs=1e-12)


@pytest.mark.parametrize("upper", [True, False])
def test_kde_of_far_apart_points_tends_to_log2_n_and_of_one_point_to_zero(upper: bool) -> None:
    n = 16
    far = np.arange(n, dtype=np.float64)[:, None] * np.array([[100.0, -50.0]])
    same = np.ones((n, 2))
    labels = np.arange(n) % 2
    xt_far, ty_far = est.kde_mi(far, labels, variance=0.01, upper=upper)
    xt_same, ty_same = est.kde_mi(same, labels, variance=0.01, upper=upper)
    assert xt_far == pytest.approx(math.log2(n), abs=1e-9)
    assert ty_far == pytest.approx(1.0, abs=1e-9)  # H(Y), two balanced labels
    assert xt_same == pytest.approx(0.0, abs=1e-9)
    assert ty_same == pytest.approx(0.0, abs=1e-9)


def test_the_lower_kde_bound_stays_below_the_upper() -> None:
    t = np.random.default_rng(0).normal(size=(200, 3)) * 0.2
    labels = np.random.default_rng(1).integers(0, 3, 200)
    lower, upper = (est.kde_mi(t, labels, 0.01, upper=u)[0] for u in (False, True))
    assert 0 < lower < upper < math.log2(200) + 1e-9


@pytest.mark.parametrize("estimator", ["adaptive", "fixed", "kde_upper", "kde_lower"])
def test_information_about_the_label_never_exceeds_its_entropy(estimator: str) -> None:
    rng = np.random.default_rng(3)
    t = rng.normal(size=(300, 4)).astype(np.float32)
    labels = np.digitize(t[:, 0] + 0.3 * t[:, 1], [0.0, 1.0])  # three labels, read off T
    h_y = est.entropy_bits(np.bincount(labels))
    if estimator.startswith("kde"):
        _, ty = est.kde_mi(t, labels, 0.05, upper=estimator == "kde_upper")
    else:
        edges = (
            est.adaptive_edges(est.levels(t, -5.0), -5.0, 30)
            if estimator == "adaptive"
            else est.fixed_edges(-3.0, 3.0, 30)
        )
        _, ty = est.binned_mi(*est.code_counts(est.codes(t, edges), labels))
    assert 0 <= ty <= h_y + 1e-9
    assert ty > 0.5 * h_y  # not vacuous: most of H(Y) is in T here


def test_a_sketch_holding_every_level_gives_the_exact_edges() -> None:
    rng = np.random.default_rng(4)
    levels = [np.unique(rng.normal(size=n)).astype(np.float32) for n in (50, 80, 31)]
    exact = est.adaptive_edges(np.unique(np.concatenate(levels)), -10.0, 30)
    sketched = est.sketched_edges(levels, [len(u) for u in levels], -10.0, 30)
    np.testing.assert_array_equal(sketched, exact)
    small = est.sketched_edges(
        [est.sketch(u, 8) for u in levels], [len(u) for u in levels], -10.0, 30
    )
    assert small.shape == exact.shape and np.all(np.diff(small) >= 0)


# ---- SZT ------------------------------------------------------------------------------------


def test_szt_is_the_icosahedron_task_with_the_published_label_balance() -> None:
    x = szt.inputs()
    y = szt.labels(x)
    assert x.shape == (4096, 12) and list(x[5]) == [0] * 9 + [1, 0, 1]
    assert len(szt.EDGES) == 30 and all(len(v) == 5 for v in szt.NEIGHBOURS.values())
    assert all(u in szt.NEIGHBOURS[v] for u, vs in szt.NEIGHBOURS.items() for v in vs)
    assert int(y.sum()) == 2118  # P(y=1) = 0.5171
    # The reference's row-order split: 3,277 train (P(y=1) 0.437), 819 test (0.836).
    data = szt.szt(szt.SztParams(split="rows"))
    assert (len(data.y_train), len(data.y_test)) == (3277, 819)
    assert float(data.y_train.float().mean()) == pytest.approx(1433 / 3277)
    assert float(data.y_test.float().mean()) == pytest.approx(685 / 819)


# ---- the analysis ---------------------------------------------------------------------------


def plane_scenario(**analysis: Any) -> dict[str, Any]:
    return {
        "name": "plane",
        "rounds": 25,
        "data": {"name": "szt", "partition": {"name": "iid"}},
        "clients": {"num": 3, "per_round": 3},
        "workload": {"name": "classification", "model": {"name": "infoplane_mlp"}},
        "analysis": [{"name": "information_plane", **analysis}],
    }


@pytest.mark.parametrize("estimator", ["adaptive_binning", "fixed_binning"])
def test_federated_binned_mi_with_global_edges_equals_the_pooled_estimate(estimator: str) -> None:
    # Prepare: the paper's ReLU network, its activity on three clients' shards of SZT
    scenario = parse(plane_scenario())
    workload = build_workload(scenario)
    dataset = load_data(scenario.data.dataset)
    model = workload.build_model(dataset, torch.Generator().manual_seed(1))
    plane = InformationPlane(InformationPlaneParams(estimator=estimator))
    x, y = dataset.x_train, dataset.y_train
    shards = {c: (x[c::3], y[c::3]) for c in range(3)}
    levels, counts = plane.exchanges

    def config(client: int, **received: Any) -> TrainConfig:
        return TrainConfig(1, client, torch.Generator(), torch.device("cpu"), received=received)

    # Execute: both exchanges as the core runs them, then the pooled estimate
    reports = {c: levels.report(model, d, {}, config(c))[0] for c, d in shards.items()}
    edges, _, _ = levels.reduce(reports, None, None, 1)
    reports = {
        c: counts.report(model, d, {}, config(c, **{levels.name: edges}))[0]
        for c, d in shards.items()
    }
    _, _, federated = counts.reduce(reports, None, None, 1)
    # the pooled estimate: the union of the clients' activity (a float32 forward pass rounds
    # differently in other batch sizes, so the union is not one pass over all the rows)
    chosen = plane.layers(model, x)
    acts = [activity(model, shard, chosen) for shard, _ in shards.values()]
    pooled_acts = {
        layer.number: np.concatenate([a[layer.number] for a in acts]) for layer in chosen
    }
    labels = np.concatenate([labels.numpy() for _, labels in shards.values()])
    pooled = plane.estimate(chosen, pooled_acts, labels)

    # Assert: exactly equal, for every layer (5 hidden and the output)
    assert sorted(federated) == sorted(pooled) and len(pooled) == 12
    assert federated == pooled
    assert pooled["mi_xt.1"] > 8 and all(0 <= pooled[f"mi_ty.{i}"] <= 1 for i in range(1, 7))


def test_a_report_whose_counts_do_not_match_its_rows_skips_the_round() -> None:
    # Prepare: one client's histogram, its counts one short
    scenario = parse(plane_scenario())
    dataset = load_data(scenario.data.dataset)
    model = build_workload(scenario).build_model(dataset, torch.Generator().manual_seed(1))
    plane = InformationPlane(InformationPlaneParams())
    levels, counts = plane.exchanges
    config = TrainConfig(1, 0, torch.Generator(), torch.device("cpu"))
    data = (dataset.x_train[:100], dataset.y_train[:100])
    edges, _, _ = levels.reduce({0: levels.report(model, data, {}, config)[0]}, None, None, 1)
    config = TrainConfig(
        1, 0, torch.Generator(), torch.device("cpu"), received={levels.name: edges}
    )
    report, _ = counts.report(model, data, {}, config)
    report["counts"] = report["counts"][:-1]

    # Execute, Assert: a ValueError, which the core records as the exchange's skipped round
    with pytest.raises(ValueError, match="client 0's counts do not match"):
        counts.reduce({0: report}, None, None, 1)


def test_an_analysis_adds_nothing_when_absent() -> None:
    raw = plane_scenario()
    del raw["analysis"]
    workload = build_workload(parse(raw))
    assert type(workload).__name__ == "ClassificationWorkload" and workload.exchanges == ()


def test_schedules() -> None:
    assert rounds_due(InformationPlaneParams(every=10), 25) == {10, 20, 25}
    log = rounds_due(InformationPlaneParams(schedule="log", points=10), 1000)
    assert sorted(log) == [1, 2, 4, 10, 21, 46, 100, 215, 464, 1000]


@pytest.mark.parametrize(
    ("analysis", "problem"),
    [
        ({"bins": 1}, "bins must be at least 2"),
        ({"estimator": "kde_upper", "federated": "exact"}, "KDE bounds need"),
        ({"federated": "none", "central": False}, "estimate nothing"),
        ({"name": "information_plain"}, "did you mean 'information_plane'"),
        ({"schedule": "log", "eval": 5}, r"due in rounds \[1, 2, 3, 4, 6\]"),
    ],
)
def test_bad_analyses_are_refused_at_validation(analysis: dict[str, Any], problem: str) -> None:
    analysis = dict(analysis)
    raw = plane_scenario()
    raw["eval"] = {"every": analysis.pop("eval", 1)}
    raw["analysis"][0].update(analysis)
    with pytest.raises(ScenarioError, match=problem):
        parse(raw)


def test_kde_defaults_to_the_servers_probe_set() -> None:
    scenario = parse(plane_scenario(estimator="kde_lower"))
    assert scenario.analysis[0].options["federated"] == "none"
    assert build_workload(scenario).exchanges == ()


def test_an_analysis_on_graph_data_is_refused() -> None:
    raw = plane_scenario()
    raw["data"] = {"name": "csbm"}
    raw["workload"] = {"name": "gnn"}
    with pytest.raises(ScenarioError, match="probe a model called on sample tensors"):
        parse(raw)


@pytest.mark.parametrize(
    ("model", "analysis", "problem"),
    [
        ({"name": "infoplane_mlp"}, {"layers": [3, "net.99"]}, "no layer 'net.99'.*1 \\(net.2\\)"),
        ({"name": "mlp", "hidden": []}, {}, "no activation module to probe"),
    ],
)
def test_layers_a_model_lacks_are_refused_before_round_one(
    model: dict[str, Any], analysis: dict[str, Any], problem: str
) -> None:
    raw = plane_scenario(**analysis)
    raw["workload"]["model"] = model
    scenario = parse(raw)
    with pytest.raises(UserError, match=problem):
        build_workload(scenario).build_model(
            load_data(scenario.data.dataset), torch.Generator().manual_seed(0)
        )
