"""Tests of the datasets (digits, fashion_mnist, synthetic) and of their federation."""

from __future__ import annotations

import gzip
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from fedsim.data import (
    FASHION_MNIST_DIR,
    FASHION_MNIST_MEAN,
    FASHION_MNIST_STD,
    Dataset,
    DigitsParams,
    SyntheticParams,
    digits,
    federate,
    federation_for,
    load_data,
    synthetic,
)
from fedsim.errors import UserError
from fedsim.registry import DATASETS, PARTITIONERS, Component


def spec(name: str, **options: object) -> Component:
    return Component(name=name, **options)


def test_the_documented_datasets_are_registered() -> None:
    # Execute / Assert
    assert {"digits", "fashion_mnist", "synthetic"} <= set(DATASETS.names())
    assert all(entry.doc for entry in DATASETS)


# ---- digits ----


def test_digits_shapes_dtypes_and_classes() -> None:
    # Execute
    d = load_data(Component(name="digits"))

    # Assert: 1,797 images, a stratified 20% (rounded up) held out
    assert (d.name, d.num_classes, d.input_shape) == ("digits", 10, (1, 8, 8))
    assert d.x_train.shape == (1437, 1, 8, 8) and d.x_test.shape == (360, 1, 8, 8)
    assert d.x_train.dtype == torch.float32 and d.y_train.dtype == torch.int64
    assert set(d.y_train.tolist()) == set(d.y_test.tolist()) == set(range(10))
    assert abs(d.x_train.mean().item()) < 1e-4 and abs(d.x_train.std().item() - 1) < 1e-3


def test_digits_test_split_is_fixed_and_stratified() -> None:
    # Execute: built twice, bypassing the cache
    first, again = digits(DigitsParams()), digits(DigitsParams())

    # Assert
    assert torch.equal(first.x_test, again.x_test) and torch.equal(first.y_test, again.y_test)
    assert torch.bincount(first.y_test).tolist() == torch.bincount(again.y_test).tolist()
    shares = torch.bincount(first.y_test) / len(first.y_test)
    assert (shares - 0.1).abs().max() < 0.01


def test_load_dataset_is_cached_on_the_validated_params() -> None:
    # Execute
    implicit = load_data(Component(name="digits"))
    explicit = load_data(spec("digits", test_fraction=0.2))
    other = load_data(spec("digits", test_fraction=0.3))

    # Assert
    assert implicit is explicit
    assert other is not implicit and len(other.y_test) == math.ceil(0.3 * 1797)


def test_a_test_split_without_every_class_is_a_user_error() -> None:
    # Execute / Assert: 0.1% of 1,797 is 2 test samples for 10 classes
    with pytest.raises(UserError, match=r"10 classes.*got 1795 train and 2 test"):
        digits(DigitsParams(test_fraction=0.001))


# ---- fashion_mnist ----


@pytest.mark.skipif(not FASHION_MNIST_DIR.is_dir(), reason=f"{FASHION_MNIST_DIR} is absent")
def test_fashion_mnist_loads_the_real_data() -> None:
    # Execute
    d = load_data(Component(name="fashion_mnist"))

    # Assert: the published sizes, 6,000 / 1,000 of each class, and the normalisation
    assert (d.num_classes, d.input_shape) == (10, (1, 28, 28))
    assert len(d.x_train) == len(d.y_train) == 60_000
    assert len(d.x_test) == len(d.y_test) == 10_000
    assert torch.bincount(d.y_train).tolist() == [6000] * 10
    assert torch.bincount(d.y_test).tolist() == [1000] * 10
    assert d.x_train.dtype == torch.float32 and d.y_train.dtype == torch.int64
    assert abs(d.x_train.mean().item()) < 0.01 and abs(d.x_train.std().item() - 1) < 0.01


def test_fashion_mnist_missing_files_say_where_and_how_to_get_them(tmp_path: Path) -> None:
    # Prepare
    root = tmp_path / "nowhere"

    # Execute / Assert
    with pytest.raises(UserError, match=r"train-images-idx3-ubyte") as err:
        load_data(spec("fashion_mnist", root=str(root)))
    message = str(err.value)
    assert str(root) in message
    assert "sudo apt-get install dataset-fashion-mnist" in message
    assert "zalandoresearch/fashion-mnist" in message and "data.root" in message


def write_idx(path: Path, array: np.ndarray, compress: bool) -> None:
    """An IDX file of unsigned bytes, as the format's specification lays it out."""
    header = bytes([0, 0, 8, array.ndim]) + np.array(array.shape, dtype=">u4").tobytes()
    raw = header + array.astype(np.uint8).tobytes()
    if compress:
        path.with_name(path.name + ".gz").write_bytes(gzip.compress(raw))
    else:
        path.write_bytes(raw)


