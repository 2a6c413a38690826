"""Datasets (one in-memory copy per process) and their federation: which client holds what."""

from __future__ import annotations

import dataclasses
import functools
import gzip
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, NamedTuple, Protocol

import numpy as np
import numpy.typing as npt
import torch
from pydantic import Field, PositiveFloat, PositiveInt

from fedsim import partition as _partition  # noqa: F401  (registers the partitioners federate uses)
from fedsim.errors import UserError
from fedsim.registry import DATASETS, PARTITIONERS, Component, DatasetParams

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]


class Labelled(NamedTuple):
    """A client's labelled data: ``inputs`` (a tensor of samples, or a graph's ``Subgraph``
    whose targets are the labelled nodes) and their ``labels``."""

    inputs: Any
    labels: torch.Tensor


@dataclass(frozen=True, eq=False)  # tensors have no boolean equality; compare by identity
class Dataset:
    """A train/test pair held in memory; shared by every client of a process, so never mutate it."""

    name: str
    x_train: torch.Tensor  # float32, (N, *input_shape), normalised
    y_train: torch.Tensor  # int64, (N,)
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    # Naturally partitioned data (LEAF's writers): the client, 0..C-1, of each training row.
    client_train: torch.Tensor | None = None

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])


def _dataset(
    name: str,
    x_train: npt.NDArray[Any],
    y_train: npt.NDArray[Any],
    x_test: npt.NDArray[Any],
    y_test: npt.NDArray[Any],
    num_classes: int,
) -> Dataset:
    def f32(a: npt.NDArray[Any]) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))

    def i64(a: npt.NDArray[Any]) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.int64))

    return Dataset(name, f32(x_train), i64(y_train), f32(x_test), i64(y_test), num_classes)


def _stratified_split(
    name: str, x: npt.NDArray[Any], y: npt.NDArray[Any], test_fraction: float, seed: int
) -> tuple[npt.NDArray[Any], npt.NDArray[Any], npt.NDArray[Any], npt.NDArray[Any]]:
    """Train/test split keeping class proportions, from a generator seeded with ``seed`` only."""
    num_classes = len(np.unique(y))
    n_test = math.ceil(test_fraction * len(y))  # scikit-learn rounds the test size up
    n_train = len(y) - n_test
    if min(n_test, n_train) < num_classes:
        raise UserError(
            f"{name} needs at least one sample of each of its {num_classes} classes in both train "
            f"and test, got {n_train} train and {n_test} test samples (test_fraction="
            f"{test_fraction}, {len(y)} samples); move test_fraction towards 0.5 or add samples"
        )
    from sklearn.model_selection import (
        train_test_split,  # scikit-learn once data loads, not to validate
    )

    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=n_test, stratify=y, random_state=seed
    )
    return x_train, x_test, y_train, y_test


class DigitsParams(DatasetParams):
    test_fraction: float = Field(default=0.2, gt=0.0, lt=1.0)


