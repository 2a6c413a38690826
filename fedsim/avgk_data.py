"""Datasets for average-K classification: Fashion-MNIST with injected ambiguity and a long tail,
and Gaussian classes with an exact posterior, whose Bayes-optimal average-K accuracy is known.

Both are ordinary ``samples`` datasets (``Dataset``): every partitioner and the classification
workloads read them too. The ambiguity of the first is aleatoric by construction: an image of a
confusable group is relabelled to another member of its group with probability ``ambiguity``, in
train and test alike, so p(y | x) is genuinely spread over the group.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from pydantic import Field, PositiveFloat, PositiveInt, model_validator

from fedsim.data import Dataset, FashionMnistParams, _dataset, fashion_mnist
from fedsim.registry import DATASETS, DatasetParams

# Fashion-MNIST's confusable groups: {T-shirt, pullover, coat, shirt} and {sandal, sneaker, boot}.
FASHION_GROUPS = ((0, 2, 4, 6), (5, 7, 9))


def long_tail_counts(head: int, classes: int, ratio: float) -> list[int]:
    """Samples of classes 0..C-1 decaying geometrically from ``head`` to ``head / ratio``."""
    return [max(1, round(head * ratio ** (-j / (classes - 1)))) for j in range(classes)]


def relabel_within_groups(
    labels: np.ndarray, groups: tuple[tuple[int, ...], ...], p: float, rng: np.random.Generator
) -> np.ndarray:
    """Each label of a group becomes, with probability ``p``, another member drawn uniformly."""
    out = labels.copy()
    flip = rng.random(len(labels)) < p
    draws = rng.random(len(labels))  # drawn for every row, so p changes which rows, not the draws
    for group in groups:
        members = np.array(group)
        for i in np.flatnonzero(flip & np.isin(labels, members)):
            others = members[members != labels[i]]
            out[i] = others[int(draws[i] * len(others))]
    return out


class AmbiguousFashionParams(DatasetParams):
    root: str | None = None  # the four IDX files; default: the Debian package's folder
    ambiguity: float = Field(default=0.0, ge=0.0, lt=1.0)  # relabel probability within a group
    long_tail: float = Field(default=1.0, ge=1.0)  # train count of class 0 over that of class 9
    train_per_class: PositiveInt = 6000  # class 0's training images (the head); at most 6000
    test_size: PositiveInt = 10_000  # a stratified subset of the 10,000 test images
    seed: int = Field(default=0, ge=0)  # of the relabelling and subsampling, not the run's

    @model_validator(mode="after")
    def _sizes(self) -> AmbiguousFashionParams:
        if self.train_per_class > 6000:
            raise ValueError(
                f"train_per_class: Fashion-MNIST has 6000 training images per class, got "
                f"{self.train_per_class}; use at most 6000"
            )
        if self.test_size > 10_000 or self.test_size < 10:
            raise ValueError(
                f"test_size: needs 10..10000 (one image per class), got {self.test_size}"
            )
        return self


@DATASETS.register("fashion_mnist_avgk", AmbiguousFashionParams)
def fashion_mnist_avgk(p: AmbiguousFashionParams) -> Dataset:
    """Fashion-MNIST subsampled to a (long-tailed) size, relabelled within its confusable groups
    with probability ``ambiguity`` (0: its natural ambiguity only); the test set stays balanced."""
    full = fashion_mnist(FashionMnistParams(root=p.root))
    rng = np.random.default_rng([p.seed, 18])
    y_train, y_test = full.y_train.numpy(), full.y_test.numpy()
    counts = long_tail_counts(p.train_per_class, 10, p.long_tail)
    train = np.sort(
        np.concatenate(
            [
                rng.choice(np.flatnonzero(y_train == c), n, replace=False)
                for c, n in enumerate(counts)
            ]
        )
    )
    per_class = p.test_size // 10
    test = np.sort(
        np.concatenate(
            [rng.choice(np.flatnonzero(y_test == c), per_class, replace=False) for c in range(10)]
        )
    )
    noisy_train = relabel_within_groups(y_train[train], FASHION_GROUPS, p.ambiguity, rng)
    noisy_test = relabel_within_groups(y_test[test], FASHION_GROUPS, p.ambiguity, rng)
    return _dataset(
        "fashion_mnist_avgk",
        full.x_train.numpy()[train],
        noisy_train,
        full.x_test.numpy()[test],
        noisy_test,
        num_classes=10,
    )


class GaussianAvgkParams(DatasetParams):
    groups: tuple[PositiveInt, ...] = (2, 2, 3, 3)  # classes per super-class; their sum is C
    dim: PositiveInt = 16
    group_sep: PositiveFloat = 6.0  # distance of each super-class centre from the origin
    class_sep: PositiveFloat = 1.0  # distance of a class mean from its super-class centre
    sigma: PositiveFloat = 1.0  # isotropic noise of every class
    long_tail: float = Field(default=1.0, ge=1.0)  # prior of class 0 over that of class C-1
    num_samples: PositiveInt = 6000
    test_fraction: float = Field(default=0.25, gt=0.0, lt=1.0)
    seed: int = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _fits(self) -> GaussianAvgkParams:
        classes = sum(self.groups)
        if classes < 2:
            raise ValueError(f"groups: needs at least 2 classes in all, got {self.groups}")
        if self.dim < len(self.groups) + classes:
            raise ValueError(
                f"dim: needs one axis per super-class and per class, >= {len(self.groups)} + "
                f"{classes}, got {self.dim}; raise dim"
            )
        return self

    @property
    def num_classes(self) -> int:
        return sum(self.groups)

    def means(self) -> np.ndarray:
        """(C, dim): super-class centre on axis g, plus the class's own orthogonal offset."""
        mu = np.zeros((self.num_classes, self.dim))
        c = 0
        for g, size in enumerate(self.groups):
            for _ in range(size):
                mu[c, g] = self.group_sep
                mu[c, len(self.groups) + c] = self.class_sep
                c += 1
        return mu

    def priors(self) -> np.ndarray:
        counts = np.array(
            [self.long_tail ** (-j / (self.num_classes - 1)) for j in range(self.num_classes)]
        )
        return counts / counts.sum()