def test_fashion_mnist_reads_idx_files_from_root_gzipped_or_not(tmp_path: Path) -> None:
    # Prepare: train files gzipped, test files plain; 3 and 2 images of 4x5 pixels
    train_images = np.zeros((3, 4, 5), np.uint8)
    train_images[1, 2, 3] = 255
    write_idx(tmp_path / "train-images-idx3-ubyte", train_images, compress=True)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.array([9, 0, 4]), compress=True)
    write_idx(tmp_path / "t10k-images-idx3-ubyte", np.full((2, 4, 5), 51), compress=False)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.array([1, 2]), compress=False)

    # Execute
    d = load_data(spec("fashion_mnist", root=str(tmp_path)))

    # Assert
    assert d.input_shape == (1, 4, 5) and d.num_classes == 10
    assert d.y_train.tolist() == [9, 0, 4] and d.y_test.tolist() == [1, 2]
    black, white, grey = (np.array([0.0, 1.0, 0.2]) - FASHION_MNIST_MEAN) / FASHION_MNIST_STD
    assert d.x_train[1, 0, 2, 3].item() == pytest.approx(white, abs=1e-5)
    assert d.x_train[0].sub(black).abs().max().item() < 1e-5
    assert d.x_test.sub(grey).abs().max().item() < 1e-5


def test_a_corrupt_idx_file_is_a_user_error(tmp_path: Path) -> None:
    # Prepare: a header announcing 10 labels, followed by 3
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((10, 2, 2)), compress=False)
    raw = bytes([0, 0, 8, 1]) + np.array([10], ">u4").tobytes() + bytes(3)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(raw)
    write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((1, 2, 2)), compress=False)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(1), compress=False)

    # Execute / Assert
    with pytest.raises(UserError, match=r"needs 10 data bytes for shape \(10,\), got 3"):
        load_data(spec("fashion_mnist", root=str(tmp_path)))


# ---- synthetic ----


def test_synthetic_is_deterministic_in_its_seed() -> None:
    # Execute
    first, again = synthetic(SyntheticParams(seed=3)), synthetic(SyntheticParams(seed=3))
    other = synthetic(SyntheticParams(seed=4))

    # Assert
    assert torch.equal(first.x_train, again.x_train) and torch.equal(first.y_test, again.y_test)
    assert not torch.equal(first.x_train, other.x_train)


def test_synthetic_shapes_classes_and_standardisation() -> None:
    # Execute
    d = load_data(spec("synthetic", num_samples=500, num_features=6, num_classes=3))

    # Assert
    assert d.input_shape == (6,) and d.num_classes == 3
    assert len(d.x_train) == 400 and len(d.x_test) == 100
    assert set(d.y_train.tolist()) == {0, 1, 2}
    assert d.x_train.mean(dim=0).abs().max() < 1e-4
    assert (d.x_train.std(dim=0) - 1).abs().max() < 1e-2


def test_synthetic_with_too_few_features_for_its_classes_is_a_user_error() -> None:
    # Execute / Assert: 3 features separate at most 2**3 = 8 classes
    with pytest.raises(UserError, match=r"got num_features=3 for num_classes=10"):
        synthetic(SyntheticParams(num_features=3, num_classes=10))


# ---- federation ----


def tiny_dataset(n: int = 40) -> Dataset:
    """Sample i has label i % 4 and input [i, -i], so indices can be read back from the inputs."""
    x = torch.stack([torch.arange(n), -torch.arange(n)], dim=1).float()
    y = torch.arange(n) % 4
    return Dataset("tiny", x, y, x[:4], y[:4], num_classes=4)


IID = Component(name="iid")


@pytest.mark.parametrize(  # natural splits by client ids, which digits has not (tests/fedsim/files)
    "name",
    [
        n
        for n in PARTITIONERS.names()
        if PARTITIONERS.entry(n).declared("splits") is None
        and not PARTITIONERS.entry(n).declared("shares_rows")  # a bootstrap repeats rows
    ],
)
def test_federate_train_and_val_split_the_partition(name: str) -> None:
    # Prepare
    dataset = load_data(Component(name="digits"))
    partitioner = Component(name=name)
    parts = PARTITIONERS.build(partitioner)(
        dataset.y_train.numpy(), 10, np.random.default_rng([7, 0])
    )

    # Execute
    fed = federate(dataset, partitioner, num_clients=10, seed=7, val_fraction=0.25)

    # Assert: the documented generator reproduces the partition; val is a disjoint part of it
    assert fed.num_clients == 10 and fed.client_sizes() == [len(t) for t in fed.train]
    for part, train, val in zip(parts, fed.train, fed.val, strict=True):
        assert train.dtype == val.dtype == torch.int64
        assert not set(train.tolist()) & set(val.tolist())
        assert sorted(train.tolist() + val.tolist()) == part.tolist()
        assert len(val) == math.floor(0.25 * len(part))


