"""The GNN workload: layers against dense matrix formulas, the neighbour sampler, local training."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from clients.gnn import GnnParams, GnnWorkload
from clients.graph_models import GCNLayer, SAGELayer
from clients.neighbour_sampler import sample_neighbours
from clients.workload import Labelled, TrainConfig, Workload
from fedsim.graphs import GraphDataset, Subgraph, federate_graph
from fedsim.graphs.graph import undirected
from fedsim.registry import DATASETS, WORKLOADS, Component
from tests.workloads import EVAL, shape_of


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """As in the simulated clients: small sparse ops crawl when threads oversubscribe the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def random_graph(n: int = 7, edges: int = 10, features: int = 3) -> tuple[Subgraph, torch.Tensor]:
    """A small random undirected graph and its dense adjacency matrix (float64)."""
    rng = np.random.default_rng(0)
    src, dst = undirected(rng.integers(0, n, size=(edges, 2)), n)
    adjacency = torch.zeros(n, n, dtype=torch.float64)
    adjacency[dst, src] = 1.0  # row v holds v's in-neighbours
    x = torch.from_numpy(rng.standard_normal((n, features)).astype(np.float32))
    degree = adjacency.sum(dim=1).float()
    graph = Subgraph(x, torch.from_numpy(src), torch.from_numpy(dst), degree, torch.arange(n))
    return graph, adjacency


def test_gcn_layer_equals_the_dense_normalised_adjacency_product() -> None:
    graph, a = random_graph()
    layer = GCNLayer(3, 4)
    a_tilde = a + torch.eye(len(a), dtype=torch.float64)
    d = a_tilde.sum(dim=1).rsqrt()
    a_hat = d[:, None] * a_tilde * d[None, :]  # D̃^{-1/2} (A + I) D̃^{-1/2}
    w, b = layer.linear.weight.double(), layer.linear.bias.double()
    expected = a_hat @ graph.features.double() @ w.T + b
    torch.testing.assert_close(
        layer(graph.features, graph).double(), expected, rtol=1e-5, atol=1e-5
    )


def test_sage_layer_equals_self_plus_mean_of_neighbours() -> None:
    graph, a = random_graph()
    layer = SAGELayer(3, 4)
    mean = a / a.sum(dim=1, keepdim=True).clamp(min=1)  # isolated nodes average nothing
    x = graph.features.double()
    expected = (
        x @ layer.self_linear.weight.double().T
        + layer.self_linear.bias.double()
        + mean @ x @ layer.neighbour_linear.weight.double().T
    )
    torch.testing.assert_close(
        layer(graph.features, graph).double(), expected, rtol=1e-5, atol=1e-5
    )


def csbm(**options: object) -> GraphDataset:
    graph: GraphDataset = DATASETS.build(Component(name="csbm", **{"num_nodes": 800, **options}))
    return graph


def test_sampler_respects_the_fanouts_and_draws_only_real_edges() -> None:
    graph = csbm().x_test
    seeds = torch.tensor([5, 17, 300, 42])
    fanouts = [4, 2]
    sampled = sample_neighbours(graph, seeds, fanouts, torch.Generator().manual_seed(1))
    ids = sampled.features  # map sampled nodes back: features are unique per node
    back = torch.cdist(ids, graph.features).argmin(dim=1)
    assert torch.equal(back[: len(seeds)], seeds)
    assert torch.equal(sampled.targets, torch.arange(len(seeds)))
    real = set(zip(graph.src.tolist(), graph.dst.tolist(), strict=True))
    drawn = list(zip(back[sampled.src].tolist(), back[sampled.dst].tolist(), strict=True))
    assert set(drawn) <= real and len(set(drawn)) == len(drawn)  # real edges, none twice
    in_degree = torch.bincount(sampled.dst, minlength=sampled.num_nodes)
    full_degree = graph.degree[back].long()
    # Seeds draw min(4, degree) neighbours, the nodes they reach min(2, degree), the last hop none.
    assert torch.equal(in_degree[:4], full_degree[:4].clamp(max=4))
    hop1 = torch.unique(sampled.src[sampled.dst < 4])
    hop1 = hop1[hop1 >= 4]
    assert torch.equal(in_degree[hop1], full_degree[hop1].clamp(max=2))
    assert in_degree.max() <= 4 and torch.equal(sampled.degree, in_degree.float())


def test_sampler_is_reproducible_from_the_generator() -> None:
    graph = csbm().x_test
    seeds = torch.arange(50)
    a = sample_neighbours(graph, seeds, [5, 5], torch.Generator().manual_seed(3))
    b = sample_neighbours(graph, seeds, [5, 5], torch.Generator().manual_seed(3))
    assert torch.equal(a.src, b.src) and torch.equal(a.features, b.features)


@pytest.mark.parametrize(
    "options", [{"model": "gcn"}, {"model": "sage", "fanouts": [10, 5], "batch_size": 64}]
)
def test_local_training_learns_a_homophilous_csbm(options) -> None:
    graph = csbm(homophily=0.9, feature_snr=1.0)
    # Random, not METIS: on a homophilous graph METIS gives each half whole classes.
    federation = federate_graph(graph, Component(name="random"), 2, seed=0, val_fraction=0.0)
    workload = WORKLOADS.build(Component(name="gnn", epochs=40, **options))
    assert isinstance(workload, Workload)
    model = workload.build_model(shape_of(graph.input_shape, graph.num_classes), torch.Generator())
    before = workload.evaluate(model, Labelled(graph.x_test, graph.y_test), {}, EVAL)["accuracy"]
    x, y = federation.train_data(0)
    config = TrainConfig(1, 0, torch.Generator().manual_seed(0), torch.device("cpu"))
    metrics = workload.fit(model, Labelled(x, y), {}, config)
    after = workload.evaluate(model, Labelled(graph.x_test, graph.y_test), {}, EVAL)["accuracy"]
    assert metrics["train_loss"] > 0 and 0 <= metrics["train_accuracy"] <= 1
    assert before < 0.4 and after > 0.85  # five classes: chance is 0.2


def test_training_is_deterministic_given_the_generators() -> None:
    graph = csbm()
    workload = GnnWorkload(GnnParams(model="sage", fanouts=[5, 5], epochs=2))
    states = []
    for _ in range(2):
        model = workload.build_model(
            shape_of(graph.input_shape, 5), torch.Generator().manual_seed(4)
        )
        config = TrainConfig(1, 0, torch.Generator().manual_seed(9), torch.device("cpu"))
        workload.fit(model, Labelled(graph.x_test, graph.y_test), {}, config)
        states.append(model.state_dict())
    for key in states[0]:
        assert torch.equal(states[0][key], states[1][key])


def test_fanouts_need_one_entry_per_layer() -> None:
    with pytest.raises(ValidationError, match="fanouts needs one entry per layer, got 1"):
        GnnParams(layers=2, fanouts=[10])


def test_image_inputs_are_refused_with_a_hint() -> None:
    workload = GnnWorkload(GnnParams())
    with pytest.raises(ValueError, match="use a graph dataset"):
        workload.build_model(shape_of((1, 8, 8), 10), torch.Generator())
