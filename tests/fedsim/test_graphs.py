"""Graph datasets, graph partitioners and the graph federation: known answers on small graphs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clients.graph_models import GNN
from fedsim.errors import ScenarioError, UserError
from fedsim.graphs import GraphDataset, federate_graph
from fedsim.graphs.graph import graph_dataset, hop_ball, induced, undirected
from fedsim.graphs.partition import balance, edge_cut
from fedsim.registry import DATASETS, GRAPH_PARTITIONERS, Component
from fedsim.scenario import parse


def path_graph(n: int, features: int = 1) -> GraphDataset:
    """0 - 1 - ... - n-1; node v's features are all v, so a subgraph's nodes can be read back."""
    edges = np.stack([np.arange(n - 1), np.arange(1, n)], axis=1)
    x = np.repeat(np.arange(n, dtype=np.float32)[:, None], features, axis=1)
    return graph_dataset("path", x, edges, np.arange(n) % 2, test_fraction=0.34, seed=0)


def small_csbm(**options: object) -> GraphDataset:
    graph: GraphDataset = DATASETS.build(Component(name="csbm", **{"num_nodes": 600, **options}))
    return graph


def test_undirected_keeps_both_directions_once_and_drops_loops() -> None:
    src, dst = undirected(np.array([[0, 1], [1, 0], [2, 2], [1, 2], [1, 2]]), 3)
    assert sorted(zip(src.tolist(), dst.tolist(), strict=True)) == [(0, 1), (1, 0), (1, 2), (2, 1)]


def test_edge_cut_and_balance_of_a_hand_made_partition() -> None:
    # Edges 0-1, 1-2, 2-3 and 0-2. Parts {0,1} | {2,3} cut 1-2 and 0-2: 2 of 4 edges.
    graph = graph_dataset(
        "g", np.zeros((4, 1)), np.array([[0, 1], [1, 2], [2, 3], [0, 2]]), np.array([0, 1, 0, 1]),
        0.5, 0,
    )  # fmt: skip
    assert edge_cut(graph, np.array([0, 0, 1, 1])) == pytest.approx(0.5)
    assert balance(np.array([0, 0, 1, 1]), 2) == pytest.approx(1.0)
    # Parts {0,1,2} | {3} cut only 2-3; the larger part holds 3 nodes against a mean of 2.
    assert edge_cut(graph, np.array([0, 0, 0, 1])) == pytest.approx(0.25)
    assert balance(np.array([0, 0, 0, 1]), 2) == pytest.approx(1.5)


def test_hop_ball_and_induced_edges_on_a_path() -> None:
    graph = path_graph(6)
    assert hop_ball(graph, np.array([0, 1, 2]), 1).tolist() == [0, 1, 2, 3]
    assert hop_ball(graph, np.array([0, 1, 2]), 2).tolist() == [0, 1, 2, 3, 4]
    src, dst = induced(graph, np.array([1, 2, 4]))  # only 1-2 survives, in local ids 0-1
    assert sorted(zip(src.tolist(), dst.tolist(), strict=True)) == [(0, 1), (1, 0)]


@pytest.mark.parametrize(("hops", "expected"), [(1, [[0, 1, 2, 3], [2, 3, 4, 5]]), (2, None)])
def test_halo_holds_the_l_hop_neighbours_and_counts_their_bytes(hops, expected) -> None:
    graph = path_graph(6, features=3)
    spec = Component(name="metis", edges="halo", hops=hops)
    federation = federate_graph(graph, spec, 2, seed=0, val_fraction=0.0)
    # METIS cuts a path of 6 once, into its two halves.
    own = [sorted(np.flatnonzero(federation.owner == k).tolist()) for k in range(2)]
    assert sorted(own) == [[0, 1, 2], [3, 4, 5]]
    held = [sorted(g.features[:, 0].long().tolist()) for g in federation.subgraphs]
    if expected is None:
        expected = [[0, 1, 2, 3, 4], [1, 2, 3, 4, 5]]
    assert sorted(held) == expected
    halo = sum(len(h) for h in held) - 6
    assert federation.stats["replication_factor"] == pytest.approx((6 + halo) / 6)
    assert federation.stats["halo_bytes"] == halo * (3 + 1) * 4  # features + degree, float32
    assert federation.stats["edge_cut"] == pytest.approx(1 / 5)
    for g in federation.subgraphs:  # halo nodes keep their degree in the whole path
        ids = g.features[:, 0].long()
        assert torch.equal(g.degree, graph.degree[ids])


def test_drop_keeps_only_the_induced_subgraph() -> None:
    graph = path_graph(6)
    federation = federate_graph(graph, Component(name="metis"), 2, seed=0, val_fraction=0.0)
    assert federation.stats["replication_factor"] == 1.0 and federation.stats["halo_bytes"] == 0
    for g in federation.subgraphs:
        assert g.num_nodes == 3 and len(g.src) == 4  # two path edges, both directions
        assert g.degree.tolist() == torch.bincount(g.dst, minlength=3).float().tolist()


def test_a_full_halo_makes_client_gcn_outputs_equal_the_whole_graphs() -> None:
    graph = small_csbm()
    generator = torch.Generator().manual_seed(0)
    model = GNN("gcn", graph.input_shape[0], 8, graph.num_classes, layers=2, dropout=0.0)
    for layer in model.layers:
        torch.nn.init.normal_(layer.linear.weight, generator=generator)
        torch.nn.init.normal_(layer.linear.bias, generator=generator)
    model.eval()
    whole = model(graph.x_test)
    halo = federate_graph(graph, Component(name="metis", edges="halo", hops=2), 4, 0, 0.0)
    dropped = federate_graph(graph, Component(name="metis", edges="drop"), 4, 0, 0.0)
    for client in range(4):
        own = torch.from_numpy(np.flatnonzero(halo.owner == client))
        nodes = torch.from_numpy(hop_ball(graph, own.numpy(), 2))
        local = torch.searchsorted(nodes, own)
        out = model(halo.subgraphs[client])[local]
        torch.testing.assert_close(out, whole[own], rtol=1e-4, atol=1e-4)
        # Without the halo the boundary nodes see fewer neighbours: the outputs differ.
        assert not torch.allclose(model(dropped.subgraphs[client]), whole[own], atol=1e-3)


@pytest.mark.parametrize("homophily", [0.2, 0.8])
def test_csbm_homophily_degree_and_features_match_the_parameters(homophily) -> None:
    graph = small_csbm(num_nodes=2000, homophily=homophily, avg_degree=10, feature_snr=3.0)
    assert graph.homophily() == pytest.approx(homophily, abs=0.03)
    assert len(graph.src) / graph.num_nodes == pytest.approx(10, rel=0.05)
    assert np.bincount(graph.labels.numpy()).tolist() == [400] * 5
    # Class means have norm feature_snr over unit noise: each class's mean estimate is that far
    # from the origin (up to the noise of 400 samples in 16 dimensions).
    for c in range(5):
        mean = graph.features[graph.labels == c].mean(dim=0)
        assert mean.norm().item() == pytest.approx(3.0, abs=0.3)


def test_csbm_is_reproducible_from_its_seed() -> None:
    a, b, c = small_csbm(seed=1), small_csbm(seed=1), small_csbm(seed=2)
    assert torch.equal(a.src, b.src) and torch.equal(a.features, b.features)
    assert not torch.equal(a.labels, c.labels)


def test_metis_cuts_fewer_edges_than_random_and_label_dirichlet() -> None:
    graph = small_csbm(num_nodes=2000)
    cuts = {
        name: federate_graph(graph, Component(name=name), 10, 0, 0.1).stats["edge_cut"]
        for name in GRAPH_PARTITIONERS.names()
    }
    assert cuts["metis"] < cuts["label_dirichlet"] < cuts["random"]
    assert cuts["random"] == pytest.approx(0.9, abs=0.02)  # 9 of 10 clients are another's


def test_split_holds_out_val_nodes_and_never_trains_on_test_nodes() -> None:
    graph = small_csbm()
    federation = federate_graph(graph, Component(name="random"), 5, seed=3, val_fraction=0.2)
    trained, validated = [], []
    for client in range(5):
        sub, y = federation.train_data(client)
        vsub, vy = federation.val_data(client)
        own = np.flatnonzero(federation.owner == client)
        trained += own[sub.targets.numpy()].tolist()
        validated += own[vsub.targets.numpy()].tolist()
        assert torch.equal(y, graph.labels[own[sub.targets.numpy()]])
        assert len(vy) == int(0.2 * (len(y) + len(vy)))
    assert set(trained).isdisjoint(validated)
    assert set(trained) | set(validated) == set(graph.train.tolist())
    assert sum(federation.client_sizes()) == len(trained)
    assert federation.class_counts().sum() == len(trained)


def test_knn_graph_over_digits_links_each_node_to_k_neighbours() -> None:
    graph: GraphDataset = DATASETS.build(Component(name="knn", num_nodes=500, k=5, pca=16))
    assert graph.num_nodes == 500 and graph.input_shape == (16,)
    assert graph.degree.min().item() >= 5  # its own k plus those that chose it
    assert graph.homophily() > 0.8  # nearby digits mostly share the label
    assert len(graph.test) == 100


def test_karate_club_is_zacharys_graph() -> None:
    graph: GraphDataset = DATASETS.build(Component(name="karate"))
    assert graph.num_nodes == 34 and len(graph.src) == 2 * 78 and graph.num_classes == 2
    assert graph.degree[0].item() == 16 and graph.degree[33].item() == 17


def test_knn_refuses_more_nodes_than_images() -> None:
    with pytest.raises(UserError, match="num_nodes=5000 exceeds the 1797 digits"):
        DATASETS.build(Component(name="knn", num_nodes=5000))


def test_a_graph_dataset_takes_graph_partitioners_and_defaults_to_random(tiny) -> None:
    tiny["data"] = {"name": "karate"}
    tiny["workload"] = {"name": "gnn"}
    assert parse(tiny).data.partition.model_dump() == {"name": "random", "edges": "drop", "hops": 2}
    tiny["data"]["partition"] = {"name": "dirichlet"}
    with pytest.raises(ScenarioError, match="unknown graph_partitioner 'dirichlet'"):
        parse(tiny)


def test_graph_datasets_and_graph_workloads_go_together(tiny) -> None:
    tiny["workload"] = {"name": "gnn"}
    with pytest.raises(ScenarioError, match="workload 'gnn' reads graph data"):
        parse(tiny)
    tiny["workload"] = {"name": "classification"}
    tiny["data"] = {"name": "karate"}
    with pytest.raises(ScenarioError, match="'karate' is graph data"):
        parse(tiny)