def test_federate_covers_the_training_set_once() -> None:
    # Prepare
    dataset = tiny_dataset(n=43)

    # Execute
    fed = federate(dataset, IID, num_clients=5, seed=0, val_fraction=0.2)

    # Assert
    every = torch.cat(fed.train + fed.val).sort().values
    assert every.tolist() == list(range(43))


def test_ensemble_clients_hold_out_the_same_rows_and_train_on_the_rest() -> None:
    # Prepare
    dataset = tiny_dataset(n=40)
    same, bootstrap = Component(name="ensemble"), Component(name="ensemble", bootstrap=True)

    # Execute
    fed = federate(dataset, same, num_clients=3, seed=0, val_fraction=0.25)
    boot = federate(dataset, bootstrap, num_clients=3, seed=0, val_fraction=0.25)

    # Assert: floor(0.25 * 40) = 10 held-out rows, the same for every client; without the
    # bootstrap every client trains on exactly the other 30, with it no copy of a held-out
    # row is trained on and the clients' resamples differ
    held = fed.val[0].tolist()
    assert len(held) == 10 and all(v.tolist() == held for v in fed.val)
    rest = sorted(set(range(40)) - set(held))
    assert all(t.tolist() == rest for t in fed.train)
    held = set(boot.val[0].tolist())
    assert len(held) == 10 and all(set(v.tolist()) == held for v in boot.val)
    assert all(not set(t.tolist()) & held for t in boot.train)
    assert boot.train[0].tolist() != boot.train[1].tolist()


def test_federate_val_fraction_rounds_down_and_leaves_training_data() -> None:
    # Prepare: 20 clients of 2 samples each
    dataset = tiny_dataset(n=40)

    # Execute
    none = federate(dataset, IID, num_clients=20, seed=0, val_fraction=0.0)
    most = federate(dataset, IID, num_clients=20, seed=0, val_fraction=0.99)

    # Assert: floor(0.99 * 2) = 1 held out, 1 kept for training
    assert [len(v) for v in none.val] == [0] * 20 and none.client_sizes() == [2] * 20
    assert [len(v) for v in most.val] == [1] * 20 and most.client_sizes() == [1] * 20


def test_federate_is_deterministic_in_the_seed() -> None:
    # Prepare
    dataset = tiny_dataset()

    # Execute
    first, again, other = (federate(dataset, IID, 4, seed, 0.25) for seed in (1, 1, 2))

    # Assert
    assert all(torch.equal(a, b) for a, b in zip(first.train, again.train, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(first.val, again.val, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(first.train, other.train, strict=True))


def test_client_data_are_slices_of_the_shared_arrays() -> None:
    # Prepare
    fed = federate(tiny_dataset(), IID, num_clients=4, seed=0, val_fraction=0.5)

    # Execute
    x, y = fed.train_data(2)
    vx, vy = fed.val_data(2)

    # Assert: inputs encode their own index
    assert x[:, 0].long().tolist() == fed.train[2].tolist() and torch.equal(y, fed.train[2] % 4)
    assert vx[:, 0].long().tolist() == fed.val[2].tolist() and torch.equal(vy, fed.val[2] % 4)


def test_federate_rejects_clients_without_data() -> None:
    # Prepare: at alpha=0.01 and no minimum size, some of 30 clients get nothing
    dataset = tiny_dataset(n=40)
    dirichlet = spec("dirichlet", alpha=0.01, min_size=0)

    # Execute / Assert
    with pytest.raises(UserError, match=r"of 30 clients with none"):
        federate(dataset, dirichlet, num_clients=30, seed=0, val_fraction=0.1)


@pytest.mark.parametrize("val_fraction", [-0.1, 1.0])
def test_federate_rejects_a_val_fraction_outside_0_1(val_fraction: float) -> None:
    # Execute / Assert
    with pytest.raises(UserError, match=rf"val_fraction needs .*got {val_fraction}"):
        federate(tiny_dataset(), IID, num_clients=2, seed=0, val_fraction=val_fraction)


def test_federation_for_is_cached_per_process() -> None:
    # Prepare
    args = (Component(name="digits"), Component(name="shards"), 10, 0, 0.1)

    # Execute
    first, again = federation_for(*args), federation_for(*args)
    other = federation_for(Component(name="digits"), Component(name="shards"), 10, 1, 0.1)

    # Assert
    assert first is again and other is not first
    assert first.dataset is load_data(Component(name="digits"))
