"""Tiny files of each kind, written per test."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest


def tiny_arrays(n_train: int = 12, n_test: int = 6, classes: int = 3) -> dict[str, Any]:
    """Inputs (N, 1, 2, 2) whose first entry is the row number; labels row % classes."""

    def x(n: int, offset: int) -> np.ndarray:
        rows = np.arange(offset, offset + n, dtype=np.float64)
        return np.stack([rows, -rows, rows % 2, np.ones(n)], axis=1).reshape(n, 1, 2, 2)

    return {
        "x_train": x(n_train, 0),
        "y_train": np.arange(n_train) % classes,
        "x_test": x(n_test, 100),
        "y_test": np.arange(n_test) % classes,
    }


@pytest.fixture
def npz(tmp_path: Path):  # type: ignore[no-untyped-def]
    """Write arrays (tiny_arrays with changes; a value None leaves the key out) to a .npz."""

    def write(name: str = "data.npz", **changes: Any) -> Path:
        arrays = {**tiny_arrays(), **changes}
        path = tmp_path / name
        np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
        return path

    return write
