"""Graph datasets: a contextual stochastic block model, k-NN graphs over real images, karate club.

Each registers in ``DATASETS`` with params derived from ``GraphDatasetParams``, so a scenario's
``data.partition`` for it names a graph partitioner.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field, PositiveFloat, PositiveInt

from fedsim.errors import UserError
from fedsim.graphs.graph import GraphDataset, graph_dataset
from fedsim.registry import DATASETS, GraphDatasetParams

TestFraction = Field(default=0.2, gt=0.0, lt=1.0)


class CsbmParams(GraphDatasetParams):
    num_nodes: int = Field(default=2000, ge=4)
    num_classes: int = Field(default=5, ge=2)
    avg_degree: PositiveFloat = 10.0
    homophily: float = Field(default=0.8, ge=0.0, le=1.0)  # share of edges inside a class
    feature_snr: float = Field(default=1.0, ge=0.0)  # norm of the class means over the noise std
    num_features: PositiveInt = 16
    test_fraction: float = TestFraction
    seed: int = Field(default=0, ge=0)  # of the graph itself; independent of the scenario's seed


@DATASETS.register("csbm", CsbmParams)
def csbm(p: CsbmParams) -> GraphDataset:
    """Contextual SBM: balanced classes, edges inside a class with share ``homophily``.

    ``num_nodes·avg_degree/2`` undirected edges are drawn: a share ``homophily`` join a random
    node to a random node of its own class, the rest to a random node of another class (edges
    drawn twice or looping are dropped, so the mean degree ends a little below ``avg_degree``).
    Features: ``x_v = mu_{y_v} + N(0, I)``, with class means of norm ``feature_snr`` in random
    directions (Deshpande et al., 2018).
    """
    rng = np.random.default_rng([p.seed, 1])
    n, c = p.num_nodes, p.num_classes
    if n < 2 * c:
        raise UserError(f"csbm needs num_nodes >= 2·num_classes, got {n} < {2 * c}")
    labels = rng.permutation(np.arange(n) % c)
    by_class = np.argsort(labels, kind="stable")  # class 0's nodes, then class 1's, ...
    sizes = np.bincount(labels, minlength=c)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    edges = round(n * p.avg_degree / 2)
    inside = rng.binomial(edges, p.homophily)
    u = rng.integers(0, n, size=edges)
    # Same class: a random member of u's class; other class: a random member of a shifted class.
    shift = np.where(np.arange(edges) < inside, 0, rng.integers(1, c, size=edges))
    target_class = (labels[u] + shift) % c
    pick = (rng.random(edges) * sizes[target_class]).astype(np.int64)
    v = by_class[starts[target_class] + pick]
    means = rng.standard_normal((c, p.num_features))
    means *= p.feature_snr / np.linalg.norm(means, axis=1, keepdims=True)
    features = means[labels] + rng.standard_normal((n, p.num_features))
    return graph_dataset(
        "csbm", features, np.stack([u, v], axis=1), labels, p.test_fraction, p.seed
    )


class KnnParams(GraphDatasetParams):
    source: Literal["digits", "fashion_mnist"] = "digits"
    num_nodes: PositiveInt | None = None  # a random subset of the images; None: all of them
    k: PositiveInt = 10  # neighbours of each image (the graph is their symmetric union)
    pca: PositiveInt | None = 32  # node features: this many principal components; None: pixels
    root: str | None = None  # fashion_mnist's folder, as the fashion_mnist dataset takes it
    test_fraction: float = TestFraction
    seed: int = Field(default=0, ge=0)  # of the subset and the split


@DATASETS.register("knn", KnnParams)
def knn(p: KnnParams) -> GraphDataset:
    """k-nearest-neighbour graph over real images: digits (1,797) or Fashion-MNIST's test set.

    Pixels are standardised, projected on ``pca`` principal components (the node features) and
    each node is joined to its ``k`` nearest neighbours in that space (Euclidean).
    """
    if p.source == "digits":
        from sklearn.datasets import load_digits

        bunch = load_digits()
        images, labels = bunch.data.astype(np.float32), bunch.target
    else:
        from fedsim.data import FashionMnistParams, fashion_mnist

        data = fashion_mnist(FashionMnistParams(root=p.root))
        images, labels = data.x_test.flatten(1).numpy(), data.y_test.numpy()
    # scikit-learn is imported here, not at the top: importing it costs about a second, which
    # every fedsim process would pay (fedsim.graphs is imported with the workloads) for a
    # dataset that few runs use.
    from sklearn.decomposition import PCA
    from sklearn.neighbors import kneighbors_graph

    rng = np.random.default_rng([p.seed, 2])
    if p.num_nodes is not None:
        if p.num_nodes > len(labels):
            raise UserError(
                f"knn: num_nodes={p.num_nodes} exceeds the {len(labels)} {p.source} images; "
                "lower num_nodes or leave it unset for all of them"
            )
        chosen = np.sort(rng.choice(len(labels), size=p.num_nodes, replace=False))
        images, labels = images[chosen], labels[chosen]
    if p.k >= len(labels):
        raise UserError(f"knn: k={p.k} needs to be below the number of nodes ({len(labels)})")
    x = (images - images.mean(axis=0)) / (images.std(axis=0) + 1e-6)
    if p.pca is not None:
        x = PCA(n_components=min(p.pca, *x.shape), random_state=p.seed).fit_transform(x)
        x /= x[:, 0].std() + 1e-6  # the leading component at unit scale keeps inputs O(1)
    adjacency = kneighbors_graph(x, p.k, mode="connectivity").tocoo()
    edges = np.stack([adjacency.row, adjacency.col], axis=1)
    return graph_dataset(f"knn-{p.source}", x, edges, labels, p.test_fraction, p.seed)


class KarateParams(GraphDatasetParams):
    test_fraction: float = TestFraction
    seed: int = Field(default=0, ge=0)  # of the split


@DATASETS.register("karate", KarateParams)
def karate(p: KarateParams) -> GraphDataset:
    """Zachary's karate club (34 members, 78 ties); label: the club each member joined.

    Features are one-hot node identities, as in Kipf & Welling's karate example.
    """
    import networkx as nx

    g = nx.karate_club_graph()
    labels = np.array([g.nodes[v]["club"] != "Mr. Hi" for v in g.nodes], dtype=np.int64)
    edges = np.array(list(g.edges), dtype=np.int64)
    features = np.eye(g.number_of_nodes(), dtype=np.float32)
    return graph_dataset("karate", features, edges, labels, p.test_fraction, p.seed)