@DATASETS.register("digits", DigitsParams)
def digits(p: DigitsParams) -> Dataset:
    """scikit-learn's 8x8 handwritten digits (1,797 images, 10 classes); fast, bundled, offline."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.images / 16.0).astype(np.float32)[:, None]  # pixels are 0..16
    # Seed 0, not the scenario's: every run of every scenario evaluates on the same test set.
    x_train, x_test, y_train, y_test = _stratified_split(
        "digits", x, bunch.target, p.test_fraction, 0
    )
    mean, std = float(x_train.mean()), float(x_train.std())
    return _dataset(
        "digits", (x_train - mean) / std, y_train, (x_test - mean) / std, y_test, num_classes=10
    )


FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
# Of the training images scaled to [0, 1]; the usual constants for Fashion-MNIST.
FASHION_MNIST_MEAN, FASHION_MNIST_STD = 0.2860, 0.3530


class FashionMnistParams(DatasetParams):
    root: str | None = None  # folder of the four IDX files; default: the Debian package's folder


@DATASETS.register("fashion_mnist", FashionMnistParams)
def fashion_mnist(p: FashionMnistParams) -> Dataset:
    """Zalando's Fashion-MNIST (60,000 + 10,000 28x28 greyscale images, 10 classes), IDX files."""
    root = Path(p.root).expanduser() if p.root is not None else FASHION_MNIST_DIR
    paths = {key: _find_idx(root, name) for key, name in FASHION_MNIST_FILES.items()}
    missing = [name for key, name in FASHION_MNIST_FILES.items() if paths[key] is None]
    if missing:
        where = "data.root" if p.root is not None else "the default folder"
        raise UserError(
            f"fashion_mnist: {', '.join(missing)} (.gz or plain) not found in {root} ({where}); "
            "install the data with `sudo apt-get install dataset-fashion-mnist` (Debian/Ubuntu), "
            "or download the four IDX .gz files from "
            "https://github.com/zalandoresearch/fashion-mnist (folder data/fashion) into a folder "
            "and set data.root to that folder"
        )
    arrays = {key: _read_idx(path) for key, path in paths.items() if path is not None}
    for split in ("train", "test"):
        images, labels = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise UserError(
                f"fashion_mnist: {split} images need shape (N, H, W) and labels (N,), got "
                f"{images.shape} and {labels.shape} in {root}; re-download the files"
            )
        if labels.size and labels.max() >= 10:
            raise UserError(
                f"fashion_mnist: labels need to be in 0..9, got {int(labels.max())} in {split} "
                f"labels in {root}; re-download the files"
            )

    def normalise(images: npt.NDArray[np.uint8]) -> FloatArray:
        x = images[:, None].astype(np.float32) / 255.0
        return (x - FASHION_MNIST_MEAN) / FASHION_MNIST_STD

    return _dataset(
        "fashion_mnist",
        normalise(arrays["x_train"]),
        arrays["y_train"],
        normalise(arrays["x_test"]),
        arrays["y_test"],
        num_classes=10,
    )


def _find_idx(root: Path, name: str) -> Path | None:
    """The gzipped or plain IDX file ``name`` in ``root``, if either exists."""
    for candidate in (root / f"{name}.gz", root / name):
        if candidate.is_file():
            return candidate
    return None


def _read_idx(path: Path) -> npt.NDArray[np.uint8]:
    """An IDX file of unsigned bytes (the MNIST format), gzipped or not, as an array."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError) as err:
        raise UserError(f"cannot read {path}: {err}; re-download the file") from None
    # Header: two zero bytes, the element type (0x08: unsigned byte), the number of dimensions,
    # then each dimension as a big-endian uint32.
    ndim = raw[3] if len(raw) >= 4 else 0
    header = 4 + 4 * ndim
    if len(raw) < header or raw[:3] != b"\x00\x00\x08" or ndim == 0:
        raise UserError(
            f"{path} needs to be an IDX file of unsigned bytes (header 00 00 08 <ndim>), got "
            f"header {raw[:4].hex(' ')}; re-download the file"
        )
    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    if len(raw) - header != math.prod(shape):
        raise UserError(
            f"{path} needs {math.prod(shape)} data bytes for shape {shape}, got "
            f"{len(raw) - header}; the file is truncated or corrupt, re-download it"
        )
    return np.frombuffer(raw, np.uint8, offset=header).reshape(shape)


class SyntheticParams(DatasetParams):
    num_samples: PositiveInt = 10_000
    num_features: PositiveInt = 32
    num_classes: int = Field(default=10, ge=2)
    class_sep: PositiveFloat = 1.0  # larger: classes further apart, easier
    test_fraction: float = Field(default=0.2, gt=0.0, lt=1.0)
    seed: int = Field(default=0, ge=0)  # of the data itself; independent of the scenario's seed


@DATASETS.register("synthetic", SyntheticParams)
def synthetic(p: SyntheticParams) -> Dataset:
    """Gaussian clusters from scikit-learn's make_classification: feature vectors, any size."""
    from sklearn.datasets import make_classification

    informative, clusters = _informative_features(p.num_features, p.num_classes)
    x, y = make_classification(
        n_samples=p.num_samples,
        n_features=p.num_features,
        n_informative=informative,
        n_redundant=0,
        n_classes=p.num_classes,
        n_clusters_per_class=clusters,
        class_sep=p.class_sep,
        random_state=p.seed,
    )
    x_train, x_test, y_train, y_test = _stratified_split("synthetic", x, y, p.test_fraction, p.seed)
    mean, std = x_train.mean(axis=0), x_train.std(axis=0) + 1e-8
    return _dataset(
        "synthetic", (x_train - mean) / std, y_train, (x_test - mean) / std, y_test, p.num_classes
    )