@DATASETS.register("avgk_gaussian", GaussianAvgkParams)
def avgk_gaussian(p: GaussianAvgkParams) -> Dataset:
    """Gaussian classes sharing super-class centres: p(y | x) is known exactly (``posterior``)."""
    rng = np.random.default_rng([p.seed, 18])
    y = rng.choice(p.num_classes, size=p.num_samples, p=p.priors())
    x = p.means()[y] + p.sigma * rng.standard_normal((p.num_samples, p.dim))
    n_test = math.ceil(p.test_fraction * p.num_samples)
    return _dataset("avgk_gaussian", x[n_test:], y[n_test:], x[:n_test], y[:n_test], p.num_classes)


def posterior(p: GaussianAvgkParams, x: torch.Tensor) -> torch.Tensor:
    """The exact p(y | x), (n, C): softmax of log prior − ‖x − μ_y‖² / 2σ² (shared σ)."""
    mu = torch.from_numpy(p.means())
    logits = torch.log(torch.from_numpy(p.priors())) - torch.cdist(x.double(), mu).square() / (
        2 * p.sigma**2
    )
    return logits.softmax(dim=1)


def bayes_average_k_accuracy(prob: torch.Tensor, k: float) -> float:
    """The highest expected average-K accuracy on these inputs: the ⌈K·n⌉ largest posterior
    entries over all samples (a global threshold of the true posterior), summed, over n.

    Any predictor returning ⌈K·n⌉ labels in all scores Σ p(j | x_i) over its choices, which the
    largest entries maximise; so this is a ceiling for every model at that mean set size."""
    n = prob.shape[0]
    m = math.ceil(k * n - 1e-9)
    return float(prob.flatten().topk(m).values.sum() / n)
