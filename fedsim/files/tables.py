"""``csv``: a table of numeric features and a label column, split into train and test by a
column of its own or by a seeded random fraction."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import numpy.typing as npt
import pandas as pd
from pydantic import Field, NonNegativeInt

from fedsim.data import Dataset
from fedsim.errors import UserError
from fedsim.files.checks import SPLITS, checked_dataset, missing
from fedsim.registry import DATASETS, DatasetParams, UserPath


class CsvParams(DatasetParams):
    path: Annotated[str, UserPath()]  # relative to the scenario file's folder
    label: str = "label"  # the column of class labels: integers 0..K-1, or names (sorted → 0..)
    features: list[str] | None = None  # None: every column but label, split and client
    split: str | None = None  # a column of train / test per row; None: test_fraction at random
    test_fraction: float = Field(default=0.2, gt=0.0, lt=1.0)  # when split is None
    seed: NonNegativeInt = 0  # of the random split; independent of the scenario's seed
    client: str | None = None  # a column of each row's client (for partition: natural)
    num_classes: int | None = Field(default=None, ge=2)  # None: from the labels
    standardize: bool = True  # scale each feature to mean 0, std 1 over the training rows
    sep: str = ","  # the column separator

    def check(self) -> list[str]:
        try:
            header = _header(Path(self.path), self.sep)
        except UserError as err:
            return [f"path: {err}"]
        return [f"{key}: {problem}" for key, problem in self._absent(header)]

    def columns(self, header: list[str]) -> list[str]:
        """The feature columns, after checking that every column named is in ``header``."""
        for _, problem in self._absent(header):
            raise UserError(problem)
        if self.features is not None:
            return list(self.features)
        others = {self.label, self.split, self.client}
        return [column for column in header if column not in others]

    def _absent(self, header: list[str]) -> list[tuple[str, str]]:
        """(key, problem) of each key naming columns that ``header`` lacks."""
        named: dict[str, list[str | None]] = {
            "label": [self.label],
            "split": [self.split],
            "client": [self.client],
            "features": list(self.features or []),
        }
        columns = ", ".join(map(repr, header))
        problems = []
        for key, names in named.items():
            absent = ", ".join(repr(n) for n in names if n is not None and n not in header)
            if absent:
                problem = (
                    f"csv {self.path} has no column {absent} ({key}); its columns are "
                    f"{columns}: set data.{key} to one of them"
                )
                problems.append((key, problem))
        return problems


@DATASETS.register("csv", CsvParams)
def csv(p: CsvParams) -> Dataset:
    """Your table: numeric feature columns and a label column; split by a column or a fraction."""
    path = Path(p.path)
    try:
        frame = pd.read_csv(path, sep=p.sep)
    except (OSError, ValueError, pd.errors.ParserError) as err:
        raise UserError(f"csv {path}: cannot read it as a table ({err})") from None
    features = p.columns([str(c) for c in frame.columns])
    if not features:
        raise UserError(f"csv {path} has no feature columns besides the label; add some")
    for column in features:
        _check_feature(path, frame[column])
    labels = _labels(path, frame[p.label])
    test = _test_rows(p, path, frame)
    arrays = {}
    for split, rows in zip(SPLITS, (~test, test), strict=True):
        arrays[f"x_{split}"] = frame.loc[rows, features].to_numpy(dtype=np.float64)
        arrays[f"y_{split}"] = labels[rows]
    clients = None
    if p.client is not None:
        ids = frame.loc[~test, p.client]
        if ids.isna().any():
            row = int(np.flatnonzero(ids.isna().to_numpy())[0])
            raise UserError(
                f"csv {path}: column {p.client!r} (client) is empty at a training row "
                f"({row}); give every row a client"
            )
        clients = ids.astype(str).to_numpy() if ids.dtype == object else ids.to_numpy()
    return checked_dataset("csv", path, arrays, p.num_classes, p.standardize, clients)


def _header(path: Path, sep: str) -> list[str]:
    if not path.is_file():
        raise UserError(missing(path, "csv file"))
    try:
        return [str(c) for c in pd.read_csv(path, sep=sep, nrows=0).columns]
    except (OSError, ValueError, pd.errors.ParserError) as err:
        raise UserError(f"csv {path}: cannot read its header ({err})") from None


def _check_feature(path: Path, column: pd.Series) -> None:
    if not (pd.api.types.is_numeric_dtype(column) or pd.api.types.is_bool_dtype(column)):
        value = column.dropna().iloc[0] if column.notna().any() else None
        raise UserError(
            f"csv {path}: feature column {column.name!r} is not numeric (e.g. {value!r}); encode "
            "it as numbers, or list the numeric columns in data.features"
        )
    empty = column.isna().to_numpy()
    if empty.any():
        raise UserError(
            f"csv {path}: feature column {column.name!r} has {int(empty.sum())} missing (NaN) "
            f"values (first at data row {int(np.flatnonzero(empty)[0])}); drop or impute them"
        )


def _labels(path: Path, column: pd.Series) -> npt.NDArray[Any]:
    """The label column as numbers: as it is when numeric, else names numbered in sorted order."""
    empty = column.isna().to_numpy()
    if empty.any():
        raise UserError(
            f"csv {path}: label column {column.name!r} is empty at {int(empty.sum())} rows "
            f"(first: data row {int(np.flatnonzero(empty)[0])}); drop those rows"
        )
    if pd.api.types.is_numeric_dtype(column) or pd.api.types.is_bool_dtype(column):
        return column.to_numpy()
    _, codes = np.unique(column.astype(str).to_numpy(), return_inverse=True)
    return codes.reshape(-1)


def _test_rows(p: CsvParams, path: Path, frame: pd.DataFrame) -> npt.NDArray[np.bool_]:
    """Which rows are test rows: the split column's, or a seeded random test_fraction."""
    if p.split is not None:
        values = frame[p.split].astype(str).str.strip().str.lower()
        odd = sorted(set(values) - set(SPLITS))
        if odd:
            raise UserError(
                f"csv {path}: split column {p.split!r} holds {', '.join(map(repr, odd[:5]))}; "
                "each row needs 'train' or 'test'"
            )
        return (values == "test").to_numpy()
    n = len(frame)
    n_test = math.ceil(p.test_fraction * n)
    if n_test >= n:
        raise UserError(
            f"csv {path}: {n} rows leave none for training with test_fraction="
            f"{p.test_fraction}; lower test_fraction or add rows"
        )
    test = np.zeros(n, dtype=bool)
    test[np.random.default_rng(p.seed).permutation(n)[:n_test]] = True
    return test
