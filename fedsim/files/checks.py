"""What every file dataset checks before it becomes a ``Dataset``: shapes, labels, finite values."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from fedsim.data import Dataset
from fedsim.errors import UserError

SPLITS = ("train", "test")


def missing(path: Path, what: str) -> str:
    """The problem line of a path that does not exist."""
    return (
        f"{what} {path} not found; check the path (a relative path starts at the scenario "
        "file's folder)"
    )


def checked_dataset(
    name: str,
    source: Path,
    arrays: dict[str, npt.NDArray[Any]],
    num_classes: int | None,
    standardize: bool,
    client_train: npt.NDArray[Any] | None = None,
) -> Dataset:
    """``arrays`` (``x_train``, ``y_train``, ``x_test``, ``y_test``) as a ``Dataset``, checked.

    Inputs may have any shape (N, …), a plain vector (N,) being one feature, and need to be
    finite numbers with the same shape after the row in train and test. Labels are integers in
    0..num_classes-1 (``num_classes``: the largest label + 1 when None). ``standardize`` scales
    each input entry to mean 0 and std 1 over the training rows. ``client_train`` (any values,
    one per training row) becomes client 0..C-1 in the order of the sorted distinct values.
    """
    where = f"{name} {source}"
    xs, ys = {}, {}
    for split in SPLITS:
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.ndim == 0:
            raise UserError(f"{where}: x_{split} is a single value; give it one row per sample")
        xs[split] = x.reshape(-1, 1) if x.ndim == 1 else x
        ys[split] = _labels(where, f"y_{split}", y)
        if len(x) == 0:
            raise UserError(f"{where}: x_{split} has no rows; give it at least one sample")
        if len(x) != len(ys[split]):
            raise UserError(
                f"{where}: x_{split} has {len(x)} rows but y_{split} has {len(ys[split])}; "
                "give one label per row"
            )
        _check_inputs(where, f"x_{split}", xs[split])
    if xs["train"].shape[1:] != xs["test"].shape[1:]:
        raise UserError(
            f"{where}: a row of x_train has shape {xs['train'].shape[1:]} but one of x_test "
            f"{xs['test'].shape[1:]}; give train and test rows the same shape"
        )
    largest = max(int(ys[split].max()) for split in SPLITS)
    classes = largest + 1 if num_classes is None else num_classes
    for split in SPLITS:
        y = ys[split]
        if y.min() < 0 or y.max() >= classes:
            bad = int(y.min()) if y.min() < 0 else int(y.max())
            fix = (
                "raise num_classes or fix the labels"
                if num_classes is not None
                else "number the classes from 0"
            )
            raise UserError(
                f"{where}: y_{split} has label {bad}, outside 0..{classes - 1} "
                f"({classes} classes); labels need to be 0..num_classes-1: {fix}"
            )
    if classes < 2:
        raise UserError(
            f"{where}: every label is 0, a single class; classification needs two or more"
        )
    ids = None if client_train is None else _client_ids(where, client_train, len(ys["train"]))
    # Float32 inputs as they are: a copy of CIFAR's 600 MB took 2 s of start-up, and as much
    # memory again while it lasted.
    x_train, x_test = (xs[split].astype(np.float32, copy=False) for split in SPLITS)
    if standardize:
        mean, std = x_train.mean(axis=0), x_train.std(axis=0)
        std[std == 0] = 1.0  # a constant entry stays 0 rather than dividing by zero
        x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    return Dataset(
        name,
        _tensor(x_train, np.float32),
        _tensor(ys["train"], np.int64),
        _tensor(x_test, np.float32),
        _tensor(ys["test"], np.int64),
        classes,
        None if ids is None else _tensor(ids, np.int64),
    )


def _tensor(a: npt.NDArray[Any], dtype: type[np.generic]) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=dtype))


def _labels(where: str, key: str, y: npt.NDArray[Any]) -> npt.NDArray[np.int64]:
    """Labels as int64: a vector (or a column) of integers, or of floats that are integers."""
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise UserError(
            f"{where}: {key} needs shape (N,), one class index per row, got {y.shape}; "
            "one-hot labels become indices with y.argmax(axis=1)"
        )
    if y.dtype == np.bool_ or np.issubdtype(y.dtype, np.integer):
        return y.astype(np.int64)
    if np.issubdtype(y.dtype, np.floating):
        finite = np.isfinite(y)
        if not finite.all():
            row = int(np.flatnonzero(~finite)[0])
            raise UserError(f"{where}: {key} has a missing (NaN) label at row {row}; drop the row")
        if np.array_equal(y, np.round(y)):
            return y.astype(np.int64)
        row = int(np.flatnonzero(y != np.round(y))[0])
        raise UserError(
            f"{where}: {key} has the non-integer label {y[row]} at row {row}; labels need to "
            "be class indices 0..num_classes-1"
        )
    raise UserError(
        f"{where}: {key} holds {y.dtype} values, not integers; labels need to be class "
        "indices 0..num_classes-1 (map class names to indices first)"
    )


def _check_inputs(where: str, key: str, x: npt.NDArray[Any]) -> None:
    if not (x.dtype == np.bool_ or np.issubdtype(x.dtype, np.number)):
        raise UserError(f"{where}: {key} holds {x.dtype} values; inputs need to be numbers")
    if np.iscomplexobj(x):
        raise UserError(f"{where}: {key} holds complex numbers; inputs need to be real")
    finite = np.isfinite(x).reshape(len(x), -1).all(axis=1)
    if not finite.all():
        rows = np.flatnonzero(~finite)
        raise UserError(
            f"{where}: {key} has NaN or infinite values in {len(rows)} rows (first: row "
            f"{int(rows[0])}); drop or impute them"
        )


def _client_ids(where: str, ids: npt.NDArray[Any], rows: int) -> npt.NDArray[np.int64]:
    """Each training row's client, 0..C-1, numbered in the order of the sorted distinct ids."""
    if ids.ndim != 1 or len(ids) != rows:
        raise UserError(
            f"{where}: client_train needs shape ({rows},), one client id per training row, got "
            f"{ids.shape}"
        )
    if np.issubdtype(ids.dtype, np.floating) and not np.isfinite(ids).all():
        row = int(np.flatnonzero(~np.isfinite(ids))[0])
        raise UserError(f"{where}: client_train has a missing (NaN) id at row {row}")
    _, owner = np.unique(ids, return_inverse=True)
    return owner.astype(np.int64).reshape(-1)