def _informative_features(num_features: int, num_classes: int) -> tuple[int, int]:
    """Informative features and clusters per class valid for make_classification.

    It needs ``num_classes * clusters <= 2 ** informative``: half the features are informative
    with two clusters per class when that fits, more features or one cluster when it does not.
    """
    for clusters in (2, 1):
        needed = math.ceil(math.log2(num_classes * clusters))
        informative = max(num_features // 2, needed, 1)
        if informative <= num_features:
            return informative, clusters
    raise UserError(
        f"synthetic needs 2 ** num_features >= num_classes, got num_features={num_features} "
        f"for num_classes={num_classes}; raise num_features or lower num_classes"
    )


def load_data(spec: Component) -> Any:
    """Whatever the ``DATASETS`` entry ``spec`` names builds (a ``Dataset``, a graph, an MBO
    task, …), built once per process and shared."""
    params = DATASETS.params(spec)
    # Keyed on the validated params, so `{name: digits}` and the same with defaults spelt out match.
    return _load_data(spec.name, params.model_dump_json())


@functools.lru_cache(maxsize=4)
def _load_data(name: str, params_json: str) -> Any:
    entry = DATASETS.entry(name)
    return entry.factory(entry.params.model_validate_json(params_json))


def dataset_kind(name: str) -> str:
    """The kind of data the dataset ``name`` is (``samples``, ``graph``, ``mbo_task``, …)."""
    return str(DATASETS.entry(name).declared("kind", "samples"))


class Federation(Protocol):
    """A dataset dealt out among clients, whatever its kind: what the app asks of any of them.

    ``train_data`` and ``val_data`` are what a workload's ``fit`` and ``evaluate`` receive
    (``Labelled`` pairs for samples and graphs); ``test_data`` is what the central evaluation
    receives; ``stats`` are the partition's costs the run records once (``{}`` when none).
    """

    kind: ClassVar[str]

    @property
    def dataset(self) -> Any: ...

    @property
    def num_clients(self) -> int: ...

    @property
    def stats(self) -> dict[str, float]: ...

    def client_sizes(self) -> list[int]: ...

    def class_counts(self) -> npt.NDArray[np.int64]: ...

    def train_data(self, client: int) -> Any: ...

    def val_data(self, client: int) -> Any | None: ...

    def test_data(self) -> Any: ...

    def to(self, device: torch.device) -> Federation: ...


# Builds the federation of one kind of dataset: (dataset, partitioner, clients, seed, val_fraction).
Federate = Callable[[Any, Component, int, int, float], Federation]
_FEDERATE: dict[str, Federate] = {}


def federates(kind: str) -> Callable[[Federate], Federate]:
    """Registers how datasets of ``kind`` are split among clients."""

    def register(build: Federate) -> Federate:
        _FEDERATE[kind] = build
        return build

    return register


class RowSplit:
    """What a federation that hands each client rows of its data (``train``: one index tensor
    per client) answers the same way whatever the data: a base of the row-split federations."""

    train: list[torch.Tensor]

    @property
    def num_clients(self) -> int:
        return len(self.train)

    @property
    def stats(self) -> dict[str, float]:
        return {}

    def client_sizes(self) -> list[int]:
        """Training rows of each client (FedAvg's weights)."""
        return [len(t) for t in self.train]

    def one_class_counts(self) -> npt.NDArray[np.int64]:
        """``class_counts`` of data without classes: each client's rows as one class."""
        return np.array(self.client_sizes(), dtype=np.int64)[:, None]


@dataclass(frozen=True, eq=False)  # tensors have no boolean equality; compare by identity
class SampleFederation(RowSplit):
    """Which samples of a dataset each client holds, for training and for its own evaluation."""

    kind: ClassVar[str] = "samples"
    dataset: Dataset
    train: list[torch.Tensor]  # per client: int64 indices into dataset.x_train used for training
    val: list[torch.Tensor]  # per client: held-out indices (client-side evaluation)

    def train_data(self, client: int) -> Labelled:
        """Inputs and labels of ``client``'s training samples."""
        return self._rows(self.train[client])

    def val_data(self, client: int) -> Labelled | None:
        """Inputs and labels of ``client``'s held-out samples (None when it holds none out)."""
        idx = self.val[client]
        return self._rows(idx) if len(idx) else None

    def _rows(self, idx: torch.Tensor) -> Labelled:
        # index_select, not x[idx]: the same rows, gathered 2-6x faster (600 images: 215 µs
        # against 37), for every Message a client serves
        return Labelled(
            self.dataset.x_train.index_select(0, idx), self.dataset.y_train.index_select(0, idx)
        )

    def test_data(self) -> Labelled:
        return Labelled(self.dataset.x_test, self.dataset.y_test)

    def class_counts(self) -> npt.NDArray[np.int64]:
        """Training samples of each class on each client, shape (clients, classes)."""
        labels, classes = self.dataset.y_train.cpu().numpy(), self.dataset.num_classes
        return np.stack(
            [np.bincount(labels[t.cpu().numpy()], minlength=classes) for t in self.train]
        )

    def to(self, device: torch.device) -> SampleFederation:
        """The same federation with its data and indices on ``device``."""
        d = self.dataset
        on_device = dataclasses.replace(  # client_train stays: only the partitioner reads it
            d,
            x_train=d.x_train.to(device),
            y_train=d.y_train.to(device),
            x_test=d.x_test.to(device),
            y_test=d.y_test.to(device),
        )
        return SampleFederation(
            on_device, [t.to(device) for t in self.train], [v.to(device) for v in self.val]
        )


@federates("samples")
def federate(
    dataset: Dataset, partitioner: Component, num_clients: int, seed: int, val_fraction: float
) -> SampleFederation:
    """Partition ``dataset``'s training set among clients, then hold out a part of each client's.

    Each client keeps ``floor(val_fraction * size)`` samples for validation, but at least one
    for training. All randomness comes from a generator derived from ``seed``.
    """
    client_ids = None if dataset.client_train is None else dataset.client_train.numpy()
    train, val = split_among_clients(
        dataset.y_train.numpy(), partitioner, num_clients, seed, val_fraction, client_ids
    )
    return SampleFederation(dataset, train, val)


def split_among_clients(
    labels: npt.NDArray[Any],
    partitioner: Component,
    num_clients: int,
    seed: int,
    val_fraction: float,
    client_ids: npt.NDArray[Any] | None = None,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Each client's training and held-out indices into ``labels`` (see ``federate``).

    A partitioner that declares ``splits = "client_ids"`` (``natural``) is handed
    ``client_ids``, the data's own client of each row, instead of the labels. Clients of a
    partitioner that declares ``shares_rows`` (``ensemble``) all hold out the same rows.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise UserError(f"val_fraction needs to be in [0, 1), got {val_fraction}")
    if seed < 0:
        raise UserError(f"seed needs to be >= 0, got {seed}")
    split = PARTITIONERS.build(partitioner)
    values = labels
    if PARTITIONERS.entry(partitioner.name).declared("splits", "labels") == "client_ids":
        if client_ids is None:
            raise UserError(
                f"data.partition: {partitioner.name!r} splits the data by its own client of each "
                "training row, and this dataset has none; give the arrays dataset a client_train "
                "array (or the csv dataset a client column), or use another partitioner"
            )
        values = client_ids
    # Stream 0 of the scenario seed is the data's; other layers derive their own streams.
    rng = np.random.default_rng([seed, 0])
    parts: list[IntArray] = split(values, num_clients, rng)
    empty = [i for i, part in enumerate(parts) if len(part) == 0]
    if empty:
        raise UserError(
            f"partitioner {partitioner.name!r} needs to give every client a sample, got "
            f"{len(empty)} of {num_clients} clients with none (first: client {empty[0]}); "
            "use fewer clients or a partitioner option that guarantees a minimum size"
        )
    if PARTITIONERS.entry(partitioner.name).declared("shares_rows"):
        return _hold_out_shared_rows(parts, len(values), val_fraction, rng)
    train, val = [], []
    for part in parts:
        n_val = min(math.floor(val_fraction * len(part)), len(part) - 1)
        shuffled = rng.permutation(part)
        val.append(torch.from_numpy(np.sort(shuffled[:n_val]).astype(np.int64)))
        train.append(torch.from_numpy(np.sort(shuffled[n_val:]).astype(np.int64)))
    return train, val


def _hold_out_shared_rows(
    parts: list[IntArray], n: int, val_fraction: float, rng: np.random.Generator
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Held-out rows for clients that share rows (``ensemble``): one draw of the rows, held out
    by every client (each copy of them, in a bootstrap). Drawn per client, as for a partition,
    the clients would train on different rows, and one client's held-out rows would be
    another's (or, in a bootstrap, its own duplicated) training rows."""
    held = np.zeros(n, dtype=bool)
    held[rng.permutation(n)[: min(math.floor(val_fraction * n), n - 1)]] = True
    val = torch.from_numpy(np.flatnonzero(held).astype(np.int64))
    train = [torch.from_numpy(part[~held[part]].astype(np.int64)) for part in parts]
    if any(len(t) == 0 for t in train):
        raise UserError(
            f"val_fraction={val_fraction} holds out every row a client's bootstrap drew; "
            "lower data.val_fraction"
        )
    return train, [val.clone() for _ in parts]


def federation_for(
    dataset_spec: Component,
    partitioner: Component,
    num_clients: int,
    seed: int,
    val_fraction: float,
) -> Federation:
    """The dataset ``dataset_spec`` names, split among clients as its kind is split; built once
    per process and shared."""
    return _federation_for(
        dataset_spec.model_dump_json(),
        partitioner.model_dump_json(),
        num_clients,
        seed,
        val_fraction,
    )


@functools.lru_cache(maxsize=2)
def _federation_for(
    dataset_json: str, partitioner_json: str, num_clients: int, seed: int, val_fraction: float
) -> Federation:
    spec = Component.model_validate_json(dataset_json)
    kind = dataset_kind(spec.name)
    if kind not in _FEDERATE:
        raise UserError(f"data: no federation is registered for {kind!r} data ({spec.name})")
    partitioner = Component.model_validate_json(partitioner_json)
    return _FEDERATE[kind](load_data(spec), partitioner, num_clients, seed, val_fraction)


def to_device(data: Any, device: torch.device) -> Any:
    """``data`` with its tensors on ``device``: a tensor, anything with ``.to`` (a subgraph),
    or a tuple of those (``Labelled``); anything else as it is (an MBO task)."""
    if isinstance(data, tuple):
        return type(data)(*(to_device(part, device) for part in data))
    to = getattr(data, "to", None)
    return to(device) if callable(to) else data
